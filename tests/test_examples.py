"""The experiment scripts run end to end (one fold, a few steps) on the shared CHAOS-T2 scans."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_abdominal_mri_setting2_script_trains_and_validates_each_group(chaos_prepared, tmp_path):
    env = {**os.environ, "PY": str(Path(os.sys.executable)), "FOLDS": "1",
           "LOG_DIR": str(tmp_path / "exps"),
           "EXTRA": f"data_dir={chaos_prepared} encoder=tiny n_steps=3 num_workers=0 "
                    f"device=cpu image_every=2 print_interval=1 eval_batch_size=48 "
                    f"n_overlay_slices=1"}
    out = subprocess.run(["bash", "examples/abdominal_mri_setting2.sh"], cwd=ROOT, env=env,
                         capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    train = sorted((tmp_path / "exps" / "train").glob("*/1/snapshots/latest.pth"))
    assert [p.parts[-4] for p in train] == [
        "CHAOST2_setting2_group0_superpixel_MIDDLE_fold1",
        "CHAOST2_setting2_group1_superpixel_MIDDLE_fold1"]
    for group, organs in ((0, {"RK", "LK"}), (1, {"LIVER", "SPLEEN"})):
        summary = json.loads(next((tmp_path / "exps" / "validate").glob(
            f"CHAOST2_setting2_group{group}_*/1/summary.json")).read_text(encoding="utf-8"))
        assert set(summary["per_organ"]) == organs
        assert summary["queries"] == ["8", "10", "13", "15"] and summary["support"] == ["19"]
        assert summary["checkpoint"].endswith("latest.pth") and summary["setting"] == 2
    metrics = json.loads(next((tmp_path / "exps" / "train").glob("*group0*/1/metrics.json"))
                         .read_text(encoding="utf-8"))
    assert metrics["train/loss"]["steps"] == [1, 2, 3]
    results = subprocess.run(["bash", "examples/results.sh"], cwd=ROOT,
                             env={**env, "OUT": str(tmp_path / "results")},
                             capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert results.returncode == 0, results.stderr[-2000:]
    assert "CHAOST2, Setting 2, paper protocol" in (tmp_path / "results" / "results.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_learning_curve_script_validates_each_snapshot_and_the_untrained_model(chaos_prepared,
                                                                              tmp_path):
    env = {**os.environ, "PY": str(Path(os.sys.executable)), "STEPS": "2", "EVAL_EVERY": "1",
           "LABEL_GROUPS": "0", "ENCODER": "tiny", "LOG_DIR": str(tmp_path / "lc"),
           "EXTRA": f"data_dir={chaos_prepared} num_workers=0 device=cpu "
                    f"save_predictions=False eval_batch_size=48"}
    out = subprocess.run(["bash", "examples/learning_curve.sh"], cwd=ROOT, env=env,
                         capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    table = (tmp_path / "lc" / "results_lc_fp32_seed1234" / "results.md").read_text(
        encoding="utf-8")
    for row in ("tiny, untrained", "tiny, 1 steps", "tiny, 2 steps"):
        assert row in table, table
    bad = subprocess.run(["bash", "examples/learning_curve.sh"], cwd=ROOT,
                         env={**env, "PRECISION": "fp16"}, capture_output=True, text=True,
                         encoding="utf-8", timeout=60)
    assert bad.returncode == 2 and "PRECISION expects fp32 or bf16, got 'fp16'" in bad.stderr


@pytest.mark.slow
def test_the_scripts_submit_a_job_array_with_submitits_local_executor(chaos_prepared, tmp_path):
    """LAUNCHER=local: a task per fold and group (Setting 2), each its training then its
    validation, run by submitit; the table is gathered when all are done. A failing task fails
    the launcher (exit 1) naming its log, and no table is gathered."""
    env = {**os.environ, "PY": str(Path(os.sys.executable)), "FOLDS": "1",
           "LOG_DIR": str(tmp_path / "exps"), "LAUNCHER": "local",
           "OUT": str(tmp_path / "results"),
           "EXTRA": f"data_dir={chaos_prepared} encoder=tiny n_steps=2 num_workers=0 "
                    f"device=cpu eval_batch_size=48 save_predictions=False"}
    # nothing trained yet: each validation task fails on reload_model_path=latest
    failed = subprocess.run(["bash", "examples/abdominal_mri_setting2.sh"], cwd=ROOT,
                            env={**env, "STAGE": "validate"}, capture_output=True, text=True,
                            encoding="utf-8", timeout=600)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "2 of 2 task(s) failed" in failed.stderr and "FAILED" in failed.stderr
    assert not (tmp_path / "results").exists()

    out = subprocess.run(["bash", "examples/abdominal_mri_setting2.sh"], cwd=ROOT, env=env,
                         capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    assert "submitted 2 local task(s)" in out.stdout and out.stdout.count(": done (2 command") == 2
    trained = sorted(p.parts[-4] for p in (tmp_path / "exps" / "train").glob(
        "*/1/snapshots/latest.pth"))
    assert trained == ["CHAOST2_setting2_group0_superpixel_MIDDLE_fold1",
                       "CHAOST2_setting2_group1_superpixel_MIDDLE_fold1"]
    assert len(list((tmp_path / "exps" / "validate").glob("*/*/summary.json"))) == 2
    table = (tmp_path / "results" / "results.md").read_text(encoding="utf-8")
    assert "CHAOST2, Setting 2, paper protocol" in table
