"""training.py end to end on small inputs: logs, checkpoints, determinism, kill and resume, errors."""
import json
import re
import os
import signal
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from config_ssl_upload import ex
from util.errors import InputError
from conftest import make_phantom_dataset
import training  # noqa: F401  (registers the train command)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), seed=0, n_slices=5)


def small(data_dir, log_dir, **extra):
    cfg = {"data_dir": str(data_dir), "log_dir": str(log_dir), "encoder": "tiny",
           "num_workers": 0, "n_steps": 6, "print_interval": 1, "image_every": 3,
           "checkpoint_every": 2, "save_snapshot_every": 4, "deterministic": True,
           "lr": 1e-2, "device": "cpu"}
    cfg.update(extra)
    return cfg


def run_train(cfg, named=("phantom", "setting1")):
    return ex.run("train", config_updates=cfg, named_configs=list(named))


def losses(run_dir):
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
    return dict(zip(metrics["train/loss"]["steps"], metrics["train/loss"]["values"]))


def test_train_writes_a_complete_run_folder(phantom_dir, tmp_path):
    run = run_train(small(phantom_dir, tmp_path))
    run_dir = Path(run.observers[0].dir)
    assert run.result["step"] == 6
    for name in ("config.json", "metrics.json", "run.json"):
        assert (run_dir / name).is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    for tag in ("train/loss", "train/align_loss", "train/lr", "train/empty_prototype_sets"):
        assert metrics[tag]["steps"] == [1, 2, 3, 4, 5, 6]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    state = torch.load(run_dir / "snapshots" / "latest.pth", weights_only=True)
    assert state["step"] == 6 and state["config"]["encoder"] == "tiny"
    from dataclasses import replace

    from data_preprocessing.registry import PHANTOM, DatasetInfo
    assert DatasetInfo.from_record(state["dataset_record"]) == replace(PHANTOM, size=64)
    assert (run_dir / "snapshots" / "4.pth").is_file()
    # a second run in the same process gets its own folder and observer
    run2 = run_train(small(phantom_dir, tmp_path, n_steps=2))
    assert Path(run2.observers[0].dir) != run_dir and len(run2.observers) == 1


def test_same_seed_same_losses_on_cpu(phantom_dir, tmp_path):
    a = losses(run_train(small(phantom_dir, tmp_path / "a")).observers[0].dir)
    b = losses(run_train(small(phantom_dir, tmp_path / "b")).observers[0].dir)
    c = losses(run_train(small(phantom_dir, tmp_path / "c", seed=7)).observers[0].dir)
    assert a == b
    assert a != c


def test_setting2_and_manual_label_training_run(phantom_dir, tmp_path):
    run = run_train(small(phantom_dir, tmp_path, n_steps=2), named=("phantom", "setting2"))
    assert run.config["exclude_labels"] is None  # derived when the run starts, from dataset.json
    saved = torch.load(Path(run.observers[0].dir) / "snapshots" / "latest.pth",
                       weights_only=True)["config"]
    assert saved["exclude_labels"] == [2, 3]
    run = run_train(small(phantom_dir, tmp_path, n_steps=2, min_fg_px=10),
                    named=("phantom", "manual"))
    assert run.result["step"] == 2
    run = run_train(small(phantom_dir, tmp_path, n_steps=2, which_aug="none"))
    assert run.result["step"] == 2       # without augmentation


def test_empty_prototypes_skip_makes_no_update(phantom_dir, tmp_path):
    """With bg_thresh=1 no background window passes (the test is > 1): every step has an empty
    local set.
    empty_prototypes='skip' (the original) then never updates the weights; 'fallback' does."""
    def parameters(run):
        state = torch.load(Path(run.observers[0].dir) / "snapshots" / "latest.pth",
                           weights_only=True)["model"]
        return {k: v for k, v in state.items()
                if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}

    def skipped(run):
        metrics = json.loads((Path(run.observers[0].dir) / "metrics.json").read_text("utf-8"))
        return metrics["train/skipped_steps"]["values"]

    one = run_train(small(phantom_dir, tmp_path / "a", n_steps=1, bg_thresh=1.0,
                          empty_prototypes="skip"))
    three = run_train(small(phantom_dir, tmp_path / "b", n_steps=3, bg_thresh=1.0,
                            empty_prototypes="skip"))
    fallback = run_train(small(phantom_dir, tmp_path / "c", n_steps=3, bg_thresh=1.0))
    a, b, c = parameters(one), parameters(three), parameters(fallback)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(b[k], c[k]) for k in b)
    assert skipped(three) == [1.0, 1.0, 1.0] and skipped(fallback) == [0.0, 0.0, 0.0]


