"""Encoder trunks, COCO / ImageNet weights (local files and the hub cache), and the original
checkpoint's key names."""
from __future__ import annotations

import hashlib
import logging
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import segmentation

from inference import loader
from inference.loader import (build_model, load_checked_state_dict, load_pretrained_trunk,
                              read_weights, resolve_weights)
from models.alpnet import ALPNet
from models.encoder import build_encoder


@pytest.fixture(scope="module")
def r101() -> ALPNet:
    torch.manual_seed(0)
    return ALPNet("deeplabv3_resnet101")


def original_key_names() -> set[str]:
    """The original's state-dict names, built independently from torchvision (method.md §4.1)."""
    with torch.device("meta"):
        resnet = torchvision.models.resnet101()
        aspp = segmentation.deeplabv3.ASPP(2048, [12, 24, 36])
    names = {f"encoder.backbone.{k}" for k in resnet.state_dict() if not k.startswith("fc.")}
    names |= {f"encoder.aspp_out.0.{k}" for k in aspp.state_dict()}
    return names | {"encoder.localconv.weight", "encoder.asppconv.weight",
                    "encoder.aspp_out.1.weight"}


# --- trunks -----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(64, 64), (40, 56)])
def test_tiny_encoder_gives_256_channels_at_stride_8(size):
    encoder = build_encoder("tiny")
    assert encoder(torch.randn(2, 3, *size)).shape == (2, 256, size[0] // 8, size[1] // 8)


def test_gradients_reach_the_trunk_and_the_projection():
    encoder = build_encoder("tiny")
    encoder(torch.randn(2, 3, 32, 32)).square().mean().backward()
    assert encoder.backbone.body[0].weight.grad.abs().sum() > 0
    assert encoder.localconv.weight.grad.abs().sum() > 0


def test_resnet101_trunk_output_stride_8_and_no_activation_after_localconv(r101):
    encoder = r101.encoder
    assert encoder.localconv.in_channels == 2048 and encoder.localconv.bias is None
    seen = []
    hook = encoder.localconv.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    feats = encoder(torch.randn(2, 3, 64, 64))
    hook.remove()
    assert seen == [(2, 2048, 8, 8)] and feats.shape == (2, 256, 8, 8)
    assert (feats < 0).any(), "no ReLU after the projection: features take both signs"
    feats.square().mean().backward()
    assert encoder.backbone.conv1.weight.grad.abs().sum() > 0
    assert encoder.localconv.weight.grad.abs().sum() > 0
    r101.zero_grad(set_to_none=True)


BASE = {"feature_hw": [32, 32], "proto_grid_size": 8, "val_wsize": 2, "fg_thresh": 0.95,
        "bg_thresh": 0.95, "usealign": True, "bf16": False, "channels_last": False,
        "pretrained_weights": None, "prototypes": "alp"}


def test_resnet50_trunk_and_the_random_init_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="inference.loader"):
        model = build_model({**BASE, "encoder": "deeplabv3_resnet50"}, torch.device("cpu"))
    assert "randomly initialised" in caplog.text
    assert model.encoder.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 256, 4, 4)


def test_unknown_encoder_name_suggests_a_close_one():
    with pytest.raises(ValueError, match="did you mean 'deeplabv3_resnet101'"):
        build_encoder("deeplabv3_resnet100")
    with pytest.raises(ValueError, match="'tiny' encoder has no pretrained weights"):
        build_model({**BASE, "encoder": "tiny", "pretrained_weights": "coco.pth"},
                    torch.device("cpu"))


# --- COCO weights from a local file --------------------------------------------------------

def test_coco_checkpoint_loads_backbone_only(tmp_path, caplog):
    torch.manual_seed(1)
    coco = segmentation.deeplabv3_resnet101(weights=None, weights_backbone=None,
                                            num_classes=21, aux_loss=True)
    path = tmp_path / "deeplabv3_resnet101_coco-586e9e4e.pth"
    torch.save(coco.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="inference.loader"):
        encoder = build_model({**BASE, "encoder": "deeplabv3_resnet101",
                               "pretrained_weights": str(path)}, torch.device("cpu")).encoder
    assert "randomly initialised" not in caplog.text
    for name, tensor in coco.backbone.state_dict().items():
        assert torch.equal(encoder.backbone.state_dict()[name], tensor), name
    # the unused ASPP copy is not taken from the file's classifier
    assert not torch.equal(encoder.aspp_out[1].weight, coco.classifier[1].weight)


