"""ALP on tiny feature maps whose answers are computed by hand (method.md §4.2–§4.3)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.alpnet import ALPNet
from models.alp import (alp_score, build_prototypes, choose_fg_mode, downsample_mask,
                        l2_normalize, local_prototypes, masked_average, score_prototypes)


def grid(*rows) -> torch.Tensor:
    """[1, 1, h, w] float mask from rows of numbers."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def column_feats(h: int, *blocks) -> torch.Tensor:
    """[1, C, h, w] features; each block ``(first_col, end_col, vector)`` fills those columns."""
    w, c = blocks[-1][1], len(blocks[0][2])
    feats = torch.zeros(1, c, h, w)
    for start, end, vec in blocks:
        feats[0, :, :, start:end] = torch.tensor(vec, dtype=torch.float32).view(c, 1, 1)
    return feats


def query_of(*vectors) -> torch.Tensor:
    """[Q, C, 1, 1] query features, one position per query."""
    return torch.tensor(vectors, dtype=torch.float32)[:, :, None, None]


# --- normalisation and masks -----------------------------------------------------------------

def test_l2_normalize_clamps_small_norms_at_1e_4():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-5, 0.0]])
    expected = torch.tensor([[0.6, 0.8], [0.0, 0.0], [0.1, 0.0]])
    assert torch.allclose(l2_normalize(x), expected)


def test_downsample_mask_is_the_2x2_block_mean_at_offsets_3_and_4():
    gen = torch.Generator().manual_seed(0)
    mask = (torch.rand(2, 256, 256, generator=gen) > 0.5).float()
    small = downsample_mask(mask, (32, 32))
    assert small.shape == (2, 1, 32, 32)
    block = mask.view(2, 32, 8, 32, 8)[:, :, 3:5, :, 3:5]          # rows/cols 8i+3, 8i+4
    assert torch.allclose(small[:, 0], block.mean(dim=(2, 4)))
    assert set(small.unique().tolist()) <= {0.0, 0.25, 0.5, 0.75, 1.0}


def test_downsample_mask_accepts_a_channel_axis_and_rejects_other_shapes():
    mask = torch.ones(1, 1, 16, 16)
    assert downsample_mask(mask, (2, 2)).shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"downsample_mask: expected a mask"):
        downsample_mask(torch.ones(1, 2, 16, 16), (2, 2))


# --- 'global' (PANet) ----------------------------------------------------------------------

def test_global_score_is_20_times_the_cosine_to_the_masked_average():
    # left half (2, 0) under the mask, right half (0, 3) outside: prototype ∝ (1, 0)
    support = column_feats(4, (0, 2, (2, 0)), (2, 4, (0, 3)))
    mask = grid(*[[1, 1, 0, 0]] * 4)
    query = query_of((1, 0), (0, 1), (1, 1), (-1, 0))
    score, info = alp_score(query, support, mask, "global", window=4)
    assert score.shape == (4, 1, 1, 1)
    expected = torch.tensor([20.0, 0.0, 20 / math.sqrt(2), -20.0])
    assert torch.allclose(score.flatten(), expected, atol=1e-5)
    assert (info.n_local, info.n_prototypes, info.fallback) == (0, 1, False)


def test_global_score_equals_pytorch_cosine_similarity_with_eps_1e_4():
    gen = torch.Generator().manual_seed(1)
    support = torch.randn(1, 8, 4, 4, generator=gen)
    query = torch.randn(3, 8, 4, 4, generator=gen)
    mask = (torch.rand(1, 1, 4, 4, generator=gen) > 0.3).float()
    proto = (support * mask).sum((2, 3)) / (mask.sum((2, 3)) + 1e-5)
    expected = 20 * F.cosine_similarity(query, proto[..., None, None], dim=1, eps=1e-4)
    score, _ = alp_score(query, support, mask, "global", window=2)
    assert torch.allclose(score[:, 0], expected, atol=1e-5)


def test_global_prototype_is_the_mean_of_per_shot_averages_not_a_pooled_average():
    # shot 0: 8 masked cells of (1, 0); shot 1: 2 masked cells of (0, 1)
    support = torch.cat([column_feats(4, (0, 4, (1, 0))), column_feats(4, (0, 4, (0, 1)))])
    mask = torch.cat([grid(*[[1, 1, 0, 0]] * 4), grid([1, 1, 0, 0], *[[0, 0, 0, 0]] * 3)])
    score, _ = alp_score(query_of((1, 0)), support, mask, "global", window=2)
    # per-shot prototypes (1, 0) and (0, 1) average to 45°; a pooled average would give (8, 2)
    assert score.item() == pytest.approx(20 / math.sqrt(2), abs=1e-4)


