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
