"""Every switch of docs/differences.md, given on the command line as documented."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_phantom_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from data_preprocessing import supervoxels

    root = make_phantom_dataset(tmp_path_factory.mktemp("switches"), seed=2, n_slices=6)
    supervoxels.generate(root, min_size=200, workers=1)
    return root


def cli(script: str, data: Path, log_dir: Path, *overrides: str) -> dict:
    """Run ``script with phantom ... overrides`` and return the run folder's config.json."""
    args = [sys.executable, script, "with", "phantom", f"data_dir={data}", "encoder=tiny",
            "num_workers=0", "device=cpu", f"log_dir={log_dir}", *overrides]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, encoding="utf-8",
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(log_dir.rglob("config.json"), key=lambda p: p.stat().st_mtime)
    return {"config": json.loads(runs[-1].read_text(encoding="utf-8")), "dir": runs[-1].parent,
            "stdout": out.stdout, "stderr": out.stderr}


@pytest.mark.slow
def test_training_switches_from_the_command_line(data, tmp_path):
    run = cli("training.py", data, tmp_path / "a", "setting1", "n_steps=2", "print_interval=1",
              "superpixel_draw=original", "min_superpixel_px=1", "prototypes=global",
              "channels_last=False", "bf16=False", "slice_draw=original",
              "empty_prototypes=skip")
    saved = torch.load(run["dir"] / "snapshots" / "latest.pth", weights_only=True)["config"]
    assert (saved["superpixel_draw"], saved["min_superpixel_px"], saved["prototypes"],
            saved["channels_last"], saved["bf16"]) == ("original", 1, "global", False, False)
    assert (saved["slice_draw"], saved["empty_prototypes"]) == ("original", "skip")
    assert "bf16 False, channels_last False" in run["stderr"]
    # the original draw has no size check: the default becomes 1 with it
    run = cli("training.py", data, tmp_path / "b", "setting1", "n_steps=1",
              "superpixel_draw=original")
    assert torch.load(run["dir"] / "snapshots" / "latest.pth",
                      weights_only=True)["config"]["min_superpixel_px"] == 1
    # Setting 2 supervoxel episodes with the original's AND rule
    run = cli("training.py", data, tmp_path / "c", "setting2", "supervoxels",
              "superpix_scale=SV200", "exclude_mode=all", "n_steps=2")
    saved = torch.load(run["dir"] / "snapshots" / "latest.pth", weights_only=True)["config"]
    assert saved["exclude_mode"] == "all" and saved["exclude_labels"] == [2, 3]


@pytest.mark.slow
def test_evaluation_switches_from_the_command_line(data, tmp_path):
    trained = cli("training.py", data, tmp_path, "setting1", "n_steps=2", "prototypes=global")
    checkpoint = trained["dir"] / "snapshots" / "latest.pth"
    for protocol, extra in (("adnet", []), ("realistic", ["realistic_chunks=body"]),
                            ("paper", [])):
        run = cli("validation.py", data, tmp_path, "setting1", "label_sets=all",
                  f"protocol={protocol}", f"reload_model_path={checkpoint}",
                  "save_predictions=False", *extra)
        summary = json.loads((run["dir"] / "summary.json").read_text(encoding="utf-8"))
        assert summary["protocol"] == protocol
        # label_sets=all: every label group's organs in one run
        assert sorted(summary["per_organ"]) == ["LIVER", "LK", "RK", "SPLEEN"]
        assert "prototypes='global' from the checkpoint" in run["stderr"]


