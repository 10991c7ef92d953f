"""The benchmark scripts compute what they claim, and the prepared GPU check runs on a machine
that has torch but none of the imaging packages."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_conv3x3 import transforms, winograd_conv3x3  # noqa: E402

pytestmark = pytest.mark.slow  # the benchmark scripts, run small (they are not tests of speed)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("channels,dilation,side", [(3, 1, 10), (4, 2, 12), (5, 4, 8), (2, 2, 6)])
def test_winograd_conv3x3_equals_direct_convolution(m, channels, dilation, side):
    gen = torch.Generator().manual_seed(channels * side + m)
    x = torch.randn(2, channels, side, side, generator=gen, requires_grad=True)
    w = torch.randn(channels + 1, channels, 3, 3, generator=gen, requires_grad=True)
    grad = torch.randn(2, channels + 1, side, side, generator=gen)
    direct = F.conv2d(x, w, padding=dilation, dilation=dilation)
    wino = winograd_conv3x3(x, w, dilation, m, transforms(m, torch.device("cpu")))
    assert wino.shape == direct.shape
    torch.testing.assert_close(wino, direct, rtol=1e-4, atol=1e-4)
    for a, b in zip(torch.autograd.grad(wino, (x, w), grad),
                    torch.autograd.grad(direct, (x, w), grad)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_winograd_conv3x3_rejects_a_map_not_divisible_by_the_dilation():
    with pytest.raises(ValueError, match="not divisible by dilation 4"):
        winograd_conv3x3(torch.zeros(1, 1, 10, 10), torch.zeros(1, 1, 3, 3), 4, 2,
                         transforms(2, torch.device("cpu")))


def test_gpu_check_runs_without_the_imaging_packages(tmp_path):
    block = tmp_path / "block"
    block.mkdir()
    for name in ("SimpleITK", "nibabel", "sacred", "medpy", "tensorboardX"):
        (block / f"{name}.py").write_text("raise ImportError('not on the GPU machine')\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(block), "OUT": str(out), "PYTHON": sys.executable,
           "DEVICE": "cpu", "ENCODER": "tiny", "SIZE": "64", "RUNS": "1", "SLICES": "5"}
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env,
                         capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = {v: json.loads((out / f"model_{v}.json").read_text(encoding="utf-8"))
               for v in ("fp32", "channels_last", "bf16_channels_last",
                         "bf16_channels_last_compile")}
    assert [r["bf16"] for r in results.values()] == [False, False, True, True]
    assert [r["channels_last"] for r in results.values()] == [False, True, True, True]
    assert [r["compile"] for r in results.values()] == [False, False, False, True]
    # compiled, the same arithmetic up to the kernels' rounding
    assert abs(results["bf16_channels_last"]["first_step_loss"]
               - results["bf16_channels_last_compile"]["first_step_loss"]) < 2e-2
    for r in results.values():
        assert r["inference"]["slices"] == 5 and r["inference"]["s_per_slice"] > 0
        assert r["full_step"]["median_s"] > 0
    # same seed and episode: channels_last changes the loss only by rounding
    assert abs(results["fp32"]["first_step_loss"]
               - results["channels_last"]["first_step_loss"]) < 1e-4
    conv = json.loads((out / "conv3x3.json").read_text(encoding="utf-8"))
    assert conv["map"] == [8, 8] and conv["trunk_total_ms"]["direct"] > 0
    assert all(max(row["winograd4_max_rel_error"]) < 1e-3 for row in conv["shapes"])


def test_precision_sensitivity_reports_every_perturbation(capsys):
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_precision import main
    result = main(["--encoder", "tiny", "--size", "32", "--draws", "2"])
    changes = result["feature_change"]
    assert set(changes) == {"bf16_train", "bf16_eval", "fp32_input_noise_2^-12_train",
                            "fp32_input_noise_2^-9_train"}
    # a larger input perturbation moves the features more, and none is zero
    assert 0 < changes["fp32_input_noise_2^-12_train"] < changes["fp32_input_noise_2^-9_train"]
    assert [len(v) for v in result["loss_with_input_noise"].values()] == [2, 2]
    assert json.loads(capsys.readouterr().out) == result


def test_layout_benchmark_and_auto_under_an_avx2_cap():
    """bench_layout times the three variants; with oneDNN held to AVX2 (what an AVX2-only host
    runs), auto chooses neither channels_last nor bf16."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_layout.py"),
                          "--encoder", "tiny", "--size", "64", "--rounds", "1"], env=env,
                         capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["onednn_max_cpu_isa"] == "AVX2"
    assert result["auto_chooses"] == {"channels_last": False, "bf16": False}
    assert set(result["median_s"]) == {"fp32_nchw", "fp32_channels_last", "bf16_channels_last"}
    assert all(t > 0 for t in result["median_s"].values())


@pytest.fixture(scope="module")
def phantom_pair(tmp_path_factory):
    """Two phantom folders with the same scans: compact and faithful superpixel ids."""
    from conftest import make_phantom_dataset
    from data_preprocessing import superpixels

    compact = make_phantom_dataset(tmp_path_factory.mktemp("compact"), seed=4, n_slices=6)
    faithful = make_phantom_dataset(tmp_path_factory.mktemp("faithful"), seed=4, n_slices=6)
    superpixels.generate(faithful, relabel_mode="faithful", workers=1)
    return compact, faithful


