"""One command from already-preprocessed scans to a verified dataset folder.

Links (or copies) ``image_<pid>.nii.gz`` / ``label_<pid>.nii.gz`` from ``--src`` (for example the
published preprocessed CHAOS-T2 files) into ``--dst``, registers the folder, builds the class-slice
index, generates superpixel pseudolabels and verifies the result::

    python -m data_preprocessing.prepare --dataset CHAOST2 --src ../shared/data/CHAOST2 \\
        --dst data/CHAOST2
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from data_preprocessing import classmap, superpixels, supervoxels, verify
from data_preprocessing.contract import register
from util.io import ensure_writable_dir, pid_from_path


def link_scans(src: str | os.PathLike, dst: str | os.PathLike, copy: bool = False) -> list[str]:
    """Place every image/label pair of ``src`` in ``dst`` (symlinks unless ``copy``)."""
    src, dst = Path(src).resolve(), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: expected a folder of image_<id>.nii.gz files, "
                                f"found nothing there")
    images = sorted(src.glob("image_*.nii.gz"))
    if not images:
        raise FileNotFoundError(f"{src}: expected image_<id>.nii.gz files, found none")
    dst.mkdir(parents=True, exist_ok=True)
    pids = []
    for image in images:
        pid = pid_from_path(image)
        label = src / f"label_{pid}.nii.gz"
        if not label.is_file():
            raise FileNotFoundError(f"{label}: expected the label of {image.name}, "
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
    parser.add_argument("--dataset", required=True, help="CHAOST2, SABS, CMR or PHANTOM")
    parser.add_argument("--src", required=True, help="folder with image_/label_ files")
    parser.add_argument("--dst", required=True, help="dataset folder to create")
    parser.add_argument("--copy", action="store_true", help="copy instead of symlinking")
    parser.add_argument("--scale", nargs="+", default=["MIDDLE"],
                        choices=sorted(superpixels.SCALES))
    parser.add_argument("--supervoxels", type=int, nargs="+", default=[], metavar="MIN_SIZE",
                        help="also write 3-D supervoxels SV<MIN_SIZE> (CHAOS/SABS 5000, CMR 1000)")
    parser.add_argument("--min-tp", type=int, nargs="+", default=[1])
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    ensure_writable_dir(args.dst, "--dst")
    pids = link_scans(args.src, args.dst, args.copy)
    register(args.dst, args.dataset)
    print(f"{args.dst}: {len(pids)} scans registered as {args.dataset}")
    for n in args.min_tp:
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


if __name__ == "__main__":
    from util.cli import run_main

    run_main("python -m data_preprocessing.prepare", main)
