"""validation.py on small checkpoints: both protocols, k-shot, absent organs, geometry, real data."""
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from config_ssl_upload import ex
from conftest import make_phantom_dataset
from data_preprocessing import classmap
from data_preprocessing.contract import register
from data_preprocessing.prepare import link_scans
import training  # noqa: F401  (registers the train command)
import validation  # noqa: F401  (registers the validate command)


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom_val"), seed=1, n_slices=8)


@pytest.fixture(scope="module")
def checkpoint(phantom_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("val_logs")
    run = ex.run("train", named_configs=["phantom", "setting1"], config_updates={
        "data_dir": str(phantom_dir), "log_dir": str(logs), "encoder": "tiny", "num_workers": 0,
        "n_steps": 30, "lr": 1e-2, "device": "cpu", "print_interval": 10})
    return run.result["checkpoint"]


def validate(data_dir, log_dir, checkpoint, named=("phantom",), **extra):
    cfg = {"data_dir": str(data_dir), "log_dir": str(log_dir), "encoder": "tiny",
           "device": "cpu", "reload_model_path": checkpoint, "n_overlay_slices": 2}
    cfg.update(extra)
    return ex.run("validate", config_updates=cfg, named_configs=list(named))


def test_paper_protocol_outputs_and_geometry(phantom_dir, checkpoint, tmp_path):
    run = validate(phantom_dir, tmp_path, checkpoint)
    run_dir = Path(run.result["run_dir"])
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert set(summary["per_organ"]) == {"RK", "LK"} and summary["queries"] == ["1", "2"]
    for organ in ("RK", "LK"):
        assert summary["per_organ"][organ]["dice"]["n"] == 2
        assert 0.0 <= summary["per_organ"][organ]["dice"]["mean"] <= 1.0
    rows = (run_dir / "scores.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("scan,organ,dice,precision,recall,hd95_mm,assd_mm") and len(rows) == 5
    pred = sitk.ReadImage(str(run_dir / "predictions" / "pred_1_RK.nii.gz"))
    image = sitk.ReadImage(str(phantom_dir / "image_1.nii.gz"))
    assert pred.GetSize() == image.GetSize() and pred.GetSpacing() == image.GetSpacing()
    assert pred.GetOrigin() == image.GetOrigin() and pred.GetDirection() == image.GetDirection()
    assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 2}
    assert len(list((run_dir / "overlays").glob("*.png"))) >= 4
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert "val/dice/RK" in metrics


def test_realistic_protocol_scores_every_slice(phantom_dir, checkpoint, tmp_path):
    paper = validate(phantom_dir, tmp_path, checkpoint, save_predictions=False)
    real = validate(phantom_dir, tmp_path, checkpoint, protocol="realistic",
                    save_predictions=False)
    rows = {r.split(",")[0] + r.split(",")[1]: r for r in
            (Path(real.result["run_dir"]) / "scores.csv").read_text(encoding="utf-8").splitlines()[1:]}
    n_slices = [int(r.split(",")[-1]) for r in rows.values()]
    assert all(n == 8 for n in n_slices)          # every slice of the 8-slice scans scored
    paper_rows = (Path(paper.result["run_dir"]) / "scores.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert any(int(r.split(",")[-1]) < 8 for r in paper_rows)


def test_k_shot_uses_several_support_scans(phantom_dir, checkpoint, tmp_path):
    run = validate(phantom_dir, tmp_path, checkpoint, n_shots=2, save_predictions=False)
    summary = json.loads((Path(run.result["run_dir"]) / "summary.json").read_text(encoding="utf-8"))
    assert summary["support"] == ["3", "4"] and summary["queries"] == ["1", "2"]


def test_absent_organ_is_reported_not_a_crash(phantom_dir, checkpoint, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    path = data / "label_2.nii.gz"
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    arr[arr == 3] = 0                               # no left kidney in query scan 2
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path), useCompression=True)
    classmap.write_classmap(data, 1)
    run = validate(data, tmp_path, checkpoint, save_predictions=False)
    summary = json.loads((Path(run.result["run_dir"]) / "summary.json").read_text(encoding="utf-8"))
    assert summary["absent"] == [{"scan": "2", "organ": "LK", "protocol": "paper"}]
    assert summary["per_organ"]["LK"]["dice"]["n"] == 1
    real = validate(data, tmp_path, checkpoint, save_predictions=False, protocol="realistic")
    real_summary = json.loads((Path(real.result["run_dir"]) / "summary.json").read_text(encoding="utf-8"))
    assert real_summary["per_organ"]["LK"]["dice"]["n"] == 2   # scored: false positives count


@pytest.mark.slow
@pytest.mark.parametrize("name,group", [("CHAOST2", 0), ("CMR", 0)])
def test_validation_on_shared_real_scans(name, group, checkpoint, tmp_path, request):
    src = request.getfixturevalue("chaos_dir" if name == "CHAOST2" else "cmr_dir")
    link_scans(src, tmp_path / "data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # 7 CMR scans: scaled folds
        register(tmp_path / "data", name)
    classmap.write_classmap(tmp_path / "data", 1)
    for protocol in ("paper", "realistic"):
        # a phantom-trained checkpoint on real scans: cross-dataset on purpose
        run = validate(tmp_path / "data", tmp_path, checkpoint, named=(name.lower(),),
                       protocol=protocol, label_sets=group, save_predictions=protocol == "paper",
                       cross_dataset=True)
        summary = json.loads((Path(run.result["run_dir"]) / "summary.json").read_text(encoding="utf-8"))
        assert summary["per_organ"] and all(s["dice"]["n"] >= 1
                                            for s in summary["per_organ"].values())
    pred = next((Path(run.result["run_dir"]).parent / "1" / "predictions").glob("*.nii.gz"))
    pid = pred.name.split("_")[1]
    image = sitk.ReadImage(str(tmp_path / "data" / f"image_{pid}.nii.gz"))
    assert sitk.ReadImage(str(pred)).GetSize() == image.GetSize()


def test_the_checkpoint_decides_the_architecture(phantom_dir, checkpoint, tmp_path):
    base = {"data_dir": str(phantom_dir), "log_dir": str(tmp_path), "device": "cpu",
            "reload_model_path": checkpoint, "save_predictions": False}
    # no encoder=tiny given: the checkpoint's own encoder is used
    run = ex.run("validate", config_updates=base, named_configs=["phantom"])
    summary = json.loads((Path(run.result["run_dir"]) / "summary.json").read_text(
        encoding="utf-8"))
    assert summary["encoder"] == "tiny" and summary["steps"] == 30
    # a conflicting value given explicitly stops naming the key and both values
    with pytest.raises(ValueError, match=r"config: encoder='deeplabv3_resnet50' was given, but "
                                         r"the checkpoint .* was trained with encoder='tiny'"):
        ex.run("validate", config_updates={**base, "encoder": "deeplabv3_resnet50"},
               named_configs=["phantom"])
    with pytest.raises(ValueError, match=r"val_wsize=4 was given, but .* val_wsize=2"):
        ex.run("validate", config_updates={**base, "val_wsize": 4}, named_configs=["phantom"])


def test_overlap_on_the_device_equals_the_host_metrics(phantom_dir, checkpoint):
    """Validation during training scores on the device (overlap counts read once per scan,
    no surface distances): every scan and organ's TP / FP / FN and Dice equal those of the full
    host evaluation, with HD95 / ASSD left NaN; a staged set scores the same on a second call."""
    import math

    import torch

    from data_preprocessing.contract import load_dataset
    from inference.evaluate import evaluate, stage
    from inference.loader import build_model, resolve_weights
    from training import validation_set

    ds = load_dataset(phantom_dir)
    weights = resolve_weights(checkpoint, map_location="cpu")
    cfg = {**weights.config, "data_dir": str(phantom_dir)}
    model = build_model(cfg, torch.device("cpu"), weights).eval()
    evalset = validation_set(cfg, ds)
    host = evaluate(model, ds, evalset, torch.device("cpu"), 4)
    staged = stage(evalset, torch.device("cpu"))
    for _ in range(2):
        device = evaluate(model, ds, evalset, torch.device("cpu"), 4, distances=False,
                          staged=staged)
        assert len(device.scores) == len(host.scores) > 0
        for a, b in zip(host.scores, device.scores):
            assert (a.scan, a.organ, a.tp, a.fp, a.fn, a.n_slices) == \
                (b.scan, b.organ, b.tp, b.fp, b.fn, b.n_slices)
            assert a.dice == b.dice and math.isnan(b.hd95_mm) and math.isnan(b.assd_mm)
    assert any(not math.isnan(s.hd95_mm) for s in host.scores)
