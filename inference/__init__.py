"""Few-shot inference above ``dataloaders/`` and ``models/``: batched support encoding and query
scoring (:mod:`inference.batched`), the evaluation loop shared by validation and training
(:mod:`inference.evaluate`), and the pipeline that segments new scans (:mod:`inference.predict`).
"""
