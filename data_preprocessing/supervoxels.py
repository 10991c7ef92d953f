"""3-D supervoxel pseudolabels (method.md §9.2): Felzenszwalb on the 26-neighbourhood, no C
compiler.

The volume is min-max scaled to [0, 255]; edge cost is ``sqrt(w) * |dI|`` with the anisotropy
weights of method.md §9.2; components merge in ascending edge order when the cost is below both
``Int(C) + k / |C|`` (k = scale / 255), then a post-pass merges any component smaller than
``min_size``. Both passes can only ever merge along minimum-spanning-tree edges, so the work is:
zero-cost edges → connected components (scipy), the remaining graph → its minimum spanning tree
(scipy), and the two merge passes run over the tree's edges only.

Writes ``superpix-SV<min_size>_<pid>.nii.gz`` (int32 ids 1..N inside the body mask, 0 outside; the
image's geometry) and records the parameters in ``dataset.json``::

    python -m data_preprocessing.supervoxels --dir data/CHAOST2 --min-size 5000
"""
from __future__ import annotations

import argparse
import os
import time
from itertools import product
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from data_preprocessing.contract import check_writable_dataset, commit_staged, discard_on_error, \
    load_dataset, staging_folder
from data_preprocessing.superpixels import body_mask, relabel, run_jobs
from util.io import array_to_image, read_image, write_image
from util.errors import InputError

BODY_THRESHOLD = 10.0  # on the [0, 255]-scaled volume (method.md §9.2)
# 13 forward offsets (dz, dy, dx) of the 26-neighbourhood
OFFSETS = [o for o in product((0, 1), (-1, 0, 1), (-1, 0, 1)) if o > (0, 0, 0)]


def scale_name(min_size: int) -> str:
    return f"SV{min_size}"


def _edge_weight(offset: tuple[int, int, int], anisotropy: float) -> float:
    """sqrt of the method.md §9.2 weight: in-plane 1; z only s²; z + n in-plane axes
    (n + s²)/(n + 1)."""
    dz, dy, dx = offset
    n_plane = int(dy != 0) + int(dx != 0)
    if dz == 0:
        return 1.0
    return float(np.sqrt((n_plane + anisotropy ** 2) / (n_plane + 1)))


