"""Augmentation (method.md §3.5): the affine matrix by hand; the torch resampling against
OpenCV and SciPy (the project's earlier implementation, kept here as the reference); label
recovery, gamma, seeding."""
import math

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage, stats

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


def cv2_scipy_reference(stack: np.ndarray, m: np.ndarray, fields: np.ndarray | None,
                        alpha: float, sigma: float) -> np.ndarray:
    """The resampling written with OpenCV and SciPy (what the project used before its torch
    path): warpAffine bilinear with a zero border, then map_coordinates order 1 'reflect'
    along the Gaussian-blurred fields. [H, W, C] in and out."""
    h, w = stack.shape[:2]
    out = cv2.warpAffine(stack, m, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0).reshape(stack.shape)
    if fields is None:
        return out
    ksize = int(4 * sigma) | 1
    dx, dy = (cv2.GaussianBlur(f.astype(np.float64), (ksize, ksize), sigma) * alpha
              for f in fields)
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                             indexing="ij")
    coords = np.stack([rows + dy, cols + dx])
    return np.stack([ndimage.map_coordinates(out[..., c], coords, order=1, mode="reflect")
                     for c in range(stack.shape[2])], axis=-1)


def torch_warp(stack: np.ndarray, m: np.ndarray, fields: np.ndarray | None,
               params: A.AugParams) -> np.ndarray:
    theta = torch.from_numpy(A.unit_theta(m[None], *stack.shape[:2]))
    out = A.warp(torch.from_numpy(stack).permute(2, 0, 1)[None], theta,
                 None if fields is None else torch.from_numpy(fields)[None], params)
    return out[0].permute(1, 2, 0).numpy()


def numpy_fields(rng: np.random.Generator, shape) -> np.ndarray:
    """The elastic fields as the project drew them before they moved to the device: two
    ``U(-1, 1)`` NumPy draws, dx then dy."""
    return np.stack([rng.uniform(-1.0, 1.0, size=shape) for _ in range(2)]).astype(np.float32)


def torch_fields(seed: int, shape) -> np.ndarray:
    return A.elastic_fields([seed], shape)[0].numpy()


def smooth_image(shape, seed=0) -> np.ndarray:
    return (ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 3)
            * 10).astype(np.float32)


@pytest.mark.parametrize("preset", ["sabs_aug", "aug_v3"])
def test_torch_warp_equals_opencv_and_scipy_for_fixed_parameters(preset):
    """For fixed parameters (affine matrix and raw fields) the torch resampling equals
    warpAffine + map_coordinates within interpolation tolerance (OpenCV rounds coordinates to
    1/32 px), on a non-square image, with and without the elastic step."""
    params = A.PRESETS[preset]
    rng = np.random.default_rng(1)
    stack = np.stack([smooth_image((96, 80)), np.zeros((96, 80)), np.zeros((96, 80))], -1)
    stack[30:70, 20:60, 2] = 1
    stack[..., 1] = 1 - stack[..., 2]
    stack = stack.astype(np.float32)
    for _ in range(5):
        m = A.draw_affine(rng, params, (96, 80))
        fields = torch_fields(A.draw_field_seed(rng), (96, 80))
        for f in (None, fields):
            ref = cv2_scipy_reference(stack, m, f, params.elastic_alpha, params.elastic_sigma)
            got = torch_warp(stack, m, f, params)
            assert np.abs(got - ref).max() < 0.02 * np.ptp(stack[..., 0])
            assert np.abs(got - ref).mean() < 1e-3
            assert (A.recover_label(torch.from_numpy(got[None, ..., 1:]).permute(0, 3, 1, 2))
                    [0].numpy() != np.argmax(np.rint(ref[..., 1:]), -1)).mean() < 1e-3


def test_smoothing_equals_opencvs_gaussian_blur():
    raw = np.random.default_rng(0).uniform(-1, 1, size=(2, 64, 48)).astype(np.float32)
    got = A.smooth_fields(torch.from_numpy(raw)[None], 10.0, 5.0)[0].numpy()
    ref = np.stack([cv2.GaussianBlur(f.astype(np.float64), (21, 21), 5) * 10 for f in raw])
    assert np.abs(got - ref).max() < 1e-5


