"""Multi-process training with torchrun on CPU (gloo): one run folder, distinct episodes, resume."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_phantom_dataset
from dataloaders.episodes import StepSampler

ROOT = Path(__file__).resolve().parents[1]


def test_ranks_draw_distinct_episode_indices():
    assert list(StepSampler(3, 3)) == [3, 4, 5]
    rank0, rank1 = list(StepSampler(3, 3, stride=2, offset=0)), list(StepSampler(3, 3, 2, 1))
    assert rank0 == [6, 8, 10] and rank1 == [7, 9, 11]
    with pytest.raises(ValueError, match="offset"):
        StepSampler(0, 3, stride=2, offset=2)


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
    state = torch.load(runs[0] / "snapshots" / "latest.pth", weights_only=False)
    assert state["step"] == 6
    resumed = subprocess.run(torchrun + common + ["n_steps=8", f"resume={runs[0]}"], cwd=ROOT,
                             env=env, capture_output=True, text=True, encoding="utf-8",
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = sorted((tmp_path / "exps" / "train").glob("*/[0-9]*"))
    assert len(runs) == 2
    assert json.loads((runs[1] / "metrics.json").read_text(encoding="utf-8"))["train/loss"]["steps"] == [7, 8]
