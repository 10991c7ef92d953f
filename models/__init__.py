"""ALPNet model: encoder, adaptive local prototype pooling (ALP), losses (method.md §4–§5).

- ``models.alp``      the method's heart, pure functions on tensors:
  ``alp_score(query_feats, support_feats, support_mask, mode, window, threshold, scale)``
  → ``(score [Q, 1, h, w], ALPInfo)``, its parts ``build_prototypes`` / ``score_prototypes``,
  ``downsample_mask``, ``choose_fg_mode``, ``l2_normalize``.
- ``models.encoder``  ``build_encoder(name)`` → ``Encoder`` ([N, 3, H, W] → [N, 256, H/8, W/8]);
  names 'deeplabv3_resnet101' (default), 'deeplabv3_resnet50', 'tiny'.
- ``models.alpnet``   ``ALPNet`` (forward → ``ALPNetOutput(logits, align_loss, n_fallback)``;
  ``encode_support`` → ``SupportPrototypes``, ``encode`` and ``score_features`` for batched
  evaluation; ``prototypes='global'`` for the PANet-style ablation).

No file is read in ``models/``: :mod:`inference.loader` reads every weights file.
- ``models.losses``   ``weighted_cross_entropy`` (weights [0.05, 1], ignore 255),
  ``alignment_target``, ``per_image_cross_entropy``.
"""
