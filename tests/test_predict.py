"""predict.py: geometry of the written masks, the exact way back, input errors, the CLI."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import predict
from conftest import cli, one_line_error
from data_preprocessing.resample import crop_or_pad_volume
from models.alpnet import ALPNet
from util.checkpoint import save_checkpoint
from data_preprocessing.registry import CHAOST2, SABS
from inference.predict import prepare_mask, prepare_scan, to_original, uncrop_volume
from util.seeding import rng_state

ROOT = Path(__file__).resolve().parents[1]
CHAOS_SPACING = (1.25, 1.25, 7.70)
MODEL_CONFIG = {"encoder": "tiny", "feature_hw": [32, 32], "proto_grid_size": 8, "val_wsize": 2,
                "fg_thresh": 0.95, "bg_thresh": 0.95, "usealign": True, "bf16": False,
                "channels_last": False, "pretrained_weights": None, "reload_model_path": None,
                "dataset": "CHAOST2"}


def resample(image, spacing, interpolator):
    """``image`` on a grid of ``spacing`` covering the same extent (same origin, direction)."""
    size = [int(n * s / t) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    return sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), spacing,
                         image.GetDirection(), 0, image.GetPixelID())


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Ours (a training checkpoint with its config) and a bare state dict (original style)."""
    root = tmp_path_factory.mktemp("predict_ckpt")
    torch.manual_seed(0)
    weights = ALPNet("tiny").state_dict()
    ours = save_checkpoint(root / "latest.pth", {"model": weights, "optimizer": {}, "step": 0,
                                                 "rng": rng_state(), "config": MODEL_CONFIG})
    bare = root / "bare.pth"
    torch.save(weights, bare)
    return {"ours": ours, "bare": bare}


@pytest.fixture(scope="module")
def scans(chaos_dir, tmp_path_factory):
    """Support: shared image_8 and its liver mask. Query: image_1 at 1.6 x 1.6 x 6.0 mm, cropped
    to another size (and origin), with its liver mask resampled the same way."""
    root = tmp_path_factory.mktemp("predict_scans")
    liver = sitk.Cast(sitk.ReadImage(str(chaos_dir / "label_8.nii.gz")) == 1, sitk.sitkUInt8)
    sitk.WriteImage(liver, str(root / "support_liver.nii.gz"))
    image = resample(sitk.ReadImage(str(chaos_dir / "image_1.nii.gz")), (1.6, 1.6, 6.0),
                     sitk.sitkLinear)[7:-20, 12:-5, 2:-3]
    label = resample(sitk.ReadImage(str(chaos_dir / "label_1.nii.gz")), (1.6, 1.6, 6.0),
                     sitk.sitkNearestNeighbor)[7:-20, 12:-5, 2:-3]
    sitk.WriteImage(image, str(root / "query_a.nii.gz"))
    sitk.WriteImage(label, str(root / "query_a_label.nii.gz"))
    return {"support": chaos_dir / "image_8.nii.gz", "mask": root / "support_liver.nii.gz",
            "query": root / "query_a.nii.gz", "query_label": root / "query_a_label.nii.gz",
            "query_b": chaos_dir / "image_1.nii.gz", "root": root}


def args(checkpoint, support, mask, queries, out, *extra):
    return ["--checkpoint", str(checkpoint), "--support", str(support), "--support-mask",
            str(mask), "--query", *map(str, queries), "--out", str(out), "--device", "cpu",
            *extra]


# ---------------------------------------------------------------- (1) output geometry

