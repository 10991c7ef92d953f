"""The paper table: mean over scans per fold, then mean and std over folds."""
import json

import pytest

from util.aggregate import aggregate, collect, main


def _summary(tmp_path, run, fold, dice, setting=2, protocol="paper"):
    folder = tmp_path / str(run)
    folder.mkdir(parents=True)
    per_organ = {o: {"dice": {"mean": d, "std": 0.0, "n": 4}} for o, d in dice.items()}
    (folder / "summary.json").write_text(json.dumps({
        "dataset": "CHAOST2", "setting": setting, "protocol": protocol, "n_shots": 1,
        "pseudolabel": "superpixel", "fold": fold, "per_organ": per_organ}), encoding="utf-8")


def test_mean_over_folds_and_published_rows(tmp_path):
    _summary(tmp_path, 1, 0, {"LK": 0.70, "RK": 0.80})
    _summary(tmp_path, 2, 1, {"LK": 0.90, "RK": 0.60})
    _summary(tmp_path, 3, 0, {"LK": 0.10, "RK": 0.10}, protocol="realistic")
    rows = aggregate(collect([tmp_path]))
    paper = next(r for r in rows if r["protocol"] == "paper")
    assert paper["per_organ"]["LK"] == pytest.approx((80.0, 10.0, 2))
    assert paper["per_organ"]["RK"] == pytest.approx((70.0, 10.0, 2))
    assert paper["mean"] == pytest.approx(75.0)
    assert paper["published"]["LK"] == 73.63
    main([str(tmp_path), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    assert "80.00 ± 10.00 (2)" in md and "SSL-ALPNet (published)" in md
    assert (tmp_path / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert "LK" in (tmp_path / "out" / "results.csv").read_text(encoding="utf-8")


def test_missing_folder_and_bad_summary(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        collect([tmp_path / "nope"])
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "summary.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="expected a validation summary"):
        collect([tmp_path])
