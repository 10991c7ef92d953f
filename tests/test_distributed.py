"""Multi-process training with torchrun on CPU (gloo): one run folder, distinct episodes, resume."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import socket
import torch
import torch.multiprocessing as mp

from conftest import make_phantom_dataset
from dataloaders.episodes import StepSampler
from util import distributed

ROOT = Path(__file__).resolve().parents[1]


def test_ranks_draw_distinct_episode_indices():
    assert list(StepSampler(3, 3)) == [3, 4, 5]
    rank0, rank1 = list(StepSampler(3, 3, stride=2, offset=0)), list(StepSampler(3, 3, 2, 1))
    assert rank0 == [6, 8, 10] and rank1 == [7, 9, 11]
    with pytest.raises(ValueError, match="offset"):
        StepSampler(0, 3, stride=2, offset=2)
    # two episodes per step: each step's pair, the ranks' pairs distinct, none drawn twice
    rank0, rank1 = list(StepSampler(3, 2, 2, 0, per_step=2)), list(StepSampler(3, 2, 2, 1, 2))
    assert rank0 == [12, 13, 16, 17] and rank1 == [14, 15, 18, 19]
    assert StepSampler(0, 0, 2, 1, per_step=2).indices(3) == [14, 15]


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    data = make_phantom_dataset(tmp_path / "data", seed=3, n_slices=5)
    common = ["with", "phantom", "setting1", f"data_dir={data}", "encoder=tiny", "num_workers=0",
              "device=cpu", "print_interval=1", "checkpoint_every=2", f"log_dir={tmp_path / 'exps'}"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", "29533", "training.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(torchrun + common + ["n_steps=6"], cwd=ROOT, env=env,
                           capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = sorted((tmp_path / "exps" / "train").glob("*/[0-9]*"))
    assert len(runs) == 1, runs                      # only rank 0 writes a run folder
    metrics = json.loads((runs[0] / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["train/loss"]["steps"] == [1, 2, 3, 4, 5, 6]
    state = torch.load(runs[0] / "snapshots" / "latest.pth", weights_only=True)
    assert state["step"] == 6
    resumed = subprocess.run(torchrun + common + ["n_steps=8", f"resume={runs[0]}"], cwd=ROOT,
                             env=env, capture_output=True, text=True, encoding="utf-8",
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted((tmp_path / "exps" / "train").glob("*/[0-9]*")) == runs  # same run folder
    steps = json.loads((runs[0] / "metrics.json").read_text(encoding="utf-8"))["train/loss"]["steps"]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]


def _nonfinite_worker(rank: int, port: int, tmp: str) -> None:
    from util import guards  # in the spawned process
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    info, _ = distributed.init(torch.device("cpu"))
    run_dir = Path(distributed.from_main(str(Path(tmp) / f"run_of_rank{rank}"), info))
    loss = torch.tensor(float("nan") if rank == 1 else 0.5)  # rank 1 fails first
    episode = {"scan_id": ["2"], "z": torch.tensor([4]), "superpixel_id": torch.tensor([9])}
    message = "no error"
    try:
        # steps 2, 3, 4 read at once (as training's flush does): step 3 is rank 1's first
        # non-finite one, and rank 0's inf at step 4 comes later
        losses = torch.stack([torch.tensor(0.5), loss, torch.tensor(float("inf"))])
        index = distributed.first_nonfinite(losses, info)
        guards.stop_on_nonfinite(run_dir, 2 + index, {**episode, "step": 2 + index},
                                 losses[index], info)
    except FloatingPointError as err:
        message = str(err)
    finally:
        distributed.shutdown(info)
    (Path(tmp) / f"message{rank}.txt").write_text(message, encoding="utf-8")


def test_nonfinite_loss_on_one_rank_stops_both_and_saves_in_rank0s_folder(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_nonfinite_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    messages = [(tmp_path / f"message{r}.txt").read_text(encoding="utf-8") for r in (0, 1)]
    assert messages[0].startswith("non-finite loss on another rank at step 3")
    assert messages[1].startswith("non-finite loss nan at step 3: scan 2, slice 4, superpixel 9")
    saved = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.pt"))
    assert saved == ["run_of_rank0/nonfinite_episode_step3_rank1.pt"]
    kept = torch.load(tmp_path / saved[0], weights_only=True)
    assert kept["step"] == 3 and kept["episode"]["step"] == 3  # the episode of step 3


def _rank_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes: the children of ``parent`` (by the PPid of
    every process's /proc status), ranked by their environment."""
    out = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines()
                          if ":\t" in line)
            if int(fields.get("PPid", "0").strip()) != parent:
                continue
            env = (status.parent / "environ").read_bytes().split(b"\0")
        except OSError:  # the process ended meanwhile
            continue
        rank = [e for e in env if e.startswith(b"RANK=")]
        if rank:
            out[int(rank[0][5:])] = int(status.parent.name)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """SIGTERM to rank 1 alone: both ranks stop after the same step (they agree on it before
    each step), rank 0 writes the checkpoint of that step and both exit with 128 + SIGTERM;
    no rank waits for the other's gradients."""
    import signal
    import time

    data = make_phantom_dataset(tmp_path / "data", seed=3, n_slices=5)
    log_dir = tmp_path / "exps"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29541", "training.py", "with", "phantom", "setting1",
           f"data_dir={data}", "encoder=tiny", "num_workers=0", "device=cpu", "print_interval=1",
           "n_steps=100000", "checkpoint_every=100000", f"log_dir={log_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8")
    try:
        deadline = time.time() + 240
        metrics = None
        while time.time() < deadline:
            found = list(log_dir.glob("train/*/[0-9]*/metrics.json"))
            if found and "train/loss" in found[0].read_text(encoding="utf-8"):
                metrics = found[0]
                break
            time.sleep(0.5)
        assert metrics is not None, "no step logged in 240 s"
        os.kill(_rank_pids(proc.pid)[1], signal.SIGTERM)
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    run_dir = metrics.parent
    state = torch.load(run_dir / "snapshots" / "latest.pth", weights_only=True)
    logged = json.loads(metrics.read_text(encoding="utf-8"))["train/loss"]["steps"]
    assert state["step"] == logged[-1] > 0
    stopped = [line for line in stderr.splitlines() if "stopped by SIGTERM after step" in line]
    assert len(stopped) == 2, stderr[-3000:]                   # both ranks, the same step
    assert all(f"after step {state['step']};" in line for line in stopped), stopped
    # torchrun names each rank's exit status: the agreed stop, not a crash or a hang
    assert stderr.count(f"exitcode  : {128 + signal.SIGTERM} ") == 2, stderr[-2000:]
