"""From files to a model: the project's one loader.

Training (start and resume), validation, ``predict.py`` and the quickstart build their ALPNet with
:func:`build_model`. Every weights file is read here, once, with weights-only unpickling
(:func:`util.checkpoint.safe_load`):

- our checkpoints (``snapshots/*.pth``): the model *and* its architecture keys
  (:data:`ARCH_KEYS`) come from the file; a config value that differs from the checkpoint's is an
  error naming the key when it was given explicitly, and the checkpoint's otherwise;
- the original code's snapshots (bare state dicts, optionally under 'model'/'state_dict' or with
  a DataParallel ``module.`` prefix): no config, so :data:`ORIGINAL_ASSUMED` and the configured
  encoder are assumed, and said;
- torchvision's DeepLabV3 COCO checkpoint or ImageNet ResNet classifier
  (``pretrained_weights``): its trunk tensors into the trunk. ``coco`` / ``imagenet`` name
  torchvision's files (:data:`PRETRAINED`); they are looked up in the torch hub cache,
  downloaded there when missing, and their SHA-256 checked against the prefix in the file name.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import logging
import os
import re
import urllib.error
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import ResNet50_Weights, ResNet101_Weights
from torchvision.models.segmentation import (DeepLabV3_ResNet50_Weights,
                                             DeepLabV3_ResNet101_Weights)

from config_ssl_upload import ARCH_BEFORE, ARCH_KEYS, ORIGINAL_ASSUMED
from models.alpnet import ALPNet
from models.encoder import Encoder
from util.checkpoint import (BEST, SNAPSHOT_DIR, check_training_state,
                              find_resume_checkpoint, safe_load)
from util.device import resolve_switch
from util.io import found_at
from util.errors import InputError, MissingInput, NoPermission

logger = logging.getLogger(__name__)

# pretrained_weights keywords → torchvision's files per encoder; ImageNet V1 is the trunk the
# original falls back to without COCO weights
PRETRAINED = {
    ("coco", "deeplabv3_resnet101"): DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1.url,
    ("coco", "deeplabv3_resnet50"): DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.url,
    ("imagenet", "deeplabv3_resnet101"): ResNet101_Weights.IMAGENET1K_V1.url,
    ("imagenet", "deeplabv3_resnet50"): ResNet50_Weights.IMAGENET1K_V1.url,
}
PRETRAINED_KEYWORDS = ("coco", "imagenet")
_KEYS_SHOWN = 8
ENCODER_RESNETS = {"deeplabv3_resnet101": "ResNet-101", "deeplabv3_resnet50": "ResNet-50"}
# torchvision ResNets by (blocks in layer3, bottleneck blocks)
_RESNETS = {(2, False): "ResNet-18", (6, False): "ResNet-34", (6, True): "ResNet-50",
            (23, True): "ResNet-101", (36, True): "ResNet-152"}


@dataclass(frozen=True)
class Weights:
    """A weights file as read: ``kind`` 'ours' (a training checkpoint, with its config and step)
    or 'original' (a bare state dict); :data:`NO_WEIGHTS` for none."""
    path: str | None
    kind: str
    state: Mapping[str, Tensor] | None = None
    config: dict = field(default_factory=dict)
    step: int | None = None
    record: dict | None = None  # the dataset's preprocessing record (checkpoints carry it)
    training: Mapping | None = None  # our checkpoint in full (optimizer, RNG, best): resume


NO_WEIGHTS = Weights(None, "none")


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, Tensor]:
    """A state dict from ``path`` on the CPU; unwraps a 'model' or 'state_dict' entry."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: expected {what}, found nothing there")
    return _state_dict(safe_load(path, "cpu", what), path, what)


def _state_dict(obj, path: Path, what: str) -> dict[str, Tensor]:
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise InputError(f"{path}: expected {what} (a mapping of names to tensors), "
                         f"got {type(obj).__name__}")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):  # DataParallel's prefix
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_weights(path: str | os.PathLike | None) -> Weights:
    """Our training checkpoint or the original's bare state dict, read once."""
    if not path:
        return NO_WEIGHTS
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: expected a checkpoint file (ours or the original "
                                f"code's), found {found_at(path)}")
    obj = safe_load(path, "cpu", "a checkpoint")
    if isinstance(obj, Mapping) and "format_version" in obj:
        check_training_state(path, obj)
        return weights_of_state(path, obj)
    state = _state_dict(obj, path, "an SSL-ALPNet checkpoint")
    kind = _torchvision_layout(state)
    if kind is not None:
        raise InputError(f"{path}: expected an SSL-ALPNet checkpoint (keys 'encoder.*'), found a "
                         f"torchvision {kind} file: that is a start for training "
                         f"(pretrained_weights={path}), not a model to evaluate")
    return Weights(str(path), "original", state)