def test_predict_writes_masks_with_each_querys_geometry(checkpoints, scans, tmp_path, capsys):
    queries = [scans["query"], scans["query_b"]]
    outputs = predict.main(args(checkpoints["ours"], scans["support"], scans["mask"], queries,
                                tmp_path / "out", "--batch-size", "8"))
    assert [p.name for p in outputs] == ["query_a_pred.nii.gz", "image_1_pred.nii.gz"]
    for query, out in zip(queries, outputs):
        ref, pred = sitk.ReadImage(str(query)), sitk.ReadImage(str(out))
        assert pred.GetSize() == ref.GetSize()
        assert pred.GetSpacing() == ref.GetSpacing()
        assert pred.GetOrigin() == ref.GetOrigin()
        assert pred.GetDirection() == ref.GetDirection()
        assert pred.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(sitk.GetArrayViewFromImage(pred))) <= {0, 1}
    assert sitk.ReadImage(str(scans["query"])).GetSize() != sitk.ReadImage(
        str(scans["query_b"])).GetSize()
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "voxels predicted" in ln]
    assert len(lines) == 2 and lines[0].startswith(str(scans["query"]))


def test_ct_scan_is_windowed_and_mapped_back(checkpoints, ct_dir, tmp_path):
    """The CT path (HU window, z-score, field-of-view spacing) on the shared raw CT."""
    liver = sitk.Cast(sitk.ReadImage(str(ct_dir / "label_0.nii.gz")) == 6, sitk.sitkUInt8)
    sitk.WriteImage(liver, str(tmp_path / "liver.nii.gz"))
    query = resample(sitk.ReadImage(str(ct_dir / "image_0.nii.gz")), (2.0, 2.5, 4.0),
                     sitk.sitkLinear)[3:-4, :-6, 1:]
    sitk.WriteImage(query, str(tmp_path / "ct_query.nii"))  # uncompressed NIfTI is accepted too
    out, = predict.main(args(checkpoints["ours"], ct_dir / "image_0.nii.gz",
                             tmp_path / "liver.nii.gz", [tmp_path / "ct_query.nii"],
                             tmp_path / "out", "--modality", "CT"))
    pred = sitk.ReadImage(str(out))
    assert out.name == "ct_query_pred.nii.gz"
    assert (pred.GetSize(), pred.GetSpacing(), pred.GetOrigin(), pred.GetDirection()) == (
        query.GetSize(), query.GetSpacing(), query.GetOrigin(), query.GetDirection())
    prepared = prepare_scan(query, (1.25, 1.25, 3.0), SABS, "ct")
    assert abs(float(prepared.image.mean())) < 1e-3 and abs(float(prepared.image.std()) - 1) < 1e-3


# ---------------------------------------------------------------- (2) the way back

@pytest.mark.parametrize("shape", [(3, 300, 211), (2, 100, 257), (1, 256, 256), (2, 5, 400)])
def test_uncrop_inverts_the_centre_crop_or_pad(shape):
    arr = np.random.default_rng(0).integers(1, 9, shape).astype(np.uint8)
    back = uncrop_volume(crop_or_pad_volume(arr).astype(np.uint8), shape)
    kept = [slice(max(n // 2 - 128, 0), min(n // 2 + 128, n)) for n in shape[1:]]
    np.testing.assert_array_equal(back[:, kept[0], kept[1]], arr[:, kept[0], kept[1]])
    assert back.sum() == arr[:, kept[0], kept[1]].sum()  # nothing outside the window


def _round_trip(image, mask01, spacing):
    prepared = prepare_scan(image, spacing, CHAOST2, "scan")
    on_grid = prepare_mask(mask01, image, prepared, "mask")
    assert on_grid.shape == prepared.image.shape == (on_grid.shape[0], 256, 256)
    out = to_original(on_grid, prepared)
    assert out.GetSize() == image.GetSize() and out.GetOrigin() == image.GetOrigin()
    return sitk.GetArrayFromImage(out)


def test_mask_round_trip_is_exact_on_the_training_grid(chaos_dir):
    image = sitk.ReadImage(str(chaos_dir / "image_1.nii.gz"))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(chaos_dir / "label_1.nii.gz")))
    for organ in (1, 2):
        mask = (labels == organ).astype(np.uint8)
        np.testing.assert_array_equal(_round_trip(image, mask, CHAOS_SPACING), mask)


def test_mask_round_trip_on_another_grid_matches_up_to_the_border(scans):
    image = sitk.ReadImage(str(scans["query"]))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(scans["query_label"])))
    for organ in (1, 4):  # liver, spleen
        mask = labels == organ
        assert dice(_round_trip(image, mask.astype(np.uint8), CHAOS_SPACING) == 1, mask) > 0.95


