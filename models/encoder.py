"""Feature encoder: a DeepLabV3 trunk (output stride 8) and a 1×1 projection to 256 channels.

method.md §4.1. The module layout reproduces the original's state-dict names so its released
checkpoints load (through :mod:`inference.loader`):

- ``backbone.*``    torchvision's IntermediateLayerGetter over the ResNet (layer4 → 2048 channels);
- ``localconv``     1×1 conv 2048 → 256, no bias, no norm or activation after it;
- ``asppconv``, ``aspp_out.0.*``, ``aspp_out.1.weight``: present but unused, as in the original.

Trunks by name: ``'deeplabv3_resnet101'`` (faithful default), ``'deeplabv3_resnet50'`` and
``'tiny'`` (three strided convs, for tests and CPU quickstarts). All map [N, 3, H, W] to
[N, 256, H/8, W/8]. Built randomly initialised; the COCO trunk weights are loaded by
:func:`inference.loader.load_pretrained_trunk` (COCO or ImageNet files).
"""
from __future__ import annotations

import difflib

from torch import Tensor, nn
from torchvision.models import segmentation
from util.errors import InputError

ENCODER_NAMES = ("deeplabv3_resnet101", "deeplabv3_resnet50", "tiny")
FEATURE_CHANNELS = 256
OUTPUT_STRIDE = 8


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


def build_encoder(name: str = "deeplabv3_resnet101") -> Encoder:
    """Encoder by trunk name, randomly initialised (weights are loaded by
    :mod:`inference.loader`; nothing is downloaded)."""
    if name not in ENCODER_NAMES:
        close = difflib.get_close_matches(str(name), ENCODER_NAMES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"build_encoder: expected an encoder name in {ENCODER_NAMES}, "
                         f"got {name!r}{hint}")
    if name == "tiny":
        return Encoder(TinyTrunk(), TinyTrunk.out_channels)
    builder = getattr(segmentation, name)
    # aux_loss=True as in the original; it changes no backbone key and nothing is downloaded
    deeplab = builder(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    aspp_out = nn.Sequential(deeplab.classifier[0], deeplab.classifier[1])
    return Encoder(deeplab.backbone, 2048, aspp_out)