def test_zero_mask_gives_a_score_of_exactly_zero():
    support = torch.randn(2, 4, 4, 4)
    query = torch.randn(3, 4, 4, 4)
    zeros = torch.zeros(2, 1, 4, 4)
    for mode in ("global", "local"):
        score, info = alp_score(query, support, zeros, mode, window=2)
        assert torch.equal(score, torch.zeros(3, 1, 4, 4)), mode
    assert info.fallback  # 'local' found no window and used the (zero) global prototype


# --- 'local' and 'local+global' ---------------------------------------------------------------

def _two_shot_windows():
    """Two shots of 4×4 features, a distinct constant vector per 2×2 window."""
    vec = {(0, 0, 0): (1, 0, 0), (0, 0, 1): (0, 1, 0), (0, 1, 0): (0, 0, 1), (0, 1, 1): (1, 1, 0),
           (1, 0, 0): (1, 0, 1), (1, 0, 1): (0, 1, 1), (1, 1, 0): (2, 1, 0), (1, 1, 1): (0, 2, 1)}
    feats = torch.zeros(2, 3, 4, 4)
    for (s, i, j), v in vec.items():
        feats[s, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2] = torch.tensor(v).float().view(3, 1, 1)
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, 0:2, 0:2] = 1                 # shot 0, window (0, 0): passes
    mask[0, 0, 0:2, 2:4] = grid([1, 1], [1, 0])[0, 0]  # window (0, 1): 0.75, fails
    mask[0, 0, 2:4, 0:2] = 1                 # window (1, 0): passes
    mask[1, 0, 2:4, 2:4] = 1                 # shot 1, window (1, 1): passes
    return feats, mask, vec


def test_local_prototypes_are_ordered_shot_by_shot_in_raster_order():
    feats, mask, vec = _two_shot_windows()
    protos = build_prototypes(feats, mask, "local", window=2, threshold=0.95)
    expected = torch.tensor([vec[(0, 0, 0)], vec[(0, 1, 0)], vec[(1, 1, 1)]], dtype=torch.float32)
    assert (protos.info.n_local, protos.info.n_prototypes) == (3, 3)
    assert torch.allclose(protos.used(), l2_normalize(expected))


def test_local_plus_global_appends_one_masked_average_per_shot():
    feats, mask, vec = _two_shot_windows()
    protos = build_prototypes(feats, mask, "local+global", window=2, threshold=0.95)
    assert (protos.info.n_local, protos.info.n_prototypes, protos.info.fallback) == (3, 5, False)
    shot0 = (4 * torch.tensor([1.0, 0, 0]) + 3 * torch.tensor([0.0, 1, 0])
             + 4 * torch.tensor([0.0, 0, 1])) / (11 + 1e-5)
    assert torch.allclose(protos.used()[3], l2_normalize(shot0[None])[0])
    assert torch.allclose(protos.used()[4], l2_normalize(torch.tensor([[0.0, 2, 1]]))[0])


@pytest.mark.parametrize("ones, quarters, passes", [(13, 3, True), (12, 4, False)])
def test_training_threshold_needs_61_of_64_in_a_4x4_window(ones, quarters, passes):
    # cells are 1 or 0.75: 13 + 3·0.75 = 61/64 = 0.953 > 0.95; 12 + 4·0.75 = 60/64 = 0.9375
    cells = torch.tensor([1.0] * ones + [0.75] * quarters).view(1, 1, 4, 4)
    assert local_prototypes(torch.ones(1, 2, 4, 4), cells, 4, 0.95).shape[0] == int(passes)
    assert choose_fg_mode(cells, 0.95) == ("local+global" if passes else "global")


def test_test_time_threshold_needs_all_four_cells_of_a_2x2_window():
    full, almost = grid([1, 1], [1, 1]), grid([1, 1], [1, 0.75])     # 1.0 and 15/16 = 0.9375
    feats = torch.ones(1, 2, 2, 2)
    assert local_prototypes(feats, full, 2, 0.95).shape[0] == 1
    assert local_prototypes(feats, almost, 2, 0.95).shape[0] == 0