def test_to_original_handles_an_oblique_direction():
    rotation = sitk.VersorTransform((0.2, 0.1, 0.3), 0.4).GetMatrix()
    arr = np.zeros((7, 50, 60), np.float32)
    arr[2:5, 10:40, 15:45] = 100.0
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.9, 1.1, 5.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection(rotation)
    mask = (arr > 0).astype(np.uint8)
    back = _round_trip(image, mask, (0.9, 1.1, 5.0))
    np.testing.assert_array_equal(back, mask)


# ---------------------------------------------------------------- (3) errors

def _write(image, path):
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def bad_inputs(scans, tmp_path):
    """name -> (support mask, bad query or None, extra args, exception, file named)."""
    mask = sitk.ReadImage(str(scans["mask"]))
    empty = _write(mask * 0, tmp_path / "empty_mask.nii.gz")
    spacing = sitk.Image(mask)
    spacing.SetSpacing((1.3, 1.25, 7.7))
    origin = sitk.Image(mask)
    origin.SetOrigin(tuple(o + 0.01 for o in mask.GetOrigin()))
    small = mask[:200]
    truncated = tmp_path / "truncated_query.nii.gz"
    data = scans["query"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    flat = _write(sitk.Image([64, 64], sitk.sitkFloat32), tmp_path / "flat_query.nii.gz")
    good = scans["mask"]
    return {
        "empty mask": (empty, None, [], ValueError, empty),
        "label absent": (good, None, ["--label", "3"], ValueError, good),
        "mask spacing": (_write(spacing, tmp_path / "m_sp.nii.gz"), None, [], ValueError,
                         tmp_path / "m_sp.nii.gz"),
        "mask origin": (_write(origin, tmp_path / "m_or.nii.gz"), None, [], ValueError,
                        tmp_path / "m_or.nii.gz"),
        "mask size": (_write(small, tmp_path / "m_sz.nii.gz"), None, [], ValueError,
                      tmp_path / "m_sz.nii.gz"),
        "truncated query": (good, truncated, [], ValueError, truncated),
        "missing query": (good, tmp_path / "nope.nii.gz", [], FileNotFoundError,
                          tmp_path / "nope.nii.gz"),
        "2-D query": (good, flat, [], ValueError, flat),
        "missing mask": (tmp_path / "no_mask.nii.gz", None, [], FileNotFoundError,
                         tmp_path / "no_mask.nii.gz"),
    }


@pytest.mark.parametrize("case", ["empty mask", "label absent", "mask spacing", "mask origin",
                                  "mask size", "truncated query", "missing query", "2-D query",
                                  "missing mask"])
def test_bad_inputs_raise_naming_the_file_and_write_nothing(case, bad_inputs, checkpoints, scans,
                                                           tmp_path):
    mask, bad_query, extra, error, named = bad_inputs[case]
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "query_a_pred.nii.gz"  # the valid first query's output, from an earlier run
    existing.write_bytes(b"an earlier prediction")
    queries = [scans["query"]] + ([bad_query] if bad_query else [])
    with pytest.raises(error) as info:
        predict.main(args(checkpoints["ours"], scans["support"], mask, queries, out, *extra))
    assert str(named) in str(info.value)
    assert existing.read_bytes() == b"an earlier prediction"
    assert sorted(p.name for p in out.iterdir()) == ["query_a_pred.nii.gz"]


def test_missing_checkpoint_and_wrong_encoder_are_reported(checkpoints, scans, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        predict.main(args(tmp_path / "missing.pth", scans["support"], scans["mask"],
                          [scans["query"]], tmp_path / "out"))
    with pytest.raises(ValueError, match="--encoder deeplabv3_resnet50"):
        predict.main(args(checkpoints["bare"], scans["support"], scans["mask"],
                          [scans["query"]], tmp_path / "out", "--encoder", "deeplabv3_resnet50"))
    with pytest.raises(ValueError, match=r"^--encoder deeplabv3_resnet50 was given, but the "
                                         r"checkpoint .*latest.pth was trained with --encoder "
                                         r"tiny; leave --encoder out"):
        predict.main(args(checkpoints["ours"], scans["support"], scans["mask"],
                          [scans["query"]], tmp_path / "out", "--encoder", "deeplabv3_resnet50"))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- (4) orientation, modality

def test_permuted_and_flipped_queries_give_the_canonical_mask(checkpoints, scans, tmp_path,
                                                              capsys):
    """The same query stored SAL (axes permuted) and RPI (every axis flipped) is reoriented to the
    training's LAS, segmented, and put back: the same mask as the LAS original."""
    canonical = sitk.ReadImage(str(scans["query"]))
    assert predict.orientation(canonical) == "LAS"
    copies = {}
    for code in ("SAL", "RPI"):
        copies[code] = tmp_path / f"query_{code}.nii.gz"
        sitk.WriteImage(sitk.DICOMOrient(canonical, code), str(copies[code]))
    out = tmp_path / "out"
    preds = predict.main(args(checkpoints["ours"], scans["support"], scans["mask"],
                              [scans["query"], *copies.values()], out))
    assert f"{copies['SAL']}: stored SAL, segmented as LAS" in capsys.readouterr().out
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(preds[0])))
    assert 0.01 < reference.mean() < 0.9  # a mask worth comparing
    for (code, query), pred_path in zip(copies.items(), preds[1:]):
        pred, ref = sitk.ReadImage(str(pred_path)), sitk.ReadImage(str(query))
        assert (pred.GetSize(), pred.GetSpacing(), pred.GetOrigin(), pred.GetDirection()) == (
            ref.GetSize(), ref.GetSpacing(), ref.GetOrigin(), ref.GetDirection())
        back = sitk.GetArrayFromImage(sitk.DICOMOrient(pred, "LAS"))
        assert dice(back, reference) >= 0.99, code
    # as stored, the SAL copy is sliced sagittally: the check above can fail
    stored, = predict.main(args(checkpoints["ours"], scans["support"], scans["mask"],
                                [copies["SAL"]], tmp_path / "stored", "--orientation", "stored"))
    back = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(stored)), "LAS"))
    assert dice(back, reference) < 0.9


