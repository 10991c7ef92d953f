"""Evaluation episodes: support parts and query slice plans (method.md §6.2–§6.5, §9.5).

For a fold and its test classes, :func:`build_evaluation` loads the support and query scans once
(normalised like training; CT with the training-fold statistics) and returns an
:class:`EvaluationSet`:

- per test class c a :class:`SupportSet` of ``npart`` :class:`SupportPart` (images
  [S, 3, H, W], fg / bg [S, H, W] float32; S = number of support scans, one slice each), the
  slice of part k in each support scan being ``zlist[int(pct_k · len(zlist))]`` with ``zlist``
  the scan's slices holding c (identical to ``classmap_1.json``) and ``pct_k`` from
  :func:`part_percentiles` (1/6, 1/2, 5/6 for npart = 3);
- per query scan one :class:`QueryScan` (grey volume [Z, H, W], tiled on demand to
  [n, 3, H, W] without a copy of the volume, label [Z, H, W]) shared by every class;
- per (query scan, class) a :class:`QueryPlan`: the slices to predict, the support part of each,
  and the slices to score.

Protocols (``protocol=``):

``'paper'`` (method.md §6.3–§6.4, the default)
    every slice is predicted, part ``floor((z − z_min) / ((z_max − z_min) / npart))`` clipped to
    [0, npart − 1] (0 when z_max = z_min), with [z_min, z_max] the organ's extent in the *query*
    ground truth; only ``z_min − z_margin ≤ z ≤ z_max + z_margin`` is scored.
``'realistic'`` (method.md §0, §9.5 "EP2")
    every slice is predicted and scored, and nothing of the query's ground truth chooses a slice
    or a part. The part uses the same formula on an *estimated* organ extent: the organ's relative
    position inside the body extent of the support scan(s) (mean over shots), mapped onto the
    query's body extent (first/last slice with raw intensity above the body threshold, from the
    image). ``realistic_chunks='body'`` instead splits the query's body extent itself.
``'adnet'`` (method.md §9.5, Q-Net / ADNet)
    only slices holding the class are predicted and scored; part by count, boundaries
    ``int(linspace(0, C, npart + 1))`` over the C labelled slices.

An organ absent from a query scan never raises: its plan has ``status='absent'``; under
'paper' and 'adnet' it has nothing to predict, under 'realistic' every slice is still predicted
and scored (false positives count).
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from data_preprocessing.contract import Dataset
from dataloaders.volumes import CROP, NormStats, Volume, as_dataset, load_volumes, \
    normalization_stats, tile_grey, tile_slices
from util.io import sort_pids
from util.errors import InputError, UnknownName

__all__ = ["PROTOCOLS", "part_percentiles", "support_slice", "chunk_index", "count_chunks",
           "SupportPart", "SupportSet", "QueryScan", "QueryPlan", "EvaluationSet",
           "build_support", "plan_query", "label_groups", "build_evaluation"]

PROTOCOLS = ("paper", "realistic", "adnet")
REALISTIC_CHUNKS = ("aligned", "body")


def part_percentiles(npart: int) -> list[float]:
    """``[0.5]`` for one part, else ``1/(2n) + k · (1 − 1/n) / (n − 1)``, k = 0..n−1
    (method.md §6.2)."""
    if not isinstance(npart, (int, np.integer)) or npart < 1 or npart % 2 == 0:
        raise InputError(f"npart: expected a positive odd number of support parts, got {npart!r}")
    if npart == 1:
        return [0.5]
    return [1 / (2 * npart) + k * (1 - 1 / npart) / (npart - 1) for k in range(npart)]


def support_slice(zlist: Sequence[int], pct: float) -> int:
    """``zlist[int(pct · len(zlist))]`` of an ascending slice list."""
    if not zlist:
        raise InputError("support_slice: expected a non-empty slice list")
    return int(zlist[int(pct * len(zlist))])


def chunk_index(z: float, z_min: float, z_max: float, npart: int) -> int:
    """Part of slice z: ``(z − z_min) // ((z_max − z_min) / npart)`` clipped to [0, npart − 1];
    0 when ``z_max == z_min`` (method.md §6.3). Python's float floor division, as the original: it
    can differ from ``floor`` of the true division at part boundaries (z=5 of [0, 15], 9 parts:
    2)."""
    if z_max == z_min:
        return 0
    part = (z - z_min) // ((z_max - z_min) / npart)
    return int(min(max(part, 0), npart - 1))


def count_chunks(n: int, npart: int) -> list[int]:
    """ADNet parts of n ordered labelled slices: boundaries ``int(linspace(0, n, npart + 1))``."""
    bounds = np.linspace(0, n, npart + 1).astype(int)
    return [int(min(np.searchsorted(bounds, i, side="right") - 1, npart - 1)) for i in range(n)]


@dataclass
class SupportPart:
    """One part's shots: images [S, 3, H, W], fg / bg [S, H, W] float32."""

    images: torch.Tensor
    fg: torch.Tensor
    bg: torch.Tensor
    scan_ids: list[str]
    z: list[int]