def weights_of_state(path: str | os.PathLike, state: Mapping) -> Weights:
    """:class:`Weights` of a training checkpoint already read."""
    return Weights(str(path), "ours", state["model"], dict(state.get("config", {})),
                   int(state["step"]), state.get("dataset_record"), state)


WEIGHT_KEYWORDS = ("latest", "best")  # reload_model_path: a checkpoint of the newest run


def resolve_weights(target: str | os.PathLike | None, purpose: str = "evaluate", *,
                    runs: str | os.PathLike | None = None, encoder: str | None = None,
                    map_location: str | torch.device = "cpu") -> Weights:
    """The one way from what a user names to :class:`Weights`:

    - nothing (None, ""): :data:`NO_WEIGHTS`;
    - ``latest`` / ``best`` (where ``runs`` is given): that checkpoint of the newest training
      run under ``runs`` (``<log_dir>/train/<exp_name>``; ``best.pth`` exists in runs trained
      with ``val_every``);
    - a training run folder: its newest checkpoint that loads (damaged ones are skipped);
    - a file: our checkpoint, or the original code's bare state dict;
    - ``purpose="pretrained"``: ``coco`` / ``imagenet`` or a torchvision file, checked for
      ``encoder`` (kind 'pretrained': the trunk is loaded by :func:`build_model`);
    - ``purpose="resume"``: our checkpoint only (it carries the optimizer and RNG state).
    """
    if not target:
        return NO_WEIGHTS
    if purpose == "pretrained":
        return Weights(str(pretrained_file(target, encoder)), "pretrained")
    if runs is not None and str(target) in WEIGHT_KEYWORDS:
        target = _newest_run_checkpoint(Path(runs), str(target))
    path = Path(target)
    if purpose == "resume" or path.is_dir():
        return weights_of_state(*find_resume_checkpoint(path, map_location))
    return read_weights(path)


def _newest_run_checkpoint(runs: Path, keyword: str) -> Path:
    """The newest run folder under ``runs`` (``latest``) or its ``best.pth`` (``best``)."""
    ids = sorted((int(p.name) for p in runs.glob("*") if p.name.isdigit()), reverse=True)
    found = [runs / str(i) for i in ids if (runs / str(i) / SNAPSHOT_DIR).is_dir()]
    if not found:
        raise MissingInput(f"{runs}: expected a training run with checkpoints for "
                           f"reload_model_path={keyword}, found none; train first or name the "
                           f"checkpoint")
    if keyword == "latest":
        return found[0]
    best = found[0] / SNAPSHOT_DIR / BEST
    if not best.is_file():
        raise MissingInput(f"{best}: expected the best checkpoint of the newest run (written "
                           f"when training with val_every > 0), found nothing there")
    return best


def architecture(cfg: dict, weights: Weights, explicit: Collection[str] = (),
                 flags: Mapping[str, str] | None = None) -> dict:
    """``cfg`` with the architecture keys of ``weights``: a checkpoint's own, or the original's
    assumed ones. A key given explicitly (``explicit``) with another value is an error, which
    names the key as given (``flags``, e.g. ``{"encoder": "--encoder"}``; else ``key=``)."""
    if weights.kind == "none":
        return dict(cfg)
    if weights.kind == "original":
        saved = {**ORIGINAL_ASSUMED, "encoder": cfg["encoder"]}
        logger.info("%s: a bare state dict (no config): assuming %s", weights.path,
                    ", ".join(f"{k}={v!r}" for k, v in saved.items()))
    else:
        config = {**ARCH_BEFORE, **weights.config}
        saved = {k: config[k] for k in ARCH_KEYS if k in config}
        missing = [k for k in ARCH_KEYS if k not in saved]
        if missing:
            raise InputError(f"{weights.path}: expected the architecture keys {missing} in the "
                             f"checkpoint's config, found them missing")
    out = dict(cfg)
    for key, value in saved.items():
        if value == cfg[key]:
            continue
        if key in explicit:
            flag = (flags or {}).get(key)
            given = (lambda v: f"{flag} {v}") if flag else (lambda v: f"{key}={v!r}")
            raise InputError(f"{'' if flag else 'config: '}{given(cfg[key])} was given, but the "
                             f"checkpoint {weights.path} was trained with {given(value)}; leave "
                             f"{flag or key} out (the checkpoint's value is used) or give "
                             f"{given(value)}")
        logger.info("%s=%r from the checkpoint %s", key, value, weights.path)
        out[key] = value
    return out