def test_missing_or_wrong_coco_file_names_the_path_and_the_keys(tmp_path, r101):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_model({**BASE, "encoder": "deeplabv3_resnet101", "pretrained_weights": str(missing)},
                    torch.device("cpu"))
    heads_only = tmp_path / "heads_only.pth"
    torch.save({"classifier.4.weight": torch.zeros(21, 256, 1, 1),
                "aux_classifier.4.bias": torch.zeros(21)}, heads_only)
    with pytest.raises(ValueError, match=r"heads_only\.pth.*found neither.*classifier\.4\.weight"):
        load_pretrained_trunk(r101.encoder, heads_only)
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("not a checkpoint", encoding="utf-8")
    with pytest.raises(ValueError, match=r"notes\.pth: expected a readable torch checkpoint \(a "
                                         r"torchvision DeepLabV3"):
        load_pretrained_trunk(r101.encoder, not_a_checkpoint)


# --- pretrained_weights=coco / imagenet through the torch hub cache (no network) ------------

def _cached(hub: Path, stem: str, state: dict) -> str:
    """Save ``state`` into ``hub``/checkpoints as ``<stem>-<its sha256 prefix>.pth``; its URL."""
    (hub / "checkpoints").mkdir(parents=True, exist_ok=True)
    tmp = hub / "checkpoints" / "tmp.pth"
    torch.save(state, tmp)
    name = f"{stem}-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"
    tmp.rename(hub / "checkpoints" / name)
    return f"https://download.pytorch.org/models/{name}"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache; downloads fail as they do offline."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "hub"


def test_keywords_name_torchvisions_files():
    names = {key: url.rsplit("/", 1)[1] for key, url in loader.PRETRAINED.items()}
    assert names[("coco", "deeplabv3_resnet101")] == "deeplabv3_resnet101_coco-586e9e4e.pth"
    assert names[("imagenet", "deeplabv3_resnet101")] == "resnet101-63fe2227.pth"
    assert set(names) == {(k, e) for k in ("coco", "imagenet")
                          for e in ("deeplabv3_resnet101", "deeplabv3_resnet50")}


@pytest.mark.parametrize("keyword", ["coco", "imagenet"])
def test_cached_pretrained_weights_load_after_the_hash_check(keyword, hub, monkeypatch):
    torch.manual_seed(2)
    if keyword == "coco":
        source = segmentation.deeplabv3_resnet101(weights=None, weights_backbone=None,
                                                  num_classes=21, aux_loss=True)
        trunk, stem = source.backbone, "deeplabv3_resnet101_coco"
    else:
        source = torchvision.models.resnet101()
        trunk, stem = source, "resnet101"
    url = _cached(hub, stem, source.state_dict())
    monkeypatch.setitem(loader.PRETRAINED, (keyword, "deeplabv3_resnet101"), url)
    encoder = build_model({**BASE, "encoder": "deeplabv3_resnet101",
                           "pretrained_weights": keyword}, torch.device("cpu")).encoder
    loaded = encoder.backbone.state_dict()
    for name, tensor in trunk.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(loaded[name], tensor), name
    # a cached file whose content does not match its hash is refused, naming it
    path = hub / "checkpoints" / url.rsplit("/", 1)[1]
    path.write_bytes(path.read_bytes()[:-1] + b"x")
    with pytest.raises(ValueError, match=rf"{path}: expected torchvision's file with SHA-256 "
                                         rf"starting {url[-12:-4]}, found"):
        build_model({**BASE, "encoder": "deeplabv3_resnet101", "pretrained_weights": keyword},
                    torch.device("cpu"))


def test_offline_without_the_file_names_the_url_and_the_cache_path(hub):
    with pytest.raises(FileNotFoundError) as err:
        build_model({**BASE, "encoder": "deeplabv3_resnet101", "pretrained_weights": "coco"},
                    torch.device("cpu"))
    assert str(err.value) == (
        "pretrained_weights=coco: could not download "
        "https://download.pytorch.org/models/deeplabv3_resnet101_coco-586e9e4e.pth ([Errno -3] "
        "Temporary failure in name resolution); without network, fetch that file elsewhere and "
        f"place it at {hub / 'checkpoints' / 'deeplabv3_resnet101_coco-586e9e4e.pth'} (SHA-256 "
        "starting 586e9e4e), or give its path as pretrained_weights")


