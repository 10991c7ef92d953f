"""Class-slice index: equal to the published CHAOS-T2 index; pixel-count rule; CMR mapping."""
import json

import numpy as np
import pytest

from data_preprocessing.classmap import slice_index, write_classmap
from data_preprocessing.contract import map_label_values
from data_preprocessing.prepare import link_scans
from data_preprocessing.contract import register


def test_chaos_classmap_equals_reference(chaos_dir, tmp_path):
    link_scans(chaos_dir, tmp_path)
    register(tmp_path, "CHAOST2")
    path = write_classmap(tmp_path, 1)
    ours = json.loads(path.read_text(encoding="utf-8"))
    reference = json.loads((chaos_dir / "classmap_1.reference.json").read_text(encoding="utf-8"))
    assert ours == reference
    assert json.loads((tmp_path / "dataset.json").read_text(encoding="utf-8"))["classmaps"] == [1]


def test_min_tp_counts_pixels_of_the_class():
    label = np.zeros((3, 4, 4), int)
    label[0, 0, :3] = 1          # 3 px of class 1
    label[1, :2, :2] = 1         # 4 px of class 1
    label[1, 3, 3] = 4           # a value-4 pixel: the original's sum rule would count it as 4
    label[2, 0, 0] = 2
    names = {0: "BG", 1: "A", 2: "B", 4: "D"}
    out = slice_index(label, names, min_tp=4)
    assert out["A"] == [1]
    assert out["B"] == []
    assert out["D"] == []        # only 1 pixel of class 4
    assert out["BG"] == [1]      # background with >= 4 foreground pixels
    one = slice_index(label, names, min_tp=1)
    assert one["A"] == [0, 1] and one["B"] == [2] and one["BG"] == [0, 1, 2]


def test_cmr_raw_values_are_mapped():
    raw = np.array([[0, 200], [500, 600]], float)
    out = map_label_values(raw, {200: 1, 500: 2, 600: 3})
    assert out.tolist() == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match=r"found \[300\]"):
        map_label_values(np.array([0.0, 300.0]), {200: 1, 500: 2, 600: 3}, "label_9.nii.gz")
    with pytest.raises(ValueError, match="non-integral"):
        map_label_values(np.array([0.5]), {})


def test_cmr_classmap_from_shared_scans(cmr_dir, tmp_path, capsys):
    link_scans(cmr_dir, tmp_path)
    register(tmp_path, "CMR")
    assert "NOTE: CMR defines folds for 35 scans" in capsys.readouterr().err
    cm = json.loads(write_classmap(tmp_path, 1).read_text(encoding="utf-8"))
    assert set(cm) == {"BG", "LV-MYO", "LV-BP", "RV"}
    assert sorted(cm["RV"], key=int) == [str(i) for i in range(1, 8)]
    assert all(len(cm[name][pid]) > 0 for name in ("LV-MYO", "LV-BP", "RV") for pid in cm["RV"])
