"""ALPNet model: encoder, adaptive local prototype pooling (ALP), losses (SPEC §4–§5).

- ``models.alp``      the method's heart, pure functions on tensors:
  ``alp_score(query_feats, support_feats, support_mask, mode, window, threshold, scale)``
  → ``(score [Q, 1, h, w], ALPInfo)``, its parts ``build_prototypes`` / ``score_prototypes``,
  ``downsample_mask``, ``choose_fg_mode``, ``l2_normalize`` and the thin module ``ALP``.
- ``models.encoder``  ``build_encoder(name, pretrained_weights)`` → ``Encoder``
  ([N, 3, H, W] → [N, 256, H/8, W/8]); names 'deeplabv3_resnet101' (default), 'deeplabv3_resnet50',
  'tiny'; ``load_coco_backbone`` for a local torchvision DeepLabV3 COCO file.
- ``models.alpnet``   ``ALPNet`` (forward → ``ALPNetOutput(logits, align_loss, n_fallback)``;
  ``encode_support`` → ``SupportPrototypes`` and ``score_queries`` for batched evaluation) and
  ``load_original_checkpoint`` for snapshots of the original code.
- ``models.losses``   ``weighted_cross_entropy`` (weights [0.05, 1], ignore 255),
  ``alignment_target``, ``per_image_cross_entropy``.
"""