def test_resume_continues_at_the_same_step_and_lr(phantom_dir, tmp_path):
    full = losses(run_train(small(phantom_dir, tmp_path / "full", n_steps=8, lr_step_size=3))
                  .observers[0].dir)
    first = run_train(small(phantom_dir, tmp_path / "part", n_steps=4, lr_step_size=3))
    resumed = run_train(small(phantom_dir, tmp_path / "part", n_steps=8, lr_step_size=3,
                              resume=first.observers[0].dir))
    assert resumed.info["resumed_from"].endswith("latest.pth")
    # the resumed run goes on in the same folder: one metrics.json, steps 1..8, events appended
    run_dir = Path(first.observers[0].dir)
    assert Path(resumed.observers[0].dir) == run_dir
    assert sorted(p.name for p in (tmp_path / "part" / "train").glob("*/[0-9]*")) == [run_dir.name]
    tail = losses(run_dir)
    assert sorted(tail) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert all(tail[s] == pytest.approx(full[s], rel=1e-5) for s in tail)
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert (run_dir / "run.1.json").is_file() and (run_dir / "run.json").is_file()
    # a refused resume leaves the run's records as they were; each attempt keeps its own record
    kept = {n: (run_dir / n).read_bytes() for n in ("config.json", "info.json", "run.json")}
    for attempt in (1, 2):
        with pytest.raises(ValueError, match="resuming needs the same 'which_aug'"):
            run_train(small(phantom_dir, tmp_path / "part", n_steps=8, lr_step_size=3,
                            which_aug="aug_v3", resume=first.observers[0].dir))
        assert {n: (run_dir / n).read_bytes() for n in kept} == kept
        assert (run_dir / f"run.{attempt}.resume_failed.json").is_file()
    lr = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["train/lr"]
    # the lr logged at step s is the one of update s - 1: 0.01 * 0.95 ** ((s - 1) // 3)
    assert lr["values"][4:] == pytest.approx([1e-2 * 0.95, 1e-2 * 0.95, 1e-2 * 0.95 ** 2,
                                              1e-2 * 0.95 ** 2])


