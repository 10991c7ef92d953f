"""What training sees: statistics of drawn superpixel episodes, ours against the original's.

Draws N episodes (global steps 0..N-1, the run's own generators) of each variant on one fold's
training scans and reports, per variant:

- the drawn superpixel's area before augmentation (pixels at 256×256) and of the support and
  query foreground after it;
- the share of empty foregrounds (an absent id: the episode is "predict all background") and of
  small ones (< 100 px, and foregrounds with no 4×4 feature window ≥ 0.95, for which ALP has
  only the global prototype);
- slice and scan frequencies (total variation distance from the uniform draw over drawable
  slices, and each scan's share relative to its share of drawable slices);
- the augmentation parameters (θ, shift, shear, zoom, γ and the elastic displacement), each
  tested (Kolmogorov–Smirnov) against the distribution the original draws them from
  (docs/episodes.md).

The variants are the project's switches: ``defaults`` (uniform draw over superpixels of
≥ 100 px, uniform slices, compact ids), ``min1`` (the same without the size floor),
``draw_original`` (``superpixel_draw=original`` on ``superpixels --relabel faithful`` ids) and
``original`` (that, plus ``slice_draw=original``: the original's episode distribution).

    python benchmarks/episode_stats.py --data data/CHAOST2 --faithful data/CHAOST2_faithful \\
        --episodes 10000 --out benchmarks/results/episode_stats

``--faithful`` is a second prepared copy whose superpixels were written with
``python -m data_preprocessing.superpixels --dir DIR --relabel faithful``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats as sstats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dataloaders.augment import PRESETS, elastic_fields, smooth_fields  # noqa: E402
from dataloaders.episodes import SuperpixelEpisodes, episode_rng  # noqa: E402
from dataloaders.volumes import as_dataset, normalize  # noqa: E402
from models.alp import MODE_CHECK_WINDOW, THRESHOLD, choose_fg_mode, downsample_mask  # noqa: E402
from util.io import read_array  # noqa: E402
from util.errors import InputError  # noqa: E402

SMALL_PX = 100
VARIANTS = {  # name: (faithful ids?, episode keyword arguments)
    "defaults": (False, {"draw": "uniform", "min_superpixel_px": 100, "slice_draw": "uniform"}),
    "min1": (False, {"draw": "uniform", "min_superpixel_px": 1, "slice_draw": "uniform"}),
    "draw_original": (True, {"draw": "original", "min_superpixel_px": 1,
                             "slice_draw": "uniform"}),
    "original": (True, {"draw": "original", "min_superpixel_px": 1, "slice_draw": "original"}),
}


class RecordingRNG:
    """A ``numpy.random.Generator`` stand-in that records every ``uniform`` draw in order."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng, self.uniforms = rng, []

    def uniform(self, low=0.0, high=1.0, size=None):
        out = self._rng.uniform(low, high, size)
        self.uniforms.append(out)
        return out

    def integers(self, *args, **kwargs):
        return self._rng.integers(*args, **kwargs)

    def random(self, *args, **kwargs):
        return self._rng.random(*args, **kwargs)


