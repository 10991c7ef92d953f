"""Superpixel pseudolabels: relabelling (fixed and faithful), body mask, real-data statistics."""
import numpy as np
import pytest
import SimpleITK as sitk

from data_preprocessing import superpixels as sp
from data_preprocessing.contract import load_dataset, register
from data_preprocessing.prepare import link_scans


def _stripes(k: int, width: int = 3) -> np.ndarray:
    return np.repeat(np.arange(k), width)[None, :].repeat(4, axis=0)


def test_compact_relabel_keeps_every_segment_inside_the_mask():
    seg = _stripes(5)                       # raw ids 0..4
    mask = np.ones(seg.shape, bool)
    mask[:, -3:] = False                    # segment 4 lies outside the body
    out = sp.relabel(seg, mask, "compact")
    assert sorted(np.unique(out[mask]).tolist()) == [1, 2, 3, 4]
    assert (out[~mask] == 0).all()
    # one output id per raw segment, order kept
    assert out[0, ::3][:4].tolist() == [1, 2, 3, 4]


def test_faithful_relabel_reproduces_the_original_ids():
    k = 6
    seg = _stripes(k)
    out = sp.relabel(seg, np.ones(seg.shape, bool), "faithful")
    # method.md §2.3: K raw segments inside the mask give ids {1..K-2, K}; raw 0 is dropped
    assert sorted(np.unique(out[out > 0]).tolist()) == [1, 2, 3, 4, 6]
    assert (out[seg == 0] == 0).all()
    assert (sp.relabel(np.zeros((3, 3), int), np.ones((3, 3), bool), "faithful") == 0).all()
    with pytest.raises(ValueError, match="relabel mode"):
        sp.relabel(seg, np.ones(seg.shape, bool), "other")


def test_body_mask_keeps_largest_component_and_fills_holes():
    img = np.zeros((20, 20))
    img[2:12, 2:12] = 100
    img[5:8, 5:8] = 0            # a hole
    img[15:18, 15:18] = 100      # a smaller island
    mask = sp.body_mask(img, 50.0001)
    assert mask[6, 6] and not mask[16, 16]
    assert mask.sum() == 100
    assert not sp.body_mask(np.zeros((5, 5)), 1e-4).any()


def test_superpixels_cover_the_body_and_nothing_else():
    rng = np.random.default_rng(0)
    img = np.zeros((64, 64))
    img[8:56, 8:56] = 300 + 40 * rng.standard_normal((48, 48))
    img[20:40, 20:40] = 700
    ids, mask = sp.superpixels_slice(img, sp.SCALES["MIDDLE"], 50.0001)
    assert (ids[~mask] == 0).all() and (ids[mask] > 0).all()
    n = len(np.unique(ids[mask]))
    assert np.array_equal(np.unique(ids[mask]), np.arange(1, n + 1))   # compact ids
    assert 1 < n <= mask.sum() // 400 + 1


@pytest.mark.slow
def test_real_chaos_superpixels_statistics_and_parallel_equals_serial(chaos_dir, tmp_path):
    link_scans(chaos_dir, tmp_path)
    ds = register(tmp_path, "CHAOST2")
    cases = ds.cases[:2]
    serial = sp.generate(tmp_path, workers=1, cases=cases)
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(ds.path("pseudolabel", cases[0]))))
    parallel = sp.generate(tmp_path, workers=2, cases=cases)
    again = sitk.GetArrayFromImage(sitk.ReadImage(str(ds.path("pseudolabel", cases[0]))))
    assert serial == parallel and np.array_equal(first, again)
    summary = sp.summarize(serial)["superpixels_per_slice"]
    # min_size 400 px on a ~25k px body: tens of superpixels per body slice
    assert 5 <= summary["min"] and 15 <= summary["median"] <= 40 and summary["max"] <= 80
    image = sitk.ReadImage(str(ds.path("image", cases[0])))
    written = sitk.ReadImage(str(ds.path("pseudolabel", cases[0])))
    assert written.GetSpacing() == image.GetSpacing()
    assert written.GetDirection() == image.GetDirection()


def test_generate_records_parameters(tmp_path):
    from data_preprocessing.phantom import write_phantom
    write_phantom(tmp_path, seed=1, size=64, n_slices=4)
    sp.generate(tmp_path, "SMALL", workers=1)
    record = load_dataset(tmp_path).meta["pseudolabels"]["SMALL"]
    assert record["min_size"] == 100 and record["sigma"] == 0.8
    assert record["relabel"] == "compact"
    with pytest.raises(ValueError, match="scale"):
        sp.generate(tmp_path, "HUGE")


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("superpix-MIDDLE_*.nii.gz"))}


@pytest.mark.slow
def test_an_interrupted_rerun_leaves_the_old_set_intact_and_described(tmp_path):
    """A real SIGKILL while `superpixels --relabel faithful` rewrites an existing MIDDLE set."""
    import json
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from data_preprocessing.contract import load_dataset
    from data_preprocessing.phantom import write_phantom
    from data_preprocessing.verify import verify_dataset

    root = Path(__file__).resolve().parents[1]
    write_phantom(tmp_path, seed=2, size=128, n_slices=12)
    sp.generate(tmp_path, workers=1)
    before = _snapshot(tmp_path)
    meta_before = (tmp_path / "dataset.json").read_text(encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "data_preprocessing.superpixels", "--dir",
                             str(tmp_path), "--relabel", "faithful", "--workers", "1"], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = tmp_path / ".staging-superpix-MIDDLE"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list(staging.glob("superpix-MIDDLE_*.nii.gz"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the re-run ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _snapshot(tmp_path) == before  # every file of the old set, unchanged
    assert (tmp_path / "dataset.json").read_text(encoding="utf-8") == meta_before
    assert load_dataset(tmp_path).meta["pseudolabels"]["MIDDLE"]["relabel"] == "compact"
    verify_dataset(tmp_path)
    # a complete re-run replaces the whole set and its record together
    sp.generate(tmp_path, relabel_mode="faithful", workers=1)
    assert not staging.exists()
    assert json.loads((tmp_path / "dataset.json").read_text(encoding="utf-8"))[
        "pseudolabels"]["MIDDLE"]["relabel"] == "faithful"
    assert _snapshot(tmp_path) != before


def test_a_switch_cut_short_is_completed_on_the_next_load(tmp_path):
    from data_preprocessing.contract import COMMIT_JOURNAL, load_dataset, staging_folder
    from data_preprocessing.phantom import write_phantom
    from util.io import write_json

    write_phantom(tmp_path, seed=3, size=64, n_slices=4)
    sp.generate(tmp_path, workers=1)
    staging = staging_folder(tmp_path, "superpix-MIDDLE")
    first = sorted(tmp_path.glob("superpix-MIDDLE_*.nii.gz"))
    for path in first:
        (staging / path.name).write_bytes(b"new " + path.name.encode())
    write_json(staging / COMMIT_JOURNAL, {"files": [p.name for p in first],
                                          "metadata": {"pseudolabels": {"MIDDLE": {"x": 1}}}})
    (first[0]).write_bytes((staging / first[0].name).read_bytes())  # one file already switched
    (staging / first[0].name).unlink()
    ds = load_dataset(tmp_path)
    assert ds.meta["pseudolabels"]["MIDDLE"]["x"] == 1 and not staging.exists()
    assert all(p.read_bytes() == b"new " + p.name.encode() for p in first)
