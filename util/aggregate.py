"""The paper's table from finished validation runs: per organ, mean over scans, then over folds.

Reads every ``summary.json`` under the given folders, groups the runs by (dataset, setting,
protocol, shots, pseudolabel), takes each fold's per-organ mean Dice over query scans, then the
mean and std over folds, and writes ``results.md`` and ``results.csv`` (with the published
SSL-ALPNet rows beside ours) and ``results.png`` (a per-organ bar plot with error bars)::

    python -m util.aggregate exps/validate --out results
"""
from __future__ import annotations

import argparse
import csv
import io
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from util.io import atomic_path, read_json
from util.errors import InputError, MissingInput

# Published mean Dice (%) of SSL-ALPNet, ECCV 2020 (paper protocol, 5 folds, 1-shot).
PUBLISHED = {
    ("SABS", 1): {"LIVER": 78.29, "SPLEEN": 70.96, "KID_l": 72.36, "KID_R": 71.81},
    ("SABS", 2): {"LIVER": 73.65, "SPLEEN": 60.25, "KID_l": 63.34, "KID_R": 54.82},
    ("CHAOST2", 1): {"LIVER": 76.10, "SPLEEN": 72.18, "LK": 81.92, "RK": 85.18},
    ("CHAOST2", 2): {"LIVER": 73.05, "SPLEEN": 67.02, "LK": 73.63, "RK": 78.39},
    ("CMR", 1): {"LV-BP": 83.99, "LV-MYO": 66.74, "RV": 79.96},
}


