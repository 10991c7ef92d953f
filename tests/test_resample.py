"""R1 / R2 / R3 and the MRI step 3 on hand-checkable inputs (method.md §1.1)."""
from __future__ import annotations


import numpy as np
import pytest
import SimpleITK as sitk

from data_preprocessing import resample as rs


def line_image(values, spacing_x=1.0, dtype=np.float32) -> sitk.Image:
    """A 3-D image of size (n, 1, 1): the values lie along x; SITK array (1, 1, n)."""
    img = sitk.GetImageFromArray(np.asarray(values, dtype=dtype).reshape(1, 1, -1))
    img.SetSpacing((spacing_x, 1.0, 1.0))
    return img


def along_x(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img)[0, 0, :]


@pytest.mark.parametrize("n, sp_in, sp_out, expected", [
    (10, 1.0, 1.0, 11),   # exact ratio: the "+1" adds a voxel
    (10, 1.0, 2.0, 6),    # 5 + 1
    (7, 1.0, 2.0, 4),     # int(3.5 + 1)
    (36, 1.54, 7.70, 8),  # int(7.2 + 1)
])
def test_resampled_size_hand_cases(n, sp_in, sp_out, expected):
    assert rs.resampled_size((n,), (sp_in,), (sp_out,)) == (expected,)


@pytest.mark.parametrize("sx", [0.6, 0.66, 0.68359375, 0.7, 0.7421875, 0.78125, 0.8, 0.9765625])
def test_sabs_in_plane_size_is_257(sx):
    # 448 px resampled by 1.75 is exactly 256 + 1; the epsilon absorbs float noise in the ratio.
    assert rs.resampled_size((448,), (sx,), (sx * 1.75,)) == (257,)


def test_size_epsilon_restores_a_plane_lost_to_float_noise():
    n, sp_in, sp_out = 9, 0.2, 0.2 * 3  # 9 * 0.2 / 0.6000000000000001 = 2.9999999999999996
    assert int(n * sp_in / sp_out + 1) == 3
    assert rs.resampled_size((n,), (sp_in,), (sp_out,)) == (4,)


def test_r1_hand_values_and_trailing_zero_plane():
    # Positions 0, 2, 4 of [10, 20, 30, 40]: x = 4 is past the last voxel (index 3 + 0.5) -> 0.
    out = rs.resample_to_spacing(line_image([10, 20, 30, 40]), (2.0, 1.0, 1.0))
    assert out.GetSize() == (3, 2, 2)
    np.testing.assert_allclose(along_x(out), [10, 30, 0])
    # With five voxels the third sample (x = 4) is inside: no zero plane.
    out = rs.resample_to_spacing(line_image([10, 20, 30, 40, 50]), (2.0, 1.0, 1.0))
    np.testing.assert_allclose(along_x(out), [10, 30, 50])


def test_r1_linear_pixel_type_and_geometry():
    img = line_image([0, 10, 20, 30], dtype=np.int16)
    img.SetOrigin((3.0, -2.0, 5.0))
    direction = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    img.SetDirection(direction)
    out = rs.resample_to_spacing(img, (0.5, 1.0, 1.0))
    assert out.GetPixelID() == sitk.sitkInt16
    assert out.GetOrigin() == (3.0, -2.0, 5.0) and out.GetDirection() == direction
    assert out.GetSpacing() == (0.5, 1.0, 1.0)
    assert out.GetSize() == (9, 2, 2)
    np.testing.assert_array_equal(along_x(out)[:7], [0, 5, 10, 15, 20, 25, 30])


@pytest.mark.parametrize("r", [0.3, 0.5, 0.7, 1.0, 1.3, 1.75])
def test_r1_trailing_zero_plane_iff_frac_condition(r):
    for n in range(2, 13):
        frac = (n * r) % 1.0
        if min(abs(frac - r / 2), frac, 1 - frac) < 1e-6:
            continue  # boundary cases are decided by rounding noise
        out = along_x(rs.resample_to_spacing(line_image(np.ones(n), spacing_x=r), (1, 1, 1)))
        assert len(out) == int(n * r + 1)
        assert (out[-1] == 0) == (frac < r / 2), (n, r)
        assert np.all(out[:-1] > 0)


def test_full_spacing_two_values_keep_z():
    img = sitk.Image(4, 4, 3, sitk.sitkFloat32)
    img.SetSpacing((1.0, 1.0, 6.5))
    assert rs.full_spacing(img, (1.25, 1.25)) == (1.25, 1.25, 6.5)
    with pytest.raises(ValueError, match="expected 3 values"):
        rs.full_spacing(img, (1.0,))


def test_r2_hand_values():
    # Label [1, 2, 2] sampled every 0.5 voxel: midway between 1 and 2 both maps are 0.5, which
    # rint sends to 0, so that sample is background; past the end (index 3) is 0 too.
    out = rs.resample_label(line_image([1, 2, 2], dtype=np.uint8), (0.5, 1.0, 1.0))
    assert out.GetPixelID() == sitk.sitkFloat64
    values = along_x(out)
    assert len(values) == 7
    np.testing.assert_array_equal(values[:5], [1, 0, 2, 2, 2])
    assert values[6] == 0