@dataclass
class SupportSet:
    """The ``npart`` support parts of one class; ``organ_z`` / ``body_z`` per support scan."""

    class_id: int
    class_name: str
    scan_ids: list[str]
    percentiles: list[float]
    parts: list[SupportPart]
    organ_z: list[tuple[int, int]]
    body_z: list[tuple[int, int]]


@dataclass
class QueryScan:
    """One query volume: ``grey`` [Z, H, W] float32, ``label`` [Z, H, W] uint8 class ids."""

    pid: str
    grey: torch.Tensor
    label: torch.Tensor
    body_z: tuple[int, int]

    @property
    def n_slices(self) -> int:
        return int(self.grey.shape[0])

    @property
    def images(self) -> torch.Tensor:
        """[Z, 3, H, W], a view (no copy): the grey volume tiled to three channels."""
        return tile_grey(self.grey)

    def tiled(self, zs: Sequence[int]) -> torch.Tensor:
        """[len(zs), 3, H, W] contiguous float32 batch of the slices ``zs``."""
        return self.images[torch.as_tensor(list(zs), dtype=torch.long)].contiguous()

    def binary_label(self, class_id: int) -> torch.Tensor:
        """[Z, H, W] int64, 1 where the label is ``class_id``."""
        return (self.label == class_id).long()

    def organ_slices(self, class_id: int) -> list[int]:
        """Ascending slices holding ``class_id`` (ground truth; never used by 'realistic')."""
        return _organ_slices(self.label.numpy(), class_id)


@dataclass
class QueryPlan:
    """What to predict and score for one (query scan, class).

    ``predict_z`` and ``parts`` are aligned (the support part of each predicted slice);
    ``score_z`` ⊆ ``predict_z`` are the slices whose TP/FP/FN count. ``gt_z`` is the organ's
    ground-truth extent in the query (None when absent), recorded for reporting; under the
    realistic protocol it chooses nothing. ``chunk_z`` is the (possibly estimated) extent the
    parts were computed on.
    """

    pid: str
    class_id: int
    protocol: str
    status: str  # 'ok' or 'absent'
    predict_z: list[int]
    parts: list[int]
    score_z: list[int]
    gt_z: tuple[int, int] | None
    chunk_z: tuple[float, float] | None

    @property
    def absent(self) -> bool:
        return self.status == "absent"

    def part_of(self, z: int) -> int:
        try:
            return self.parts[self.predict_z.index(z)]
        except ValueError as err:
            raise UnknownName(f"scan {self.pid}, class {self.class_id}: slice {z} is not predicted "
                           f"under protocol {self.protocol!r}") from err