def test_local_threshold_is_strict_and_the_mode_check_is_not():
    mask = grid(*[[1, 1, 1, 1]] * 3, [0, 0, 0, 0])                # a 4×4 average of exactly 0.75
    feats = torch.randn(1, 2, 4, 4)
    protos = build_prototypes(feats, mask, "local", window=4, threshold=0.75)
    assert protos.info.n_local == 0 and protos.info.fallback
    assert choose_fg_mode(mask, threshold=0.75) == "local+global"


def test_fg_mode_check_uses_a_4x4_window_even_when_2x2_windows_pass():
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 2:6, 2:6] = 1   # a full 2×2-aligned block, but a quarter of each aligned 4×4 cell
    assert build_prototypes(torch.ones(1, 2, 8, 8), mask, "local", 2, 0.95).info.n_local == 4
    assert choose_fg_mode(mask) == "global"
    mask[0, 0, 0:4, 0:4] = 1
    assert choose_fg_mode(mask) == "local+global"


def test_score_is_the_softmax_weighted_average_of_similarities():
    # two local prototypes (1, 0) and (0, 1) from the two 2×2 windows of a 2×4 map
    support = column_feats(2, (0, 2, (1, 0)), (2, 4, (0, 1)))
    mask = torch.ones(1, 1, 2, 4)
    query = query_of((1, 0), (3, 0), (1, 1))
    score, info = alp_score(query, support, mask, "local", window=2, scale=1.0)
    e = math.e
    # d = (1, 0) → (e·1 + 1·0)/(e + 1); scale-free in |q|; d = (.707, .707) → .707
    expected = torch.tensor([e / (e + 1), e / (e + 1), 1 / math.sqrt(2)])
    assert torch.allclose(score.flatten(), expected, atol=1e-6)
    assert info.n_prototypes == 2
    score20, _ = alp_score(query[:1], support, mask, "local", window=2, scale=20.0)
    assert score20.item() == pytest.approx(20 * math.exp(20) / (math.exp(20) + 1), rel=1e-6)


def test_empty_local_set_falls_back_to_the_global_prototype():
    gen = torch.Generator().manual_seed(2)
    support = torch.randn(2, 4, 4, 4, generator=gen)
    query = torch.randn(3, 4, 4, 4, generator=gen)
    mask = torch.full((2, 1, 4, 4), 0.5)
    score, info = alp_score(query, support, mask, "local", window=2)
    expected, _ = alp_score(query, support, mask, "global", window=2)
    assert (info.n_local, info.n_prototypes, info.fallback) == (0, 1, True)
    assert torch.allclose(score, expected)
    # 'local+global' is never empty: the per-shot global prototypes are always there
    _, info = alp_score(query, support, mask, "local+global", window=2)
    assert (info.n_local, info.n_prototypes, info.fallback) == (0, 2, False)


def test_batch_of_queries_equals_one_query_at_a_time():
    gen = torch.Generator().manual_seed(3)
    support = torch.randn(2, 8, 8, 8, generator=gen)
    mask = (torch.rand(2, 1, 8, 8, generator=gen) > 0.2).float()
    query = torch.randn(4, 8, 8, 8, generator=gen)
    batched, _ = alp_score(query, support, mask, "local+global", window=2)
    singles = torch.cat([alp_score(q[None], support, mask, "local+global", 2)[0] for q in query])
    assert torch.allclose(batched, singles, atol=1e-6)


def test_gradients_reach_query_and_support_features():
    support = torch.randn(1, 4, 8, 8, requires_grad=True)
    query = torch.randn(1, 4, 8, 8, requires_grad=True)
    mask = torch.ones(1, 1, 8, 8)
    score, _ = alp_score(query, support, mask, "local+global", window=4)
    score.sum().backward()
    assert query.grad.abs().sum() > 0 and support.grad.abs().sum() > 0


def test_masked_average_by_hand():
    feats = torch.arange(4.0).view(1, 1, 2, 2)      # 0 1 / 2 3
    mask = grid([1, 0], [0.5, 0])
    assert masked_average(feats, mask).item() == pytest.approx((0 + 1.0) / (1.5 + 1e-5))


# --- errors --------------------------------------------------------------------------