def build_model(cfg: dict, device: torch.device, weights: Weights = NO_WEIGHTS,
                explicit: Collection[str] = (), flags: Mapping[str, str] | None = None) -> ALPNet:
    """The configured ALPNet on ``device``, with ``weights`` (ours or the original's) loaded, or
    the trunk from ``pretrained_weights`` (COCO), or randomly initialised (with a warning)."""
    cfg = architecture(cfg, weights, explicit, flags)
    bf16 = resolve_switch("bf16", cfg["bf16"], device)
    channels_last = resolve_switch("channels_last", cfg["channels_last"], device)
    if bf16 and device.type == "mps":
        raise InputError("config bf16=True: bfloat16 autocast is not supported on mps; use "
                         "bf16=False")
    pretrained = NO_WEIGHTS
    if weights.state is None:
        pretrained = resolve_weights(cfg["pretrained_weights"], "pretrained",
                                     encoder=cfg["encoder"])
    model = ALPNet(cfg["encoder"], align=cfg["usealign"], fg_threshold=cfg["fg_thresh"],
                   bg_threshold=cfg["bg_thresh"],
                   train_window=cfg["feature_hw"][0] // cfg["proto_grid_size"],
                   eval_window=cfg["val_wsize"], autocast_bf16=bf16, channels_last=channels_last,
                   prototypes=cfg["prototypes"])
    if weights.state is not None:
        try:
            load_checked_state_dict(model, weights.state, str(weights.path))
        except ValueError as err:
            if weights.kind != "original":
                raise
            flag = (flags or {}).get("encoder")
            built = f"{flag} {cfg['encoder']}" if flag else f"encoder={cfg['encoder']}"
            raise InputError(f"{err} (a bare state dict records no encoder: the model was built "
                             f"as {built}; give the encoder it was trained with)") from None
        logger.info("loaded weights from %s", weights.path)
    elif pretrained.path is not None:
        load_pretrained_trunk(model.encoder, pretrained.path)
    elif cfg["encoder"] != "tiny":
        logger.warning("encoder %s: no pretrained_weights given, the trunk is randomly "
                       "initialised (the paper starts from COCO DeepLabV3 weights: "
                       "pretrained_weights=coco, or the path of a local copy)", cfg["encoder"])
    return model.to(device)


def pretrained_file(value: str | os.PathLike, encoder: str) -> Path:
    """The local file of ``pretrained_weights``: a path as given, or for ``coco`` / ``imagenet``
    torchvision's file in the torch hub cache (downloaded when missing), its hash checked."""
    if encoder == "tiny":
        raise InputError(f"config: the 'tiny' encoder has no pretrained weights, got "
                         f"pretrained_weights={str(value)!r}; leave it unset or choose a "
                         f"deeplabv3_* encoder")
    if str(value) not in PRETRAINED_KEYWORDS:
        path = Path(value)
        if not path.is_file():
            close = difflib.get_close_matches(str(value).lower(), PRETRAINED_KEYWORDS, n=1)
            raise MissingInput(
                f"pretrained_weights={str(value)!r}: expected coco, imagenet or the path of a "
                f"torchvision DeepLabV3 COCO or ImageNet ResNet file, found "
                f"{'a folder' if path.is_dir() else 'no such file'}"
                + (f"; did you mean {close[0]!r}?" if close else ""))
        return path
    url = PRETRAINED.get((str(value), encoder))
    if url is None:
        raise InputError(f"config: pretrained_weights={value} has no torchvision file for "
                         f"encoder={encoder!r}; expected one of "
                         f"{sorted({e for _, e in PRETRAINED})}")
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
    prefix = re.search(r"-([a-f0-9]+)\.pth$", path.name).group(1)
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise NoPermission(f"pretrained_weights={value}: expected a writable torch hub "
                                  f"cache for {url}, cannot create {path.parent} "
                                  f"({err.strerror or err}); set TORCH_HOME to a writable "
                                  f"folder, or give the file's path") from None
        logger.info("pretrained_weights=%s: downloading %s to %s", value, url, path)
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix,
                                           progress=False)
        except (urllib.error.URLError, OSError) as err:
            raise MissingInput(
                f"pretrained_weights={value}: could not download {url} ({_reason(err)}); "
                f"without network, fetch that file elsewhere and place it at {path} (SHA-256 "
                f"starting {prefix}), or give its path as pretrained_weights") from None
        except RuntimeError as err:  # torch.hub: the downloaded file's hash differs
            raise InputError(f"pretrained_weights={value}: {url} downloaded with the wrong "
                             f"content ({err}); nothing was kept at {path}") from None
    digest = _sha256(path, path.stat().st_size, path.stat().st_mtime_ns)
    if not digest.startswith(prefix):
        raise InputError(f"{path}: expected torchvision's file with SHA-256 starting {prefix}, "
                         f"found {digest[:len(prefix)]}; delete it so that it is downloaded "
                         f"again, or replace it with the file from {url}")
    logger.info("pretrained_weights=%s: %s (SHA-256 %s… checked)", value, path, prefix)
    return path


