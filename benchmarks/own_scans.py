"""Your own scans on real data: unlabelled import → self-supervised training → predict.

The shared CHAOS-T2 scans stand in for a user's folder. The 15 training scans of fold 0 are
imported **without labels** (a plain folder, names ``scan_<id>.nii.gz``), a model is trained on
their superpixels only, and ``predict.py`` segments each organ of the 4 held-back query scans
of fold 0 from the one labelled support scan of that fold (scan 8). Dice per organ is measured
against the queries' labels on their own grid, beside the same pipeline with an untrained model
(a checkpoint of 1 step at lr 1e-12: the initialisation, saved). Every step is the command a
user runs (the four commands of the README's "Your own scans"). ``--published`` adds the same
training on the same scans as the published preprocessed files.

    python benchmarks/own_scans.py --out benchmarks/results/own_scans [--steps 1000] [--published]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_preprocessing.registry import CHAOST2, make_folds  # noqa: E402
from util.io import sort_pids  # noqa: E402
from util.metrics import overlap_counts  # noqa: E402


def run(*cmd: str, log: Path) -> None:
    """Run one user command from the project root; its output goes to ``log``."""
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(cmd)}\n")
        handle.flush()
        done = subprocess.run(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    print(f"[{time.perf_counter() - start:6.0f} s] {' '.join(cmd[:3])} ... -> exit "
          f"{done.returncode}", flush=True)
    if done.returncode != 0:
        sys.exit(f"failed; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=os.environ.get("SSL_SHARED_DATA", "../shared/data"))
    parser.add_argument("--out", default="benchmarks/results/own_scans")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--encoder", default="tiny")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--published", action="store_true",
                        help="also train on the same 15 scans as the published files "
                             "(prepare --dataset CHAOST2, labels present but unread) and predict "
                             "alike: the import's preprocessing against the original's")
    args = parser.parse_args()
    chaos = (ROOT / args.shared / "CHAOST2").resolve()
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    pids = sort_pids(p.name[len("image_"):-len(".nii.gz")] for p in chaos.glob("image_*.nii.gz"))
    fold = make_folds(pids, CHAOST2.fold_sep)[0]
    scans = out / "my_scans"  # the user's folder: images only, any names
    scans.mkdir(exist_ok=True)
    for pid in fold["train"]:
        link = scans / f"scan_{pid}.nii.gz"
        if not link.exists():
            link.symlink_to(chaos / f"image_{pid}.nii.gz")
    py = sys.executable
    start = time.perf_counter()
    data = out / "data"
    run(py, "-m", "data_preprocessing.prepare", "--src", str(scans), "--dst", str(data),
        "--modality", "MR", "--name", "MYSCANS", log=log)
    prepared = time.perf_counter() - start
    common = [f"encoder={args.encoder}", "num_workers=0", "device=cpu",
              f"seed={args.seed}", "bf16=False"]
    runs = [("untrained", 1, 1e-12, data), ("trained", args.steps, args.lr, data)]
    if args.published:
        published = out / "published_src"
        published.mkdir(exist_ok=True)
        for pid in fold["train"]:
            for kind in ("image", "label"):
                link = published / f"{kind}_{pid}.nii.gz"
                if not link.exists():
                    link.symlink_to(chaos / f"{kind}_{pid}.nii.gz")
        run(py, "-m", "data_preprocessing.prepare", "--dataset", "CHAOST2", "--src",
            str(published), "--dst", str(out / "published"), log=log)
        runs.append(("published files", args.steps, args.lr, out / "published"))
    checkpoints = {}
    for tag, steps, lr, folder in runs:
        t0 = time.perf_counter()
        run(py, "training.py", "with", *common, f"data_dir={folder}", f"n_steps={steps}",
            f"lr={lr}", "setting=1", f"log_dir={out / 'exps' / tag.replace(' ', '_')}",
            "print_interval=100", log=log)
        checkpoints[tag] = next((out / "exps" / tag.replace(" ", "_")).glob(
            "train/*/*/snapshots/latest.pth"))
        if tag == "trained":
            train_time = time.perf_counter() - t0
    support = fold["support"][0]
    rows = {}
    for tag, ckpt in checkpoints.items():
        for cid, organ in CHAOST2.labels.items():
            if cid == 0:
                continue
            pred_dir = out / "preds" / tag.replace(" ", "_") / organ
            run(py, "predict.py", "--checkpoint", str(ckpt),
                "--support", str(chaos / f"image_{support}.nii.gz"),
                "--support-mask", str(chaos / f"label_{support}.nii.gz"), "--label", str(cid),
                "--query", *[str(chaos / f"image_{q}.nii.gz") for q in fold["query"]],
                "--out", str(pred_dir), "--device", "cpu", log=log)
            scores = []
            for q in fold["query"]:
                pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_dir /
                                                                 f"image_{q}_pred.nii.gz")))
                truth = sitk.GetArrayFromImage(sitk.ReadImage(str(chaos / f"label_{q}.nii.gz")))
                tp, fp, fn = overlap_counts(pred > 0, truth == cid)
                scores.append(100 * 2 * tp / (2 * tp + fp + fn))
            rows.setdefault(organ, {})[tag] = float(np.mean(scores))
    for tag in checkpoints:
        rows.setdefault("mean", {})[tag] = float(np.mean([rows[o][tag] for o in rows
                                                          if o != "mean"]))
    lines = [f"Imported {len(fold['train'])} CHAOS-T2 scans without labels ({prepared:.0f} s), "
             f"trained {args.steps} steps ({args.encoder} encoder, lr {args.lr}, "
             f"{train_time / 60:.1f} min on CPU); support scan {support}, queries "
             f"{', '.join(fold['query'])}; Dice (%) on the queries' own grids:", "",
             "| organ | " + " | ".join(checkpoints) + " |",
             "|---" * (len(checkpoints) + 1) + "|"]
    lines += [f"| {organ} | " + " | ".join(f"{r[tag]:.2f}" for tag in checkpoints) + " |"
              for organ, r in rows.items()]
    (out / "own_scans.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "own_scans.json").write_text(json.dumps({"rows": rows, "steps": args.steps,
                                                    "train_s": train_time}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
