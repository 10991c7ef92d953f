"""Learning curves of seeds × variants: train each to N steps, validated during training.

Every (variant, seed) is one ``training.py`` run with ``val_every``; up to ``--jobs`` run at once,
each with ``--threads`` intra-op threads. The result is a table of mean ± sd of the validation
mean Dice per variant and step (``curves.md``), every organ of every run (``curves.csv``) and a
plot (``curves.png``). A run that fails is reported with its log and left out of the table; the
command then exits 1. Runs already finished in ``--out`` are read, not repeated, so a stopped
comparison continues where it stopped.

    python benchmarks/learning_curves.py --data data/CHAOST2 --faithful data/CHAOST2_faithful \\
        --variants defaults draw_original --seeds 1 2 3 4 --steps 1000 --val-every 500 \\
        --jobs 2 --threads 1 --precision fp32 --out benchmarks/results/curves

Variants (``--list`` prints them) are sets of training overrides; ``draw_original`` and
``original`` train on ``--faithful``, a copy whose superpixels were written with
``python -m data_preprocessing.superpixels --dir DIR --relabel faithful``. One precision serves
the whole comparison (``--precision``, recorded in the table's title).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from util.errors import InputError  # noqa: E402

# name: (uses the faithful pseudolabels, training overrides); what each switch restores of the
# original is described in docs/episodes.md
VARIANTS: dict[str, tuple[bool, tuple[str, ...]]] = {
    "defaults": (False, ()),
    "min1": (False, ("min_superpixel_px=1",)),
    "draw_original": (True, ("superpixel_draw=original",)),
    "slice_original": (False, ("slice_draw=original",)),
    "skip_empty": (False, ("empty_prototypes=skip",)),
    "original": (True, ("superpixel_draw=original", "slice_draw=original",
                        "empty_prototypes=skip")),
    # not the original's: N episodes per SGD step (docs/training.md)
    "episodes2": (False, ("episodes_per_step=2",)),
    "episodes4": (False, ("episodes_per_step=4",)),
}


def run_one(args: argparse.Namespace, variant: str, seed: int) -> dict:
    """Train one (variant, seed), or read it when its folder already holds a finished run."""
    folder = Path(args.out) / "runs" / f"{variant}_seed{seed}"
    done = folder / "done.json"
    faithful, overrides = VARIANTS[variant]
    data = args.faithful if faithful else args.data
    cmd = [sys.executable, str(ROOT / "training.py"), "with", args.config, "setting1",
           f"data_dir={Path(data).resolve()}", f"log_dir={folder.resolve()}",
           f"eval_fold={args.fold}", f"seed={seed}", f"encoder={args.encoder}",
           f"n_steps={args.steps}", f"val_every={args.val_every}", f"device={args.device}",
           f"bf16={args.precision == 'bf16'}", f"num_workers={args.workers}",
           f"save_snapshot_every={10 ** 7}", f"checkpoint_every={10 ** 7}",
           f"image_every={10 ** 7}", *overrides, *args.extra]
    if done.is_file():
        result = json.loads(done.read_text())
        if result.get("command") != cmd[1:]:
            raise InputError(f"{done}: expected a finished run of this command, found one with "
                             f"other settings ({' '.join(result.get('command', [])[2:])}); "
                             f"choose another --out or remove {folder}")
        return result
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "SSL_PROGRESS": "0", "PYTHONUNBUFFERED": "1"}
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "train.log"
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    curves = sorted(folder.glob("train/*/*/val_curve.csv"))
    if rc != 0 or not curves:
        return {"variant": variant, "seed": seed, "failed": f"exit {rc}, log {log}"}
    with open(curves[-1], encoding="utf-8", newline="") as fh:
        rows = [{"step": int(r["step"]), "organ": r["organ"], "dice": 100 * float(r["dice"])}
                for r in csv.DictReader(fh)]
    result = {"variant": variant, "seed": seed, "seconds": seconds, "rows": rows,
              "command": cmd[1:],
              "overrides": list(overrides), "data": str(data)}
    done.write_text(json.dumps(result, indent=1))
    return result


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: list[dict], variants: list[str], steps: list[int]) -> list[dict]:
    """Mean ± sd of the validation mean Dice per variant and step, and the difference from the
    first variant paired by seed (same seed, same initial weights): mean ± its standard error."""
    dice = {(res["variant"], res["seed"], r["step"]): r["dice"] for res in results
            for r in res.get("rows", []) if r["organ"] == "mean"}
    out = []
    for variant in variants:
        for step in steps:
            seeds = sorted(s for v, s, t in dice if v == variant and t == step)
            if not seeds:
                continue
            values = [dice[(variant, s, step)] for s in seeds]
            diffs = [dice[(variant, s, step)] - dice[(variants[0], s, step)] for s in seeds
                     if (variants[0], s, step) in dice]
            out.append({"variant": variant, "step": step, "n": len(values),
                        "mean": statistics.fmean(values), "sd": _sd(values), "values": values,
                        "diff": statistics.fmean(diffs) if diffs else None,
                        "diff_se": _sd(diffs) / len(diffs) ** 0.5 if diffs else None})
    return out


def write_outputs(out: Path, results: list[dict], rows: list[dict], title: str) -> str:
    with open(out / "curves.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("variant", "seed", "step", "organ", "dice"))
        for res in results:
            for r in res.get("rows", []):
                writer.writerow((res["variant"], res["seed"], r["step"], r["organ"],
                                 f"{r['dice']:.2f}"))
    first = rows[0]["variant"] if rows else ""
    lines = [title, "", f"| variant | step | seeds | mean Dice ± sd | − {first}, paired ± se | "
             f"per seed |", "|---|---|---|---|---|---|"]
    for row in rows:
        diff = "–" if row["diff"] is None or row["variant"] == first else \
            f"{row['diff']:+.2f}" + (f" ± {row['diff_se']:.2f}" if row["n"] > 1 else "")
        spread = f" ± {row['sd']:.2f}" if row["n"] > 1 else ""
        lines.append(f"| {row['variant']} | {row['step']} | {row['n']} | {row['mean']:.2f}"
                     f"{spread} | {diff} | "
                     f"{' / '.join(f'{v:.2f}' for v in row['values'])} |")
    failed = [res for res in results if "failed" in res]
    lines += [f"\nFailed: {res['variant']} seed {res['seed']}: {res['failed']}" for res in failed]
    text = "\n".join(lines) + "\n"
    (out / "curves.md").write_text(text, encoding="utf-8")
    plot(out / "curves.png", rows, title)
    return text


def plot(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    for i, variant in enumerate(variants):
        pts = [r for r in rows if r["variant"] == variant]
        offset = (i - (len(variants) - 1) / 2) * 8  # side by side at each step
        ax.errorbar([r["step"] + offset for r in pts], [r["mean"] for r in pts],
                    yerr=[r["sd"] for r in pts], marker="o", capsize=3,
                    label=f"{variant} (n={pts[0]['n']})")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation mean Dice (%), mean ± sd over seeds")
    ax.set_title(title, fontsize="small")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="prepared dataset folder (compact superpixels)")
    parser.add_argument("--faithful", help="prepared copy with faithful superpixel ids")
    parser.add_argument("--config", default="chaost2", help="named dataset config")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=["defaults", "draw_original"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--encoder", default="deeplabv3_resnet101")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (one for every run)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)),
                        help="intra-op threads per run")
    parser.add_argument("--workers", type=int, default=0, help="episode workers per run")
    parser.add_argument("--out", default="benchmarks/results/curves")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument("extra", nargs="*", help="more training overrides, key=value")
    args = parser.parse_args(argv)
    if args.list:
        for name, (faithful, overrides) in VARIANTS.items():
            print(f"{name:15s} {' '.join(overrides) or '(none)'}"
                  f"{'  [faithful ids]' if faithful else ''}")
        return 0
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise InputError(f"--variants: expected names from {sorted(VARIANTS)}, got {unknown}")
    if args.data is None:
        raise InputError("--data: expected a prepared dataset folder, got none")
    for name in ("jobs", "threads", "steps", "val_every"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')}: expected >= 1, got "
                             f"{getattr(args, name)}")
    if args.faithful is None and any(VARIANTS[v][0] for v in args.variants):
        raise InputError(f"--faithful: variants {[v for v in args.variants if VARIANTS[v][0]]} "
                         f"train on faithful superpixel ids; expected a copy written with "
                         f"`python -m data_preprocessing.superpixels --dir DIR --relabel "
                         f"faithful`, got none")
    if args.steps % args.val_every:
        raise InputError(f"--steps {args.steps}: expected a multiple of --val-every "
                         f"{args.val_every}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, args, v, s) for v, s in jobs]
        results = []
        for future in futures:
            res = future.result()
            results.append(res)
            state = res.get("failed") or f"{res['seconds']:.0f} s"
            print(f"{res['variant']} seed {res['seed']}: {state}", flush=True)
    steps = list(range(args.val_every, args.steps + 1, args.val_every))
    title = (f"{args.config} fold {args.fold}, Setting 1, encoder {args.encoder}, {args.precision} "
             f"on {args.device}, "
             f"{args.steps} steps, validated every {args.val_every}"
             f"{', ' + ' '.join(args.extra) if args.extra else ''}")
    print(write_outputs(out, results, table(results, args.variants, steps), title))
    return 1 if any("failed" in r for r in results) else 0


if __name__ == "__main__":
    from util.cli import run_main
    run_main("benchmarks/learning_curves.py", lambda: sys.exit(main()))
