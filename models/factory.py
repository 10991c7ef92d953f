"""ALPNet from the experiment config (config_ssl_upload.py keys)."""
from __future__ import annotations

import logging

from typing import Mapping

import torch
from torch import Tensor

from models.alpnet import ALPNet, load_original_checkpoint
from util.device import resolve_switch

logger = logging.getLogger(__name__)


def build_model(cfg: dict, device: torch.device,
                weights: Mapping[str, Tensor] | None = None) -> ALPNet:
    """The configured ALPNet on ``device``; ``reload_model_path`` weights loaded if given.

    ``reload_model_path`` takes a checkpoint of ours (``snapshots/*.pth``) or a snapshot of the
    original code; ``weights`` is its state dict when the caller has already read the file. ``channels_last`` changes the memory layout only; ``bf16`` runs the encoder
    under bfloat16 autocast (CUDA, or CPUs with bf16 instructions), which changes the numbers
    slightly (see the README's benchmarks).
    """
    window = cfg["feature_hw"][0] // cfg["proto_grid_size"]
    bf16 = resolve_switch("bf16", cfg["bf16"], device)
    channels_last = resolve_switch("channels_last", cfg["channels_last"], device)
    if bf16 and device.type == "mps":
        raise ValueError("config bf16=True: bfloat16 autocast is not supported on mps; use "
                         "bf16=False")
    model = ALPNet(cfg["encoder"], cfg["pretrained_weights"], align=cfg["usealign"],
                   fg_threshold=cfg["fg_thresh"], bg_threshold=cfg["bg_thresh"],
                   train_window=window, eval_window=cfg["val_wsize"],
                   autocast_bf16=bf16, channels_last=channels_last,
                   reloaded=bool(cfg["reload_model_path"]))
    if cfg["reload_model_path"]:
        load_original_checkpoint(model, cfg["reload_model_path"], weights)
        logger.info("loaded weights from %s", cfg["reload_model_path"])
    return model.to(device)
