"""Expected errors at the command line: one line naming the file or key, exit status 2, no
traceback (``--debug`` / ``SSL_DEBUG=1`` bring it back)."""
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import cli, make_phantom_dataset, one_line_error


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    data = make_phantom_dataset(root / "data", seed=5, n_slices=5)
    out = cli("training.py", "with", "phantom", "setting1", f"data_dir={data}", "encoder=tiny",
              "num_workers=0", "device=cpu", "n_steps=1", f"log_dir={root / 'exps'}")
    assert out.returncode == 0, out.stderr[-2000:]
    checkpoint = next((root / "exps").rglob("latest.pth"))
    return {"root": root, "data": data, "checkpoint": checkpoint}


def validate(setup, *extra: str, env: dict | None = None):
    return cli("validation.py", "with", "phantom", "setting1", f"data_dir={setup['data']}",
               "device=cpu", f"log_dir={setup['root'] / 'val'}", "save_predictions=False",
               *extra, env=env)


def predict(setup, query, out_dir):
    """predict.py with the phantom checkpoint, support scan 3 and its liver."""
    data = setup["data"]
    return cli("predict.py", "--checkpoint", str(setup["checkpoint"]), "--support",
               str(data / "image_3.nii.gz"), "--support-mask", str(data / "label_3.nii.gz"),
               "--label", "1", "--query", str(query), "--out", str(out_dir))


def test_config_errors(setup):
    one_line_error(cli("training.py", "with", "quickstart", "n_step=3"), "training.py",
                   "config: unknown key 'n_step'; did you mean 'n_steps'")
    one_line_error(validate(setup, "n_shots=0"), "validation.py",
                   "config: n_shots expects a value >= 1, got 0")
    one_line_error(validate(setup, f"reload_model_path={setup['checkpoint']}",
                            "support_idx=[99]"),
                   "validation.py", "support_idx expects an index into a fold's")


