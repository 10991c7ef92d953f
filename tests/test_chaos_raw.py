"""CHAOS-T2 raw (DICOM + PNG) conversion, on a raw-like copy of a few slices of a shared scan.

The shared files are already preprocessed (1.25 x 1.25 x 7.70 mm, 256 x 256), so running them
back through the pipeline is an exact-ratio resample: the output must be the clipped source plus
one all-zero slice (the "+1" rule).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import json

import numpy as np
import pytest
import SimpleITK as sitk

from data_preprocessing import chaos
from data_preprocessing.resample import clip_percentile

SLICES = slice(18, 22)  # image_1 slices holding all four organs
PID = "1"


def write_raw_scan(root: Path, image: sitk.Image, label: np.ndarray, pid: str = PID,
                   reverse_names: bool = False) -> Path:
    """Write ``image`` / ``label`` (shared layout) as raw CHAOS: DICOM series + grey PNGs.

    Raw CHAOS rows run the other way from the shared files, so both are flipped back first.
    With ``reverse_names`` the file numbers run against the slice positions.
    """
    raw = sitk.Cast(sitk.Flip(image, [False, True, False]), sitk.sitkInt16)  # direction = I
    grey = (label[:, ::-1, :] * 63).astype(np.uint8)
    dicom_dir = root / pid / "T2SPIR" / "DICOM_anon"
    ground_dir = root / pid / "T2SPIR" / "Ground"
    dicom_dir.mkdir(parents=True)
    ground_dir.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    sx, sy, sz = raw.GetSpacing()
    n = raw.GetDepth()
    uid = "1.2.826.0.1.3680043.2.1125.7"
    for k in range(n):
        number = n - k if reverse_names else k + 1
        sl = raw[:, :, k]
        position = raw.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {"0008|0060": "MR", "0020|000d": uid, "0020|000e": uid + ".1",
                "0008|0018": f"{uid}.1.{number}", "0020|0013": str(number),
                "0020|0037": "1\\0\\0\\0\\1\\0",
                "0020|0032": "\\".join(f"{v:.6f}" for v in position),
                "0028|0030": f"{sy:.6f}\\{sx:.6f}", "0018|0050": f"{sz:.6f}"}
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(dicom_dir / f"IMG-0002-{number:05d}.dcm"))
        writer.Execute(sl)
        assert cv2.imwrite(str(ground_dir / f"IMG-0002-{number:05d}.png"), grey[k])
    return root


@pytest.fixture(scope="module")
def source(chaos_dir):
    image = sitk.ReadImage(str(chaos_dir / f"image_{PID}.nii.gz"))[:, :, SLICES]
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(chaos_dir / f"label_{PID}.nii.gz")))
    return image, label[SLICES].astype(np.uint8)


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    """Raw scan written once and converted with the CLI: (raw root, output root)."""
    base = tmp_path_factory.mktemp("chaos")
    raw = write_raw_scan(base / "MR", *source)
    chaos.main(["--src", str(raw), "--dst", str(base / "out" / "normalized")])
    return raw, base / "out"


def files_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.nii.gz"))}


def test_intermediate_nifti_equals_source(source, converted):
    image, label = source
    niis = converted[1] / "niis" / "T2SPIR"
    img = sitk.ReadImage(str(niis / f"image_{PID}.nii.gz"))
    lbl = sitk.ReadImage(str(niis / f"label_{PID}.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(image))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(lbl), label)
    for got in (img, lbl):
        np.testing.assert_allclose(got.GetSpacing(), image.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(got.GetOrigin(), image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(got.GetDirection(), (1, 0, 0, 0, -1, 0, 0, 0, 1), atol=1e-9)


def test_normalized_output(source, converted):
    image, label = source
    out = converted[1] / "normalized"
    img = sitk.ReadImage(str(out / f"image_{PID}.nii.gz"))
    lbl = sitk.ReadImage(str(out / f"label_{PID}.nii.gz"))
    z = image.GetDepth()
    for got in (img, lbl):
        assert got.GetPixelID() == sitk.sitkFloat64
        assert sitk.GetArrayFromImage(got).shape == (z + 1, 256, 256)
        np.testing.assert_allclose(got.GetSpacing(), (1.25, 1.25, 7.70), atol=1e-6)
        np.testing.assert_allclose(got.GetDirection(), image.GetDirection(), atol=1e-9)
        np.testing.assert_allclose(got.GetOrigin(), image.GetOrigin(), atol=1e-4)
    arr, lab = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lbl)
    clipped, _ = clip_percentile(sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkInt16)))
    # ITK truncates linear interpolation to int16, so grid noise can take 1 off a value.
    diff = arr[:z] - clipped
    assert set(np.unique(diff)) <= {-1.0, 0.0}
    assert np.mean(diff == 0) > 0.5
    assert np.all(arr[z] == 0) and np.all(lab[z] == 0)
    np.testing.assert_array_equal(lab[:z], label)
    assert set(np.unique(lab)) == {0, 1, 2, 3, 4}
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["preprocessing"]  # parameters recorded
    assert json.loads((out / "splits.json").read_text(encoding="utf-8"))["folds"] == []  # too few scans


def test_png_order_is_numeric():
    names = ["IMG-0002-10.png", "IMG-0002-9.png", "IMG-0002-00011.png"]
    assert sorted(names, key=chaos.png_index) == names[1:2] + names[:1] + names[2:]
    with pytest.raises(ValueError, match=r"label\.png: expected a PNG name ending in"):
        chaos.png_index("label.png")


def test_pngs_follow_their_same_named_dicom(source, tmp_path):
    raw = write_raw_scan(tmp_path / "MR", *source, reverse_names=True)
    scan = chaos.find_scan(raw, PID)
    assert scan.reordered
    label = sitk.GetArrayFromImage(chaos.read_ground_truth(scan, chaos.read_dicom_series(scan)))
    np.testing.assert_array_equal(label, source[1])


def test_grey_values_map_explicitly():
    grey = np.array([[0, 63], [126, 252]], np.uint8)
    np.testing.assert_array_equal(chaos.grey_to_classes(grey, "x.png"), [[0, 1], [2, 4]])
    with pytest.raises(ValueError, match=r"x\.png: expected grey values \[0, 63, 126, 189, 252\]"
                                         r", found \[0, 63, 100\] \(unknown: \[100\]\)"):
        chaos.grey_to_classes(np.array([0, 63, 100], np.uint8), "x.png")


def test_missing_folders(tmp_path, converted):
    with pytest.raises(FileNotFoundError, match="expected the CHAOS MR folder"):
        chaos.main(["--src", str(tmp_path / "nope"), "--dst", str(tmp_path / "out")])
    (tmp_path / "MR" / "5" / "T2SPIR").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"5/T2SPIR/DICOM_anon: expected a folder"):
        chaos.main(["--src", str(tmp_path / "MR"), "--dst", str(tmp_path / "out")])
    raw = tmp_path / "MR2"
    shutil.copytree(converted[0], raw)
    shutil.rmtree(raw / PID / "T2SPIR" / "Ground")
    with pytest.raises(FileNotFoundError, match=r"Ground: expected the ground-truth PNG folder"):
        chaos.find_scans(raw)


@pytest.fixture
def rerun(converted, tmp_path):
    """A copy of the raw scan and of the finished outputs, plus the outputs' bytes."""
    raw, out = tmp_path / "MR", tmp_path / "out"
    shutil.copytree(converted[0], raw)
    shutil.copytree(converted[1], out)
    before = {**files_bytes(out / "normalized"), **{f"niis/{k}": v for k, v in
                                                    files_bytes(out / "niis" / "T2SPIR").items()}}
    return raw, out, before