def test_typos_folders_and_an_unwritable_cache_are_named(hub, tmp_path, monkeypatch):
    def build(value):
        build_model({**BASE, "encoder": "deeplabv3_resnet101", "pretrained_weights": value},
                    torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match=r"pretrained_weights='COCO': expected coco, "
                                                r"imagenet or the path of .* found no such file; "
                                                r"did you mean 'coco'\?"):
        build("COCO")
    with pytest.raises(FileNotFoundError, match=r"found a folder$"):
        build(str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", "/sys/no_hub_here")
    with pytest.raises(PermissionError, match=r"pretrained_weights=coco: expected a writable "
                                              r"torch hub cache .* cannot create "
                                              r"/sys/no_hub_here/checkpoints .* set TORCH_HOME"):
        build("coco")


def test_a_trunk_of_another_depth_or_an_alpnet_checkpoint_is_named(tmp_path):
    r50 = segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                          aux_loss=True)
    torch.save(r50.state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ValueError, match=r"r50\.pth: expected a ResNet-101 trunk for this "
                                         r"encoder, found a ResNet-50 one"):
        loader.check_pretrained(str(tmp_path / "r50.pth"), "deeplabv3_resnet101")
    assert loader.check_pretrained(str(tmp_path / "r50.pth"), "deeplabv3_resnet50") == \
        tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="expected a ResNet-50 trunk for this encoder, found a "
                                         "ResNet-34 one"):
        loader.check_pretrained(str(tmp_path / "r34.pth"), "deeplabv3_resnet50")
    torch.save(ALPNet("tiny").state_dict(), tmp_path / "ours.pth")
    with pytest.raises(ValueError, match=r"found an SSL-ALPNet checkpoint \(keys 'encoder\.\*'\): "
                                         r"evaluate it with reload_model_path"):
        loader.check_pretrained(str(tmp_path / "ours.pth"), "deeplabv3_resnet50")


def test_mismatched_coco_file_lists_missing_unexpected_and_misshapen_keys(tmp_path):
    encoder = build_encoder("tiny")
    state = {f"backbone.{k}": v for k, v in encoder.backbone.state_dict().items()}
    del state["backbone.body.1.running_var"]
    state["backbone.layer9.weight"] = torch.zeros(1)
    state["backbone.body.0.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / "mismatch.pth"
    torch.save(state, path)
    before = encoder.backbone.body[0].weight.clone()
    with pytest.raises(ValueError) as err:
        load_pretrained_trunk(encoder, path)
    message = str(err.value)
    assert "mismatch.pth" in message
    assert "1 missing keys: body.1.running_var" in message
    assert "1 unexpected keys: layer9.weight" in message
    assert "body.0.weight: expected [32, 3, 3, 3], got [8, 3, 3, 3]" in message
    assert torch.equal(encoder.backbone.body[0].weight, before), "nothing loaded on error"


# --- the original's checkpoints ---------------------------------------------------------------

def test_state_dict_keys_match_the_original(r101):
    assert set(r101.state_dict()) == original_key_names()


def test_original_checkpoint_loads_from_a_wrapped_state_dict(tmp_path, r101):
    state = {k: v.clone() for k, v in r101.state_dict().items()}
    assert set(state) == original_key_names()
    state["encoder.localconv.weight"].fill_(0.5)
    state["encoder.backbone.layer4.2.bn3.running_var"].fill_(2.0)
    path = tmp_path / "100000.pth"
    torch.save({"model": state}, path)
    load_checked_state_dict(r101, read_weights(path).state, str(path))
    assert torch.all(r101.encoder.localconv.weight == 0.5)
    assert torch.all(r101.encoder.backbone.layer4[2].bn3.running_var == 2.0)


def test_original_checkpoint_with_wrong_keys_is_a_clear_error(tmp_path):
    """A bare state dict (DataParallel prefix) builds through resolve_weights and build_model;
    wrong keys and a missing file are errors naming the file."""
    cfg = {**BASE, "encoder": "tiny"}
    model = ALPNet("tiny")
    state = {f"module.{k}": v for k, v in model.state_dict().items()}   # DataParallel prefix
    path = tmp_path / "ok.pth"
    torch.save(state, path)
    weights = resolve_weights(path)
    assert weights.kind == "original"
    build_model(cfg, torch.device("cpu"), weights)
    del state["module.encoder.localconv.weight"]
    state["module.encoder.asppconv.weight"] = torch.zeros(256, 256, 1, 1)
    bad = tmp_path / "25000.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"25000\.pth.*missing keys: encoder\.localconv\.weight"
                                         r".*unexpected keys: encoder\.asppconv\.weight"):
        build_model(cfg, torch.device("cpu"), resolve_weights(bad))
    with pytest.raises(FileNotFoundError, match="50000.pth: expected a checkpoint file"):
        resolve_weights(tmp_path / "50000.pth")
