"""Checkpoints, learning-rate schedule, device resolution, seeding, atomic writes."""
import os

import numpy as np
import pytest
import torch

from dataloaders.episodes import episode_rng
from util.checkpoint import (checkpoint_candidates, find_resume_checkpoint, load_checkpoint,
                             save_checkpoint)
from util.device import resolve_device
from util.io import atomic_path, write_json
from util.schedule import lr_at


def _state(step):
    model = torch.nn.Linear(2, 1)
    return {"model": model.state_dict(), "optimizer": {}, "step": step, "config": {"a": 1}}


def test_lr_is_a_pure_function_of_the_step():
    assert lr_at(0) == 1e-3
    assert lr_at(999) == 1e-3
    assert lr_at(1000) == pytest.approx(1e-3 * 0.95)
    for k in (5, 42, 99):
        assert lr_at(k * 1000 + 17) == pytest.approx(1e-3 * 0.95 ** k)
    assert lr_at(99999) == pytest.approx(6.23e-6, rel=1e-3)    # the original's final lr
    with pytest.raises(ValueError, match="step_size"):
        lr_at(5, step_size=0)


def test_checkpoint_roundtrip_and_newest_first(tmp_path):
    snap = tmp_path / "snapshots"
    save_checkpoint(snap / "10.pth", _state(10))
    save_checkpoint(snap / "20.pth", _state(20))
    save_checkpoint(snap / "latest.pth", _state(25))
    save_checkpoint(snap / "5.pth", _state(5))
    assert [p.name for p in checkpoint_candidates(tmp_path)] == ["latest.pth", "20.pth", "10.pth",
                                                                 "5.pth"]
    path, state = find_resume_checkpoint(tmp_path)
    assert path.name == "latest.pth" and state["step"] == 25 and state["format_version"] == 1
    assert not [p for p in snap.iterdir() if p.name.startswith(".")]   # no temp files left


def test_truncated_checkpoint_is_rejected_and_previous_used(tmp_path, caplog):
    snap = tmp_path / "snapshots"
    save_checkpoint(snap / "10.pth", _state(10))
    save_checkpoint(snap / "20.pth", _state(20))
    save_checkpoint(snap / "latest.pth", _state(20))
    for name in ("20.pth", "latest.pth"):
        data = (snap / name).read_bytes()
        (snap / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="latest.pth: expected a readable torch checkpoint"):
        load_checkpoint(snap / "latest.pth")
    path, state = find_resume_checkpoint(tmp_path)  # a log line names each damaged one
    assert [r.levelname for r in caplog.records if "skipping damaged" in r.message] == [
        "WARNING", "WARNING"]
    assert "20.pth" in caplog.text
    assert path.name == "10.pth" and state["step"] == 10


def test_explicit_missing_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        find_resume_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="expected a run folder"):
        find_resume_checkpoint(tmp_path / "missing_run")
    with pytest.raises(FileNotFoundError, match="loadable checkpoint"):
        find_resume_checkpoint(tmp_path)
    torch.save({"weight": torch.zeros(1)}, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="bare state dict"):
        load_checkpoint(tmp_path / "bare.pth")


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "x.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial", encoding="utf-8")
            raise RuntimeError("killed")
    assert target.read_text(encoding="utf-8").strip().startswith("{") and '"v": 1' in target.read_text(encoding="utf-8")
    assert os.listdir(tmp_path) == ["x.json"]


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    want = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    assert resolve_device("auto").type == want
    with pytest.raises(ValueError, match="expected one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available here; use device=auto or "
                                             "device=cpu"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match=r"^--device: 'cuda' requested but CUDA is not "
                                             r"available here; use --device auto or --device cpu"):
            resolve_device("cuda", flag="--device")


def test_episode_rng_depends_on_seed_and_index_only():
    a = episode_rng(1234, 7).random(3)
    assert np.array_equal(a, episode_rng(1234, 7).random(3))
    assert not np.array_equal(a, episode_rng(1234, 8).random(3))
    assert not np.array_equal(a, episode_rng(1235, 7).random(3))