def test_learning_curve_harness_on_the_phantom(phantom_pair, tmp_path):
    compact, faithful = phantom_pair
    out = tmp_path / "curves"
    cmd = [sys.executable, "benchmarks/learning_curves.py", "--data", str(compact),
           "--faithful", str(faithful), "--config", "phantom", "--variants", "defaults",
           "original", "--seeds", "1", "2", "--steps", "4", "--val-every", "2",
           "--encoder", "tiny", "--jobs", "2", "--threads", "1", "--out", str(out), "lr=1e-2"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    table = (out / "curves.md").read_text(encoding="utf-8")
    for variant in ("defaults", "original"):
        for step in (2, 4):
            assert f"| {variant} | {step} | 2 | " in table
    rows = (out / "curves.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "variant,seed,step,organ,dice"
    assert {tuple(r.split(",")[:3]) for r in rows[1:] if ",mean," in r} == {
        (v, s, t) for v in ("defaults", "original") for s in ("1", "2") for t in ("2", "4")}
    assert (out / "curves.png").stat().st_size > 0
    # the original variant trained with its switches, on the faithful ids
    config = json.loads(next((out / "runs" / "original_seed1").rglob("config.json")).read_text())
    assert (config["superpixel_draw"], config["slice_draw"], config["empty_prototypes"]) == (
        "original", "original", "skip")
    assert Path(config["data_dir"]) == faithful.resolve()
    # a second call reads the finished runs instead of training again
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.count("| defaults |") == 2
    assert len(list((out / "runs" / "defaults_seed1").rglob("config.json"))) == 1
    # finished runs of other settings are never passed off as this command's
    other = subprocess.run(cmd[:-1] + ["lr=0.5"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert other.returncode == 2 and "found one with other settings" in other.stderr
    # bad input: one line, exit 2, before any training
    for args, message in ((["--variants", "fastest"], "--variants: expected names from"),
                          (["--variants", "defaults", "original"], "--faithful: variants")):
        bad = subprocess.run([sys.executable, "benchmarks/learning_curves.py", "--data",
                              str(compact), "--out", str(tmp_path / "bad"), *args], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.splitlines()) == 1
    assert not (tmp_path / "bad" / "runs").exists()


def test_episode_statistics_on_the_phantom(phantom_pair, tmp_path):
    compact, faithful = phantom_pair
    out = tmp_path / "stats"
    run = subprocess.run([sys.executable, "benchmarks/episode_stats.py", "--data", str(compact),
                          "--faithful", str(faithful), "--episodes", "3000", "--aug-every",
                          "10", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((out / "episode_stats.json").read_text(encoding="utf-8"))
    v, meta = result["variants"], result["meta"]
    assert v["defaults"]["empty_share"] == 0 and v["defaults"]["area_px"]["p5"] >= 100
    assert v["min1"]["empty_share"] == 0
    # the original draw's empty episodes: the sampled share agrees with the analytic one
    expected = meta["expected_empty_share"]
    share = v["draw_original"]["empty_share"]
    assert expected > 0
    assert abs(share - expected) < 4 * (expected * (1 - expected) / 3000) ** 0.5 + 0.01
    # uniform slices are uniform; the augmentation draws what the original draws
    assert v["defaults"]["slice_tv_from_uniform"] < 0.15
    assert all(t["ks_p"] > 1e-3 for k, t in meta["augmentation"].items() if "ks_p" in t)
    assert "| original |" in (out / "episode_stats.md").read_text(encoding="utf-8")
    # the compact folder given as --faithful is refused, naming it
    bad = subprocess.run([sys.executable, "benchmarks/episode_stats.py", "--data", str(compact),
                          "--faithful", str(compact), "--episodes", "10"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "relabelled 'faithful'" in bad.stderr
    zero = subprocess.run([sys.executable, "benchmarks/episode_stats.py", "--data", str(compact),
                           "--faithful", str(faithful), "--episodes", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert zero.returncode == 2 and "--episodes: expected >= 1, got 0" in zero.stderr


def test_host_read_check_on_the_cpu():
    """check_host_reads.py: training steps of two episodes each (assembled as training does)
    read nothing back; the validation's reads are counted (each support part's compaction),
    and its Dice comes out."""
    run = subprocess.run([sys.executable, "benchmarks/check_host_reads.py", "--device", "cpu",
                          "--steps", "2"], cwd=ROOT, capture_output=True, text=True,
                         encoding="utf-8", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["step_host_reads"] == 0 and len(result["losses"]) == 2
    assert all(math.isfinite(v) for v in result["losses"])
    assert 0 < result["validation_host_reads"] <= 2 * result["support_parts"]
    assert 0 <= result["validation_dice"] <= 1 and result["validation_scores"] > 0


def test_train_step_benchmark_times_the_episode_as_training_makes_it(chaos_dir):
    """bench_train_step.py on one real scan with the tiny encoder: the episode's host share is
    part of its whole cost, and the step's loss is finite."""
    run = subprocess.run([sys.executable, "benchmarks/bench_train_step.py", "--data",
                          str(chaos_dir), "--encoder", "tiny", "--scans", "1", "--steps", "2",
                          "--warmup", "1", "--threads", "1"], cwd=ROOT, capture_output=True,
                         text=True, encoding="utf-8", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert 0 < result["episode_host"]["median_s"] < result["episode"]["median_s"]
    assert math.isfinite(result["first_episode_loss"]) and result["step_gflop"] > 0