def fg_has_local(mask: torch.Tensor) -> bool:
    """Whether ALP builds local foreground prototypes for this [H, W] mask (training rule)."""
    low = downsample_mask(mask[None].float(), (mask.shape[0] // 8, mask.shape[1] // 8))
    return choose_fg_mode(low, THRESHOLD, MODE_CHECK_WINDOW) == "local+global"


def summary(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "p5": float(np.percentile(v, 5)),
            "median": float(np.median(v)), "p95": float(np.percentile(v, 95))}


def draw_variant(ds_root: Path, pids: list[str], kwargs: dict, n: int, seed: int,
                 aug_every: int) -> dict:
    """Episodes 0..n-1 of one variant: the draw for every step, the full episode for every
    ``aug_every``-th step (augmentation is the costly part)."""
    episodes = SuperpixelEpisodes(ds_root, pids, seed=seed, **kwargs)
    areas, slices, ids_present = [], [], []
    post = {"support_px": [], "query_px": [], "support_local": [], "params": [], "elastic": []}
    for step in range(n):
        vi, z, sp = episodes.draw_superpixel(episode_rng(seed, step), step)
        vol = episodes.volumes[vi]
        areas.append(int((vol.superpix[z] == sp).sum()))
        slices.append((vol.pid, z))
        if step % aug_every:
            continue
        rng = RecordingRNG(episode_rng(seed, step))
        recipe = episodes.draw_recipe(rng, step)
        ep = episodes[step]  # the same episode, assembled on the CPU
        post["support_px"].append(float(ep["support_fg"].sum()))
        post["query_px"].append(float((ep["query_labels"] == 1).sum()))
        post["support_local"].append(fg_has_local(ep["support_fg"][0]))
        # per view the uniforms θ, tx, ty, φ, s, γ (the elastic fields come from a seed)
        for view in range(2):
            u = rng.uniforms[6 * view: 6 * view + 6]
            post["params"].append([float(x) for x in u])
            aug = PRESETS["sabs_aug"]
            raw = elastic_fields([int(recipe["field_seed"][view])], vol.image.shape[1:])
            disp = smooth_fields(raw, aug.elastic_alpha, aug.elastic_sigma)[0].numpy()
            post["elastic"].append(float(np.sqrt(np.mean(disp[0] ** 2 + disp[1] ** 2) / 2)))
    drawable = episodes.eligible_slices()
    per_slice = {}
    for key in slices:
        per_slice[key] = per_slice.get(key, 0) + 1
    uniform = 1.0 / len(drawable)
    tv = 0.5 * sum(abs(per_slice.get(k, 0) / n - uniform) for k in drawable)
    scan_share = {}
    for pid in pids:
        n_drawable = sum(1 for p, _ in drawable if p == pid)
        drawn = sum(c for (p, _), c in per_slice.items() if p == pid)
        scan_share[pid] = (drawn / n) / (n_drawable / len(drawable)) if n_drawable else None
    areas = np.array(areas)
    sup, qry = np.array(post["support_px"]), np.array(post["query_px"])
    return {
        "episodes": n, "augmented": int(sup.size), "drawable_slices": len(drawable),
        "area_px": summary(areas),
        "empty_share": float((areas == 0).mean()),
        "small_share": float(((areas > 0) & (areas < SMALL_PX)).mean()),
        "support_fg_px": summary(sup), "query_fg_px": summary(qry),
        "support_empty_after_aug": float((sup == 0).mean()),
        "support_small_after_aug": float(((sup > 0) & (sup < SMALL_PX)).mean()),
        "support_global_only": float(1 - np.mean(post["support_local"])),
        "slice_tv_from_uniform": tv,
        "scan_share_ratio": {"min": min(v for v in scan_share.values() if v is not None),
                             "max": max(v for v in scan_share.values() if v is not None),
                             "per_scan": scan_share},
        "_params": post["params"], "_elastic": post["elastic"],
    }


def expected_empty_share(ds_root: Path, pids: list[str]) -> float:
    """Analytic empty-episode share of the original draw with uniform slices: per drawable
    slice, the absent ids among 1..max-1 over max-1 (a check of the sampler)."""
    ds = as_dataset(ds_root)
    shares = []
    for pid in pids:
        sp = read_array(ds.path("pseudolabel", pid, "MIDDLE")).astype(np.int64)[:, :256, :256]
        for z in range(sp.shape[0]):
            top = int(sp[z].max())
            if top >= 2:
                present = set(np.unique(sp[z]).tolist())
                shares.append(sum(v not in present for v in range(1, top)) / (top - 1))
    return float(np.mean(shares))


def aug_tests(params: list[list[float]], elastic: list[float]) -> dict:
    """Each drawn augmentation parameter against the original's distribution (KS p-value)."""
    a = PRESETS["sabs_aug"]
    p = np.array(params)
    ranges = {"rotate_deg": (-a.rotate_deg, a.rotate_deg), "shift_x_px": (-a.shift_px, a.shift_px),
              "shift_y_px": (-a.shift_px, a.shift_px), "shear_deg": (-a.shear_deg, a.shear_deg),
              "zoom": a.scale, "gamma": a.gamma}
    out = {}
    for col, (name, (lo, hi)) in enumerate(ranges.items()):
        ks = sstats.kstest(p[:, col], "uniform", args=(lo, hi - lo))
        out[name] = {"original": f"U({lo:g}, {hi:g})", "mean": float(p[:, col].mean()),
                     "sd": float(p[:, col].std()), "sd_expected": (hi - lo) / np.sqrt(12),
                     "ks_p": float(ks.pvalue)}
    out["elastic_rms_px"] = {"original": "U(-1,1) fields, Gaussian σ 5 (21×21), ×10",
                             **summary(elastic)}
    return out


def normalisation_precision(ds_root: Path, pids: list[str]) -> float:
    """Largest |float32-accumulated − float64-accumulated| z-score over the scans (the original
    computes mean and std of the float32 volume in float32)."""
    ds = as_dataset(ds_root)
    worst = 0.0
    for pid in pids:
        raw = read_array(ds.path("image", pid)).astype(np.float32)
        ours = normalize(raw, "zscore_volume")
        theirs = (raw - raw.mean()) / raw.std()
        worst = max(worst, float(np.abs(ours - theirs).max()))
    return worst


def markdown(results: dict, meta: dict) -> str:
    lines = [f"Episode statistics: {meta['dataset']} fold {meta['fold']} training scans "
             f"({len(meta['pids'])}), steps 0..{meta['episodes'] - 1}, seed {meta['seed']}; "
             f"augmented: every {meta['aug_every']}th episode.", "",
             "| variant | drawable slices | area px median (p5–p95) | empty | < 100 px | support "
             "fg after aug, median | support global-only | slice TV from uniform | scan share "
             "min–max |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        a, s = r["area_px"], r["support_fg_px"]
        lines.append(f"| {name} | {r['drawable_slices']} | {a['median']:.0f} ({a['p5']:.0f}–"
                     f"{a['p95']:.0f}) | {100 * r['empty_share']:.1f} % | "
                     f"{100 * r['small_share']:.1f} % | {s['median']:.0f} | "
                     f"{100 * r['support_global_only']:.1f} % | {r['slice_tv_from_uniform']:.3f} | "
                     f"{r['scan_share_ratio']['min']:.2f}–{r['scan_share_ratio']['max']:.2f} |")
    lines += ["", "| parameter | original | mean | sd (expected) | KS p |", "|---|---|---|---|---|"]
    for name, t in meta["augmentation"].items():
        if name == "elastic_rms_px":
            continue
        lines.append(f"| {name} | {t['original']} | {t['mean']:.3f} | {t['sd']:.3f} "
                     f"({t['sd_expected']:.3f}) | {t['ks_p']:.2f} |")
    e = meta["augmentation"]["elastic_rms_px"]
    lines += ["", f"Elastic displacement, RMS per component: median {e['median']:.3f} px "
              f"(p5 {e['p5']:.3f}, p95 {e['p95']:.3f}).",
              f"Analytic empty share of the original draw (uniform slices): "
              f"{100 * meta['expected_empty_share']:.1f} %.",
              f"Normalisation, float32 against float64 accumulation: largest difference "
              f"{meta['normalisation_max_diff']:.2e} (z-score units)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="prepared folder (compact superpixels)")
    parser.add_argument("--faithful", required=True,
                        help="prepared copy with `superpixels --relabel faithful`")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=10000)
    parser.add_argument("--aug-every", type=int, default=1,
                        help="augment every k-th episode (1: all)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="benchmarks/results/episode_stats")
    args = parser.parse_args(argv)
    for name in ("episodes", "aug_every"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')}: expected >= 1, got "
                             f"{getattr(args, name)}")
    compact, faithful = Path(args.data), Path(args.faithful)
    for root, want in ((compact, "compact"), (faithful, "faithful")):
        record = as_dataset(root).meta.get("pseudolabels", {}).get("MIDDLE", {})
        if record.get("relabel", "compact") != want:
            raise InputError(f"{root}: expected MIDDLE superpixels relabelled {want!r}, found "
                             f"{record.get('relabel')!r}")
    ds = as_dataset(compact)
    pids = ds.fold(args.fold)["train"]
    results, started = {}, time.perf_counter()
    for name in args.variants:
        use_faithful, kwargs = VARIANTS[name]
        t0 = time.perf_counter()
        results[name] = draw_variant(faithful if use_faithful else compact, pids, kwargs,
                                     args.episodes, args.seed, args.aug_every)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    first = results[args.variants[0]]
    meta = {"dataset": ds.name, "fold": args.fold, "pids": pids, "episodes": args.episodes,
            "seed": args.seed, "aug_every": args.aug_every,
            "augmentation": aug_tests(first["_params"], first["_elastic"]),
            "expected_empty_share": expected_empty_share(faithful, pids),
            "normalisation_max_diff": normalisation_precision(compact, pids),
            "seconds": time.perf_counter() - started, "machine": platform.processor()}
    for r in results.values():
        r.pop("_params"), r.pop("_elastic")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "episode_stats.json").write_text(json.dumps({"meta": meta, "variants": results},
                                                       indent=1))
    text = markdown(results, meta)
    (out / "episode_stats.md").write_text(text)
    print(text)


if __name__ == "__main__":
    from util.cli import run_main
    run_main("benchmarks/episode_stats.py", main)