def test_truncated_latest_falls_back_to_previous_snapshot(phantom_dir, tmp_path, caplog):
    first = run_train(small(phantom_dir, tmp_path, n_steps=6))
    latest = Path(first.observers[0].dir) / "snapshots" / "latest.pth"
    latest.write_bytes(latest.read_bytes()[:1000])
    resumed = run_train(small(phantom_dir, tmp_path, n_steps=6, resume=str(latest.parent.parent)))
    assert "skipping damaged checkpoint" in caplog.text
    assert resumed.info["resumed_from"].endswith("4.pth")
    metrics = json.loads((latest.parent.parent / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["train/loss"]["steps"] == [1, 2, 3, 4, 5, 6, 5, 6]  # 5, 6 trained again


def test_clear_errors(phantom_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth: expected a checkpoint file"):
        run_train(small(phantom_dir, tmp_path, resume=str(tmp_path / "nope.pth")))
    with pytest.raises(FileNotFoundError, match="missing_dir: expected a dataset folder"):
        run_train(small(tmp_path / "missing_dir", tmp_path))
    with pytest.raises(FileNotFoundError, match="coco.pth"):
        run_train(small(phantom_dir, tmp_path, encoder="deeplabv3_resnet50",
                        pretrained_weights=str(tmp_path / "coco.pth")))
    with pytest.raises(ValueError, match="n_steps expects int, got 2.5"):
        run_train(small(phantom_dir, tmp_path, n_steps=2.5))
    from sacred.utils import ConfigAddedError

    with pytest.raises(ConfigAddedError, match="Added new config entry"):
        run_train({**small(phantom_dir, tmp_path), "n_step": 3})
    with pytest.raises(ValueError, match="expected dataset 'CHAOST2'"):
        run_train(small(phantom_dir, tmp_path), named=("chaost2",))


def test_cli_suggests_the_key_meant(tmp_path):
    out = subprocess.run([sys.executable, "training.py", "with", "quickstart", "n_step=3"],
                         cwd=ROOT, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert out.returncode == 2
    assert "unknown key 'n_step'; did you mean 'n_steps'" in out.stderr


def test_nonfinite_loss_stops_and_saves_the_episode(phantom_dir, tmp_path, monkeypatch):
    """The losses are read at intervals (here every 4 steps) and before each checkpoint (every
    2): the run stops at the first non-finite step, saves the episode it trained on and keeps
    no checkpoint of later weights."""
    real = training.weighted_cross_entropy
    targets = []

    def poisoned(logits, target, weights):
        targets.append(target.clone())
        loss = real(logits, target, weights)
        return loss * float("nan") if len(targets) == 3 else loss
    monkeypatch.setattr(training, "weighted_cross_entropy", poisoned)
    # the third episode is step 3, as the log counts steps
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 3: scan \d+, "
                                                 r"slice \d+, superpixel \d+"):
        run_train(small(phantom_dir, tmp_path, print_interval=4))
    assert len(targets) == 4  # found at step 4's checkpoint
    saved = list(Path(tmp_path).rglob("nonfinite_episode_step3.pt"))
    assert len(saved) == 1
    episode = torch.load(saved[0], weights_only=True)["episode"]
    assert torch.equal(episode["query_labels"][0], targets[2])  # the one trained at step 3
    latest = torch.load(saved[0].parent / "snapshots" / "latest.pth", weights_only=True)
    assert latest["step"] == 2 and all(torch.isfinite(v).all()
                                       for v in latest["model"].values() if v.is_floating_point())


def test_the_last_partial_window_reaches_metrics_json(phantom_dir, tmp_path):
    run = run_train(small(phantom_dir, tmp_path, n_steps=6, print_interval=4))
    metrics = json.loads((Path(run.observers[0].dir) / "metrics.json").read_text(
        encoding="utf-8"))
    assert metrics["train/loss"]["steps"] == [4, 6]  # means of steps 1-4, then of 5-6
    assert metrics["train/lr"]["values"] == pytest.approx([1e-2, 1e-2])


def cli_run_args(phantom_dir, n_steps: int, checkpoint_every: int) -> list[str]:
    """training.py arguments of the kill / signal tests (deterministic, a loss every step)."""
    return ["with", "phantom", "setting1", f"data_dir={phantom_dir}", "encoder=tiny",
            "num_workers=0", f"n_steps={n_steps}", "print_interval=1",
            f"checkpoint_every={checkpoint_every}", "deterministic=True", "device=cpu",
            "lr=0.01", "image_every=1000"]


def uninterrupted_run(args: list[str], log_dir: Path, env: dict) -> Path:
    """Run training to the end in a subprocess; its run folder."""
    full = subprocess.run([sys.executable, "training.py", *args, f"log_dir={log_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, encoding="utf-8",
                          timeout=900)
    assert full.returncode == 0, full.stderr[-2000:]
    return next(log_dir.rglob("metrics.json")).parent


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(phantom_dir, tmp_path):
    args = cli_run_args(phantom_dir, n_steps=40, checkpoint_every=5)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full_run = uninterrupted_run(args, tmp_path / "full", env)

    proc = subprocess.Popen([sys.executable, "training.py", *args,
                             f"log_dir={tmp_path / 'killed'}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    latest = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "killed").rglob("snapshots/latest.pth"))
        if found:
            latest = found[0]
            break
        time.sleep(0.05)
    assert latest is not None and proc.poll() is None, "training ended before a checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_run = latest.parent.parent
    step = torch.load(latest, weights_only=True)["step"]
    assert 5 <= step < 40

    resumed = subprocess.run([sys.executable, "training.py", *args, f"resume={killed_run}",
                              f"log_dir={tmp_path / 'resumed'}"], cwd=ROOT, env=env,
                             capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not (tmp_path / "resumed").exists()  # it went on in the killed run's folder
    metrics = json.loads((killed_run / "metrics.json").read_text(encoding="utf-8"))["train/loss"]
    resumed_part = dict(zip(metrics["steps"][-(40 - step):], metrics["values"][-(40 - step):]))
    reference = losses(full_run)
    assert sorted(resumed_part) == list(range(step + 1, 41))
    assert all(resumed_part[s] == pytest.approx(reference[s], rel=1e-5) for s in resumed_part)


def test_validation_during_training_keeps_the_losses_and_writes_the_curve(phantom_dir, tmp_path):
    import csv

    import validation  # noqa: F401  (registers the validate command)

    plain = run_train(small(phantom_dir, tmp_path / "plain"))
    run = run_train(small(phantom_dir, tmp_path / "val", val_every=4))  # at 4 and at the end (6)
    run_dir = Path(run.observers[0].dir)
    assert losses(run_dir) == losses(plain.observers[0].dir)  # the training stream is unchanged
    with open(run_dir / "val_curve.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted({int(r["step"]) for r in rows}) == [4, 6]
    organs = {r["organ"] for r in rows}
    assert organs == {"LIVER", "RK", "LK", "SPLEEN", "mean"}  # Setting 1: every label group
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert (run_dir / "val_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["val/dice/mean"]["steps"] == [4, 6]
    means = {int(r["step"]): float(r["dice"]) for r in rows if r["organ"] == "mean"}
    assert metrics["val/dice/mean"]["values"] == pytest.approx([means[4], means[6]])
    best = torch.load(run_dir / "snapshots" / "best.pth", weights_only=True)
    assert best["step"] == max(means, key=means.get)
    assert best["best_val"]["mean"] == pytest.approx(max(means.values()))
    # reload_model_path=best evaluates that checkpoint and gives the same scores
    group = ex.run("validate", named_configs=["phantom", "setting1"], config_updates={
        **{k: v for k, v in small(phantom_dir, tmp_path / "val").items()
           if k not in ("n_steps", "print_interval", "image_every", "checkpoint_every",
                        "save_snapshot_every")},
        "reload_model_path": "best", "label_sets": 0, "save_predictions": False})
    assert group.result["run_dir"]
    for organ, dice in group.result["dice"].items():
        at_best = [float(r["dice"]) for r in rows
                   if r["organ"] == organ and int(r["step"]) == best["step"]]
        assert dice == pytest.approx(at_best[0], abs=1e-9)


def test_setting2_validates_its_own_group(phantom_dir, tmp_path):
    run = run_train(small(phantom_dir, tmp_path, n_steps=2, val_every=2),
                    named=("phantom", "setting2"))
    with open(Path(run.observers[0].dir) / "val_curve.csv", encoding="utf-8") as fh:
        organs = {line.split(",")[1] for line in fh.read().splitlines()[1:]}
    assert organs == {"RK", "LK", "mean"}


def test_auto_precision_and_layout_are_recorded_as_chosen(phantom_dir, tmp_path):
    from util.device import channels_last_pays, native_bf16

    run = run_train(small(phantom_dir, tmp_path, n_steps=2, bf16="auto", channels_last="auto"))
    saved = torch.load(Path(run.observers[0].dir) / "snapshots" / "latest.pth",
                       weights_only=True)["config"]
    cpu = torch.device("cpu")
    assert saved["bf16"] is native_bf16(cpu)
    assert saved["channels_last"] is channels_last_pays(cpu)
    with pytest.raises(ValueError, match=r"bf16 expects one of \[True, False, 'auto'\], got 'on'"):
        run_train(small(phantom_dir, tmp_path, n_steps=2, bf16="on"))


def test_a_failed_run_folder_is_marked(phantom_dir, tmp_path, monkeypatch):
    def bad_data(*args, **kwargs):  # an error found once the run (and its folder) exists
        raise InputError("data: a scan that cannot be read")
    monkeypatch.setattr(training, "build_episodes", bad_data)
    with pytest.raises(ValueError, match="a scan that cannot be read"):
        run_train(small(phantom_dir, tmp_path))
    folders = list((tmp_path / "train").glob("*/[0-9]*"))
    assert len(folders) == 1
    assert "a scan that cannot be read" in (folders[0] / "FAILED").read_text(encoding="utf-8")
    assert json.loads((folders[0] / "run.json").read_text(encoding="utf-8"))["status"] == "FAILED"


def test_unstartable_runs_make_no_run_folder(phantom_dir, tmp_path):
    for extra, error, message in (
            ({"label_sets": "all"}, ValueError, "label_sets='all' is for validation"),
            ({"resume": str(tmp_path / "nope")}, FileNotFoundError, "nope: expected a checkpoint")):
        with pytest.raises(error, match=message):
            run_train(small(phantom_dir, tmp_path, **extra))
    assert not (tmp_path / "train").exists()


@pytest.mark.slow
def test_sigterm_checkpoints_marks_interrupted_and_resumes_exactly(phantom_dir, tmp_path):
    args = cli_run_args(phantom_dir, n_steps=300, checkpoint_every=1000)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = losses(uninterrupted_run(args, tmp_path / "full", env))

    proc = subprocess.Popen([sys.executable, "training.py", *args,
                             f"log_dir={tmp_path / 'stopped'}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if list((tmp_path / "stopped").rglob("tensorboard/events.out.tfevents.*")):
            time.sleep(0.3)  # a few steps in
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before the signal"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "stopped by SIGTERM after step" in stderr and "Traceback" not in stderr
    run_dir = next((tmp_path / "stopped").rglob("run.json")).parent
    assert json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["status"] == \
        "INTERRUPTED"
    step = torch.load(run_dir / "snapshots" / "latest.pth", weights_only=True)["step"]
    assert 1 <= step < 300  # checkpoint_every=1000: written because of the signal
    resumed = subprocess.run([sys.executable, "training.py", *args, f"resume={run_dir}"],
                             cwd=ROOT, env=env, capture_output=True, text=True,
                             encoding="utf-8", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["train/loss"]
    got = dict(zip(metrics["steps"], metrics["values"]))
    assert sorted(got) == list(range(1, 301))  # nothing lost, nothing repeated
    assert len(metrics["steps"]) == 300
    assert all(got[s] == pytest.approx(reference[s], rel=1e-5) for s in got)
    # log.txt holds both segments: the stop, the resume and the end
    log = (run_dir / "log.txt").read_text(encoding="utf-8")
    assert "SIGTERM: stopping after this step" in log and "resumed from" in log
    assert log.index("SIGTERM") < log.index("resumed from") < log.index("finished at step 300")


def test_quiet_terminal_full_log_txt_and_the_code_version_recorded(phantom_dir, tmp_path):
    """--quiet leaves the terminal to warnings; the run folder's log.txt has the INFO lines
    with dates; run.json and the checkpoint record the code version (a git checkout here)."""
    args = cli_run_args(phantom_dir, n_steps=2, checkpoint_every=1000)
    out = subprocess.run([sys.executable, "training.py", "--quiet", *args,
                          f"log_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                         encoding="utf-8", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert " INFO " not in out.stderr and "finished at step" not in out.stderr
    run_dir = next(tmp_path.rglob("run.json")).parent
    log = (run_dir / "log.txt").read_text(encoding="utf-8")
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO \S+: finished at step 2",
                     log, re.M), log[-2000:]
    assert not (run_dir / "cout.txt").exists()  # sacred's capture is off: no empty file
    version = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["meta"][
        "code_version"]
    assert len(version["commit"]) == 40 and isinstance(version["dirty"], bool)
    saved = torch.load(run_dir / "snapshots" / "latest.pth", weights_only=True)
    assert saved["code_version"] == version


@pytest.mark.slow
def test_a_second_signal_stops_at_once(tmp_path):
    """SIGTERM asks for a stop after the step; a SIGINT while that step still runs (ResNet-50 at
    256 x 256: about a second per step on 2 cores) ends the process there, with 128 + SIGINT,
    without finishing the step or writing the checkpoint."""
    data = make_phantom_dataset(tmp_path / "data", seed=0, size=256, n_slices=5)
    proc = subprocess.Popen(
        [sys.executable, "training.py", "with", "phantom", "setting1", f"data_dir={data}",
         "encoder=deeplabv3_resnet50", "num_workers=0", "n_steps=1000", "print_interval=1",
         "checkpoint_every=1000", "image_every=1000", "device=cpu",
         f"log_dir={tmp_path / 'exps'}"], cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr], daemon=True).start()

    def wait_for(text: str, seen: list) -> None:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                assert proc.poll() is None, "".join(seen)[-2000:]
                continue
            if text in seen[-1]:
                return
        raise AssertionError(f"no {text!r} in: {''.join(seen)[-2000:]}")

    before: list = []
    wait_for("step 1/1000", before)  # one step done, the next running
    proc.send_signal(signal.SIGTERM)
    wait_for("stopping after this step", before)
    steps_logged = sum("step " in ln and "/1000" in ln for ln in before)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 128 + signal.SIGINT
    time.sleep(0.5)  # the reader thread drains the pipe
    after = list(lines.queue)
    assert not any("stopped by" in ln for ln in after), "".join(after)
    assert sum("step " in ln and "/1000" in ln for ln in after) == 0, (steps_logged, after)
    assert not list((tmp_path / "exps").rglob("latest.pth"))


def test_a_failed_resume_leaves_the_run_as_it_was(phantom_dir, tmp_path):
    run = run_train(small(phantom_dir, tmp_path, n_steps=2))
    run_dir = Path(run.observers[0].dir)
    before = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    with pytest.raises(ValueError, match="resuming needs the same 'seed'"):
        run_train(small(phantom_dir, tmp_path, n_steps=4, seed=9, resume=str(run_dir)))
    assert json.loads((run_dir / "run.json").read_text(encoding="utf-8")) == before
    assert not (run_dir / "FAILED").exists()
    assert (run_dir / "run.1.resume_failed.json").is_file()
    with pytest.raises(ValueError, match="print_interval expects a value >= 1, got 0"):
        run_train(small(phantom_dir, tmp_path, print_interval=0))
    with pytest.raises(ValueError, match=r"support_idx chooses the one support scan"):
        run_train(small(phantom_dir, tmp_path, n_shots=2, support_idx=[0]))


def test_episodes_per_step_trains_on_the_mean_of_its_episodes(phantom_dir, tmp_path,
                                                              monkeypatch):
    """episodes_per_step=2: each step draws episodes 2s and 2s + 1 (those a run with one
    episode per step trains at steps 2s and 2s + 1), and its loss pools the two queries."""
    seen = []
    real = training.weighted_cross_entropy

    def spy(logits, target, weights):
        seen.append(target.clone())
        return real(logits, target, weights)
    monkeypatch.setattr(training, "weighted_cross_entropy", spy)
    run_train(small(phantom_dir, tmp_path / "one", n_steps=4))
    singles, seen[:] = list(seen), []
    run = run_train(small(phantom_dir, tmp_path / "two", n_steps=2, episodes_per_step=2))
    assert [t.shape[0] for t in seen] == [2, 2]  # two queries per step, one per episode
    for step, target in enumerate(seen):
        assert torch.equal(target, torch.cat(singles[2 * step:2 * step + 2]))
    saved = torch.load(Path(run.observers[0].dir) / "snapshots" / "latest.pth",
                       weights_only=True)
    assert saved["step"] == 2 and saved["config"]["episodes_per_step"] == 2
    with pytest.raises(ValueError, match="resuming needs the same 'episodes_per_step'"):
        run_train(small(phantom_dir, tmp_path / "two", n_steps=4,
                        resume=str(run.observers[0].dir)))


@pytest.mark.slow
def test_sigterm_to_the_whole_job_with_loader_workers_checkpoints(phantom_dir, tmp_path):
    """Slurm signals every process of the job: the loader workers ignore it, the training
    process finishes its step, checkpoints and exits 143; nothing of the job is left."""
    args = cli_run_args(phantom_dir, n_steps=100000, checkpoint_every=100000)
    args[args.index("num_workers=0")] = "num_workers=2"
    proc = subprocess.Popen([sys.executable, "training.py", *args, f"log_dir={tmp_path}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, encoding="utf-8", start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 240
    while time.time() < deadline and not list(tmp_path.rglob("tensorboard/events.out.*")):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    time.sleep(2.0)  # the workers are up and producing
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "stopped by SIGTERM after step" in stderr and "Traceback" not in stderr
    assert torch.load(next(tmp_path.rglob("latest.pth")), weights_only=True)["step"] >= 1
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)  # any process of the job left?
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("loader workers outlived the training process")


def test_resuming_to_fewer_steps_than_done_is_refused(phantom_dir, tmp_path):
    run = run_train(small(phantom_dir, tmp_path, n_steps=4))
    run_dir = Path(run.observers[0].dir)
    before = (run_dir / "run.json").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match=r"n_steps=2 is below the checkpoint's step 4"):
        run_train(small(phantom_dir, tmp_path, n_steps=2, resume=str(run_dir)))
    assert (run_dir / "run.json").read_text(encoding="utf-8") == before
