"""One command from scans to a verified dataset folder, ready to train on.

Your own scans (docs/own_scans.md): a plain folder of volumes (labels optional), an nnU-Net v2
or Medical Segmentation Decathlon folder, or DICOM series are preprocessed as the record says
(``--modality`` where the folder does not say it, or ``--preset`` for a published dataset's
record)::

    python -m data_preprocessing.prepare --src my_scans --dst data/MINE --modality MR

Published preprocessed files (``image_<id>.nii.gz`` / ``label_<id>.nii.gz``, for example the
CHAOS-T2 files) are linked as they are with ``--dataset``::

    python -m data_preprocessing.prepare --dataset CHAOST2 --src ../shared/data/CHAOST2 \\
        --dst data/CHAOST2

Either way the folder is registered, the class-slice index built (labelled folders),
superpixel pseudolabels generated and the result verified.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from data_preprocessing import classmap, importers, superpixels, supervoxels, verify
from data_preprocessing.contract import load_dataset, register
from data_preprocessing.registry import REGISTRY
from data_preprocessing.resample import fmt_spacing
from util.io import ensure_writable_dir
from util.errors import InputError, MissingInput


def link_scans(src: str | os.PathLike, dst: str | os.PathLike, copy: bool = False) -> list[str]:
    """Place every image/label pair of ``src`` in ``dst`` (symlinks unless ``copy``)."""
    src, dst = Path(src).resolve(), Path(dst)
    if not src.is_dir():
        raise MissingInput(f"{src}: expected a folder of image_<id>.nii.gz files, "
                                f"found nothing there")
    images = sorted(src.glob("image_*.nii.gz"))
    if not images:
        raise MissingInput(f"{src}: expected image_<id>.nii.gz files, found none")
    dst.mkdir(parents=True, exist_ok=True)
    pids = []
    for image in images:
        pid = image.name[len("image_"):-len(".nii.gz")]  # the id as written: 01 is not 1
        label = src / f"label_{pid}.nii.gz"
        if not label.is_file():
            raise MissingInput(f"{label}: expected the label of {image.name}, "
                                    f"found nothing there")
        for path in (image, label):
            target = dst / path.name
            if target.is_symlink() or target.exists():
                if target.resolve() == path.resolve():
                    continue
                target.unlink()
            if copy:
                shutil.copy2(path, target)
            else:
                target.symlink_to(path)
        pids.append(pid)
    return pids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True,
                        help="scans: a plain folder, nnU-Net v2, MSD or DICOM (or the published "
                             "image_/label_ files with --dataset)")
    parser.add_argument("--dst", required=True, help="dataset folder to create")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--dataset", type=str.upper, choices=sorted(REGISTRY),
                     help="link already-preprocessed published files as they are")
    how.add_argument("--preset", type=str.upper, choices=sorted(REGISTRY),
                     help="preprocess raw scans with a published dataset's record")
    parser.add_argument("--modality", type=str.upper, choices=importers.MODALITIES,
                        help="CT or MR, required where the folder does not say it")
    parser.add_argument("--name", help="dataset name (default: the --dst folder's name)")
    parser.add_argument("--spacing", type=float, nargs="+", metavar="MM",
                        help="target spacing x y [z] (default: the scans' median)")
    parser.add_argument("--size", type=int, help="in-plane size (default 256)")
    parser.add_argument("--window", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="CT: HU window (default -125 275)")
    parser.add_argument("--channel", type=int, default=0,
                        help="channel of multi-channel nnU-Net / MSD cases (default 0)")
    parser.add_argument("--label-suffix", help="labels beside the images: <case><SUFFIX>.<ext>")
    parser.add_argument("--no-labels", action="store_true",
                        help="import the images only, even where labels exist")
    parser.add_argument("--folds", type=int, default=5, help="folds of the labelled scans")
    parser.add_argument("--test-labels", type=int, nargs="+", metavar="CLASS",
                        help="classes evaluated (default: every labelled class)")
    parser.add_argument("--label-groups", nargs="+", metavar="C,C",
                        help="Setting-2 groups of test classes, e.g. 1,4 2,3 (default: one "
                             "class per group)")
    parser.add_argument("--copy", action="store_true", help="--dataset: copy, not symlink")
    parser.add_argument("--scale", nargs="+", default=["MIDDLE"],
                        choices=sorted(superpixels.SCALES))
    parser.add_argument("--supervoxels", type=int, nargs="+", default=[], metavar="MIN_SIZE",
                        help="also write 3-D supervoxels SV<MIN_SIZE> (CHAOS/SABS 5000, CMR 1000)")
    parser.add_argument("--min-tp", type=int, nargs="+", default=[1])
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers: expected a positive number, got {args.workers}")
    if args.folds < 2:
        parser.error(f"--folds: expected at least 2, got {args.folds}")
    if args.spacing is not None and (len(args.spacing) not in (2, 3)
                                     or not all(s > 0 for s in args.spacing)):
        parser.error(f"--spacing: expected 2 or 3 positive values, got {args.spacing}")
    if args.size is not None and args.size < 32:
        parser.error(f"--size: expected at least 32 pixels, got {args.size}")
    ensure_writable_dir(args.dst, "--dst")
    if args.dataset:
        pids = link_scans(args.src, args.dst, args.copy)
        register(args.dst, args.dataset)
        print(f"{args.dst}: {len(pids)} scans registered as {args.dataset}")
        check_sources(args.src, args.dst, pids)
    else:
        import_source(args)
    ds = load_dataset(args.dst)
    for n in args.min_tp if ds.labelled else []:
        print(f"wrote {classmap.write_classmap(args.dst, n)}")
    for scale in args.scale:
        stats = superpixels.generate(args.dst, scale, workers=args.workers)
        print(f"superpixels {scale}: {superpixels.summarize(stats)}")
    for min_size in args.supervoxels:
        counts = supervoxels.generate(args.dst, min_size, workers=args.workers)
        print(f"supervoxels {supervoxels.scale_name(min_size)}: {min(counts)}-{max(counts)} per "
              f"volume")
    verify.verify_dataset(args.dst)
    print(f"{args.dst}: verified")


def check_sources(src: str, dst: str, pids: list[str]) -> None:
    """Verify the linked scans (readability, grids, label values, folds) before the long steps;
    problems name the user's files in ``src``, not their links in ``dst``."""
    try:
        verify.verify_dataset(dst, pseudolabels=False)
    except verify.DatasetVerificationError as err:
        message = str(err)
        for pid in pids:
            for kind in ("image", "label"):
                name = f"{kind}_{pid}.nii.gz"
                message = message.replace(str(Path(dst) / name), str(Path(src) / name))
        raise InputError(message) from None


