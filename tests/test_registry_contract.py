"""Fold tables (method.md §3.1, §9.1) and the dataset.json / splits.json contract."""
import json
from pathlib import Path

import pytest

from data_preprocessing.contract import load_dataset, register
from data_preprocessing.registry import CHAOST2, CMR, SABS, get_dataset_info, make_folds

CHAOS_PIDS = [str(p) for p in (1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37,
                               38, 39)]


def test_chaos_folds_equal_spec_table():
    folds = make_folds(CHAOS_PIDS, CHAOST2.fold_sep)
    want = [(["1", "2", "3", "5"], "8"), (["8", "10", "13", "15"], "19"),
            (["19", "20", "21", "22"], "31"), (["31", "32", "33", "34"], "36"),
            (["36", "37", "38", "39"], "1")]
    for fold, (query, support) in zip(folds, want):
        assert fold["query"] == query
        assert fold["support"] == [support]
        assert len(fold["train"]) == 15
        assert not set(fold["train"]) & set(query + [support])


def test_sabs_folds_equal_spec_table():
    pids = [str(i) for i in range(30)]
    folds = make_folds(pids, SABS.fold_sep)
    for f, fold in enumerate(folds):
        assert fold["query"] == [str(i) for i in range(6 * f, 6 * f + 6)]
        assert fold["support"] == [str((6 * f + 6) % 30)]
        assert len(fold["train"]) == 23


def test_cmr_folds_equal_qnet_table():
    pids = [str(i) for i in range(1, 36)]
    folds = make_folds(pids, CMR.fold_sep)
    # index sets 0-7, 7-14, ..., 28-34 plus {0} (method.md §9.1), support = last of the set
    assert folds[0]["query"] + folds[0]["support"] == [str(i) for i in range(1, 9)]
    assert folds[4]["query"] + folds[4]["support"] == [str(i) for i in range(29, 36)] + ["1"]
    assert all(len(f["train"]) == 27 for f in folds)


def test_k_shot_folds_take_last_scans_as_support():
    folds = make_folds(CHAOS_PIDS, CHAOST2.fold_sep, n_shots=3)
    assert folds[0]["support"] == ["8", "10", "13"]
    assert folds[0]["query"] == ["1", "2", "3", "5"]


def test_test_labels_per_group():
    from data_preprocessing.contract import Dataset, build_metadata

    def described(info):  # test classes are read from dataset.json, as written by register
        return Dataset(Path(info.name), build_metadata(info, []), {})
    assert described(CHAOST2).test_labels(0) == [2, 3]
    assert described(CHAOST2).test_labels(1) == [1, 4]
    assert described(SABS).test_labels(1) == [1, 6]
    assert described(CMR).test_labels(2) == [3]
    with pytest.raises(ValueError, match="label group"):
        described(CHAOST2).test_labels(2)


def test_unknown_dataset_names_choices():
    with pytest.raises(KeyError, match="CHAOST2"):
        get_dataset_info("CHAOS")
    assert get_dataset_info("chaost2_superpix") is CHAOST2


def test_register_and_load_roundtrip(chaos_dir, tmp_path):
    for pid in CHAOS_PIDS:
        for kind in ("image", "label"):
            (tmp_path / f"{kind}_{pid}.nii.gz").symlink_to(chaos_dir / f"{kind}_{pid}.nii.gz")
    ds = register(tmp_path, "CHAOST2")
    assert ds.cases == CHAOS_PIDS
    loaded = load_dataset(tmp_path)
    assert loaded.meta == json.loads((tmp_path / "dataset.json").read_text(encoding="utf-8"))
    assert loaded.fold(4)["support"] == ["1"]
    assert loaded.test_labels(1) == [1, 4]
    assert loaded.labels[3] == "LK"


def test_load_dataset_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "splits.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="dataset.json.*valid JSON"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text('{"name": "CHAOST2"}', encoding="utf-8")
    with pytest.raises(ValueError, match="missing"):
        load_dataset(tmp_path)


