"""Check: how often training steps and a validation pass read values back from the device.

On a phantom dataset written to a temporary folder (or ``--data``, a prepared folder), with the
configured encoder: ``--steps`` training steps of ``--episodes-per-step`` episodes each, every
one made as training makes it (recipes from the loader, assembled on the device), with forward,
loss, backward and the SGD update; then one validation pass without surface distances (as
during training, on a staged set). The reads of values from the device are counted
(:func:`util.device.host_reads`): on CUDA by CUDA's synchronisation check (every operation that
waits for the device, host copies from pageable memory included), elsewhere by catching the
operations that read values (``.item()``, ``bool()``, boolean indexing, ``nonzero``). The first
step is not checked (it copies the training slices to the device, once). A read in the checked
steps exits with status 1 after the report. The validation's reads are reported (one or two
per support part, where its valid prototypes are kept once; the Dice counts are read after the
pass). Prints JSON.

    .venv/bin/python benchmarks/check_host_reads.py [--device auto] [--encoder tiny]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import default_collate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config_ssl_upload import KEYS  # noqa: E402
from data_preprocessing import classmap, superpixels  # noqa: E402
from data_preprocessing.contract import load_dataset  # noqa: E402
from data_preprocessing.phantom import write_phantom  # noqa: E402
from dataloaders.episodes import SuperpixelEpisodes  # noqa: E402
from inference.evaluate import evaluate, stage  # noqa: E402
from models.alpnet import ALPNet  # noqa: E402
from models.losses import CLASS_WEIGHTS  # noqa: E402
from training import train_step, validation_set  # noqa: E402
from util.device import host_reads, resolve_device  # noqa: E402
from util.metrics import summarize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--encoder", default="tiny")
    parser.add_argument("--data", default=None, help="a prepared dataset folder (default: a "
                                                     "phantom written to a temporary folder)")
    parser.add_argument("--steps", type=int, default=3, help="training steps (>= 2; the first "
                                                              "is not checked)")
    parser.add_argument("--episodes-per-step", type=int, default=2)
    args = parser.parse_args()
    device = resolve_device(args.device, "--device")
    if args.steps < 2:
        parser.error(f"--steps: expected at least 2 (the first is not checked), got {args.steps}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else Path(tmp)
        if not args.data:
            write_phantom(root, seed=0, size=64, n_slices=6)
            superpixels.generate(root, workers=1)
            classmap.write_classmap(root, 1)
        ds = load_dataset(root)
        episodes = SuperpixelEpisodes(ds, ds.training_cases(0)[0], seed=1234)
        torch.manual_seed(0)
        model = ALPNet(args.encoder).to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        weights = torch.tensor(CLASS_WEIGHTS, device=device)
        n = args.episodes_per_step
        cfg = {**{k: KEYS[k].default for k in ("protocol", "n_sup_part", "z_margin",
                                                  "realistic_chunks")},
               "eval_fold": 0, "setting": 1, "label_sets": 0}  # the defaults of a run
        evalset = validation_set(cfg, ds)
        staged = stage(evalset, device)
        recipes = [default_collate([episodes.recipe(s * n + i) for i in range(n)])
                   for s in range(args.steps)]
        if device.type == "cuda":
            recipes = [{k: v.pin_memory() if isinstance(v, torch.Tensor) else v
                        for k, v in r.items()} for r in recipes]
        # the first step stages the training slices on the device (a copy, once) and warms
        # the caches; the steps after it are checked
        steps = [train_step(model, optimizer, episodes.assemble(recipes[0], device), weights,
                            skip_empty=False)]
        with host_reads(device, forbid=False) as step_reads:
            for batch in recipes[1:]:
                steps.append(train_step(model, optimizer, episodes.assemble(batch, device),
                                        weights, skip_empty=False))
        model.eval()
        with host_reads(device, forbid=False) as validation_reads:
            result = evaluate(model, ds, evalset, device, 4, distances=False, staged=staged,
                              read=False)
        result.read()
        losses = [round(float((s.query_loss + s.align_loss).detach()), 6) for s in steps]
        support_parts = sum(len(p) for p in staged.parts.values())
        dice = summarize(result.scores)["overall"]["dice"]["mean"]
    report = ({"check": "host_reads", "device": str(device), "encoder": args.encoder,
                      "steps": args.steps, "episodes_per_step": n,
                      "checked_steps": args.steps - 1, "step_host_reads": step_reads.n,
                      "step_reads": sorted(set(step_reads.what)),
                      "losses": losses, "validation_host_reads": validation_reads.n,
                      "validation_reads": sorted(set(validation_reads.what)),
                      "support_parts": support_parts, "validation_dice": round(dice, 4),
                      "validation_scores": len(result.scores)})
    print(json.dumps(report, indent=2))
    if step_reads.n:
        sys.exit(f"check_host_reads: {step_reads.n} host read(s) in the training steps: "
                 f"{sorted(set(step_reads.what))}")


if __name__ == "__main__":
    main()
