"""Feature encoder: a DeepLabV3 trunk (output stride 8) and a 1×1 projection to 256 channels.

SPEC §4.1. The module layout reproduces the original's state-dict names so its released
checkpoints load (through :func:`models.alpnet.load_original_checkpoint`):

- ``backbone.*``    torchvision's IntermediateLayerGetter over the ResNet (layer4 → 2048 channels);
- ``localconv``     1×1 conv 2048 → 256, no bias, no norm or activation after it;
- ``asppconv``, ``aspp_out.0.*``, ``aspp_out.1.weight``: present but unused, as in the original.

Trunks by name: ``'deeplabv3_resnet101'`` (faithful default), ``'deeplabv3_resnet50'`` and
``'tiny'`` (three strided convs, for tests and CPU quickstarts). All map [N, 3, H, W] to
[N, 256, H/8, W/8]. Nothing is ever downloaded: COCO weights come from a local file in
torchvision's format (``deeplabv3_resnet101_coco-586e9e4e.pth``), of which only ``backbone.*`` is
loaded. Without that file the trunk is randomly initialised (the original used COCO, or ImageNet
weights when ``use_coco_init=False``), and a warning says so.
"""
from __future__ import annotations

import difflib
import logging
import os
import pickle
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn
from torchvision.models import segmentation

logger = logging.getLogger(__name__)

ENCODER_NAMES = ("deeplabv3_resnet101", "deeplabv3_resnet50", "tiny")
FEATURE_CHANNELS = 256
OUTPUT_STRIDE = 8
_KEYS_SHOWN = 8


class TinyTrunk(nn.Module):
    """Three stride-2 conv-BN-ReLU blocks: [N, 3, H, W] → {'out': [N, 128, H/8, W/8]}."""

    out_channels = 128

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((3, 32), (32, 64), (64, self.out_channels)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": self.body(x)}


class Encoder(nn.Module):
    """Trunk + ``localconv``: [N, 3, H, W] → [N, 256, H/8, W/8]."""

    def __init__(self, backbone: nn.Module, trunk_channels: int,
                 aspp_out: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.localconv = nn.Conv2d(trunk_channels, FEATURE_CHANNELS, 1, bias=False)
        if aspp_out is not None:  # unused; kept so state-dict keys match the original
            self.asppconv = nn.Conv2d(FEATURE_CHANNELS, FEATURE_CHANNELS, 1, bias=False)
            self.aspp_out = aspp_out
            for module in (self.asppconv, self.aspp_out):  # never in the forward pass
                module.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.localconv(self.backbone(x)["out"])


def build_encoder(name: str = "deeplabv3_resnet101",
                  pretrained_weights: str | os.PathLike | None = None, *,
                  reloaded: bool = False) -> Encoder:
    """Encoder by trunk name; ``pretrained_weights`` is a local torchvision DeepLabV3 file.
    ``reloaded``: trained weights are loaded right after, so a random trunk is not warned about."""
    if name not in ENCODER_NAMES:
        close = difflib.get_close_matches(str(name), ENCODER_NAMES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"build_encoder: expected an encoder name in {ENCODER_NAMES}, "
                         f"got {name!r}{hint}")
    if name == "tiny":
        if pretrained_weights is not None:
            raise ValueError(f"build_encoder: the 'tiny' encoder has no pretrained weights, got "
                             f"pretrained_weights={str(pretrained_weights)!r}; pass None or "
                             f"choose a deeplabv3_* encoder")
        return Encoder(TinyTrunk(), TinyTrunk.out_channels)
    if pretrained_weights is not None and not Path(pretrained_weights).is_file():
        raise FileNotFoundError(f"{pretrained_weights}: expected a torchvision DeepLabV3 "
                                f"checkpoint (e.g. deeplabv3_resnet101_coco-586e9e4e.pth), "
                                f"found nothing there")
    builder = getattr(segmentation, name)
    # aux_loss=True as in the original; it changes no backbone key and nothing is downloaded
    deeplab = builder(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    aspp_out = nn.Sequential(deeplab.classifier[0], deeplab.classifier[1])
    encoder = Encoder(deeplab.backbone, 2048, aspp_out)
    if pretrained_weights is None and not reloaded:
        logger.warning("encoder %s: no pretrained_weights given, the trunk is randomly "
                       "initialised (the paper starts from COCO DeepLabV3 weights; pass the local "
                       "file deeplabv3_resnet101_coco-586e9e4e.pth to reproduce it)", name)
    elif pretrained_weights is not None:
        load_coco_backbone(encoder, pretrained_weights)
    return encoder


def load_coco_backbone(encoder: Encoder, path: str | os.PathLike) -> None:
    """Load the ``backbone.*`` entries of a torchvision DeepLabV3 checkpoint into the trunk."""
    state = read_state_dict(path, "a torchvision DeepLabV3 checkpoint")
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if not backbone:
        raise ValueError(f"{path}: expected a torchvision DeepLabV3 checkpoint with 'backbone.*' "
                         f"keys, found none; keys found: {_preview(state)}")
    load_checked_state_dict(encoder.backbone, backbone, f"{path} (backbone.* into the trunk)")
    logger.info("encoder: loaded %d backbone tensors from %s", len(backbone), path)


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, Tensor]:
    """A state dict from ``path`` on the CPU; unwraps a 'model' or 'state_dict' entry."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: expected {what}, found nothing there")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path}: expected {what} (a state dict of tensors saved with "
                         f"torch.save), could not read it: {err}") from err
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected {what} (a mapping of names to tensors), "
                         f"got {type(obj).__name__}")
    return dict(obj)


def load_checked_state_dict(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``module.load_state_dict(state)``; fails naming every missing, unexpected, misshapen key."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshapen = [f"{k}: expected {list(own[k].shape)}, got {list(state[k].shape)}"
                 for k in own if k in state and own[k].shape != state[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_preview(unexpected)}")
    if misshapen:
        problems.append(f"{len(misshapen)} shape mismatches: {_preview(misshapen)}")
    if problems:
        raise ValueError(f"{source}: the weights do not match {type(module).__name__}; "
                         + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def _preview(keys) -> str:
    keys = list(keys)
    shown = ", ".join(str(k) for k in keys[:_KEYS_SHOWN])
    return shown + (f", … ({len(keys) - _KEYS_SHOWN} more)" if len(keys) > _KEYS_SHOWN else "")