def test_a_batch_warps_as_its_members_alone():
    params = A.PRESETS["aug_v3"]
    rng = np.random.default_rng(2)
    stacks = torch.from_numpy(np.stack([smooth_image((64, 64), s) for s in range(3)]))[:, None]
    ms = torch.from_numpy(A.unit_theta(
        np.stack([A.draw_affine(rng, params, (64, 64)) for _ in range(3)]), 64, 64))
    fields = A.elastic_fields([11, 12, 13], (64, 64))
    assert torch.equal(fields[1], A.elastic_fields([12], (64, 64))[0])  # one field per seed
    batch = A.warp(stacks, ms, fields, params)
    for i in range(3):
        alone = A.warp(stacks[i:i + 1], ms[i:i + 1], fields[i:i + 1], params)
        assert torch.allclose(batch[i:i + 1], alone, atol=1e-6)


def test_identity_keeps_everything_and_a_shrink_leaves_a_zero_border():
    img = smooth_image((32, 32))
    lab = (np.arange(32 * 32).reshape(32, 32) % 3 == 0).astype(np.int64)
    out_img, out_lab = A.augment_pair(img, lab, np.random.default_rng(0), NO_GEOMETRY,
                                      gamma=False)
    assert np.allclose(out_img, img, atol=1e-5) and np.array_equal(out_lab, lab)
    shrink = A.AugParams(rotate_deg=0, shift_px=0, shear_deg=0, scale=(0.5, 0.5),
                         elastic_alpha=0)
    out, _ = A.augment_pair(np.ones((32, 32), np.float32), np.zeros((32, 32), np.int64),
                            np.random.default_rng(0), shrink, gamma=False)
    assert out[0, 0] == 0 and out[-1, -1] == 0 and out[16, 16] == 1


def test_elastic_displacement_size():
    ramp = np.repeat(np.arange(256, dtype=np.float32)[None, :], 256, axis=0)
    m = A.affine_matrix(0, 0, 0, 0, 1, (256, 256))
    fields = torch_fields(2, (256, 256))
    out = torch_warp(ramp[..., None], m, fields, A.PRESETS["sabs_aug"])[..., 0]
    dx = (out - ramp)[20:-20, 20:-20]        # column displacement, interior
    assert 0.15 < dx.std() < 0.5       # method.md §3.5: about 0.3 px std at α = 10
    assert abs(dx.mean()) < 0.1


def test_recover_label_by_hand():
    onehot = torch.tensor([[[0.6, 0.4], [0.5, 0.5], [0.0, 0.0], [0.2, 0.8]]]).permute(0, 2, 1)
    # 0.5 / 0.5 rounds to 0 / 0 (half to even): background, as is a 0 / 0 border pixel
    assert A.recover_label(onehot[..., None])[..., 0].tolist() == [[0, 0, 0, 1]]
    three = torch.tensor([[0.1, 0.2, 0.9], [0.0, 0.9, 0.2], [0.6, 0.0, 0.7]]).T[None, :, :, None]
    assert A.recover_label(three)[0, :, 0].tolist() == [2, 1, 0]  # ties: the first channel


def test_gamma_by_hand():
    img = torch.tensor([[[0.0, 0.5, 1.0]]])
    out = A.gamma_transform(img, torch.tensor([2.0]))
    assert torch.allclose(out, torch.tensor([[[0.0, 0.25, 1.0]]]), atol=1e-4)
    assert torch.allclose(A.gamma_transform(img - 3, torch.tensor([1.0])), img - 3, atol=1e-4)
    assert out.dtype == torch.float32