def test_auto_switches_follow_the_hardware(monkeypatch):
    from util import device as dev

    cpu = torch.device("cpu")
    assert dev.resolve_switch("bf16", True, cpu) is True
    assert dev.resolve_switch("channels_last", False, cpu) is False
    with pytest.raises(ValueError, match="bf16 expects True, False or 'auto', got 'yes'"):
        dev.resolve_switch("bf16", "yes", cpu)
    monkeypatch.setattr(dev, "cpu_flags", lambda: frozenset({"avx2", "fma"}))  # AVX2-only host
    assert not dev.resolve_switch("bf16", "auto", cpu)  # emulated bf16: never chosen
    assert not dev.resolve_switch("channels_last", "auto", cpu)
    monkeypatch.setattr(dev, "cpu_flags",
                        lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert dev.resolve_switch("channels_last", "auto", cpu)
    assert dev.resolve_switch("bf16", "auto", cpu) == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN held to AVX2 kernels
    assert not dev.resolve_switch("bf16", "auto", cpu)
    assert not dev.resolve_switch("channels_last", "auto", cpu)
    assert not dev.resolve_switch("bf16", "auto", torch.device("mps"))


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    from inference.loader import read_weights

    marker = tmp_path / "pwned.txt"
    bad = tmp_path / "snapshot.pth"
    torch.save({"format_version": 1, "model": {}, "optimizer": {}, "step": 1,
                "extra": _Payload(marker)}, bad)
    with pytest.raises(ValueError, match=r"snapshot\.pth: expected .* refused \(the file may run "
                                         r"code\)"):
        load_checkpoint(bad)
    with pytest.raises(ValueError, match="refused"):
        read_weights(bad)  # validation, predict and pretrained weights go through here
    torch.save(_Payload(marker), tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="refused"):
        read_weights(tmp_path / "bare.pth")
    assert not marker.exists(), "the pickle's code ran"


def test_a_text_file_named_pth_is_a_clear_error(tmp_path):
    from inference.loader import read_weights

    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"notes\.pth: expected a readable torch checkpoint "
                                         r"\(a checkpoint, saved with torch\.save\), found "
                                         r"something else"):
        read_weights(text)


def test_a_folder_or_a_torchvision_file_as_checkpoint_is_named_for_what_it_is(tmp_path):
    from torchvision.models import resnet18

    from inference.loader import read_weights

    with pytest.raises(FileNotFoundError, match=r"expected a checkpoint file \(ours or the "
                                                r"original code's\), found a folder"):
        read_weights(tmp_path)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pth: expected a readable torch checkpoint "
                                         r"\(a checkpoint\), found an empty \(zero-byte\) file"):
        read_weights(empty)
    trunk = tmp_path / "resnet.pth"
    torch.save(resnet18().state_dict(), trunk)
    with pytest.raises(ValueError, match=r"resnet\.pth: expected an SSL-ALPNet checkpoint "
                                         r"\(keys 'encoder\.\*'\), found a torchvision ResNet "
                                         r"file: that is a start for training"):
        read_weights(trunk)


@pytest.mark.parametrize("shape, found", [
    ((8, 8, 4, 1, 2), "found a 3-D image with 2 components per voxel (shape (8, 8, 4, 1, 2))"),
    ((8, 8, 4, 3), "found a 4-D image of shape (8, 8, 4, 3)"),
    ((8, 8), "found a 2-D image of shape (8, 8)")])
def test_volumes_of_other_dimensions_are_named(tmp_path, shape, found):
    import nibabel as nib

    from util.io import read_image

    path = tmp_path / "odd.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), path)
    with pytest.raises(ValueError) as err:
        read_image(path)
    assert str(err.value).startswith(f"{path}: expected a 3-D volume")
    assert found in str(err.value)