def test_bad_switch_values_name_the_key():
    out = subprocess.run([sys.executable, "training.py", "with", "quickstart",
                          "exclude_mode=all"], cwd=ROOT, capture_output=True, text=True,
                         encoding="utf-8", timeout=120)
    assert out.returncode == 2
    assert "exclude_mode='all' is the supervoxel episodes' original rule" in out.stderr
    for override, message in (("slice_draw=shuffled", "slice_draw expects one of"),
                              ("empty_prototypes=drop", "empty_prototypes expects one of")):
        out = subprocess.run([sys.executable, "training.py", "with", "quickstart", override],
                             cwd=ROOT, capture_output=True, text=True, encoding="utf-8",
                             timeout=120)
        assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    out = subprocess.run([sys.executable, "training.py", "with", "quickstart", "supervoxels",
                          "superpix_scale=SV200", "slice_draw=original"], cwd=ROOT,
                         capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert out.returncode == 2
    assert "slice_draw='original' is the 2-D superpixel episodes' sampling" in out.stderr
    out = subprocess.run([sys.executable, "validation.py", "with", "quickstart",
                          "protocol=qnet"], cwd=ROOT, capture_output=True, text=True,
                         encoding="utf-8", timeout=120)
    assert out.returncode == 2
    assert "protocol expects one of ['paper', 'realistic', 'adnet'], got 'qnet'" in out.stderr


def test_faithful_superpixel_ids_from_the_command_line(tmp_path):
    from data_preprocessing.contract import load_dataset
    from data_preprocessing.phantom import write_phantom

    write_phantom(tmp_path, seed=1, size=64, n_slices=4)
    out = subprocess.run([sys.executable, "-m", "data_preprocessing.superpixels", "--dir",
                          str(tmp_path), "--relabel", "faithful", "--workers", "1"], cwd=ROOT,
                         capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert load_dataset(tmp_path).meta["pseudolabels"]["MIDDLE"]["relabel"] == "faithful"


def test_prototypes_global_gives_one_prototype_per_mask():
    """The switch acts: a model built from the config with prototypes='global' pools one
    prototype per mask; with the default ALP the same support gives many local ones."""
    import torch

    from config_ssl_upload import KEYS
    from inference.loader import NO_WEIGHTS, build_model

    cfg = {name: key.default for name, key in KEYS.items()}
    counts = {}
    for kind in ("global", "alp"):
        cfg.update(encoder="tiny", prototypes=kind, bf16=False, channels_last=False)
        model = build_model(cfg, torch.device("cpu"), NO_WEIGHTS).eval()
        torch.manual_seed(0)
        fg = torch.zeros(1, 256, 256)
        fg[:, 64:192, 64:192] = 1
        with torch.no_grad():
            support = model.encode_support(torch.randn(1, 3, 256, 256), fg, 1 - fg)
        counts[kind] = (support.fg.vectors.shape[0], support.bg.vectors.shape[0])
    assert counts["global"] == (1, 1)
    assert counts["alp"][0] > 1 and counts["alp"][1] > 1  # local windows (+ the global fg)


def _episodes(data: Path, **overrides):
    """The training episodes that training.py builds from the config with ``overrides``."""
    import training
    from config_ssl_upload import KEYS
    from data_preprocessing.contract import load_dataset
    from dataloaders.episodes import resolve_exclude_labels

    ds = load_dataset(data)
    cfg = {name: key.default for name, key in KEYS.items()}
    cfg.update({"dataset": "PHANTOM", "label_sets": 0, "min_superpixel_px": 100, **overrides})
    cfg["exclude_labels"] = resolve_exclude_labels(cfg, ds)  # as given, else the group's
    return training.build_episodes(cfg, ds, ds.fold(0)["train"]), ds


def test_superpixel_draw_original_draws_from_one_to_the_largest_id_minus_one(data):
    """superpixel_draw='original' acts: every id lies in 1..max-1 of its slice and the largest
    id is never drawn; the default uniform draw does reach the largest id."""
    reached_top = {}
    for draw, min_px in (("original", 1), ("uniform", 1)):
        episodes, _ = _episodes(data, setting=1, superpixel_draw=draw, min_superpixel_px=min_px)
        tops = []
        for step in range(300):
            vi, z, sp = episodes.draw_superpixel(np.random.default_rng(step), step)
            top = int(episodes.volumes[vi].superpix[z].max())
            assert 1 <= sp <= top
            tops.append(sp == top)
        reached_top[draw] = any(tops)
    assert reached_top == {"original": False, "uniform": True}


def test_exclude_mode_all_excludes_only_slices_holding_every_test_class(data):
    """exclude_mode='all' (supervoxel episodes, Setting 2) acts: slices with one test class but
    not all of them are drawn, which exclude_mode='any' never does; slices with all test classes
    are drawn by neither. (The phantom's kidneys always share their slices, so the test classes
    here are RK and SPLEEN, which do not.)"""
    from dataloaders.volumes import load_volumes

    drawn = {}
    for mode in ("any", "all"):
        episodes, ds = _episodes(data, setting=2, pseudolabel="supervoxel",
                                 superpix_scale="SV200", exclude_mode=mode, exclude_labels=[2, 4])
        test = episodes.exclude_labels
        labels = {v.pid: v.label for v in load_volumes(ds, ds.fold(0)["train"])}
        kinds = set()
        for step in range(200):
            ep = episodes[step]
            for z in (int(ep["z"]), int(ep["query_z"])):
                present = {c for c in test if (labels[ep["scan_id"]][z] == c).any()}
                kinds.add("all" if present == set(test) else "some" if present else "none")
        drawn[mode] = kinds
    assert "all" not in drawn["any"] | drawn["all"]
    assert "some" not in drawn["any"] and "some" in drawn["all"]