def test_r2_larger_label_wins(monkeypatch):
    # Make every resampled binary map all ones: each later (larger) value overwrites the output.
    def all_ones(image, spacing):
        out = sitk.GetImageFromArray(np.ones(sitk.GetArrayFromImage(image).shape, np.float32))
        out.CopyInformation(image)
        return out

    monkeypatch.setattr(rs, "resample_to_spacing", all_ones)
    out = rs.resample_label(line_image([0, 3, 1, 0], dtype=np.uint8), (1, 1, 1))
    np.testing.assert_array_equal(along_x(out), [3, 3, 3, 3])


def test_r2_reference_geometry_and_size_check():
    lbl = line_image([0, 1, 1, 0], dtype=np.uint8)
    ref = rs.resample_to_spacing(line_image([0, 0, 0, 0]), (2.0, 1.0, 1.0))
    ref.SetOrigin((7.0, 8.0, 9.0))
    out = rs.resample_label(lbl, (2.0, 1.0, 1.0), reference=ref)
    assert out.GetOrigin() == (7.0, 8.0, 9.0)
    with pytest.raises(ValueError, match="differs from the reference"):
        rs.resample_label(lbl, (1.0, 1.0, 1.0), reference=ref)


def test_r3_crop_and_pad_index_mapping():
    H, W, Z = 300, 200, 2
    r, c, z = np.meshgrid(np.arange(H), np.arange(W), np.arange(Z), indexing="ij")
    src = (r * 1000 + c + 1_000_000 * z).astype(np.int32)
    out = rs.crop_or_pad(src, 256, pad_value=-1)
    assert out.shape == (256, 256, 2) and out.dtype == np.float64
    # cH, cW = 150, 100: output (r, c) <- source (22 + r, -28 + c)
    assert out[0, 28, 0] == src[22, 0, 0]
    assert out[255, 227, 1] == src[277, 199, 1]
    assert np.all(out[:, :28] == -1) and np.all(out[:, 228:] == -1)
    np.testing.assert_array_equal(out[:, 28:228], src[22:278, :])


@pytest.mark.parametrize("n, first_src, first_dst", [(257, 0, 0), (256, 0, 0), (255, -1, 1),
                                                     (260, 2, 0), (10, -123, 123)])
def test_r3_centre_rule_per_size(n, first_src, first_dst):
    src = np.broadcast_to(np.arange(n, dtype=float)[:, None, None], (n, 256, 1))  # W: identity
    out = rs.crop_or_pad(src, 256, pad_value=-5)
    assert n // 2 - 128 == first_src  # output row 0 <- source row n//2 - 128
    kept = min(n, 256 + first_src) - max(first_src, 0)
    np.testing.assert_array_equal(out[first_dst:first_dst + kept, 0, 0],
                                  np.arange(max(first_src, 0), max(first_src, 0) + kept))
    assert np.all(out[:first_dst, 0, 0] == -5)
    assert np.all(out[first_dst + kept:, 0, 0] == -5)


def test_r3_volume_uses_rows_as_h():
    arr = np.zeros((2, 300, 100))  # (Z, Y, X)
    arr[:, 150, 50] = 7
    out = rs.crop_or_pad_volume(arr, 256)
    assert out.shape == (2, 256, 256)
    assert np.all(out[:, 128, 128] == 7) and out.sum() == 14


def test_clip_percentile_truncates_for_integers():
    arr = np.arange(1000, dtype=np.int16)  # 99.5th percentile = 994.005
    out, value = rs.clip_percentile(arr)
    assert value == 994 and out.dtype == np.int16
    assert out.max() == 994 and np.array_equal(out[:995], arr[:995])
    out, value = rs.clip_percentile(arr.astype(np.float64))
    assert value == pytest.approx(994.005)


def test_normalize_resample_crop_exact_grid():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 500, size=(3, 200, 300)).astype(np.float64)  # (Z, Y, X)
    lab = np.zeros(arr.shape, np.uint8)
    lab[:, 80:120, 100:200] = 2
    lab[1, 90:100, 120:140] = 4
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((1.25, 1.25, 8.0))
    label = sitk.GetImageFromArray(lab)
    label.CopyInformation(image)
    img_out, lbl_out, info = rs.normalize_resample_crop(image, label, (1.25, 1.25, 8.0))
    assert img_out.GetSize() == lbl_out.GetSize() == (256, 256, 4)
    assert img_out.GetPixelID() == lbl_out.GetPixelID() == sitk.sitkFloat64
    assert info["resampled_size"] == (301, 201, 4)
    out = sitk.GetArrayFromImage(img_out)
    clipped, _ = rs.clip_percentile(arr)
    # rows: 201 // 2 - 128 = -28 (pad); cols: 301 // 2 - 128 = 22
    np.testing.assert_allclose(out[:3, 28:228, :], clipped[:, :, 22:278], atol=1e-9)
    assert np.all(out[:, :28] == 0) and np.all(out[3] == 0)
    lbl = sitk.GetArrayFromImage(lbl_out)
    np.testing.assert_array_equal(lbl[:3, 28:228, :], lab[:, :, 22:278])
    # two-value spacing keeps the input z spacing
    img2, _, _ = rs.normalize_resample_crop(image, label, (2.5, 2.5))
    assert img2.GetSpacing() == (2.5, 2.5, 8.0)


def test_normalize_resample_crop_rejects_mismatched_label():
    image = sitk.Image(10, 10, 3, sitk.sitkInt16)
    label = sitk.Image(10, 10, 4, sitk.sitkUInt8)
    with pytest.raises(ValueError, match=r"scan_7: expected the label size .* found"):
        rs.normalize_resample_crop(image, label, (1, 1, 1), name="scan_7")