def assert_unchanged(out: Path, before: dict[str, bytes]) -> None:
    after = {**files_bytes(out / "normalized"), **{f"niis/{k}": v for k, v in
                                                   files_bytes(out / "niis" / "T2SPIR").items()}}
    assert after == before
    leftovers = [p.name for p in out.rglob("*") if p.name.startswith(".")]
    assert not leftovers, leftovers


def run(raw: Path, out: Path) -> None:
    chaos.main(["--src", str(raw), "--dst", str(out / "normalized")])


def test_png_count_mismatch_keeps_outputs(rerun):
    raw, out, before = rerun
    ground = raw / PID / "T2SPIR" / "Ground"
    sorted(ground.glob("*.png"))[-1].unlink()
    with pytest.raises(ValueError, match=r"Ground: expected 4 PNGs \(one per DICOM slice in .*"
                                         r"DICOM_anon\), found 3"):
        run(raw, out)
    assert_unchanged(out, before)


def test_unknown_grey_value_keeps_outputs(rerun):
    raw, out, before = rerun
    bad = raw / PID / "T2SPIR" / "Ground" / "IMG-0002-00002.png"
    grey = cv2.imread(str(bad), cv2.IMREAD_UNCHANGED)
    grey[0, 0] = 100
    cv2.imwrite(str(bad), grey)
    with pytest.raises(ValueError, match=r"IMG-0002-00002\.png: expected grey values .*"
                                         r"unknown: \[100\]"):
        run(raw, out)
    assert_unchanged(out, before)


def test_unreadable_dicom_keeps_outputs(rerun):
    raw, out, before = rerun
    bad = raw / PID / "T2SPIR" / "DICOM_anon" / "IMG-0002-00003.dcm"
    bad.write_bytes(b"not a dicom file")
    with pytest.raises(ValueError, match=r"DICOM_anon: expected all 4 \.dcm files to form one "
                                         r"readable series, found 1 outside it .*"
                                         r"IMG-0002-00003\.dcm"):
        run(raw, out)
    assert_unchanged(out, before)


def test_from_niis_reruns_stage_3(rerun, converted, capsys):
    raw, out, _ = rerun
    shutil.rmtree(raw)
    for name in (f"image_{PID}.nii.gz", f"label_{PID}.nii.gz"):
        (out / "normalized" / name).unlink()
    chaos.main(["--src", str(raw), "--dst", str(out / "normalized"), "--from-niis"])
    assert "CHAOST2 1:" in capsys.readouterr().out
    for name in (f"image_{PID}.nii.gz", f"label_{PID}.nii.gz"):
        got = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "normalized" / name)))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(converted[1] / "normalized" / name)))
        np.testing.assert_array_equal(got, ref)


def test_reading_dicom_keeps_the_process_locale(tmp_path):
    import locale

    import SimpleITK as sitk

    from data_preprocessing.dicom import keep_locale

    before = locale.getpreferredencoding(False)
    img = sitk.GetImageFromArray(np.zeros((2, 8, 8), np.int16))
    with keep_locale():  # GDCM's writer resets the locale too
        for z in range(2):
            sl = img[:, :, z]
            sl.SetMetaData("0020|0032", f"0\\0\\{z}")
            sitk.WriteImage(sl, str(tmp_path / f"{z}.dcm"))
    assert locale.getpreferredencoding(False) == before
    with keep_locale():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
        reader.Execute()
    assert locale.getpreferredencoding(False) == before