def test_errors_say_what_was_expected():
    support, mask = torch.randn(1, 4, 4, 4), torch.ones(1, 1, 4, 4)
    with pytest.raises(ValueError, match="did you mean 'local'"):
        alp_score(support, support, mask, "locl", 2)
    with pytest.raises(ValueError, match=r"support mask \[S, 1, h, w\] = \[1, 1, 4, 4\]"):
        alp_score(support, support, torch.ones(1, 1, 2, 2), "local", 2)
    with pytest.raises(ValueError, match=r"pooling window in \[1, 4\]"):
        alp_score(support, support, mask, "local", 8)
    with pytest.raises(ValueError, match=r"fg_threshold in \[0, 1\], got 1.5"):
        ALPNet("tiny", fg_threshold=1.5)
    with pytest.raises(ValueError, match="prototypes in"):
        ALPNet("tiny", prototypes="panet")
    with pytest.raises(ValueError, match="at least 4×4"):
        choose_fg_mode(torch.ones(1, 1, 2, 2))


# --- fixed-size prototypes (no host sync) against the variable-size definition ----------------

def variable_size_score(query, feats, mask, mode, window, threshold=0.95, scale=20.0):
    """ALP as defined, with a variable number of prototypes (boolean indexing): the reference
    the fixed-size, masked implementation must equal."""
    pooled = F.avg_pool2d(feats, window)
    cands = pooled.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
    local = cands[F.avg_pool2d(mask, window).flatten() > threshold]
    shots = (feats * mask).sum((2, 3)) / (mask.sum((2, 3)) + 1e-5)
    if mode == "adaptive":
        mode = "local+global" if F.avg_pool2d(mask, 4).max() >= threshold else "global"
    if mode == "global" or (mode == "local" and len(local) == 0):
        protos = shots.mean(0, keepdim=True)
    elif mode == "local":
        protos = local
    else:
        protos = torch.cat([local, shots])
    protos = protos / protos.norm(dim=1, keepdim=True).clamp_min(1e-4)
    q = query / query.norm(dim=1, keepdim=True).clamp_min(1e-4)
    sim = scale * torch.einsum("qchw,kc->qkhw", q, protos)
    return (sim.softmax(1) * sim).sum(1, keepdim=True), len(protos)


@pytest.mark.parametrize("mode", ["global", "local", "local+global", "adaptive"])
@pytest.mark.parametrize("window", [2, 4])
def test_fixed_size_prototypes_score_and_gradients_equal_the_variable_size_definition(mode,
                                                                                      window):
    gen = torch.Generator().manual_seed(11)
    for trial in range(12):
        shots = 1 + trial % 2
        feats = torch.randn(shots, 6, 8, 8, generator=gen, dtype=torch.float64)
        query = torch.randn(2, 6, 8, 8, generator=gen, dtype=torch.float64)
        # from empty to full, with blocks that pass and soft edges that do not
        density = trial / 11
        mask = (torch.rand(shots, 1, 8, 8, generator=gen) < density).double()
        if trial % 3 == 0:
            mask[:, :, :4, :4] = 1.0
        got_inputs = [t.clone().requires_grad_() for t in (query, feats)]
        want_inputs = [t.clone().requires_grad_() for t in (query, feats)]
        got, info = alp_score(got_inputs[0], got_inputs[1], mask, mode, window)
        want, n_want = variable_size_score(want_inputs[0], want_inputs[1], mask, mode, window)
        assert info.n_prototypes == n_want, (trial, info)
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), trial
        got.sum().backward()
        want.sum().backward()
        for g, w in zip(got_inputs, want_inputs):
            assert torch.allclose(g.grad, w.grad, rtol=1e-10, atol=1e-12), trial


def test_prototype_count_is_fixed_by_the_feature_size_not_the_mask():
    feats = torch.randn(2, 4, 8, 8)
    sizes = {build_prototypes(feats, m, "adaptive", 2).vectors.shape
             for m in (torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8),
                       (torch.rand(2, 1, 8, 8) > 0.5).float())}
    assert sizes == {torch.Size([2 * 16 + 2 + 1, 4])}


def test_compact_prototypes_score_as_the_full_candidate_set():
    gen = torch.Generator().manual_seed(4)
    feats, query = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    mask = (torch.rand(1, 1, 8, 8, generator=gen) > 0.4).float()
    mask[:, :, :4, :4] = 1
    for mode in ("local", "adaptive"):
        full = build_prototypes(feats, mask, mode, 2)
        small = full.compact()
        assert len(small.vectors) == full.info.n_prototypes < len(full.vectors)
        assert small.info == full.info
        q = l2_normalize(query)
        assert torch.allclose(score_prototypes(q, small), score_prototypes(q, full), atol=1e-5)
