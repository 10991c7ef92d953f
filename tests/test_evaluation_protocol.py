"""Evaluation protocols (method.md §6.2–§6.5, §9.5): percentiles, chunks (Appendix B), support
parts, query plans under the paper / realistic / ADNet protocols, absent organs, real CHAOS-T2 and CMR."""
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from data_preprocessing.contract import load_dataset, register
from data_preprocessing.phantom import write_phantom
from data_preprocessing.prepare import link_scans
from dataloaders import evaluation as V
from dataloaders.volumes import Volume
from util.io import read_json


def _volume(pid: str, organ_z: range, n: int = 40, body=(0, 39), size: int = 8,
            class_id: int = 2) -> Volume:
    label = np.zeros((n, size, size), np.uint8)
    label[list(organ_z), 2:5, 2:5] = class_id
    label[:, 6, 6] = 1                                 # another organ on every slice
    image = np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, size, size), np.float32)
    return Volume(pid=pid, image=image, label=label, body_z=body)


def _scan(vol: Volume) -> V.QueryScan:
    return V.QueryScan(vol.pid, torch.from_numpy(vol.image), torch.from_numpy(vol.label),
                       vol.body_z)


def test_part_percentiles_and_support_slices():
    assert V.part_percentiles(1) == [0.5]
    assert V.part_percentiles(3) == pytest.approx([1 / 6, 1 / 2, 5 / 6])
    assert V.part_percentiles(5) == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    for bad in (0, 2, 4, -1):
        with pytest.raises(ValueError, match="odd"):
            V.part_percentiles(bad)
    zlist = list(range(10, 22))                         # 12 slices: indices 2, 6, 10
    assert [V.support_slice(zlist, p) for p in V.part_percentiles(3)] == [12, 16, 20]
    assert V.support_slice([7], 5 / 6) == 7


def test_chunk_assignment_appendix_b():
    parts = [V.chunk_index(z, 10, 23, 3) for z in range(10, 24)]
    assert parts == [0] * 5 + [1] * 4 + [2] * 5       # 10–14, 15–18, 19–23 (23 clipped)
    assert V.chunk_index(5, 10, 23, 3) == 0 and V.chunk_index(30, 10, 23, 3) == 2
    assert V.chunk_index(12, 12, 12, 3) == 0 and V.chunk_index(20, 12, 12, 3) == 0
    assert [V.chunk_index(z, 0, 4, 1) for z in range(5)] == [0] * 5
    assert V.count_chunks(9, 3) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert V.count_chunks(10, 3) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]   # bounds 0, 3, 6, 10
    assert V.count_chunks(2, 3) == [1, 2]                               # bounds 0, 0, 1, 2


def test_chunk_index_floor_divides_as_the_original_at_part_boundaries():
    # 5 / (15 / 9) is 3.0 in true division, but 5 // (15 / 9) is 2.0: the original's value
    assert V.chunk_index(5, 0, 15, 9) == 2
    for npart in (3, 5, 9, 15):
        for z_max in range(1, 40):
            for z in range(z_max + 1):
                assert V.chunk_index(z, 0, z_max, npart) == \
                    int(min(max(z // (z_max / npart), 0), npart - 1))


def test_support_parts_one_and_two_shots():
    one = V.build_support([_volume("8", range(10, 22))], 2, "RK", npart=3)
    assert [p.z for p in one.parts] == [[12], [16], [20]]
    part = one.parts[1]
    assert part.images.shape == (1, 3, 8, 8) and part.images.dtype == torch.float32
    assert torch.equal(part.images[0, 0], torch.full((8, 8), 16.0))
    assert part.fg.shape == (1, 8, 8) and part.fg.sum() == 9
    assert torch.equal(part.bg, 1 - part.fg) and part.bg[0, 6, 6] == 1   # other organs in bg
    two = V.build_support([_volume("8", range(10, 22)), _volume("10", range(0, 6))], 2, "RK", 5)
    assert len(two.parts) == 5 and two.parts[0].images.shape == (2, 3, 8, 8)
    assert [p.z for p in two.parts] == [[11, 0], [13, 1], [16, 3], [18, 4], [20, 5]]
    assert two.parts[0].scan_ids == ["8", "10"]
    with pytest.raises(ValueError, match="another support scan"):
        V.build_support([_volume("8", range(10, 22))], 3, "LK")


def test_paper_protocol_plan():
    support = V.build_support([_volume("8", range(10, 22))], 2, "RK")
    plan = V.plan_query(_scan(_volume("1", range(10, 24))), 2, support, "paper")
    assert plan.status == "ok" and plan.gt_z == (10, 23)
    assert plan.predict_z == list(range(40))                 # every slice is predicted
    assert plan.score_z == list(range(10, 24))               # only the organ's GT extent scores
    assert [plan.part_of(z) for z in range(10, 24)] == [0] * 5 + [1] * 4 + [2] * 5
    assert plan.part_of(0) == 0 and plan.part_of(39) == 2
    margin = V.plan_query(_scan(_volume("1", range(10, 24))), 2, support, "paper", z_margin=2)
    assert margin.score_z == list(range(8, 26))


def test_absent_organ_is_reported_not_a_crash():
    support = V.build_support([_volume("8", range(10, 22))], 2, "RK")
    scan = _scan(_volume("1", range(0), class_id=2))
    for protocol in ("paper", "adnet"):
        plan = V.plan_query(scan, 2, support, protocol)
        assert plan.absent and plan.predict_z == [] and plan.score_z == [] and plan.gt_z is None
    real = V.plan_query(scan, 2, support, "realistic")
    assert real.absent and real.score_z == list(range(40))   # still predicted and scored


def test_realistic_protocol_uses_no_query_ground_truth():
    support = V.build_support([_volume("8", range(10, 20), n=41, body=(0, 40))], 2, "RK")
    a = V.plan_query(_scan(_volume("1", range(2, 6), n=21, body=(0, 20))), 2, support,
                     "realistic")
    b = V.plan_query(_scan(_volume("1", range(12, 19), n=21, body=(0, 20))), 2, support,
                     "realistic")
    assert (a.predict_z, a.parts, a.score_z) == (b.predict_z, b.parts, b.score_z)
    assert a.score_z == list(range(21))
    # support organ 10..19 in body 0..40 (relative 0.25..0.475) → query body 0..20: 5..9.5
    assert a.chunk_z == pytest.approx((5.0, 9.5))
    assert a.parts == [0] * 7 + [1] + [2] * 13     # interval 1.5: z ≤ 6, z = 7, z ≥ 8
    body = V.plan_query(_scan(_volume("1", range(2, 6), n=20, body=(2, 17))), 2, support,
                        "realistic", realistic_chunks="body")
    assert body.chunk_z == (2.0, 17.0) and body.parts[:7] == [0] * 7 and body.parts[-3:] == [2] * 3


def test_adnet_protocol_scores_labelled_slices_by_count():
    support = V.build_support([_volume("8", range(10, 22))], 2, "RK")
    plan = V.plan_query(_scan(_volume("1", [3, 4, 5, 9, 10, 11, 12, 20, 21])), 2, support,
                        "adnet")
    assert plan.predict_z == plan.score_z == [3, 4, 5, 9, 10, 11, 12, 20, 21]
    assert plan.parts == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="protocol"):
        V.plan_query(_scan(_volume("1", range(3))), 2, support, "roy")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom_eval")
    write_phantom(root, seed=0, size=64, n_slices=8)
    # make the right kidney absent from query scan 2 of fold 0
    path = root / "label_2.nii.gz"
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    arr[arr == 2] = 0
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path))
    return load_dataset(root)


