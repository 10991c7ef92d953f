"""ALPNet forward, alignment loss, batched evaluation and losses, with the tiny encoder."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.alp import alp_score, choose_fg_mode, downsample_mask
from models.alpnet import ALPNet
from models.losses import (alignment_target, per_image_cross_entropy,
                           weighted_cross_entropy)

SIZE = 64  # features 8×8: a 2×2 grid of training windows, 4×4 of evaluation windows


def make_model(seed: int = 0, **kwargs) -> ALPNet:
    torch.manual_seed(seed)
    return ALPNet("tiny", **kwargs)


def disc(cy: int, cx: int, r: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).float()


def episode(n_shots: int = 1, n_queries: int = 1, seed: int = 0) -> dict:
    """Bright discs on noise; the support fg fills the top-left training window."""
    gen = torch.Generator().manual_seed(seed)

    def image(mask):
        noise = 0.3 * torch.randn(1, SIZE, SIZE, generator=gen)
        return (2 * mask - 1 + noise).expand(3, -1, -1)

    fg = torch.stack([disc(14 + 2 * s, 14, 22) for s in range(n_shots)])
    query_masks = torch.stack([disc(30 + 3 * q, 30, 14) for q in range(n_queries)])
    return {"support_images": torch.stack([image(m) for m in fg]), "support_fg": fg,
            "support_bg": 1 - fg, "query_images": torch.stack([image(m) for m in query_masks]),
            "query_label": query_masks.long()}


def run(model, ep):
    return model(ep["support_images"], ep["support_fg"], ep["support_bg"], ep["query_images"])


# --- forward ------------------------------------------------------------------------------------

def test_forward_shapes_and_outputs_in_training():
    ep = episode(n_shots=2)
    out = run(make_model().train(), ep)
    assert out.logits.shape == (1, 2, SIZE, SIZE)
    assert out.align_loss.shape == () and out.align_loss.requires_grad and out.align_loss > 0
    # a 0-d device tensor (no host sync in a step); the alignment pass may fall back at random init
    assert out.n_fallback.shape == () and out.n_fallback.dtype == torch.long
    assert run(make_model(align=False).train(), ep).n_fallback == 0   # both support sets exist


def test_no_alignment_loss_in_eval_or_when_disabled():
    ep = episode()
    assert run(make_model().eval(), ep).align_loss.item() == 0.0
    assert run(make_model(align=False).train(), ep).align_loss.item() == 0.0


def test_logits_are_the_alp_scores_of_spec_4_4():
    ep = episode(n_shots=2)
    model = make_model().eval()
    with torch.no_grad():
        out = run(model, ep)
        feats = model.encode(torch.cat([ep["support_images"], ep["query_images"]]))
    fs, fq = feats[:2], feats[2:]
    fg, bg = (downsample_mask(ep[k], (8, 8)) for k in ("support_fg", "support_bg"))
    assert choose_fg_mode(fg) == "local+global"
    bg_score, bg_info = alp_score(fq, fs, bg, "local", window=2)
    fg_score, fg_info = alp_score(fq, fs, fg, "local+global", window=2)
    assert bg_info.n_local > 0 and fg_info.n_local > 0
    expected = F.interpolate(torch.cat([bg_score, fg_score], 1), size=(SIZE, SIZE),
                             mode="bilinear", align_corners=False)
    assert torch.allclose(out.logits, expected, atol=1e-5)


def test_windows_are_4_in_training_and_2_in_evaluation():
    ep = episode()
    bg_only = torch.zeros_like(ep["support_fg"])
    model = make_model()
    with torch.no_grad():
        model.eval()
        support = model.encode_support(ep["support_images"], bg_only, 1 - bg_only)
        assert support.bg.info.n_local == 16                           # (8 / 2)²
        assert support.fg.info.mode == "global"                        # empty fg: zero prototype
        model.train()
        support = model.encode_support(ep["support_images"], bg_only, 1 - bg_only)
        assert support.bg.info.n_local == 4                            # (8 / 4)²


def test_empty_background_set_falls_back_and_is_counted():
    ep = episode()
    fg = torch.ones_like(ep["support_fg"])
    model = make_model().train()
    out = model(ep["support_images"], fg, 1 - fg, ep["query_images"])
    assert out.n_fallback >= 1
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.align_loss)
    low_bg = out.logits[:, 0]
    assert torch.equal(low_bg, torch.zeros_like(low_bg))   # zero bg mask → zero prototype → 0


def test_alignment_loss_segments_each_support_shot_with_the_query_prediction():
    ep = episode(n_shots=2)
    model = make_model().train()
    torch.manual_seed(5)
    out = run(model, ep)
    # recompute by the per-shot loop of method.md §4.5 (same batch, so the same BN statistics)
    with torch.no_grad():
        feats = model.encode(torch.cat([ep["support_images"], ep["query_images"]]))
    fs, fq = feats[:2], feats[2:]
    fg, bg = (downsample_mask(ep[k], (8, 8)) for k in ("support_fg", "support_bg"))
    fg_mode = choose_fg_mode(fg)
    low = torch.cat([alp_score(fq, fs, bg, "local", 4)[0], alp_score(fq, fs, fg, fg_mode, 4)[0]], 1)
    pred = low.argmax(1, keepdim=True)
    q_fg, q_bg = (pred == 1).float(), (pred == 0).float()
    q_mode = choose_fg_mode(q_fg)
    expected = 0.0
    for s in range(2):
        shot = fs[s:s + 1]
        scores = torch.cat([alp_score(shot, fq, q_bg, "local", 4)[0],
                            alp_score(shot, fq, q_fg, q_mode, 4)[0]], 1)
        scores = F.interpolate(scores, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        target = torch.full((1, SIZE, SIZE), 255, dtype=torch.long)
        target[ep["support_fg"][s:s + 1] == 1] = 1
        target[ep["support_bg"][s:s + 1] == 1] = 0
        expected += F.cross_entropy(scores, target, ignore_index=255) / 2
    assert out.align_loss.item() == pytest.approx(float(expected), rel=1e-5)


def test_gradients_reach_encoder_and_projection_from_both_losses():
    ep = episode()
    model = make_model().train()
    out = run(model, ep)
    (weighted_cross_entropy(out.logits, ep["query_label"]) + out.align_loss).backward()
    assert model.encoder.backbone.body[0].weight.grad.abs().sum() > 0
    assert model.encoder.localconv.weight.grad.abs().sum() > 0


def test_loss_decreases_on_a_fixed_episode():
    ep = episode()
    model = make_model().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    losses = []
    for _ in range(6):
        out = run(model, ep)
        loss = weighted_cross_entropy(out.logits, ep["query_label"]) + out.align_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# --- batched evaluation -------------------------------------------------------------------------

def test_batched_queries_equal_slice_by_slice_scoring():
    ep = episode(n_shots=2, n_queries=5)
    model = make_model().eval()
    with torch.no_grad():
        support = model.encode_support(ep["support_images"], ep["support_fg"], ep["support_bg"])
        size = ep["query_images"].shape[-2:]
        batched = model.score_features(support, model.encode(ep["query_images"]), size)
        for q in range(5):
            one = ep["query_images"][q:q + 1]
            assert torch.allclose(batched[q:q + 1],
                                  model.score_features(support, model.encode(one), size),
                                  atol=1e-5)
            full = model(ep["support_images"], ep["support_fg"], ep["support_bg"], one)
            assert torch.allclose(batched[q:q + 1], full.logits, atol=1e-5)
    assert batched.shape == (5, 2, SIZE, SIZE)


def test_channels_last_and_bf16_autocast_match_the_default_on_cpu():
    ep = episode(n_shots=2, n_queries=2)
    reference = make_model().eval()
    with torch.no_grad():
        expected = run(reference, ep).logits
        for options, atol in (({"channels_last": True}, 1e-4), ({"autocast_bf16": True}, 0.5)):
            model = make_model(**options).eval()
            model.load_state_dict(reference.state_dict())
            got = run(model, ep).logits
            assert got.dtype == torch.float32
            assert torch.allclose(got, expected, atol=atol), options
            assert torch.equal(got.argmax(1), expected.argmax(1)), options


# --- losses -------------------------------------------------------------------------------------

def test_weighted_cross_entropy_by_hand():
    # pixel 0: label 0, logits (0, 0) → nll ln 2; pixel 1: label 1, logits (0, ln 3) → ln 4/3;
    # pixel 2: ignored
    logits = torch.tensor([[0.0, 0.0, 5.0], [0.0, math.log(3), -5.0]]).view(1, 2, 1, 3)
    target = torch.tensor([[[0, 1, 255]]])
    weighted = (0.05 * math.log(2) + 1.0 * math.log(4 / 3)) / 1.05
    assert weighted_cross_entropy(logits, target).item() == pytest.approx(weighted, rel=1e-6)
    plain = (math.log(2) + math.log(4 / 3)) / 2
    assert weighted_cross_entropy(logits, target, None).item() == pytest.approx(plain, rel=1e-6)
    with pytest.raises(ValueError, match="expected integer labels"):
        weighted_cross_entropy(logits, target.float())
    with pytest.raises(ValueError, match="one weight per class"):
        weighted_cross_entropy(logits, target, (0.05, 1.0, 1.0))


def test_alignment_target_and_per_image_cross_entropy():
    fg = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]])
    bg = torch.tensor([[[0.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]]])
    target = alignment_target(fg, bg)
    assert target.tolist() == [[[1, 0, 255]], [[255, 255, 255]]]
    logits = torch.zeros(2, 2, 1, 3)
    assert per_image_cross_entropy(logits, target).tolist() == pytest.approx([math.log(2), 0.0])


# --- arguments and state ------------------------------------------------------------------------

def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="train_window to be a positive int"):
        ALPNet("tiny", train_window=0)
    with pytest.raises(ValueError, match="threshold in"):
        ALPNet("tiny", fg_threshold=1.5)
    ep = episode()
    model = make_model()
    with pytest.raises(ValueError, match=r"support_fg \[S, H, W\] = \[1, 64, 64\]"):
        model(ep["support_images"], ep["support_fg"][:, :32], ep["support_bg"],
              ep["query_images"])
    with pytest.raises(ValueError, match="query_images"):
        model(ep["support_images"], ep["support_fg"], ep["support_bg"],
              ep["query_images"][:, :, :32])


def test_only_the_encoder_has_state():
    keys = make_model().state_dict().keys()
    assert keys and all(k.startswith("encoder.") for k in keys)
    assert "encoder.localconv.weight" in keys


def test_global_prototypes_ablation_uses_one_prototype_per_mask():
    ep = episode(n_shots=2, n_queries=1)
    model = make_model(prototypes="global").eval()
    with torch.no_grad():
        support = model.encode_support(ep["support_images"], ep["support_fg"], ep["support_bg"])
        feats = model.encode(ep["support_images"])
    assert support.fg.info.mode == support.bg.info.mode == "global"
    assert support.fg.info.n_prototypes == support.bg.info.n_prototypes == 1
    # the one prototype is the shots' mean masked average (PANet), normalised
    size = feats.shape[-2:]
    fg = downsample_mask(ep["support_fg"], size)
    want = (feats * fg).sum((2, 3)) / (fg.sum((2, 3)) + 1e-5)
    want = want.mean(0, keepdim=True)
    assert torch.allclose(support.fg.vectors, want / want.norm(dim=1, keepdim=True), atol=1e-5)
    alp = make_model().eval()
    with torch.no_grad():
        local = alp.encode_support(ep["support_images"], ep["support_fg"], ep["support_bg"])
    assert local.bg.info.n_prototypes > 1  # ALP keeps local background prototypes


def test_a_training_step_forward_is_one_graph_without_host_syncs():
    """torch.compile(fullgraph=True) refuses any graph break: a .item(), a data-dependent shape
    or a Python branch on a tensor. The fixed-size prototypes make the episode's forward and
    loss one graph (in training, with the alignment pass, and in evaluation)."""
    ep = episode(n_shots=2)
    model = make_model()

    def step(support_images, fg, bg, query_images, label):
        out = model(support_images, fg, bg, query_images)
        return weighted_cross_entropy(out.logits, label, (0.05, 1.0)) + out.align_loss, out

    captured = torch.compile(step, backend="eager", fullgraph=True)
    args = (ep["support_images"], ep["support_fg"], ep["support_bg"], ep["query_images"],
            ep["query_label"])
    for training in (True, False):
        model.train(training)
        torch.manual_seed(0)
        loss, out = captured(*args)
        torch.manual_seed(0)
        want, want_out = step(*args)
        assert torch.allclose(loss, want) and torch.equal(out.n_fallback, want_out.n_fallback)


def test_n_episodes_at_once_equal_each_episode_alone_but_for_the_pooled_batch_norm():
    """episodes_per_step: with batch-norm statistics frozen (the one thing the episodes share),
    the [N, …] forward gives each episode's logits, the mean alignment loss and the sum of the
    fallbacks, in training (alignment on) and in evaluation."""
    eps = [episode(n_shots=1, n_queries=2, seed=s) for s in (0, 1, 2)]
    stacked = {k: torch.stack([ep[k] for ep in eps]) for k in eps[0]}
    model = make_model()
    for training in (True, False):
        model.train(training)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        with torch.no_grad():
            together = run(model, stacked)
            alone = [run(model, ep) for ep in eps]
        assert together.logits.shape == (6, 2, SIZE, SIZE)
        assert torch.allclose(together.logits, torch.cat([o.logits for o in alone]), atol=1e-5)
        assert torch.allclose(together.align_loss,
                              torch.stack([o.align_loss for o in alone]).mean(), atol=1e-6)
        assert int(together.n_fallback) == sum(int(o.n_fallback) for o in alone)