def test_checkpoints_with_numpy_values_convert_to_safe_ones(tmp_path):
    import numpy as np

    from util.checkpoint import convert

    old = tmp_path / "old.pth"
    torch.save({"format_version": 1, "model": {"w": torch.ones(2)}, "optimizer": {}, "step": 3,
                "rng": {"numpy": np.arange(4, dtype=np.uint32), "pos": np.int64(7)}}, old)
    with pytest.raises(ValueError, match=r"old\.pth: .*converts with `python -m "
                                         r"util\.checkpoint --convert"):
        load_checkpoint(old)
    convert(old, tmp_path / "new.pth")
    state = load_checkpoint(tmp_path / "new.pth")
    assert torch.equal(state["rng"]["numpy"], torch.arange(4, dtype=torch.int32).to(torch.uint32)) \
        or state["rng"]["numpy"].tolist() == [0, 1, 2, 3]
    assert state["rng"]["pos"] == 7 and state["step"] == 3


def test_resolve_weights_is_the_one_way_from_a_name_to_weights(tmp_path):
    """Nothing, latest / best of the newest run, a run folder, a file of ours, the original's
    bare state dict; resume takes ours only."""
    from inference.loader import NO_WEIGHTS, resolve_weights

    runs = tmp_path / "train" / "exp"
    for run_id, step in (("1", 7), ("2", 9)):
        save_checkpoint(runs / run_id / "snapshots" / "latest.pth", _state(step))
    save_checkpoint(runs / "1" / "snapshots" / "best.pth", _state(5))
    assert resolve_weights(None) is NO_WEIGHTS and resolve_weights("") is NO_WEIGHTS
    assert resolve_weights("latest", runs=runs).step == 9  # the newest run
    with pytest.raises(FileNotFoundError, match=r"2/snapshots/best.pth: expected the best"):
        resolve_weights("best", runs=runs)  # the newest run has none
    with pytest.raises(FileNotFoundError, match="expected a checkpoint file"):
        resolve_weights("latest")  # no runs to look in: a file name like any other
    by_folder = resolve_weights(runs / "1")
    assert (by_folder.kind, by_folder.step) == ("ours", 7)
    assert by_folder.training["optimizer"] == {}  # resume needs the whole checkpoint
    by_file = resolve_weights(runs / "1" / "snapshots" / "best.pth")
    assert (by_file.kind, by_file.step, by_file.config) == ("ours", 5, {"a": 1})
    bare = tmp_path / "bare.pth"
    torch.save(torch.nn.Linear(2, 1).state_dict(), bare)
    assert resolve_weights(bare).kind == "original"
    with pytest.raises(ValueError, match="expected a training checkpoint with a format_version"):
        resolve_weights(bare, purpose="resume")


def test_stop_requests_are_the_training_process_s_alone():
    """A signal sets ``signum`` once and logs once; a process forked inside the block (a loader
    worker) neither records nor logs it, so one SIGTERM to the group gives one warning."""
    import logging
    import signal
    from util.guards import StopRequests

    log = logging.getLogger("test.stops")
    with StopRequests(log) as stops:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: the handler it inherited must ignore the signal
            os.close(read)
            os.kill(os.getpid(), signal.SIGTERM)
            os.write(write, b"none" if stops.signum is None else b"set")
            os._exit(0)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        assert os.read(read, 16) == b"none" and os.waitstatus_to_exitcode(status) == 0
        assert stops.signum is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stops.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is not stops._handle  # restored


def test_host_reads_are_caught_or_counted_on_the_cpu():
    from util.device import host_reads, no_host_reads

    cpu = torch.device("cpu")
    big, flags = torch.rand(10, 10), torch.tensor([True, False, True])
    with no_host_reads(cpu):
        assert flags.tolist() == [True, False, True]   # a host tensor read as a list: no operation
        (big * 2).sum()                                # arithmetic reads nothing
    for read in (lambda: big.sum().item(), lambda: bool(big.sum() > 0),
                 lambda: big[big > 0.5], lambda: big.nonzero(), lambda: flags.nonzero()):
        with pytest.raises(AssertionError, match="host read"):
            with no_host_reads(cpu):
                read()
    with host_reads(cpu, forbid=False) as count:
        big.sum().item()
        big[big > 0.5]
    assert count.n == 2