def test_oblique_scans_keep_their_slices(cmr_dir, checkpoints, scans, tmp_path, capsys):
    from data_preprocessing.registry import CHAOST2, CMR

    cmr = sitk.ReadImage(str(cmr_dir / "image_1.nii.gz"))
    assert predict.is_oblique(cmr)
    assert not predict.is_oblique(sitk.ReadImage(str(cmr_dir.parent / "CHAOST2" /
                                                     "image_39.nii.gz")))  # 2.4 degrees off
    # CMR has no common orientation: an oblique support leaves every scan as stored
    assert predict.target_orientation(CMR, cmr) is None
    assert predict.target_orientation(CHAOST2, cmr) == "LAS"
    # an oblique query among LAS ones is kept as stored, said loudly, even when its closest
    # code is already the target's
    oblique = sitk.DICOMOrient(sitk.ReadImage(str(cmr_dir / "image_2.nii.gz")), "LAS")
    assert predict.orientation(oblique) == "LAS" and predict.is_oblique(oblique)
    sitk.WriteImage(oblique, str(tmp_path / "oblique.nii.gz"))
    out, = predict.main(args(checkpoints["ours"], scans["support"], scans["mask"],
                             [tmp_path / "oblique.nii.gz"], tmp_path / "out"))
    printed = capsys.readouterr()
    assert (f"WARNING: {tmp_path / 'oblique.nii.gz'} is oblique (closest code LAS); its slices "
            f"are segmented as stored, not as LAS") in printed.err
    assert "orientation LAS (oblique scans as stored)" in printed.out
    stored = sitk.ReadImage(str(tmp_path / "oblique.nii.gz"))
    # equal up to the rounding of NIfTI's quaternion storage of an oblique direction
    np.testing.assert_allclose(sitk.ReadImage(str(out)).GetDirection(), stored.GetDirection(),
                               atol=1e-8)