def collect(folders: list[str | os.PathLike]) -> list[dict]:
    runs = []
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            raise MissingInput(f"{folder}: expected a folder of validation runs, found "
                                    f"nothing there")
        for path in sorted(folder.rglob("summary.json"), key=lambda p: p.stat().st_mtime):
            summary = read_json(path)
            if "per_organ" not in summary or "fold" not in summary:
                raise InputError(f"{path}: expected a validation summary with 'per_organ' and "
                                 f"'fold', found keys {sorted(summary)}")
            summary["path"] = str(path.parent)
            runs.append(summary)
    return runs


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per experiment group: per organ mean/std over folds of the per-fold mean Dice.

    When a fold was evaluated several times (several runs), the newest run counts.
    """
    groups: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for run in runs:
        key = (run["dataset"], run.get("setting"), run["protocol"], run.get("n_shots", 1),
               run.get("pseudolabel", "superpixel"), run.get("encoder", ""),
               run.get("steps") if run.get("checkpoint") else "untrained")
        fold_organs = groups[key].setdefault(run["fold"], {})
        for organ, stats in run["per_organ"].items():
            fold_organs[organ] = stats["dice"]["mean"]
    rows = []
    for key, folds in sorted(groups.items(), key=lambda kv: str(kv[0])):
        dataset, setting, protocol, shots, pseudo, encoder, steps = key
        organs = sorted({o for f in folds.values() for o in f})
        per_organ = {}
        for organ in organs:
            vals = np.array([f[organ] for f in folds.values() if organ in f], dtype=float) * 100
            vals = vals[~np.isnan(vals)]
            per_organ[organ] = (float(vals.mean()), float(vals.std()), int(vals.size)) \
                if vals.size else (float("nan"), float("nan"), 0)
        means = [m for m, _, n in per_organ.values() if n]
        rows.append({"dataset": dataset, "setting": setting, "protocol": protocol,
                     "shots": shots, "pseudolabel": pseudo, "encoder": encoder, "steps": steps,
                     "folds": sorted(folds),
                     "per_organ": per_organ,
                     "mean": float(np.mean(means)) if means else float("nan"),
                     "published": PUBLISHED.get((dataset, setting))})
    return rows


def to_markdown(rows: list[dict]) -> str:
    out = io.StringIO()
    for row in rows:
        organs = list(row["per_organ"])
        out.write(f"### {row['dataset']}, Setting {row['setting']}, {row['protocol']} protocol, "
                  f"{row['shots']}-shot, {row['pseudolabel']}, {row['encoder']}, "
                  f"{_steps(row['steps'])} ({len(row['folds'])} fold(s): {row['folds']})\n\n")
        out.write("| | " + " | ".join(organs) + " | mean |\n")
        out.write("|---" * (len(organs) + 2) + "|\n")
        cells = [f"{m:.2f} ± {s:.2f} ({n})" if n else "n/a"
                 for m, s, n in row["per_organ"].values()]
        out.write("| ours (measured) | " + " | ".join(cells) + f" | {row['mean']:.2f} |\n")
        pub = row["published"]
        if pub and row["protocol"] == "paper" and row["shots"] == 1:
            vals = [pub.get(o) for o in organs]
            shown = [f"{v:.2f}" if v is not None else "–" for v in vals]
            known = [v for v in vals if v is not None]
            out.write("| SSL-ALPNet (published) | " + " | ".join(shown)
                      + f" | {np.mean(known):.2f} |\n")
        out.write("\n")
    return out.getvalue()


def _steps(steps) -> str:
    return "untrained" if steps == "untrained" else f"{steps} steps"


def write_outputs(rows: list[dict], out: str | os.PathLike) -> list[Path]:
    out = Path(out)
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text("# Mean Dice (%), mean over query scans, then mean ± std over folds\n\n"
                       + to_markdown(rows), encoding="utf-8")
    with atomic_path(out / "results.csv") as tmp, \
            open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["dataset", "setting", "protocol", "shots", "pseudolabel", "encoder",
                         "steps", "organ", "dice_mean", "dice_std_over_folds", "n_folds",
                         "published"])
        for row in rows:
            for organ, (m, s, n) in row["per_organ"].items():
                pub = (row["published"] or {}).get(organ, "")
                writer.writerow([row["dataset"], row["setting"], row["protocol"], row["shots"],
                                 row["pseudolabel"], row["encoder"], row["steps"], organ,
                                 f"{m:.4f}", f"{s:.4f}", n, pub])
    plot = out / "results.png"
    _bar_plot(rows, plot)
    return [out / "results.md", out / "results.csv", plot]


def _bar_plot(rows: list[dict], path: Path) -> None:
    """One panel per comparison (dataset, setting, protocol, shots, pseudolabel, encoder); in it,
    one bar per model (untrained, N steps) and the published numbers, grouped on each organ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple, list[dict]] = {}
    for row in rows:
        key = tuple(row[k] for k in ("dataset", "setting", "protocol", "shots", "pseudolabel",
                                     "encoder"))
        panels.setdefault(key, []).append(row)
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 3.8),
                             squeeze=False)
    for ax, (key, group) in zip(axes[0], panels.items()):
        group = sorted(group, key=lambda r: (r["steps"] != "untrained", str(r["steps"])))
        organs = list(dict.fromkeys(o for r in group for o in r["per_organ"]))
        pub = group[0]["published"] or {}
        series = [(_steps(r["steps"]), [r["per_organ"].get(o, (np.nan, np.nan, 0))[0]
                                        for o in organs],
                   [r["per_organ"].get(o, (np.nan, np.nan, 0))[1] for o in organs])
                  for r in group]
        if pub and key[2] == "paper" and key[3] == 1:
            series.append(("SSL-ALPNet (published)", [pub.get(o, np.nan) for o in organs],
                           None))
        x = np.arange(len(organs))
        width = 0.8 / len(series)
        for k, (label, means, stds) in enumerate(series):
            ax.bar(x + (k - (len(series) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
                   label=label)
        ax.set_xticks(x, organs)
        ax.set_ylim(0, 100)
        ax.set_ylabel("Dice (%)")
        dataset, setting, protocol, shots, pseudo, encoder = key
        ax.set_title(f"{dataset}, Setting {setting}, {protocol} protocol, {shots}-shot, "
                     f"{encoder} encoder", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="folders holding validation runs")
    parser.add_argument("--out", default="results", help="where results.md/.csv/.png go")
    args = parser.parse_args(argv)
    runs = collect(args.folders)
    if not runs:
        raise MissingInput(f"{', '.join(args.folders)}: expected validation runs "
                                f"(summary.json), found none; run validation.py first")
    rows = aggregate(runs)
    for path in write_outputs(rows, args.out):
        print(f"wrote {path}")
    print(to_markdown(rows))


if __name__ == "__main__":
    from util.cli import run_main

    run_main("python -m util.aggregate", main)