@dataclass
class EvaluationSet:
    """Everything a validation loop needs for one fold (see the module docstring)."""

    dataset_root: str
    fold: int
    protocol: str
    npart: int
    classes: list[int]
    support: dict[int, SupportSet]
    queries: list[QueryScan]
    plans: dict[int, list[QueryPlan]] = field(default_factory=dict)
    stats: NormStats | None = None

    def iter_class(self, class_id: int) -> Iterator[tuple[QueryScan, QueryPlan]]:
        """(query scan, its plan) for one class, in query order."""
        if class_id not in self.plans:
            raise UnknownName(f"class {class_id}: expected one of the test classes {self.classes}")
        return iter(zip(self.queries, self.plans[class_id]))

    def absent(self) -> list[QueryPlan]:
        """The (scan, class) plans whose organ is absent from the query scan."""
        return [p for c in self.classes for p in self.plans[c] if p.absent]


def _organ_slices(label: np.ndarray, class_id: int) -> list[int]:
    return np.flatnonzero((label == class_id).reshape(label.shape[0], -1).any(axis=1)).tolist()


def _body_z(vol: Volume) -> tuple[int, int]:
    return vol.body_z if vol.body_z is not None else (0, vol.n_slices - 1)


def build_support(volumes: Sequence[Volume], class_id: int, class_name: str,
                  npart: int = 3) -> SupportSet:
    """The support parts of one class from labelled support scans (one slice per scan and part)."""
    pcts = part_percentiles(npart)
    if not volumes:
        raise InputError(f"class {class_id} ({class_name}): expected at least one support scan")
    zlists, organ_z = [], []
    for vol in volumes:
        if vol.label is None:
            raise InputError(f"support scan {vol.pid}: expected a loaded label, found none")
        zl = _organ_slices(vol.label, class_id)
        if not zl:
            raise InputError(f"support scan {vol.pid}: expected class {class_id} ({class_name}) "
                             f"on some slice to build its support, found none; choose another "
                             f"support scan")
        zlists.append(zl)
        organ_z.append((zl[0], zl[-1]))
    parts = []
    for pct in pcts:
        zs = [support_slice(zl, pct) for zl in zlists]
        fg = np.stack([v.label[z] == class_id for v, z in zip(volumes, zs)]).astype(np.float32)
        parts.append(SupportPart(images=tile_slices([v.image[z] for v, z in zip(volumes, zs)]),
                                 fg=torch.from_numpy(fg),
                                 bg=torch.from_numpy(1.0 - fg), scan_ids=[v.pid for v in volumes],
                                 z=zs))
    return SupportSet(class_id=class_id, class_name=class_name,
                      scan_ids=[v.pid for v in volumes], percentiles=pcts, parts=parts,
                      organ_z=organ_z, body_z=[_body_z(v) for v in volumes])


def _estimated_extent(scan_body: tuple[int, int], support: SupportSet,
                      mode: str) -> tuple[float, float]:
    b0, b1 = scan_body
    if mode == "body":
        return float(b0), float(b1)
    rel = []
    for (a, b), (s0, s1) in zip(support.organ_z, support.body_z):
        span = s1 - s0
        rel.append(((a - s0) / span, (b - s0) / span) if span > 0 else (0.0, 0.0))
    ra, rb = np.mean(rel, axis=0)
    return b0 + float(ra) * (b1 - b0), b0 + float(rb) * (b1 - b0)