def test_support_mask_in_another_axis_order_and_a_thin_query(checkpoints, scans, tmp_path,
                                                              capsys):
    mask = sitk.ReadImage(str(scans["mask"]))
    sitk.WriteImage(sitk.DICOMOrient(mask, "RPI"), str(tmp_path / "mask_RPI.nii.gz"))
    thin = sitk.ReadImage(str(scans["query"]))[100:101]  # one sagittal slice
    sitk.WriteImage(thin, str(tmp_path / "thin.nii.gz"))
    same = predict.main(args(checkpoints["ours"], scans["support"], tmp_path / "mask_RPI.nii.gz",
                             [scans["query"], tmp_path / "thin.nii.gz"], tmp_path / "out"))[0]
    reference, = predict.main(args(checkpoints["ours"], scans["support"], scans["mask"],
                                   [scans["query"]], tmp_path / "ref"))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(same))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(reference))))
    assert (f"WARNING: {tmp_path / 'thin.nii.gz'} is only 235 x 2 pixels in-plane after "
            f"resampling") in capsys.readouterr().err


def test_hu_scan_into_an_mr_model_and_mr_into_a_ct_model_stop(checkpoints, scans, ct_dir,
                                                              tmp_path):
    ct = ct_dir / "image_0.nii.gz"
    one_line_error(cli("predict.py", *args(checkpoints["bare"], scans["support"], scans["mask"],
                                           [ct], tmp_path / "out", "--encoder", "tiny")),
                   "predict.py", f"{ct}: expected an MR scan for a checkpoint that records no "
                   f"dataset (MR assumed), found 38.4 % ")
    one_line_error(cli("predict.py", *args(checkpoints["ours"], scans["support"], scans["mask"],
                                           [ct], tmp_path / "out")),
                   "predict.py", f"{ct}: expected an MR scan for this checkpoint (trained on "
                   f"CHAOST2), found 38.4 % "
                   f"of its voxels below -200, air in Hounsfield units (a CT); pass --modality CT")
    assert not (tmp_path / "out").exists()
    state = torch.load(checkpoints["ours"], weights_only=True)
    state["config"] = {**state["config"], "dataset": "SABS"}
    ct_model = save_checkpoint(tmp_path / "ct_model.pth", state)
    liver = sitk.Cast(sitk.ReadImage(str(ct_dir / "label_0.nii.gz")) == 6, sitk.sitkUInt8)
    sitk.WriteImage(liver, str(tmp_path / "liver.nii.gz"))
    one_line_error(cli("predict.py", *args(ct_model, ct, tmp_path / "liver.nii.gz",
                                           [scans["query"]], tmp_path / "out")),
                   "predict.py", f"{scans['query']}: expected a CT scan for this checkpoint "
                   f"(trained on SABS), found only 0.00 % of its voxels below -200")
    # given explicitly, the modality is used, with a loud warning per scan that contradicts it
    forced = cli("predict.py", *args(checkpoints["ours"], ct, tmp_path / "liver.nii.gz",
                                     [scans["query"]], tmp_path / "out", "--modality", "CT"))
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert f"WARNING: {scans['query']}: segmented as CT (--modality), but found only" in \
        forced.stderr
    assert "was trained on CHAOST2 (MR), but these scans are preprocessed as CT" in forced.stderr


