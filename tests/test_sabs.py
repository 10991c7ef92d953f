"""SABS / Synapse CT preprocessing (method.md §1.3) on the shared CT example and a synthetic
volume."""
from __future__ import annotations

import shutil
from pathlib import Path

import json

import numpy as np
import pytest
import SimpleITK as sitk

from data_preprocessing import sabs


def test_window_ct_hand_values():
    arr = np.array([-1000, -125, 75, 275, 3000], dtype=np.int16)
    np.testing.assert_allclose(sabs.window_ct(arr), [0, 0, 127.5, 255, 255])
    # min / max are the clipped volume's own, not the window's
    np.testing.assert_allclose(sabs.window_ct(np.array([0, 100])), [0, 255])
    with pytest.raises(ValueError, match=r"ct\.nii\.gz: expected intensities spanning"):
        sabs.window_ct(np.full(4, 500), name="ct.nii.gz")


def test_find_pairs_lexicographic_and_checked(tmp_path):
    for name in ("img0010", "img0001", "img0002", "label0002", "label0010", "label0001"):
        (tmp_path / f"{name}.nii.gz").touch()
    pairs = sabs.find_pairs(tmp_path)
    assert [(i.name, l.name) for i, l in pairs] == [
        ("img0001.nii.gz", "label0001.nii.gz"), ("img0002.nii.gz", "label0002.nii.gz"),
        ("img0010.nii.gz", "label0010.nii.gz")]
    (tmp_path / "img9.nii.gz").touch()  # lexicographic: img9 sorts after img0010
    (tmp_path / "label0011.nii.gz").touch()
    with pytest.raises(ValueError, match=r"label0011\.nii\.gz: expected the label of img9"):
        sabs.find_pairs(tmp_path)
    (tmp_path / "label0011.nii.gz").unlink()
    with pytest.raises(ValueError, match="expected one label.* found 4 images and 3 labels"):
        sabs.find_pairs(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope: expected the Synapse folder"):
        sabs.find_pairs(tmp_path / "nope")


def check_output(out_dir: Path, pid: str, z: int, spacing, label_values: set) -> np.ndarray:
    img = sitk.ReadImage(str(out_dir / f"image_{pid}.nii.gz"))
    lbl = sitk.ReadImage(str(out_dir / f"label_{pid}.nii.gz"))
    for got in (img, lbl):
        assert got.GetPixelID() == sitk.sitkFloat64
        assert got.GetSize() == (257, 257, z + 1)
        np.testing.assert_allclose(got.GetSpacing(), spacing, rtol=1e-6)
    arr, lab = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lbl)  # (Z, Y, X)
    assert arr.min() >= 0 and arr.max() <= 255
    for a in (arr, lab):
        assert np.all(a[z] == 0) and np.all(a[:, 256] == 0) and np.all(a[:, :, 256] == 0)
    assert set(np.unique(lab).astype(int)) <= label_values
    return arr


