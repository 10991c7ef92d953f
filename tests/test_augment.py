"""Augmentation (method.md §3.5): the affine matrix by hand, elastic, label recovery, gamma,
seeding."""
import math

import cv2
import numpy as np
import pytest

from dataloaders import augment as A

NO_GEOMETRY = A.AugParams(rotate_deg=0, shift_px=0, shear_deg=0, scale=(1, 1), elastic_alpha=0)


def _apply(m: np.ndarray, x: float, y: float) -> np.ndarray:
    return m @ np.array([x, y, 1.0])


def test_affine_identity_and_rotation_match_opencv():
    assert np.allclose(A.affine_matrix(0, 0, 0, 0, 1, (256, 256)), np.eye(3)[:2])
    rot = A.affine_matrix(5, 0, 0, 0, 1, (256, 256))
    assert np.allclose(rot, cv2.getRotationMatrix2D((128, 128), 5, 1))


def test_affine_order_rotation_first_then_shift_then_shear_then_zoom():
    cx = cy = 128
    # θ = 90° maps (cx + 1, cy) to (cx, cy − 1); the shift tx = 1 comes after: (cx + 1, cy − 1).
    # Shift first would give (cx, cy − 2).
    m = A.affine_matrix(90, 1, 0, 0, 1, (256, 256))
    assert np.allclose(_apply(m, cx + 1, cy), [cx + 1, cy - 1])
    # shear about the origin: (x, y) -> (x − sin φ · y, cos φ · y)
    sh = A.affine_matrix(0, 0, 0, 30, 1, (256, 256))
    assert np.allclose(sh, [[1, -0.5, 0], [0, math.cos(math.radians(30)), 0]])
    # zoom about the centre: the centre stays, a point 10 px right moves to 12 px at s = 1.2
    z = A.affine_matrix(0, 0, 0, 0, 1.2, (256, 256))
    assert np.allclose(_apply(z, cx, cy), [cx, cy])
    assert np.allclose(_apply(z, cx + 10, cy), [cx + 12, cy])
    # shift then zoom: tx = 5 becomes 6 px after a zoom of 1.2
    assert np.allclose(_apply(A.affine_matrix(0, 5, 0, 0, 1.2, (256, 256)), cx, cy), [cx + 6, cy])


def test_random_affine_identity_and_zero_border():
    rng = np.random.default_rng(0)
    stack = np.random.default_rng(1).normal(size=(32, 32, 3)).astype(np.float32)
    assert np.array_equal(A.random_affine(stack, rng, NO_GEOMETRY), stack)
    shrink = A.AugParams(rotate_deg=0, shift_px=0, shear_deg=0, scale=(0.5, 0.5))
    out = A.random_affine(np.ones((32, 32, 3), np.float32), rng, shrink)
    assert (out[0, 0] == 0).all() and (out[-1, -1] == 0).all() and (out[16, 16] == 1).all()


def test_elastic_identity_at_zero_alpha_and_displacement_size():
    rng = np.random.default_rng(0)
    stack = np.random.default_rng(1).normal(size=(64, 64, 2)).astype(np.float32)
    assert np.allclose(A.elastic_deform(stack, rng, 0.0, 5.0), stack)
    ramp = np.repeat(np.arange(256, dtype=np.float32)[None, :], 256, axis=0)[..., None]
    out = A.elastic_deform(ramp, np.random.default_rng(2), 10.0, 5.0)
    dx = (out[..., 0] - ramp[..., 0])[20:-20, 20:-20]        # column displacement, interior
    assert 0.15 < dx.std() < 0.5       # method.md §3.5: about 0.3 px std at α = 10
    assert abs(dx.mean()) < 0.1


def test_recover_label_by_hand():
    onehot = np.array([[[0.6, 0.4], [0.5, 0.5], [0.0, 0.0], [0.2, 0.8]]], np.float32)
    # 0.5 / 0.5 rounds to 0 / 0 (half to even): background, as is a 0 / 0 border pixel
    assert A.recover_label(onehot).tolist() == [[0, 0, 0, 1]]
    with pytest.raises(AssertionError, match="exceed 1"):
        A.recover_label(np.full((1, 1, 2), 1.6, np.float32))


def test_gamma_by_hand():
    img = np.array([[0.0, 0.5, 1.0]], np.float32)
    out = A.gamma_transform(img, 2.0)
    assert np.allclose(out, [[0.0, 0.25, 1.0]], atol=1e-4)
    assert np.allclose(A.gamma_transform(img - 3, 1.0), img - 3, atol=1e-4)  # γ = 1: identity
    assert out.dtype == np.float32


def test_augment_pair_shapes_labels_and_seeding():
    img = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    lab = np.zeros((64, 64), np.int64)
    lab[20:40, 24:44] = 1
    state = np.random.get_state()[1].copy()
    a = A.augment_pair(img, lab, np.random.default_rng(7), A.PRESETS["sabs_aug"])
    b = A.augment_pair(img, lab, np.random.default_rng(7), A.PRESETS["sabs_aug"])
    c = A.augment_pair(img, lab, np.random.default_rng(8), A.PRESETS["sabs_aug"])
    assert np.array_equal(np.random.get_state()[1], state)   # the global NumPy RNG is untouched
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (64, 64) and a[0].dtype == np.float32
    assert a[1].dtype == np.int64 and set(np.unique(a[1])) <= {0, 1}
    assert 0.5 * lab.sum() < a[1].sum() < 1.6 * lab.sum()     # zoom 0.9–1.2 keeps the area near


def test_gamma_touches_only_the_image_and_no_geometry_keeps_labels():
    img = np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32)
    lab = (np.arange(32 * 32).reshape(32, 32) % 3 == 0).astype(np.int64)
    out_img, out_lab = A.augment_pair(img, lab, np.random.default_rng(0), NO_GEOMETRY)
    assert np.array_equal(out_lab, lab)
    assert np.argsort(out_img.ravel()).tolist() == np.argsort(img.ravel()).tolist()  # monotone


def test_multiclass_label_recovery_through_geometry():
    lab = np.zeros((48, 48), np.int64)
    lab[5:20, 5:20], lab[25:40, 25:40] = 1, 2
    _, out = A.geometric(np.zeros((48, 48), np.float32), lab, np.random.default_rng(3),
                         A.PRESETS["sabs_aug"], n_classes=3)
    assert set(np.unique(out)) == {0, 1, 2}


def test_presets_and_errors():
    assert A.get_aug_params("aug_v3").elastic_alpha == 20
    assert A.get_aug_params("aug_v3").gamma == (0.2, 1.8)
    assert A.get_aug_params("sabs_aug") == A.AugParams()
    assert A.get_aug_params("none") is None and A.get_aug_params(None) is None
    with pytest.raises(ValueError, match="sabs_aug"):
        A.get_aug_params("sabs")
    with pytest.raises(ValueError, match="scale"):
        A.AugParams(scale=(1.2, 0.9))
    with pytest.raises(ValueError, match="same shape|one shape"):
        A.augment_pair(np.zeros((4, 4)), np.zeros((4, 5), int), np.random.default_rng(0),
                       A.AugParams())