def test_a_thousand_draws_match_the_opencv_scipy_pipeline():
    """The same generator draws give the same augmented episodes as the OpenCV/SciPy pipeline:
    per draw within interpolation tolerance, and over 1000 draws the distributions of the
    augmented images' mean and of the masks' area are the same (two-sample Kolmogorov-Smirnov,
    p > 0.05; both samples are in fact paired draw by draw)."""
    params = A.PRESETS["sabs_aug"]
    img = smooth_image((64, 64))
    lab = np.zeros((64, 64), np.int64)
    lab[20:44, 16:40] = 1
    ours, ref = {"mean": [], "area": []}, {"mean": [], "area": []}
    for seed in range(1000):
        out_img, out_lab = A.augment_pair(img, lab, np.random.default_rng(seed), params)
        rng = np.random.default_rng(seed)
        m = A.draw_affine(rng, params, img.shape)
        fields = torch_fields(A.draw_field_seed(rng), img.shape)
        stack = np.stack([img, lab == 0, lab == 1], -1).astype(np.float32)
        r = cv2_scipy_reference(stack, m, fields, params.elastic_alpha, params.elastic_sigma)
        r_img = r[..., 0]
        g = rng.uniform(*params.gamma)
        lo, span = r_img.min(), r_img.max() - r_img.min() + 1e-5
        r_img = span * np.power((r_img - lo + 1e-5) / span, g) + lo
        r_lab = np.argmax(np.rint(r[..., 1:]), -1)
        assert np.abs(out_img - r_img).max() < 1e-4 * np.ptp(img)  # measured: 7.7e-6
        assert (out_lab != r_lab).sum() <= 1                        # measured: 0 px
        ours["mean"].append(out_img.mean())
        ref["mean"].append(r_img.mean())
        ours["area"].append(out_lab.sum())
        ref["area"].append(r_lab.sum())
    for key in ours:
        assert stats.ks_2samp(ours[key], ref[key], method="asymp").pvalue > 0.05, key


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
    _, out = A.augment_pair(np.zeros((48, 48), np.float32), lab, np.random.default_rng(3),
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


def test_fields_drawn_from_a_seed_match_the_earlier_numpy_draw():
    """The elastic fields moved from the loader's NumPy generator to a torch generator seeded
    per view (drawn on the device that warps). Two-sample Kolmogorov-Smirnov tests, two
    independent samples of 1000 views each (different seeds), p > 0.01 for every statistic:
    the plan's parameters (θ entries, γ), a raw field value, the smoothed displacement's RMS,
    and the augmented image's mean and standard deviation and the mask's area, of the whole
    pipeline with each draw."""
    params = A.PRESETS["sabs_aug"]
    img = smooth_image((64, 64))
    lab = np.zeros((64, 64), np.int64)
    lab[20:44, 16:40] = 1
    stack = torch.from_numpy(np.stack([img, lab == 0, lab == 1]).astype(np.float32))[None]
    new, old = {}, {}

    def record(out, key, value):
        out.setdefault(key, []).append(float(value))

    for i in range(1000):
        rng = np.random.default_rng(i)
        view = A.draw_view(rng, params, img.shape)
        out_img, out_lab = A.augment_pair(img, lab, np.random.default_rng(i), params)
        fields = A.elastic_fields([int(view["field_seed"])], img.shape)
        # the earlier pipeline: affine, the NumPy fields, γ, from a generator of another seed
        rng = np.random.default_rng(10_000 + i)
        m = A.draw_affine(rng, params, img.shape)
        old_fields = torch.from_numpy(numpy_fields(rng, img.shape))[None]
        g = rng.uniform(*params.gamma)
        theta = A.unit_theta(m[None], 64, 64)
        warped = A.warp(stack, torch.from_numpy(theta), old_fields, params)
        old_img = A.gamma_transform(warped[:, 0], torch.tensor([g]))[0].numpy()
        old_lab = A.recover_label(warped[:, 1:])[0].numpy()
        for out, th, gm, f, im, lb in [(new, view["theta"], view["gamma"], fields, out_img,
                                        out_lab), (old, theta[0], g, old_fields, old_img,
                                                   old_lab)]:
            record(out, "theta_00", th[0, 0])
            record(out, "theta_02", th[0, 2])
            record(out, "gamma", gm)
            record(out, "field", f[0, 0, 10, 10])
            disp = A.smooth_fields(f, params.elastic_alpha, params.elastic_sigma)
            record(out, "displacement_rms", disp.pow(2).mean().sqrt())
            record(out, "image_mean", im.mean())
            record(out, "image_std", im.std())
            record(out, "area", lb.sum())
    for key in new:
        p = stats.ks_2samp(new[key], old[key], method="asymp").pvalue
        assert p > 0.01, (key, p)