def grid_edges(volume: np.ndarray, anisotropy: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges (u, v, cost) of the 26-neighbourhood of a [Z, H, W] volume, u < v in raster order."""
    zs, hs, ws = volume.shape
    index = np.arange(volume.size, dtype=np.int64).reshape(volume.shape)
    us, vs, costs = [], [], []
    for dz, dy, dx in OFFSETS:
        src = (slice(0, zs - dz), slice(max(0, -dy), hs - max(0, dy)),
               slice(max(0, -dx), ws - max(0, dx)))
        dst = (slice(dz, zs), slice(max(0, dy), hs + min(0, dy)),
               slice(max(0, dx), ws + min(0, dx)))
        us.append(index[src].ravel())
        vs.append(index[dst].ravel())
        diff = np.abs(volume[src] - volume[dst]).ravel()
        costs.append((diff * _edge_weight((dz, dy, dx), anisotropy)).astype(np.float64, copy=False))
    return np.concatenate(us), np.concatenate(vs), np.concatenate(costs)


def _find(parent: list[int], x: int) -> int:
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:
        parent[x], x = root, parent[x]
    return root


def felzenszwalb_3d(volume: np.ndarray, spacing_xyz: tuple[float, float, float],
                    scale: float = 1.0, min_size: int = 5000) -> np.ndarray:
    """Felzenszwalb segmentation of a [Z, H, W] volume in [0, 255]; labels 0..K-1 [Z, H, W]."""
    anisotropy = float(spacing_xyz[2]) / float(spacing_xyz[0])
    k = scale / 255.0
    u, v, cost = grid_edges(volume.astype(np.float64, copy=False), anisotropy)
    n = volume.size
    zero = cost == 0
    # zero-cost edges always merge first (0 < Int(C) + k/|C|): connected components
    _, comp = connected_components(coo_matrix((np.ones(int(zero.sum())), (u[zero], v[zero])),
                                              shape=(n, n)), directed=False)
    m = int(comp.max()) + 1
    cu, cv, cost = comp[u[~zero]], comp[v[~zero]], cost[~zero]
    del u, v
    keep = cu != cv
    cu, cv, cost = np.minimum(cu, cv)[keep], np.maximum(cu, cv)[keep], cost[keep]
    # one edge per component pair, the cheapest (a sparse matrix would sum duplicates)
    pair = cu * m + cv
    order = np.lexsort((cost, pair))
    key = pair[order]
    first = np.ones(key.size, bool)
    first[1:] = key[1:] != key[:-1]
    pick = order[first]
    tree = minimum_spanning_tree(coo_matrix((cost[pick], (cu[pick], cv[pick])), shape=(m, m)))
    tree = tree.tocoo()
    by_cost = np.argsort(tree.data, kind="stable")
    edges = list(zip(tree.row[by_cost].tolist(), tree.col[by_cost].tolist(),
                     tree.data[by_cost].tolist()))
    parent = list(range(m))
    size = np.bincount(comp, minlength=m).tolist()
    internal = [0.0] * m
    max_internal = 0.0
    for a, b, w in edges:  # threshold pass
        if w >= max_internal + k:  # no threshold can exceed this any more
            break
        ra, rb = _find(parent, a), _find(parent, b)
        if ra != rb and w < internal[ra] + k / size[ra] and w < internal[rb] + k / size[rb]:
            parent[rb] = ra
            size[ra] += size[rb]
            internal[ra] = max(internal[ra], internal[rb], w)
            max_internal = max(max_internal, internal[ra])
    for a, b, _ in edges:  # minimum-size pass
        ra, rb = _find(parent, a), _find(parent, b)
        if ra != rb and (size[ra] < min_size or size[rb] < min_size):
            parent[rb] = ra
            size[ra] += size[rb]
    roots = np.array(parent, dtype=np.int64)
    while True:
        nxt = roots[roots]
        if np.array_equal(nxt, roots):
            break
        roots = nxt
    _, labels = np.unique(roots[comp], return_inverse=True)
    return labels.reshape(volume.shape)


def supervoxels_volume(volume: np.ndarray, spacing_xyz: tuple[float, float, float],
                       min_size: int = 5000, scale: float = 1.0) -> np.ndarray:
    """Supervoxel ids of a raw [Z, H, W] volume: 1..N inside the per-slice body mask, 0 outside."""
    volume = volume.astype(np.float64, copy=False)
    lo, hi = float(volume.min()), float(volume.max())
    scaled = (volume - lo) / max(hi - lo, 1e-12) * 255.0
    labels = felzenszwalb_3d(scaled, spacing_xyz, scale, min_size)
    mask = np.stack([body_mask(s, BODY_THRESHOLD) for s in scaled])
    return relabel(labels, mask, "compact")


def _process_case(image_path: Path, out_path: Path, min_size: int) -> int:
    image = read_image(image_path)
    ids = supervoxels_volume(sitk.GetArrayFromImage(image), image.GetSpacing(), min_size)
    write_image(array_to_image(ids, image), out_path)
    return int(ids.max())


def generate(folder: str | os.PathLike, min_size: int = 5000, workers: int | None = None,
             cases: list[str] | None = None) -> list[int]:
    """Write supervoxels for every case (or ``cases``); returns the supervoxel count per case."""
    if min_size < 1:
        raise InputError(f"min_size: expected a positive voxel count, got {min_size}")
    ds = load_dataset(folder)
    name = scale_name(min_size)
    if cases is not None:  # a few cases, written in place
        jobs = [(ds.path("image", p), ds.path("pseudolabel", p, name), min_size) for p in cases]
        return run_jobs(_process_case, jobs, workers, desc=f"supervoxels {name}")
    # the whole set: written aside, then switched with its dataset.json record in one step
    staging = staging_folder(folder, f"superpix-{name}")
    jobs = [(ds.path("image", p), staging / ds.path("pseudolabel", p, name).name, min_size)
            for p in ds.cases]
    with discard_on_error(staging):
        counts = run_jobs(_process_case, jobs, workers, desc=f"supervoxels {name}")
    commit_staged(folder, staging, {"pseudolabels": {name: {
        "method": "felzenszwalb3d", "min_size": min_size, "sigma": 0.0, "scale": 1.0,
        "body_threshold": BODY_THRESHOLD, "intensity": "minmax_0_255", "relabel": "compact",
        "connectivity": 26}}})
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="registered dataset folder")
    parser.add_argument("--min-size", type=int, default=5000,
                        help="voxels (5000 for CHAOS-T2, 1000 for CMR as in method.md §9.2)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers: expected a positive number of processes, got {args.workers}")
    check_writable_dataset(args.dir)
    start = time.perf_counter()
    counts = generate(args.dir, args.min_size, args.workers)
    print(f"supervoxels {scale_name(args.min_size)} for {len(counts)} volumes in "
          f"{time.perf_counter() - start:.1f} s: {min(counts)}-{max(counts)} per volume")


if __name__ == "__main__":
    from util.cli import run_main

    run_main("python -m data_preprocessing.supervoxels", main)