def test_checkpoint_of_the_phantom_warns_loudly(checkpoints, scans, tmp_path):
    state = torch.load(checkpoints["ours"], weights_only=True)
    state["config"] = {**state["config"], "dataset": "PHANTOM"}
    phantom = save_checkpoint(tmp_path / "phantom.pth", state)
    done = cli("predict.py", *args(phantom, scans["support"], scans["mask"], [scans["query"]],
                                   tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"WARNING: {phantom} was trained on PHANTOM, the synthetic test data" in done.stderr
    bad = cli("predict.py", *args(phantom, scans["support"], scans["mask"], [scans["query"]],
                                  tmp_path / "out2", "--orientation", "LAR"))
    one_line_error(bad, "predict.py", "--orientation: expected auto, stored or a code of three "
                   "letters")


# ---------------------------------------------------------------- (5) the CLI

def test_cli_end_to_end_with_a_bare_state_dict(checkpoints, scans, tmp_path):
    cmd = [sys.executable, "predict.py", *args(checkpoints["bare"], scans["support"],
                                              scans["mask"], [scans["query"]], tmp_path / "out",
                                              "--encoder", "tiny", "--label", "1",
                                              "--spacing", "1.25", "1.25", "7.7")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "voxels predicted" in done.stdout
    # the loader's decision reaches the user (logging is configured by the entry point)
    assert "INFO inference.loader: " in done.stderr and "a bare state dict" in done.stderr
    pred = sitk.ReadImage(str(tmp_path / "out" / "query_a_pred.nii.gz"))
    assert pred.GetSize() == sitk.ReadImage(str(scans["query"])).GetSize()
    cmd[cmd.index("--support-mask") + 1] = str(tmp_path / "missing_mask.nii.gz")
    failed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert failed.returncode == 2 and "missing_mask.nii.gz" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_the_checkpoints_record_decides_the_preprocessing(checkpoints, scans, tmp_path):
    """A record of 128 x 128 at 2.5 mm is followed (and said); one predict.py cannot honour
    (an unknown intensity rule) stops in one line before anything is written."""
    from data_preprocessing.registry import CHAOST2

    state = torch.load(checkpoints["ours"], weights_only=True)
    record = {**CHAOST2.record(), "name": "MINE", "size": 128,
              "target_spacing": [2.5, 2.5, 7.7]}
    small = save_checkpoint(tmp_path / "small.pth", {**state, "dataset_record": record})
    done = cli("predict.py", *args(small, scans["support"], scans["mask"], [scans["query"]],
                                   tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MR preprocessing as MINE: spacing 2.5x2.5x7.7 mm, 128 x 128" in done.stdout
    pred = sitk.ReadImage(str(tmp_path / "out" / "query_a_pred.nii.gz"))
    assert pred.GetSize() == sitk.ReadImage(str(scans["query"])).GetSize()
    record["intensity"] = {"rule": "histogram_match"}
    odd = save_checkpoint(tmp_path / "odd.pth", {**state, "dataset_record": record})
    one_line_error(cli("predict.py", *args(odd, scans["support"], scans["mask"],
                                           [scans["query"]], tmp_path / "out2")),
                   "predict.py", "the checkpoint's dataset record: expected a preprocessing "
                   "record of the types DatasetInfo declares, found intensity expects one of")
    assert not (tmp_path / "out2").exists()


def test_a_training_run_folder_is_a_checkpoint_too(checkpoints, scans, tmp_path):
    """--checkpoint <run folder> takes the run's newest checkpoint (the one loader's
    resolve_weights): the same mask as naming the file."""
    import shutil

    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    shutil.copy(checkpoints["ours"], run / "snapshots" / "latest.pth")
    by_file, = predict.main(args(checkpoints["ours"], scans["support"], scans["mask"],
                                 [scans["query"]], tmp_path / "file"))
    by_run, = predict.main(args(run, scans["support"], scans["mask"], [scans["query"]],
                                tmp_path / "run_out"))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(by_file))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(by_run))))