def import_source(args) -> None:
    """Check the whole source, preprocess it into ``--dst`` and register the folder."""
    if Path(args.src).resolve() == Path(args.dst).resolve():
        raise InputError(f"--dst {args.dst}: expected a folder other than --src")
    name = args.name or Path(args.dst).resolve().name
    if not args.preset and name.upper() in REGISTRY:
        raise InputError(f"--name {name}: the name of a published dataset; expected --preset "
                         f"{name.upper()} to use its record, or another --name")
    source = importers.find_source(args.src, args.channel, args.label_suffix)
    if args.no_labels:
        for case in source.cases:
            case.label = None
    groups = None if args.label_groups is None else [
        importers.parse_group(g, "--label-groups") for g in args.label_groups]
    plan = importers.plan_import(source, name=name, preset=args.preset, modality=args.modality,
                                 spacing=args.spacing, size=args.size, window=args.window,
                                 n_folds=args.folds, test_labels=args.test_labels,
                                 label_groups=groups)
    cases = {c.name for c in plan.cases}
    stale = sorted(p.name for p in Path(args.dst).glob("image_?*.nii.gz")
                   if p.name[len("image_"):-len(".nii.gz")] not in cases)
    if stale:
        raise InputError(f"--dst {args.dst}: expected an empty folder or one holding this "
                         f"import, found other scans {stale[:5]}; choose another --dst")
    labelled = [c.name for c in plan.cases if c.label is not None]
    info = plan.info
    print(f"{source.root}: {source.layout}, {len(plan.cases)} scans ({len(labelled)} labelled), "
          f"{info.modality}; spacing {fmt_spacing(info.target_spacing)} mm, {info.size} x "
          f"{info.size}, orientation {info.orientation or 'as stored'}")
    for note in plan.notes:
        print(note)
    sources = importers.import_scans(plan, args.dst)
    register(args.dst, info, labelled=labelled, sources=sources, force=True,
             preprocessing={"tool": "data_preprocessing.prepare", "layout": source.layout,
                            "source": str(source.root)})
    print(f"{args.dst}: {len(plan.cases)} scans registered as {info.name}")


if __name__ == "__main__":
    from util.cli import run_main

    run_main("python -m data_preprocessing.prepare", main)
