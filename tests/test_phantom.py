"""The synthetic phantom: deterministic from a seed, written in the dataset contract."""
import hashlib

import numpy as np
import pytest
import SimpleITK as sitk

from data_preprocessing.contract import load_dataset
from data_preprocessing.phantom import make_scan, write_phantom


def test_same_seed_same_scan_other_seed_differs():
    a_img, a_lab = make_scan(np.random.default_rng(3), size=96, n_slices=8)
    b_img, b_lab = make_scan(np.random.default_rng(3), size=96, n_slices=8)
    c_img, _ = make_scan(np.random.default_rng(4), size=96, n_slices=8)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


def test_scan_has_every_organ_with_distinct_intensity():
    img, lab = make_scan(np.random.default_rng(0), size=128, n_slices=20)
    assert set(np.unique(lab)) == {0, 1, 2, 3, 4}
    assert img.min() >= 0 and np.isfinite(img).all()
    liver, rk, lk, spleen = (float(img[lab == c].mean()) for c in (1, 2, 3, 4))
    assert abs(spleen - liver) > 60
    assert min(rk, lk) - liver > 80           # kidneys (cortex + medulla) brighter than liver
    body = img[(lab == 0) & (img > 50.0001)]
    assert liver - float(body.mean()) > 80     # organs stand out from the surrounding body
    outside = img[img < 50.0001]
    assert outside.size > 0.2 * img.size                   # air below the body threshold


def test_written_dataset_is_deterministic_and_registered(tmp_path):
    write_phantom(tmp_path / "a", seed=5, size=48, n_slices=3)
    write_phantom(tmp_path / "b", seed=5, size=48, n_slices=3)
    ds = load_dataset(tmp_path / "a")
    assert ds.name == "PHANTOM" and ds.cases == [str(i) for i in range(1, 11)]
    assert ds.fold(0)["query"] == ["1", "2"] and ds.fold(0)["support"] == ["3"]
    for pid in ds.cases:
        arr = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / d / f"image_{pid}.nii.gz")))
               for d in ("a", "b")]
        assert hashlib.sha1(arr[0].tobytes()).digest() == hashlib.sha1(arr[1].tobytes()).digest()
    with pytest.raises(ValueError, match="at least 10"):
        write_phantom(tmp_path / "c", n_scans=4)
