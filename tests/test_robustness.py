"""Nothing left behind, nothing silently wrong: real signals on worker pools, degenerate predict
inputs, verify, validation labels, explicit defaults and the last raw messages."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import ROOT, cli, make_phantom_dataset, one_line_error
from data_preprocessing.phantom import write_phantom
from data_preprocessing import superpixels

PREP = "python -m data_preprocessing.prepare"


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found += [int(c) for c in text.split()]
    return found


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def busy_folder(tmp_path_factory) -> Path:
    """10 phantom scans of 256 x 256 x 24: superpixels take several seconds with 2 workers."""
    root = tmp_path_factory.mktemp("busy")
    write_phantom(root, seed=3, size=256, n_slices=24)
    return root


def start_and_catch_workers(args: list[str], folder: Path) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    workers: list[int] = []
    while time.time() < deadline and proc.poll() is None:
        workers = children(proc.pid)
        if len(workers) >= 2 and list(folder.glob(".staging-*")):
            break
        time.sleep(0.05)
    assert proc.poll() is None and len(workers) >= 2, "no worker pool to interrupt"
    time.sleep(0.5)  # the workers are at work
    return proc, workers


def gone_within(pids: list[int], seconds: float = 5.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_pool_in_one_line_and_keeps_the_old_set(busy_folder, signum):
    args = ["-m", "data_preprocessing.superpixels", "--dir", str(busy_folder), "--workers", "2"]
    proc, workers = start_and_catch_workers(args, busy_folder)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, err[-2000:]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"stopped by {signal.Signals(signum).name}" in err
    assert gone_within(workers), [p for p in workers if alive(p)]
    assert not list(busy_folder.glob(".staging-*"))


@pytest.mark.parametrize("command", ["superpixels", "supervoxels"])
def test_kill_9_of_the_parent_takes_its_workers(busy_folder, command):
    args = ["-m", f"data_preprocessing.{command}", "--dir", str(busy_folder), "--workers", "2"]
    proc, workers = start_and_catch_workers(args, busy_folder)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert gone_within(workers), [p for p in workers if alive(p)]


def test_bad_workers_and_a_read_only_folder_are_one_line(tmp_path, monkeypatch):
    from data_preprocessing import classmap
    import util.io

    data = make_phantom_dataset(tmp_path / "ph", size=32, n_slices=3)
    for module in ("superpixels", "supervoxels"):
        one_line_error(cli("-m", f"data_preprocessing.{module}", "--dir", str(data),
                           "--workers", "-2"), f"python -m data_preprocessing.{module}",
                       "--workers: expected a positive number of processes, got -2")

    def read_only(*args, **kwargs):  # what a read-only folder answers (root ignores chmod)
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(util.io.tempfile, "mkstemp", read_only)
    before = sorted(p.name for p in data.iterdir())
    for main in (classmap.main, superpixels.main):
        with pytest.raises(PermissionError, match=r"expected a writable folder \(--dir, the "
                                                  r"dataset folder\)"):
            main(["--dir", str(data)])
    assert sorted(p.name for p in data.iterdir()) == before


# ---------------------------------------------------------------- verify means trainable

def test_verify_requires_a_pseudolabel_set_unless_told(tmp_path):
    from data_preprocessing import classmap

    write_phantom(tmp_path, seed=1, size=32, n_slices=3)
    classmap.write_classmap(tmp_path, 1)
    out = cli("-m", "data_preprocessing.verify", "--dir", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "expected a pseudolabel set to train on, found none" in out.stderr
    assert "--without-pseudolabels" in out.stderr
    out = cli("-m", "data_preprocessing.verify", "--dir", str(tmp_path), "--without-pseudolabels")
    assert out.returncode == 0, out.stderr
    superpixels.generate(tmp_path, workers=1)
    assert cli("-m", "data_preprocessing.verify", "--dir", str(tmp_path)).returncode == 0


# ---------------------------------------------------------------- predict's degenerate inputs

@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from models.alpnet import ALPNet
    from util.checkpoint import save_checkpoint
    from util.seeding import rng_state

    from test_predict import MODEL_CONFIG

    torch.manual_seed(0)
    config = {**MODEL_CONFIG, "dataset": "CHAOST2"}
    return save_checkpoint(tmp_path_factory.mktemp("m") / "m.pth", {
        "model": ALPNet("tiny").state_dict(), "optimizer": {}, "step": 0, "rng": rng_state(),
        "config": config})


def predict(model, support, mask, query, out, *extra):
    return cli("predict.py", "--checkpoint", str(model), "--support", str(support),
               "--support-mask", str(mask), "--query", *map(str, query), "--out", str(out),
               "--device", "cpu", *extra)


def test_predict_refuses_degenerate_inputs(model, chaos_dir, tmp_path):
    support, mask = chaos_dir / "image_8.nii.gz", chaos_dir / "label_8.nii.gz"
    query = chaos_dir / "image_1.nii.gz"
    out = tmp_path / "out"
    # the support image given as its own mask
    for extra in ([], ["--label", "1"]):
        one_line_error(predict(model, support, support, [query], out, *extra), "predict.py",
                       "expected a label map (a few integer values) as the support mask, found")
    # zero and NaN spacing
    img = nib.load(str(query))
    for value, axis in ((0.0, "z"), (float("nan"), "x")):
        bad = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header.copy())
        zooms = list(bad.header.get_zooms())
        zooms[{"x": 0, "z": 2}[axis]] = value
        bad.header.set_zooms(zooms)
        path = tmp_path / f"spacing_{axis}.nii.gz"
        nib.save(bad, str(path))
        one_line_error(predict(model, support, mask, [path], out, "--label", "1"), "predict.py",
                       f"{path}: expected a positive voxel spacing along {axis}")
    # a one-slice query
    one = tmp_path / "one_slice.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(query))[:, :, 15:16], str(one))
    one_line_error(predict(model, support, mask, [one], out, "--label", "1"), "predict.py",
                   f"{one}: expected a query volume of at least 3 slices")
    assert not out.exists()


def test_predict_reads_a_dicom_series_folder_and_refuses_one_slice_file(model, chaos_dir,
                                                                       tmp_path):
    from test_own_scans import write_dicom_series

    image = sitk.Cast(sitk.ReadImage(str(chaos_dir / "image_1.nii.gz"))[:, :, 5:20],
                      sitk.sitkInt16)
    series = tmp_path / "series"
    write_dicom_series(image, series, "MR", "1.2.826.0.1.3680043.2.1125.77")
    support, mask = chaos_dir / "image_8.nii.gz", chaos_dir / "label_8.nii.gz"
    one_line_error(predict(model, support, mask, [series / "slice003.dcm"], tmp_path / "o",
                           "--label", "1"), "predict.py",
                   f"found one DICOM slice; give its series folder {series}")
    done = predict(model, support, mask, [series], tmp_path / "o", "--label", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    pred = sitk.ReadImage(str(tmp_path / "o" / "series_pred.nii.gz"))
    assert pred.GetSize() == image.GetSize()
    write_dicom_series(image, series / "other", "MR", "1.2.826.0.1.3680043.2.1125.78")
    for f in (series / "other").iterdir():
        f.rename(series / f"other_{f.name}")
    one_line_error(predict(model, support, mask, [series], tmp_path / "o2", "--label", "1"),
                   "predict.py", f"{series}: expected one DICOM series as the query image, "
                   f"found 2")


# ---------------------------------------------------------------- validation, explicit keys

def test_validation_refuses_unknown_query_label_values(tmp_path):
    data = make_phantom_dataset(tmp_path / "ph", size=32, n_slices=4)
    meta = json.loads((data / "splits.json").read_text())
    query = meta["folds"][0]["query"][0]
    path = data / f"label_{query}.nii.gz"
    label = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(label)
    arr[0, 0, 0] = 7
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(label)
    sitk.WriteImage(bad, str(path))
    out = cli("validation.py", "with", "phantom", f"data_dir={data}", "encoder=tiny",
              "label_sets=all", "device=cpu", f"log_dir={tmp_path / 'v'}")
    one_line_error(out, "validation.py", f"{path}: expected the label values of")
    assert "found unknown [7]" in out.stderr


def test_an_explicit_default_counts_as_given(model, tmp_path):
    data = make_phantom_dataset(tmp_path / "ph", size=32, n_slices=4)
    out = cli("validation.py", "with", "phantom", f"data_dir={data}", "setting=1",
              f"reload_model_path={model}", "encoder=deeplabv3_resnet101", "device=cpu",
              "cross_dataset=True", f"log_dir={tmp_path / 'v'}")
    one_line_error(out, "validation.py", "encoder")
    assert "deeplabv3_resnet101" in out.stderr and "tiny" in out.stderr


# ---------------------------------------------------------------- the last raw messages

def test_ids_as_written_and_a_zero_spacing_named(chaos_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, pid in (("1", "1"), ("01", "2")):
        for kind in ("image", "label"):
            (src / f"{kind}_{name}.nii.gz").symlink_to(chaos_dir / f"{kind}_{pid}.nii.gz")
    out = cli("-m", "data_preprocessing.prepare", "--dataset", "CHAOST2", "--src", str(src),
              "--dst", str(tmp_path / "dst"), "--workers", "1")
    assert "Warning" not in out.stderr and "re-register the folder" not in out.stderr
    assert "NOTE: CHAOST2: 2 scans are too few for 5 folds" in out.stderr
    cases = json.loads((tmp_path / "dst" / "dataset.json").read_text())["cases"]
    assert sorted(cases) == ["01", "1"]
    # a zero z spacing names the user's image and the axis, before any superpixel is computed
    img = nib.load(str(chaos_dir / "image_3.nii.gz"))
    bad = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header.copy())
    zooms = list(bad.header.get_zooms())
    zooms[2] = 0.0
    bad.header.set_zooms(zooms)
    (src / "image_01.nii.gz").unlink()
    nib.save(bad, str(src / "image_01.nii.gz"))
    out = cli("-m", "data_preprocessing.prepare", "--dataset", "CHAOST2", "--src", str(src),
              "--dst", str(tmp_path / "dst2"), "--workers", "1")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"{src / 'image_01.nii.gz'}: expected a positive voxel spacing along z, found 0" \
        in out.stderr
    assert "label_01" not in out.stderr
    assert not list((tmp_path / "dst2").glob("superpix-*"))


class Evil:
    """Unpickling it would call print: the shape of a crafted checkpoint."""

    def __reduce__(self):
        return (print, ("ran",))


def test_convert_names_the_code_a_crafted_file_would_run(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path)
    out = cli("-m", "util.checkpoint", "--convert", str(path), str(tmp_path / "new.pth"))
    one_line_error(out, "python -m util.checkpoint", "found a reference to print;")
    assert "weights_only=False" not in out.stderr and "ran" not in out.stdout
    assert not (tmp_path / "new.pth").exists()


def test_a_multi_organ_mask_without_label_warns(model, chaos_dir, tmp_path):
    done = predict(model, chaos_dir / "image_8.nii.gz", chaos_dir / "label_8.nii.gz",
                   [chaos_dir / "image_1.nii.gz"], tmp_path / "out")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "label_8.nii.gz holds 4 labels (1, 2, 3, 4); without --label they are merged" in \
        done.stderr