def test_build_evaluation_on_phantom_all_protocols(phantom):
    paper = V.build_evaluation(phantom, 0, label_group=0)
    assert paper.classes == [2, 3] and [q.pid for q in paper.queries] == ["1", "2"]
    assert paper.support[2].scan_ids == ["3"] and len(paper.support[2].parts) == 3
    scan = paper.queries[0]
    assert scan.images.shape == (8, 3, 64, 64)
    assert scan.images.data_ptr() == scan.grey.data_ptr()          # a view, built once
    assert scan.tiled([1, 3]).shape == (2, 3, 64, 64)
    assert torch.equal(scan.tiled([3])[0, 2], scan.grey[3])
    assert set(scan.binary_label(2).unique().tolist()) == {0, 1}
    assert [(p.pid, p.class_id) for p in paper.absent()] == [("2", 2)]
    for c in paper.classes:
        for q, plan in paper.iter_class(c):
            if not plan.absent:
                zl = q.organ_slices(c)
                assert plan.score_z == list(range(zl[0], zl[-1] + 1))
    real = V.build_evaluation(phantom, 0, label_group=0, protocol="realistic", npart=5)
    assert all(p.score_z == list(range(8)) for c in real.classes for p in real.plans[c])
    assert len(real.support[3].parts) == 5
    two = V.build_evaluation(phantom, 0, label_group=1, support_pids=["3", "4"])
    assert two.support[1].parts[0].images.shape == (2, 3, 64, 64)      # 2-shot across scans
    with pytest.raises(ValueError, match="both support and query"):
        V.build_evaluation(phantom, 0, label_group=0, support_pids=["1"])
    with pytest.raises(KeyError, match="test classes"):
        next(paper.iter_class(1))


@pytest.mark.slow
def test_chaos_fold0_paper_and_realistic(chaos_dir, tmp_path):
    link_scans(chaos_dir, tmp_path)
    ds = register(tmp_path, "CHAOST2")
    cmap = read_json(chaos_dir / "classmap_1.reference.json")
    paper = V.build_evaluation(ds, 0, label_group=1)                  # liver, spleen
    assert [q.pid for q in paper.queries] == ["1", "2", "3", "5"]
    for c, name in ((1, "LIVER"), (4, "SPLEEN")):
        zl = cmap[name]["8"]
        want = [zl[int(p * len(zl))] for p in (1 / 6, 1 / 2, 5 / 6)]
        assert [p.z[0] for p in paper.support[c].parts] == want
        assert paper.support[c].parts[0].images.shape == (1, 3, 256, 256)
        for q, plan in paper.iter_class(c):
            zq = cmap[name][q.pid]
            assert plan.status == "ok" and plan.score_z == list(range(zq[0], zq[-1] + 1))
            assert plan.predict_z == list(range(q.n_slices))
    real = V.build_evaluation(ds, 0, label_group=1, protocol="realistic")
    for c in real.classes:
        for q, plan in real.iter_class(c):
            assert plan.score_z == list(range(q.n_slices)) and set(plan.parts) <= {0, 1, 2}
            assert q.body_z[1] < q.n_slices - 1          # the trailing zero slice is not body


@pytest.mark.slow
def test_cmr_evaluation_maps_labels(cmr_dir, tmp_path):
    link_scans(cmr_dir, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = register(tmp_path, "CMR")
    ev = V.build_evaluation(ds, 0, label_group=0, protocol="adnet")
    assert ev.classes == [1]
    for q, plan in ev.iter_class(1):
        assert set(q.label.unique().tolist()) <= {0, 1, 2, 3}
        assert plan.status == "ok" and plan.score_z == q.organ_slices(1)
