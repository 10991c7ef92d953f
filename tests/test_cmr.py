"""CMR bSSFP preprocessing (method.md §1.4) on a few slices of shared CMR scans.

The shared scans are already at 1.25 x 1.25 x 7.99 mm and 256 x 256 (float64), so the output must
be the clipped source plus one all-zero slice, with the raw label values 200/500/600 kept.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from data_preprocessing import cmr
from data_preprocessing.resample import clip_percentile

SLICES = slice(6, 10)  # slices of image_1 / image_2 holding all three structures
PIDS = ("1", "2")


@pytest.fixture
def src(cmr_dir, tmp_path):
    """A bSSFP-like folder with 4-slice copies of shared scans 1 and 2."""
    folder = tmp_path / "bSSFP"
    folder.mkdir()
    for pid in PIDS:
        for kind in ("image", "label"):
            img = sitk.ReadImage(str(cmr_dir / f"{kind}_{pid}.nii.gz"))[:, :, SLICES]
            sitk.WriteImage(img, str(folder / f"{kind}_{pid}.nii.gz"))
    return folder


def outputs_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.nii.gz"))}


def test_cmr_output(src, tmp_path, capsys):
    dst = tmp_path / "cmr_MR_normalized"
    cmr.main(["--src", str(src), "--dst", str(dst)])
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines[:2]] == ["CMR 1", "CMR 2"]
    for pid in PIDS:
        image = sitk.ReadImage(str(src / f"image_{pid}.nii.gz"))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(src / f"label_{pid}.nii.gz")))
        img = sitk.ReadImage(str(dst / f"image_{pid}.nii.gz"))
        lbl = sitk.ReadImage(str(dst / f"label_{pid}.nii.gz"))
        z = image.GetDepth()
        for got in (img, lbl):
            assert got.GetPixelID() == sitk.sitkFloat64
            assert got.GetSize() == (256, 256, z + 1)
            np.testing.assert_allclose(got.GetSpacing(), (1.25, 1.25, 7.99), atol=1e-6)
            np.testing.assert_allclose(got.GetDirection(), image.GetDirection(), atol=1e-6)
            np.testing.assert_allclose(got.GetOrigin(), image.GetOrigin(), atol=1e-4)
        arr, lab = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lbl)
        clipped, _ = clip_percentile(sitk.GetArrayFromImage(image))
        # float64, so no truncation; the stored z spacing 7.98999977 (float32) is not exactly 7.99,
        # which puts the z samples a few 1e-8 voxels off the grid
        np.testing.assert_allclose(arr[:z], clipped, atol=1e-3)
        np.testing.assert_array_equal(lab[:z], label)
        assert np.all(arr[z] == 0) and np.all(lab[z] == 0)
        assert set(np.unique(lab)) == {0, 200, 500, 600}
    meta = json.loads((dst / "dataset.json").read_text(encoding="utf-8"))
    assert meta["preprocessing"]  # parameters recorded
    assert json.loads((dst / "splits.json").read_text(encoding="utf-8"))["folds"] == []  # too few scans


def test_two_value_spacing_keeps_input_z(src, tmp_path):
    dst = tmp_path / "out"
    cmr.main(["--src", str(src), "--dst", str(dst), "--pids", "2", "--spacing", "2.5", "2.5"])
    img = sitk.ReadImage(str(dst / "image_2.nii.gz"))
    z_in = sitk.ReadImage(str(src / "image_2.nii.gz")).GetSpacing()[2]
    np.testing.assert_allclose(img.GetSpacing(), (2.5, 2.5, z_in), atol=1e-6)
    assert img.GetSize() == (256, 256, 5)  # 256 * 1.25 / 2.5 + 1 = 129 rows, padded to 256
    assert sorted(p.name for p in dst.glob("*.nii.gz")) == ["image_2.nii.gz", "label_2.nii.gz"]


def test_missing_label_writes_nothing(src, tmp_path):
    (src / "label_2.nii.gz").unlink()
    dst = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=r"label_2\.nii\.gz: expected the label of scan 2"):
        cmr.main(["--src", str(src), "--dst", str(dst)])
    assert not dst.exists()
    with pytest.raises(FileNotFoundError, match="nope: expected the bSSFP folder"):
        cmr.main(["--src", str(tmp_path / "nope"), "--dst", str(dst)])


def test_bad_label_value_keeps_outputs(src, tmp_path):
    dst = tmp_path / "out"
    cmr.main(["--src", str(src), "--dst", str(dst)])
    before = outputs_bytes(dst)
    lbl = sitk.ReadImage(str(src / "label_2.nii.gz"))
    arr = sitk.GetArrayFromImage(lbl)
    arr[0, 0, 0] = 3
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(lbl)
    sitk.WriteImage(bad, str(src / "label_2.nii.gz"))
    with pytest.raises(ValueError, match=r"label_2\.nii\.gz: expected label values "
                                         r"\[0, 200, 500, 600\], found .*unknown: \[3\.0\]"):
        cmr.main(["--src", str(src), "--dst", str(dst)])
    assert outputs_bytes(dst) == before
    assert not [p.name for p in dst.iterdir() if p.name.startswith(".")]


def test_mismatched_sizes(src, tmp_path):
    lbl = sitk.ReadImage(str(src / "label_1.nii.gz"))[:, :, :3]
    sitk.WriteImage(lbl, str(src / "label_1.nii.gz"))
    with pytest.raises(ValueError, match=r"image_1\.nii\.gz: expected the label size to equal "
                                         r"the image size \(256, 256, 4\), found \(256, 256, 3\)"):
        cmr.main(["--src", str(src), "--dst", str(tmp_path / "out")])
