"""Metrics on hand-computed masks, empty cases, and against SimpleITK's filters."""
import math

import numpy as np
import pytest
import SimpleITK as sitk

from util.metrics import format_table, score_organ, summarize


def test_dice_precision_recall_by_hand():
    gt = np.zeros((1, 4, 4), bool)
    gt[0, :2, :2] = True                      # 4 px
    pred = np.zeros((1, 4, 4), bool)
    pred[0, :2, :3] = True                    # 6 px, 4 overlap
    s = score_organ(pred, gt, (1.0, 1.0, 1.0))
    assert (s.tp, s.fp, s.fn) == (4, 2, 0)
    assert s.dice == pytest.approx(8 / 10)
    assert s.precision == pytest.approx(4 / 6)
    assert s.recall == 1.0


def test_empty_cases_are_flagged_not_raised():
    empty = np.zeros((2, 4, 4), bool)
    full = np.ones((2, 4, 4), bool)
    both = score_organ(empty, empty, (1, 1, 1))
    assert both.dice == 1.0 and both.empty_gt and both.empty_pred
    assert math.isnan(both.precision) and math.isnan(both.hd95_mm)
    fp_only = score_organ(full, empty, (1, 1, 1))
    assert fp_only.dice == 0.0 and fp_only.precision == 0.0 and math.isnan(fp_only.recall)
    missed = score_organ(empty, full, (1, 1, 1))
    assert missed.dice == 0.0 and missed.recall == 0.0 and math.isnan(missed.precision)
    assert missed.empty_pred and not missed.empty_gt


def test_distances_in_millimetres():
    gt = np.zeros((3, 20, 20), bool)
    gt[1, 5:10, 5:10] = True
    pred = np.roll(gt, 2, axis=2)             # shifted 2 columns
    s = score_organ(pred, gt, (5.0, 1.0, 1.5))  # columns are 1.5 mm apart
    assert s.hd95_mm == pytest.approx(3.0)
    assert 0 < s.assd_mm <= 3.0
    same = score_organ(gt, gt, (5.0, 1.0, 1.5))
    assert same.hd95_mm == 0.0 and same.assd_mm == 0.0


def test_dice_agrees_with_simpleitk_overlap_filter():
    rng = np.random.default_rng(0)
    gt = rng.random((6, 32, 32)) > 0.6
    pred = gt ^ (rng.random((6, 32, 32)) > 0.85)
    ours = score_organ(pred, gt, (3.0, 1.0, 1.0))
    f = sitk.LabelOverlapMeasuresImageFilter()
    f.Execute(sitk.GetImageFromArray(gt.astype(np.uint8)),
              sitk.GetImageFromArray(pred.astype(np.uint8)))
    assert ours.dice == pytest.approx(f.GetDiceCoefficient())
    # HD95 from first principles: surface voxels (the mask minus its 6-connected erosion), the
    # distance of each to the other surface in mm, the 95th percentile of both directions
    from scipy import ndimage

    def surface(mask):
        return mask & ~ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1))

    def to_other(a, b):
        return ndimage.distance_transform_edt(~surface(b), sampling=(3.0, 1.0, 1.0))[surface(a)]
    want = np.percentile(np.hstack([to_other(pred, gt), to_other(gt, pred)]), 95)
    assert ours.hd95_mm == pytest.approx(want)


def test_summary_means_over_scans_and_table():
    a = np.zeros((1, 4, 4), bool)
    a[0, :2, :2] = True
    b = np.zeros((1, 4, 4), bool)
    b[0, :2, :1] = True
    scores = [score_organ(a, a, (1, 1, 1), "1", "LK"), score_organ(b, a, (1, 1, 1), "2", "LK"),
              score_organ(a, a, (1, 1, 1), "1", "RK"), score_organ(a, a, (1, 1, 1), "2", "RK")]
    summary = summarize(scores)
    lk = summary["per_organ"]["LK"]["dice"]
    assert lk["mean"] == pytest.approx((1 + 4 / 6) / 2) and lk["n"] == 2
    assert summary["overall"]["dice"]["mean"] == pytest.approx(((1 + 1) / 2 + (4 / 6 + 1) / 2) / 2)
    table = format_table(summary)
    assert "LK" in table and "overall" in table and "83.33" in table