def plan_query(scan: QueryScan, class_id: int, support: SupportSet, protocol: str = "paper",
               z_margin: int = 0, realistic_chunks: str = "aligned") -> QueryPlan:
    """The :class:`QueryPlan` of one query scan and class under ``protocol``."""
    if protocol not in PROTOCOLS:
        raise InputError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
    if realistic_chunks not in REALISTIC_CHUNKS:
        raise InputError(f"realistic_chunks: expected one of {REALISTIC_CHUNKS}, got "
                         f"{realistic_chunks!r}")
    if z_margin < 0:
        raise InputError(f"z_margin: expected >= 0, got {z_margin}")
    npart = len(support.parts)
    n = scan.n_slices
    zl = scan.organ_slices(class_id)
    gt_z = (zl[0], zl[-1]) if zl else None
    status = "ok" if zl else "absent"
    common = {"pid": scan.pid, "class_id": class_id, "protocol": protocol, "status": status,
              "gt_z": gt_z}
    if protocol == "realistic":
        lo, hi = _estimated_extent(scan.body_z, support, realistic_chunks)
        zs = list(range(n))
        return QueryPlan(predict_z=zs, parts=[chunk_index(z, lo, hi, npart) for z in zs],
                         score_z=zs, chunk_z=(lo, hi), **common)
    if not zl:
        return QueryPlan(predict_z=[], parts=[], score_z=[], chunk_z=None, **common)
    if protocol == "adnet":
        return QueryPlan(predict_z=zl, parts=count_chunks(len(zl), npart), score_z=list(zl),
                         chunk_z=(float(zl[0]), float(zl[-1])), **common)
    z_min, z_max = gt_z
    zs = list(range(n))
    score = [z for z in zs if z_min - z_margin <= z <= z_max + z_margin]
    return QueryPlan(predict_z=zs, parts=[chunk_index(z, z_min, z_max, npart) for z in zs],
                     score_z=score, chunk_z=(float(z_min), float(z_max)), **common)


def label_groups(ds: Dataset, label_sets: int | str) -> list[int]:
    """The label groups named by ``label_sets``: one group, or every group for ``'all'``."""
    n = len(ds.meta["label_groups"])
    if label_sets == "all":
        return list(range(n))
    if isinstance(label_sets, bool) or not isinstance(label_sets, int) or not 0 <= label_sets < n:
        raise InputError(f"{ds.root}: label_sets expects a group in 0..{n - 1} or 'all', got "
                         f"{label_sets!r}")
    return [label_sets]


def build_evaluation(dataset: Dataset | str | os.PathLike, fold: int, *, label_group: int | str,
                     protocol: str = "paper", npart: int = 3,
                     support_pids: Sequence[str] | None = None,
                     query_pids: Sequence[str] | None = None, z_margin: int = 0,
                     realistic_chunks: str = "aligned", stats: NormStats | None = None,
                     crop: int | None = CROP) -> EvaluationSet:
    """Support sets and query plans of one fold's test classes (``label_group``: one group, or
    ``'all'`` for every group's test classes, each query scan then encoded once for all).

    Support and query scans default to ``splits.json`` (several support scans = k-shot); CT
    statistics default to the fold's training scans (pass ``stats`` to reuse the training run's).
    """
    ds = as_dataset(dataset)
    if protocol not in PROTOCOLS:
        raise InputError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
    part_percentiles(npart)
    split = ds.fold(fold)
    sup = list(split["support"] if support_pids is None else support_pids)
    queries = list(split["query"] if query_pids is None else query_pids)
    if not sup or not queries:
        raise InputError(f"{ds.root}: fold {fold}: expected support and query scans, got "
                         f"support {sup}, query {queries}")
    both = sort_pids(set(sup) & set(queries))
    if both:
        raise InputError(f"{ds.root}: fold {fold}: scans {both} are both support and query; "
                         f"expected disjoint sets")
    if stats is None:
        stats = normalization_stats(ds, list(split["train"]))
    sup_vols = load_volumes(ds, sup, stats=stats, label=True, crop=crop)
    query_vols = load_volumes(ds, queries, stats=stats, label=True, crop=crop)
    classes = list(dict.fromkeys(c for g in label_groups(ds, label_group)
                                 for c in ds.test_labels(g)))
    support = {c: build_support(sup_vols, c, ds.labels[c], npart) for c in classes}
    scans = [QueryScan(pid=v.pid, grey=torch.from_numpy(v.image),
                       label=torch.from_numpy(v.label), body_z=_body_z(v)) for v in query_vols]
    plans = {c: [plan_query(s, c, support[c], protocol, z_margin, realistic_chunks)
                 for s in scans] for c in classes}
    return EvaluationSet(dataset_root=str(ds.root), fold=fold, protocol=protocol, npart=npart,
                         classes=classes, support=support, queries=scans, plans=plans,
                         stats=stats)