def test_unreadable_checkpoint_and_debug_traceback(setup, tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n", encoding="utf-8")
    one_line_error(validate(setup, f"reload_model_path={text}"), "validation.py",
                   f"{text}: expected a readable torch checkpoint")
    debug = validate(setup, f"reload_model_path={text}", env={"SSL_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr  # SSL_DEBUG: the traceback


def test_checkpoint_of_another_dataset_is_refused(setup, tmp_path):
    state = torch.load(setup["checkpoint"], weights_only=True)
    state["config"]["dataset"] = "CHAOST2"
    other = tmp_path / "chaos_trained.pth"
    torch.save(state, other)
    one_line_error(validate(setup, f"reload_model_path={other}"), "validation.py",
                   "trained on CHAOST2, but the data in")
    assert validate(setup, f"reload_model_path={other}", "cross_dataset=True").returncode == 0


def test_pretrained_keyword_offline_names_the_url_and_the_cache_path(setup, tmp_path):
    """An empty torch hub cache and no route out (a refusing proxy): one line saying where the
    file must go."""
    offline = {"TORCH_HOME": str(tmp_path), "https_proxy": "http://127.0.0.1:9",
               "HTTPS_PROXY": "http://127.0.0.1:9"}
    out = cli("training.py", "with", "phantom", f"data_dir={setup['data']}",
              "encoder=deeplabv3_resnet50", "pretrained_weights=imagenet", "n_steps=1",
              f"log_dir={tmp_path / 'exps'}", env=offline)
    one_line_error(out, "training.py", "pretrained_weights=imagenet: could not download "
                   "https://download.pytorch.org/models/resnet50-0676ba61.pth (")
    assert (f"place it at {tmp_path / 'hub' / 'checkpoints' / 'resnet50-0676ba61.pth'} "
            f"(SHA-256 starting 0676ba61)") in out.stderr
    assert not (tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth").exists()
    assert not (tmp_path / "exps").exists()  # found before a run folder is made
    ours = cli("training.py", "with", "phantom", f"data_dir={setup['data']}",
               "encoder=deeplabv3_resnet50", f"pretrained_weights={setup['checkpoint']}",
               f"log_dir={tmp_path / 'exps'}")
    one_line_error(ours, "training.py", f"{setup['checkpoint']}: expected a torchvision "
                   "DeepLabV3 checkpoint with 'backbone.*' keys or an ImageNet ResNet with "
                   "'conv1.weight' and 'fc.weight', found an SSL-ALPNet checkpoint")
    assert not (tmp_path / "exps").exists()


def test_a_device_this_machine_lacks_makes_no_run_folder(setup, tmp_path):
    device = "cuda" if not torch.cuda.is_available() else "mps"
    for script in ("training.py", "validation.py"):
        out = cli(script, "with", "phantom", f"data_dir={setup['data']}", "encoder=tiny",
                  f"device={device}", f"log_dir={tmp_path / 'exps'}")
        one_line_error(out, script, f"device: {device!r} requested but")
    assert not (tmp_path / "exps").exists()


def test_output_in_the_way_fails_before_computing(setup, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x", encoding="utf-8")
    one_line_error(cli("training.py", "with", "phantom", f"data_dir={setup['data']}",
                       "encoder=tiny", f"log_dir={blocker}"), "training.py",
                   f"{blocker}: expected a folder (log_dir), found a file in the way")
    out = predict(setup, setup["data"] / "image_1.nii.gz", blocker)
    one_line_error(out, "predict.py", f"{blocker}: expected a folder (--out), found a file in "
                                      f"the way")
    one_line_error(cli("-m", "data_preprocessing.phantom", "--out", str(blocker / "sub")),
                   "python -m data_preprocessing.phantom",
                   f"{blocker / 'sub'}: expected a folder (--out), found a file in the way "
                   f"({blocker})")
    one_line_error(cli("-m", "data_preprocessing.prepare", "--dataset", "PHANTOM", "--src",
                       str(setup["data"]), "--dst", str(blocker)),
                   "python -m data_preprocessing.prepare",
                   f"{blocker}: expected a folder (--dst), found a file in the way")
    one_line_error(cli("-m", "data_preprocessing.cmr", "--src", str(setup["data"]), "--dst",
                       str(blocker)), "python -m data_preprocessing.cmr",
                   f"{blocker}: expected a folder (--dst), found a file in the way")
    one_line_error(cli("-m", "data_preprocessing.verify", "--dir", str(blocker)),
                   "python -m data_preprocessing.verify",
                   f"{blocker}: expected a dataset folder, found a file")


def test_read_only_output_folder_fails_before_computing(setup, tmp_path):
    """A folder nobody may write in: a read-only one, or for root (whom permission bits do not
    stop) /sys, which refuses new files even to root."""
    if os.geteuid() == 0:
        locked = Path("/sys")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
    out_dir = locked / "preds"
    data = setup["data"]
    out = predict(setup, data / "image_1.nii.gz", out_dir)
    one_line_error(out, "predict.py", f"{out_dir}: expected a writable folder (--out), cannot "
                                      f"write in {locked} (Permission denied)")
    assert "voxels predicted" not in out.stdout
    one_line_error(cli("training.py", "with", "phantom", f"data_dir={data}", "encoder=tiny",
                       f"log_dir={out_dir}"), "training.py",
                   f"{out_dir}: expected a writable folder (log_dir), cannot write in {locked}")
    assert not out_dir.exists()


def test_two_d_query_is_reported_against_the_file(setup, tmp_path):
    flat = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((64, 64), np.float32), np.eye(4)), flat)
    out = predict(setup, flat, tmp_path / "preds")
    one_line_error(out, "predict.py", f"{flat}: expected a 3-D volume, found a 2-D image of "
                                      f"shape (64, 64)")


def test_nan_voxel_and_zero_byte_file(setup, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(setup["data"], data)
    img = nib.load(data / "image_4.nii.gz")
    arr = np.asanyarray(img.dataobj).astype(np.float32)
    arr[2, 2, 1] = np.inf
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), data / "image_4.nii.gz")
    one_line_error(cli("training.py", "with", "phantom", "setting1", f"data_dir={data}",
                       "encoder=tiny", "num_workers=0", "n_steps=1",
                       f"log_dir={tmp_path / 'exps'}"), "training.py",
                   "image_4.nii.gz: expected finite voxel values, found 1 NaN/inf voxel(s)")
    (data / "label_2.nii.gz").write_bytes(b"")
    out = cli("-m", "data_preprocessing.verify", "--dir", str(data))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "label_2.nii.gz: expected a NIfTI volume, found an empty (zero-byte) file" in out.stderr
    assert "image_4.nii.gz: expected finite voxel values" in out.stderr


def test_an_injected_bug_keeps_its_traceback_and_user_errors_stay_one_line(monkeypatch, setup):
    """Only the user-error family (util.errors) is one line, exit 2: a genuine ValueError,
    KeyError or IndexError deep inside a command propagates (a traceback, exit status 1)."""
    import training
    from config_ssl_upload import KEYS, ex
    from util.runs import run_cli
    from util.cli import run_main
    from util.errors import InputError

    for bug in (ValueError("shape mismatch"), KeyError("missing"), IndexError("out of range")):
        def broken(*args, bug=bug, **kwargs):
            raise bug
        with pytest.raises(type(bug)):
            run_main("prog", broken)
        monkeypatch.setattr(training, "build_episodes", broken)
        with pytest.raises(type(bug)):
            run_cli(ex, KEYS, "train", ["training.py", "with", "phantom", "setting1",
                              f"data_dir={setup['data']}", "encoder=tiny",
                              "num_workers=0", "n_steps=1", "device=cpu",
                              f"log_dir={setup['root'] / 'bug'}"])

    def judged():
        raise InputError("config: n_steps expects int")
    with pytest.raises(SystemExit) as stop:
        run_main("prog", judged)
    assert stop.value.code == 2