def load_pretrained_trunk(encoder: Encoder, path: str | os.PathLike) -> None:
    """Load a torchvision file into the trunk: a DeepLabV3 checkpoint's ``backbone.*`` entries,
    or an ImageNet ResNet classifier without its ``fc.*`` head."""
    trunk, what = trunk_of(path, _resnet_depth(encoder.backbone.state_dict()))
    load_checked_state_dict(encoder.backbone, trunk, f"{path} ({what})")
    logger.info("encoder: loaded %d trunk tensors from %s (%s)", len(trunk), path, what)


def check_pretrained(value: str | os.PathLike, encoder: str) -> Path:
    """:func:`pretrained_file`, and for a local file its layout and depth, before a run starts."""
    path = pretrained_file(value, encoder)
    if str(value) not in PRETRAINED_KEYWORDS:  # torchvision's own files are checked by hash
        trunk_of(path, ENCODER_RESNETS.get(encoder))
    return path


def trunk_of(path: str | os.PathLike, depth: str | None) -> tuple[dict[str, Tensor], str]:
    """The trunk tensors of a pretrained file and how they were found; refused unless it is
    torchvision's DeepLabV3 (``backbone.*``) or ImageNet ResNet (``conv1.weight``, ``fc.weight``)
    layout, of the ResNet ``depth`` (e.g. 'ResNet-101'; None: any)."""
    state = read_state_dict(path, "a torchvision DeepLabV3 or ResNet checkpoint")
    kind = _torchvision_layout(state)
    if kind == "DeepLabV3":
        trunk = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        what = "backbone.* into the trunk"
    elif kind == "ResNet":
        trunk = {k: v for k, v in state.items() if not k.startswith("fc.")}
        what = "ImageNet ResNet without fc.* into the trunk"
    else:
        ours = any(k.startswith("encoder.") for k in state)
        raise InputError(f"{path}: expected a torchvision DeepLabV3 checkpoint with 'backbone.*' "
                         f"keys or an ImageNet ResNet with 'conv1.weight' and 'fc.weight', found "
                         + ("an SSL-ALPNet checkpoint (keys 'encoder.*'): evaluate it with "
                            "reload_model_path, or continue training it with resume" if ours
                            else f"neither; keys found: {_preview(state)}"))
    found = _resnet_depth(trunk)
    if depth is not None and found != depth:
        raise InputError(f"{path}: expected a {depth} trunk for this encoder, found a {found} "
                         f"one; give the file of the encoder's depth, or the encoder of the file's")
    return trunk, what


def _torchvision_layout(state: Mapping[str, Tensor]) -> str | None:
    """'DeepLabV3' (``backbone.*`` keys), 'ResNet' (an ImageNet classifier: ``conv1.weight`` and
    ``fc.weight``) or None: which torchvision file ``state`` is."""
    if any(k.startswith("backbone.") for k in state):
        return "DeepLabV3"
    if "conv1.weight" in state and "fc.weight" in state:
        return "ResNet"
    return None


def _resnet_depth(keys) -> str:
    """The ResNet a trunk's key names describe (by its layer3), e.g. 'ResNet-101'."""
    blocks = {k.split(".")[1] for k in keys if re.fullmatch(r"layer3\.\d+\.conv1\.weight", k)}
    bottleneck = any(k.startswith("layer3.0.conv3.") for k in keys)
    return _RESNETS.get((len(blocks), bottleneck),
                        f"{len(blocks)}-block-layer3 {'bottleneck' if bottleneck else 'basic'}")


@functools.lru_cache(maxsize=8)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """SHA-256 of ``path``; ``size`` and ``mtime_ns`` key the cache, so a replaced file is hashed
    again."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _reason(err: Exception) -> str:
    return str(getattr(err, "reason", None) or err)


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
        raise InputError(f"{source}: the weights do not match {type(module).__name__}; "
                         + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def _preview(keys) -> str:
    keys = list(keys)
    shown = ", ".join(str(k) for k in keys[:_KEYS_SHOWN])
    return shown + (f", … ({len(keys) - _KEYS_SHOWN} more)" if len(keys) > _KEYS_SHOWN else "")
