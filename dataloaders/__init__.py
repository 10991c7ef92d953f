"""Episodes for training and evaluation (method.md §3, §6, §9.3, §9.5).

- ``dataloaders.volumes``   scans in memory as (Z, H, W), cropped to 256×256:
  ``load_volume(dataset, pid, *, stats, label, superpix_scale, crop) -> Volume``,
  ``load_volumes``, ``normalization_stats(dataset, train_pids) -> NormStats | None`` (CT
  training-fold mean / std; None for per-volume MR z-scoring), ``train_fold_stats``,
  ``normalize``.
- ``dataloaders.augment``   method.md §3.5 in torch, batched, on any device: ``AugParams``,
  ``PRESETS`` ('sabs_aug', 'aug_v3'); a view's parameters drawn on the host by ``draw_view``
  (``draw_affine``, ``draw_field_seed``), a batch of views augmented on the device by
  ``augment_views(stack, ViewPlan, params)`` (``warp``, ``elastic_fields``, ``recover_label``,
  ``gamma_transform``); ``augment_pair(image, label, rng, params)`` for one view on the CPU.
- ``dataloaders.episodes``  torch Datasets of episodes (tensors ``EPISODE_TENSORS``), each drawn
  as a recipe on the host and assembled on the device from slices staged there once:
  ``SuperpixelEpisodes`` (self-supervised, Setting 1 / 2), ``SupervoxelEpisodes`` (3-D,
  adjacent slices), ``ManualLabelEpisodes`` (supervised baseline); ``episode_loader`` (a batch of
  ``per_step`` episodes per global step, any number of workers), ``episode_rng(seed, step)``,
  ``setting_exclusions``, ``training_classes``, ``excluded_slices_from_classmap``.
- ``dataloaders.evaluation`` ``build_evaluation(dataset, fold, *, label_group, protocol,
  npart, ...) -> EvaluationSet`` with ``SupportSet`` / ``SupportPart`` per test class and a
  ``QueryScan`` + ``QueryPlan`` per query scan and class under the 'paper', 'realistic' or
  'adnet' protocol; helpers ``part_percentiles``, ``support_slice``, ``chunk_index``,
  ``count_chunks``, ``build_support``, ``plan_query``.
"""
