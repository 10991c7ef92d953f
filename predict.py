"""Segment new scans: one support scan with a mask of one organ, one or more query scans.

    python predict.py --checkpoint exps/<run>/snapshots/latest.pth \\
        --support sup.nii.gz --support-mask sup_liver.nii.gz --query a.nii.gz b.nii.gz --out preds

Setup → read, check and preprocess every input (nothing is written before all inputs pass) →
support parts and their prototypes → per query: realistic chunk plan, segment, map back onto the
query's own grid, write ``<out>/<query name>_pred.nii.gz`` (uint8 0/1, the query's size, spacing,
origin and direction). Scans are resampled and normalised as the training data were
(:mod:`inference.predict`); query slices take their support part from the body extent
(method.md §9.5, no query label is used).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from data_preprocessing.resample import fmt_spacing
from dataloaders.evaluation import QueryScan, build_support, plan_query
from inference.batched import encode_parts, segment
from models.encoder import ENCODER_NAMES
from inference.predict import (MODALITIES, Grid, binary_mask, check_modality, check_same_grid,
                               checkpoint_modality, checkpoint_warnings, coverage_warning,
                               dataset_info, merged_labels_warning,
                               is_oblique, load_model, orientation, output_path, prepare_mask,
                               prepare_scan, read_scan, reorient, restore_layout,
                               support_volume, target_orientation, target_spacing, to_original)
from util.cli import run_main
from util.device import resolve_device
from util.io import ensure_writable_dir, write_image
from util.errors import InputError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="our training checkpoint (snapshots/*.pth), a training run folder (its "
                        "newest checkpoint) or an original-code snapshot")
    p.add_argument("--support", required=True, type=Path, help="support image (NIfTI)")
    p.add_argument("--support-mask", required=True, type=Path,
                   help="mask of the organ on the support image's grid")
    p.add_argument("--label", type=float, default=None,
                   help="mask value of the organ (default: any non-zero voxel)")
    p.add_argument("--query", required=True, nargs="+", type=Path, help="query image(s)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--modality", choices=MODALITIES, default=None,
                   help="intensity preprocessing (default: the checkpoint's dataset, else MR; "
                        "a scan that looks like the other modality stops the run unless given)")
    p.add_argument("--orientation", default="auto", metavar="CODE",
                   help="axis order scans are segmented in: auto (the training data's, e.g. LAS "
                        "for CHAOS-T2; else the support's), a code such as LAS, or stored (as "
                        "each file is); oblique scans are always kept as stored")
    p.add_argument("--spacing", type=float, nargs="+", default=None, metavar="MM",
                   help="target spacing x y [z] in mm (default: the training data's)")
    p.add_argument("--n-part", type=int, default=3, help="support parts (odd)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--batch-size", type=int, default=16, help="query slices per forward pass")
    p.add_argument("--encoder", choices=ENCODER_NAMES, default=None,
                   help="encoder of a bare state-dict checkpoint (default deeplabv3_resnet101); "
                        "ours record their own, and a different --encoder is an error")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)

    # setup
    if args.batch_size < 1:
        raise InputError(f"--batch-size: expected a positive number, got {args.batch_size}")
    if args.n_part < 1 or args.n_part % 2 == 0:
        raise InputError(f"--n-part: expected a positive odd number, got {args.n_part}")
    ensure_writable_dir(args.out, "--out")  # before any computation
    outputs = [output_path(args.out, q) for q in args.query]
    clashes = sorted({str(o) for o in outputs if outputs.count(o) > 1})
    if clashes:
        raise InputError(f"--query: expected distinct file names, found several queries writing "
                         f"{clashes}; rename them or predict them in separate runs")
    device = resolve_device(args.device, flag="--device")
    model, _, trained = load_model(args.checkpoint, args.encoder, device)

    # read, check and preprocess every input before writing anything
    inputs = prepare_inputs(args, trained)
    print(f"{inputs.modality} preprocessing as {inputs.info.name}: spacing "
          f"{fmt_spacing(inputs.spacing)} mm, {inputs.info.size} x {inputs.info.size}, "
          f"per-volume z-score, orientation {inputs.orientation}; device {device}")

    # support parts: one slice per part, prototypes once
    name = f"label {args.label:g}" if args.label is not None else "mask"
    support_set = build_support([support_volume(str(args.support), inputs.support,
                                                inputs.support_mask)], 1, name, args.n_part)
    prototypes = encode_parts(model, support_set.parts, device)

    # per query: segment on the network grid, map back onto the query's grid, write
    for path, prepared, grid, out in zip(args.query, inputs.queries, inputs.grids, outputs):
        start = time.perf_counter()
        # no query label exists; the realistic plan only records (never uses) the label's extent
        scan = QueryScan(pid=str(path), grey=torch.from_numpy(prepared.image),
                         label=torch.zeros(prepared.image.shape, dtype=torch.uint8),
                         body_z=prepared.body_z)
        plan = plan_query(scan, 1, support_set, protocol="realistic")
        pred = segment(model, prototypes, scan, plan, device, args.batch_size)
        result = restore_layout(to_original(pred, prepared), grid, str(path))
        write_image(result, out)
        n_voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(result)))
        print(f"{path}: {n_voxels} voxels predicted in {time.perf_counter() - start:.1f} s "
              f"-> {out}")
    return outputs


@dataclass
class Inputs:
    """Every input read, checked and preprocessed: the support and its mask, the queries and
    their stored grids (to map predictions back), and how they were preprocessed."""
    support: object
    support_mask: np.ndarray
    queries: list
    grids: list
    modality: str
    info: object
    spacing: tuple
    orientation: str


def prepare_inputs(args: argparse.Namespace, trained) -> Inputs:
    """Read the support, its mask and the queries; check them against each other and the
    checkpoint's modality; reorient and preprocess as the training data were. Warnings are
    printed once every input has passed."""
    modality = args.modality or checkpoint_modality(trained)
    warnings = checkpoint_warnings(trained, modality, args.checkpoint)
    source = (f"this checkpoint (trained on {trained.name})" if trained is not None else
              "a checkpoint that records no dataset (MR assumed)")
    support = read_scan(args.support, "support image")
    # a mask stored in another axis order on the same physical grid is taken as it is
    mask_image = reorient(read_scan(args.support_mask, "support mask"), orientation(support))
    check_same_grid(support, mask_image, args.support, args.support_mask)
    info = dataset_info(modality, trained)
    code = target_orientation(info, support, args.orientation)
    if code is None and args.orientation == "auto":
        warnings.append(f"WARNING: {args.support} is oblique and {info.name} has no common "
                        f"orientation: every scan is segmented as stored")
    kept_oblique = []  # scans left as stored although code is set

    def bring(image: sitk.Image, path: Path) -> sitk.Image:
        """Check the modality, reorient to ``code`` (oblique scans are kept as stored)."""
        warnings.append(check_modality(image, modality, args.modality is not None, str(path),
                                       source))
        if code is None:
            return image
        if is_oblique(image):
            warnings.append(f"WARNING: {path} is oblique (closest code {orientation(image)}); "
                            f"its slices are segmented as stored, not as {code}")
            kept_oblique.append(path)
            return image
        if orientation(image) != code:
            print(f"{path}: stored {orientation(image)}, segmented as {code}")
        return reorient(image, code)

    support = bring(support, args.support)
    mask = binary_mask(reorient(mask_image, orientation(support)), args.support_mask, args.label)
    warnings.append(merged_labels_warning(mask_image, args.support_mask, args.label))
    spacing = target_spacing(info, support, args.spacing)
    sup = prepare_scan(support, spacing, info, str(args.support))
    sup_mask = prepare_mask(mask, support, sup, str(args.support_mask))
    queries, grids = [], []
    for path in args.query:
        image = read_scan(path, "query image")
        grids.append(Grid.of(image))
        image = bring(image, path)
        if image.GetSize()[2] < args.n_part:
            raise InputError(f"{path}: expected a query volume of at least {args.n_part} slices "
                             f"(one per support part, --n-part), found "
                             f"{image.GetSize()[2]}; segment the slice within its volume")
        queries.append(prepare_scan(image, spacing, info, str(path)))
        warnings.append(coverage_warning(queries[-1], str(path)))
    for line in filter(None, warnings):
        print(line, file=sys.stderr)
    kept = " (oblique scans as stored)" if kept_oblique else ""
    return Inputs(sup, sup_mask, queries, grids, modality, info, spacing,
                  f"{code or 'as stored'}{kept}")


if __name__ == "__main__":
    run_main("predict.py", main)