def test_ct_example(ct_dir, tmp_path, capsys):
    src = tmp_path / "RawData"
    src.mkdir()
    shutil.copy(ct_dir / "image_0.nii.gz", src / "img0001.nii.gz")
    shutil.copy(ct_dir / "label_0.nii.gz", src / "label0001.nii.gz")
    dst = tmp_path / "SABS" / "sabs_CT_normalized"
    sabs.main(["--src", str(src), "--dst", str(dst)])
    assert capsys.readouterr().out.count("SABS 0:") == 2
    raw = sitk.ReadImage(str(ct_dir / "image_0.nii.gz"))
    raw_lbl = sitk.ReadImage(str(ct_dir / "label_0.nii.gz"))

    tmp = tmp_path / "SABS" / "tmp_normalized"
    win = sitk.ReadImage(str(tmp / "image_0.nii.gz"))
    arr = sitk.GetArrayFromImage(win)
    clipped = np.clip(sitk.GetArrayFromImage(raw).astype(float), -125, 275)
    np.testing.assert_allclose(arr, (clipped - clipped.min()) / np.ptp(clipped) * 255)
    assert win.GetOrigin() == raw.GetOrigin() and win.GetDirection() == raw.GetDirection()
    copied = sitk.ReadImage(str(tmp / "label_0.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(copied),
                                  sitk.GetArrayFromImage(raw_lbl))

    nx, ny, nz = raw.GetSize()  # 122 x 101 x 30 at 3 mm; 32 px cut from each border
    spacing = (3.0 * (nx - 64) / 256, 3.0 * (ny - 64) / 256, 3.0)
    values = set(np.unique(sitk.GetArrayFromImage(raw_lbl)).astype(int))
    out = check_output(dst, "0", nz, spacing, values)
    assert out.max() > 200
    out_img = sitk.ReadImage(str(dst / "image_0.nii.gz"))
    assert out_img.GetOrigin() == raw.GetOrigin()  # the border crop keeps the origin
    meta = json.loads((dst / "dataset.json").read_text(encoding="utf-8"))
    assert meta["preprocessing"]  # parameters recorded
    assert json.loads((dst / "splits.json").read_text(encoding="utf-8"))["folds"] == []  # too few scans


def test_synthetic_512(tmp_path):
    rng = np.random.default_rng(3)
    z = 3
    hu = rng.integers(-1000, 1500, size=(z, 512, 512)).astype(np.int16)
    lab = np.zeros(hu.shape, np.uint8)
    lab[:, 100:300, 150:400] = 6
    lab[:, 200:260, 200:240] = 1
    sx, sy, sz = 0.78125, 0.7, 2.5
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((sx, sy, sz))
    label = sitk.GetImageFromArray(lab)
    label.CopyInformation(image)
    src = tmp_path / "src"
    (src / "img").mkdir(parents=True)
    (src / "label").mkdir()
    sitk.WriteImage(image, str(src / "img" / "img0040.nii.gz"))
    sitk.WriteImage(label, str(src / "label" / "label0040.nii.gz"))
    dst = tmp_path / "out"
    sabs.main(["--src", str(src), "--dst", str(dst), "--tmp", str(tmp_path / "tmp")])
    arr = check_output(dst, "0", z, (sx * 1.75, sy * 1.75, sz), {0, 1, 6})
    res_img, res_lbl = sabs.crop_and_resample(image, label)  # in memory: spacing exactly x1.75
    assert res_img.GetSpacing() == res_lbl.GetSpacing() == (sx * 1.75, sy * 1.75, sz)
    # exact z ratio: slice k is the windowed source resampled in-plane; spot-check one voxel
    # on the grid: output (r, c) sits at cropped pixel (1.75 r, 1.75 c), i.e. source 32 + 7 r / 4
    win = sabs.window_ct(hu)
    np.testing.assert_allclose(arr[1, 4, 8], win[1, 32 + 7, 32 + 14], atol=1e-6)
    lbl = sitk.GetArrayFromImage(sitk.ReadImage(str(dst / "label_0.nii.gz")))
    assert lbl[0, 128, 128] == 6 and lbl[0, 0, 0] == 0


def test_missing_label_writes_nothing(tmp_path, ct_dir):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ct_dir / "image_0.nii.gz", src / "img0001.nii.gz")
    with pytest.raises(ValueError, match="found 1 images and 0 labels"):
        sabs.main(["--src", str(src), "--dst", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists() and not (tmp_path / "tmp_normalized").exists()


def test_unreadable_image_keeps_outputs(tmp_path, ct_dir):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ct_dir / "image_0.nii.gz", src / "img0001.nii.gz")
    shutil.copy(ct_dir / "label_0.nii.gz", src / "label0001.nii.gz")
    dst = tmp_path / "SABS" / "out"
    tmp = tmp_path / "SABS" / "tmp_normalized"
    tmp.mkdir(parents=True)
    old = tmp / "image_0.nii.gz"
    old.write_bytes(b"previous output")
    (src / "img0001.nii.gz").write_bytes(b"\x1f\x8b broken gzip")
    with pytest.raises(ValueError, match=r"img0001\.nii\.gz: expected"):
        sabs.main(["--src", str(src), "--dst", str(dst)])
    assert old.read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp.iterdir()) == ["image_0.nii.gz"]
    assert not dst.exists()
