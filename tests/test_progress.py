"""Progress bars show on a terminal (or with SSL_PROGRESS=1) and stay out of logs."""
import io
import os
import subprocess
import sys
from pathlib import Path

from conftest import make_phantom_dataset
from util.cli import progress

ROOT = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_on_a_terminal_and_silent_on_a_pipe(monkeypatch):
    monkeypatch.delenv("SSL_PROGRESS", raising=False)
    tty, pipe = Terminal(), io.StringIO()
    for stream in (tty, pipe):
        for _ in progress(range(5), desc="volumes", file=stream):
            pass
    assert "volumes:" in tty.getvalue() and "/5 [" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_training_bar_with_rate_loss_and_eta_only_when_asked(tmp_path):
    data = make_phantom_dataset(tmp_path / "data", seed=6, n_slices=5)
    args = [sys.executable, "training.py", "with", "phantom", "setting1", f"data_dir={data}",
            "encoder=tiny", "num_workers=0", "device=cpu", "n_steps=60", "print_interval=60"]
    shown = subprocess.run([*args, f"log_dir={tmp_path / 'a'}"], cwd=ROOT, capture_output=True,
                           text=True, encoding="utf-8", timeout=300,
                           env={**os.environ, "SSL_PROGRESS": "1"})
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "training:" in shown.stderr and "step/s" in shown.stderr and "loss=" in shown.stderr
    assert "<00:00" in shown.stderr  # the ETA
    quiet = subprocess.run([*args, f"log_dir={tmp_path / 'b'}"], cwd=ROOT, capture_output=True,
                           text=True, encoding="utf-8", timeout=300,
                           env={**os.environ, "SSL_PROGRESS": ""})
    assert quiet.returncode == 0 and "training:" not in quiet.stderr
    assert "step 60/60" in quiet.stderr  # the log lines stay