def test_partial_dataset_gets_scaled_folds_with_a_warning(cmr_dir, tmp_path, capsys):
    for pid in range(1, 8):
        for kind in ("image", "label"):
            (tmp_path / f"{kind}_{pid}.nii.gz").symlink_to(cmr_dir / f"{kind}_{pid}.nii.gz")
    ds = register(tmp_path, "CMR")
    err = capsys.readouterr().err
    assert "boundaries scaled to [0, 1, 3, 4, 6, 7]" in err and "Warning" not in err
    folds = ds.splits["folds"]
    assert ds.splits["fold_sep"] == [0, 1, 3, 4, 6, 7]
    assert len(folds) == 5
    for fold in folds:
        assert len(fold["support"]) == 1 and fold["query"]
        assert set(fold["train"]).isdisjoint(fold["query"] + fold["support"])


def test_too_few_scans_register_without_folds(tmp_path, capsys):
    import SimpleITK as sitk
    tiny = sitk.Image(4, 4, 2, sitk.sitkFloat64)
    for pid in range(3):
        sitk.WriteImage(tiny, str(tmp_path / f"image_{pid}.nii.gz"))
    ds = register(tmp_path, "PHANTOM", preprocessing={"a": 1})
    assert "NOTE: PHANTOM: 3 scans are too few for 5 folds" in capsys.readouterr().err
    assert ds.splits["folds"] == [] and ds.meta["preprocessing"] == {"a": 1}
    with pytest.raises(ValueError, match="splits.json: expected folds, found none"):
        load_dataset(tmp_path).fold(0)


def test_the_preprocessing_record_is_written_read_and_carried(tmp_path):
    """dataset.json holds the whole record; older folders get it from their preset; a folder
    whose name is no preset must hold it; predict follows a checkpoint's own record."""
    from dataclasses import replace

    from data_preprocessing.phantom import write_phantom
    from data_preprocessing.registry import PHANTOM, RECORD_KEYS, DatasetInfo
    from inference.predict import checkpoint_modality, dataset_info, trained_on

    write_phantom(tmp_path, seed=0, size=32, n_slices=3)
    ds = register(tmp_path, "PHANTOM")
    meta = json.loads((tmp_path / "dataset.json").read_text(encoding="utf-8"))
    assert all(k in meta for k in RECORD_KEYS) and meta["preset"] == "PHANTOM"
    assert ds.info == PHANTOM and load_dataset(tmp_path).info == PHANTOM
    assert SABS.record()["intensity"] == {"rule": "ct_window", "window": [-125.0, 275.0]}
    # a folder registered before the record was written whole
    for key in ("target_spacing", "intensity", "size", "orientation", "fold_sep"):
        meta.pop(key)
    (tmp_path / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    assert load_dataset(tmp_path).info == PHANTOM
    broken = {**meta, "labels": ["BG", "LIVER"]}
    (tmp_path / "dataset.json").write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(ValueError, match="expected a preprocessing record of the types"):
        load_dataset(tmp_path)
    meta["name"] = "MYSCANS"
    (tmp_path / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ValueError, match=r"dataset.json: expected the preprocessing record keys "
                                         r"\['fold_sep', 'target_spacing', 'orientation'"):
        load_dataset(tmp_path)
    # a checkpoint's record decides predict's preprocessing, not the registry
    mine = replace(PHANTOM, name="MYSCANS", target_spacing=(2.0, 2.0, 5.0))
    trained = trained_on({"dataset": "PHANTOM"}, mine.record())
    assert trained == mine and dataset_info("MR", trained).target_spacing == (2.0, 2.0, 5.0)
    assert dataset_info("CT", trained).name == "SABS" and checkpoint_modality(trained) == "MR"
    assert trained_on({"dataset": "CHAOST2"}, None) == CHAOST2     # older checkpoints
    assert trained_on({}, None) is None and checkpoint_modality(None) == "MR"
    assert DatasetInfo.from_record(CMR.record()) == CMR
