"""Training episodes: superpixel (method.md §3.2–§3.7), supervoxel (§9.3) and manual-label episodes.

Every dataset here is a map-style ``torch.utils.data.Dataset`` whose item ``index`` is the
episode of global step ``index``, drawn from its own generator ``episode_rng(seed, step)``: an
episode is a pure function of (run seed, step), the same with 0, 2 or 8 workers, in any order,
and on resume. An episode is made in two parts:

- its **recipe** (:meth:`EpisodeDataset.recipe`), drawn on the host: the slice and pseudolabel
  of each view, and each view's augmentation parameters (:func:`dataloaders.augment.draw_view`),
  a few numbers per view (microseconds);
- its **assembly** (:meth:`EpisodeDataset.assemble`) on the training device, for a batch of
  recipes at once: the views gathered from the training slices staged there once
  (:meth:`EpisodeDataset.bank`), the foreground masks compared there, and the augmentation one
  batched ``grid_sample`` with the elastic fields drawn there from each view's seed. Nothing is
  read back, so a GPU step does not wait for the host.

Training loads recipes (``episode_loader(dataset.recipes, …)``) and assembles them on its
device; ``dataset[i]`` is the same episode assembled on the CPU. The CPU's and CUDA's generators
(and CUDA's on different GPU models) give different elastic fields for a seed, so the episodes of
a run on a GPU differ from ``dataset[i]`` in their elastic deformation only (the same
distribution: tests/test_augment.py).
The loader's ``worker_init_fn`` only handles signals.

One episode is a flat dict (S support shots, one query; H = W = 256 on real data):

====================  ==================  ====================================================
key                   type / shape        meaning
====================  ==================  ====================================================
``support_images``    [S, 3, H, W] f32    grey slice tiled to 3 identical channels
``support_fg``        [S, H, W] f32       1 on the foreground (the superpixel / organ), else 0
``support_bg``        [S, H, W] f32       ``1 − support_fg``
``query_images``      [1, 3, H, W] f32    tiled grey query slice
``query_labels``      [1, H, W] int64     {0, 1}
``support_z``         [S] int64           support slice index of each shot
``scan_id``           str                 support scan id(s), comma-joined when S > 1
``z``                 int                 slice of the first support shot
``query_scan_id``     str                 query scan id
``query_z``           int                 query slice index
``superpixel_id``     int                 pseudolabel id drawn (−1 for manual-label episodes)
``class_id``          int                 1 (pseudolabel foreground) or the organ id
``step``              int                 the global step the episode was drawn for
====================  ==================  ====================================================

A recipe holds, instead of the five image tensors, ``RECIPE_TENSORS`` per view (V = S + 1, the
query last): ``slices`` [V] (bank rows), ``ids`` [V] (the foreground's id there) and the plan
``theta`` [V, 2, 3], ``geo`` [V], ``field_seed`` [V], ``gamma`` [V], ``gamma_on`` [V]. The
default collate adds a leading batch axis to every tensor, turns ints into tensors of shape [B]
and strings into lists; :meth:`EpisodeDataset.assemble` returns the five image tensors with that
batch axis.
"""
from __future__ import annotations

import copy
import functools
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, default_collate

from data_preprocessing.contract import Dataset
from dataloaders.augment import AugParams, ViewPlan, augment_views, draw_view, get_aug_params, \
    one_hot_stack
from dataloaders.volumes import CROP, NormStats, Volume, as_dataset, load_volumes, \
    normalization_stats, tile_grey
from util.device import upload
from util.io import read_json
from util.errors import InputError, MissingInput
from util.workers import loader_worker_init

__all__ = ["EPISODE_TENSORS", "RECIPE_TENSORS", "episode_rng", "StepSampler", "episode_loader",
           "setting_exclusions", "training_classes", "SLICE_DRAWS", "ORIGINAL_EPOCH",
           "excluded_slices_from_classmap",
           "make_recipe", "supervoxel_pairs", "EpisodeDataset", "Recipes", "SuperpixelEpisodes",
           "SupervoxelEpisodes", "ManualLabelEpisodes"]

EPISODE_TENSORS = ("support_images", "support_fg", "support_bg", "query_images", "query_labels")
# an episode's recipe per view (support shots, then the query): its slice in the bank, the id its
# foreground is, and its augmentation plan (dataloaders.augment.ViewPlan)
RECIPE_TENSORS = ("slices", "ids") + ViewPlan.FIELDS
SUPERPIXEL_DRAWS = ("uniform", "original")
SLICE_DRAWS = ("uniform", "original")
# the original's epoch length for CHAOS-T2 and CMR (``fix_length``); SABS' epoch is its slice count
ORIGINAL_EPOCH = 1000
EXCLUDE_MODES = ("any", "all")
PSEUDOLABELS = ("superpixel", "supervoxel", "manual")  # the episode sources of training


def episode_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of one episode: PCG64 seeded from ``SeedSequence([seed, step])``."""
    if seed < 0 or step < 0:
        raise InputError(f"episode_rng: expected a non-negative seed and step, got {seed}, {step}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(step)]))


class StepSampler(Sampler[int]):
    """Yields the episode indices of steps ``start .. start + n_steps − 1``, ``per_step`` of them
    per step: ``(step · stride + offset) · per_step + i``. With one process and one episode per
    step (stride 1, offset 0, per_step 1) the index is the step; a distributed rank r of W uses
    stride W and offset r, so ranks draw distinct episodes and a resumed run the same ones."""

    def __init__(self, start: int, n_steps: int, stride: int = 1, offset: int = 0,
                 per_step: int = 1) -> None:
        if start < 0 or n_steps < 0 or stride < 1 or not 0 <= offset < stride or per_step < 1:
            raise InputError(f"StepSampler: expected start >= 0, n_steps >= 0, stride >= 1, "
                             f"0 <= offset < stride and per_step >= 1, got {start}, {n_steps}, "
                             f"{stride}, {offset}, {per_step}")
        self.start, self.n_steps = int(start), int(n_steps)
        self.stride, self.offset, self.per_step = int(stride), int(offset), int(per_step)

    def indices(self, step: int) -> list[int]:
        """The episode indices of the 0-based global ``step``."""
        first = (step * self.stride + self.offset) * self.per_step
        return list(range(first, first + self.per_step))

    def __iter__(self) -> Iterator[int]:
        return iter(i for s in range(self.start, self.start + self.n_steps)
                    for i in self.indices(s))

    def __len__(self) -> int:
        return self.n_steps * self.per_step


def episode_loader(dataset: torch.utils.data.Dataset, *, num_workers: int = 4, start_step: int = 0,
                   n_steps: int | None = None, pin_memory: bool = False,
                   prefetch_factor: int | None = None, rank: int = 0,
                   world_size: int = 1, per_step: int = 1) -> DataLoader:
    """Loader of the steps ``start_step .. start_step + n_steps − 1``, a batch of ``per_step``
    episodes each (:class:`StepSampler`).

    ``n_steps`` defaults to ``len(dataset)``; the sampler's indices are global episode indices.
    Resuming at step k is ``start_step=k``. Under distributed
    training pass the process's ``rank`` and the ``world_size``.
    """
    n = len(dataset) if n_steps is None else n_steps
    kwargs = {"prefetch_factor": prefetch_factor} if num_workers > 0 and prefetch_factor else {}
    return DataLoader(dataset, batch_size=per_step,
                      sampler=StepSampler(start_step, n, stride=world_size, offset=rank,
                                          per_step=per_step),
                      num_workers=num_workers, pin_memory=pin_memory,
                      worker_init_fn=loader_worker_init if num_workers > 0 else None, **kwargs)


def setting_exclusions(dataset: Dataset | str | os.PathLike, setting: int,
                       label_group: int) -> list[int]:
    """Classes whose slices are never sampled: none in Setting 1, the test classes in Setting 2."""
    ds = as_dataset(dataset)
    if setting == 1:
        return []
    if setting == 2:
        return ds.test_labels(label_group)
    raise InputError(f"setting: expected 1 or 2 (method.md §3.7), got {setting!r}")


def resolve_exclude_labels(cfg: dict, ds) -> list[int]:
    """``exclude_labels`` as given, else the test classes of ``label_sets`` in Setting 2 (read
    from the dataset folder's ``dataset.json``, as the episodes are), else []."""
    if cfg["exclude_labels"] is not None:
        return list(cfg["exclude_labels"])
    return setting_exclusions(ds, cfg["setting"], cfg["label_sets"])


def training_classes(dataset: Dataset | str | os.PathLike, label_group: int) -> list[int]:
    """The classes of ``all_test_labels`` that label group ``label_group`` does not test."""
    ds = as_dataset(dataset)
    tested = set(ds.test_labels(label_group))
    return [c for c in ds.meta["all_test_labels"] if c not in tested]


def _check_classes(ds: Dataset, classes: Sequence[int], what: str) -> list[int]:
    out = [int(c) for c in classes]
    bad = [c for c in out if c not in ds.labels or c == 0]
    if bad:
        raise InputError(f"{what}: expected foreground class ids of {ds.name} "
                         f"{sorted(c for c in ds.labels if c)}, got {bad}")
    return out


def excluded_slices_from_classmap(dataset: Dataset | str | os.PathLike, pids: Sequence[str],
                                  exclude_labels: Sequence[int], mode: str = "any",
                                  min_tp: int = 1) -> dict[str, set[int]]:
    """Per scan, the slices holding ≥ 1 pixel of any (``mode='any'``, method.md §3.7) or of every
    (``'all'``, the Q-Net bug of §9.3) class of ``exclude_labels``, per ``classmap_<min_tp>``."""
    ds = as_dataset(dataset)
    if mode not in EXCLUDE_MODES:
        raise InputError(f"exclude mode: expected one of {EXCLUDE_MODES}, got {mode!r}")
    labels = _check_classes(ds, exclude_labels, "exclude_labels")
    if not labels:
        return {p: set() for p in pids}
    path = ds.classmap_path(min_tp)
    if not path.is_file():
        raise MissingInput(f"{path}: expected the class-slice index for Setting-2 exclusion, "
                                f"found nothing there; build it with `python -m "
                                f"data_preprocessing.classmap --dir {ds.root}`")
    classmap = read_json(path)
    out = {}
    for pid in pids:
        sets = []
        for c in labels:
            name = ds.labels[c]
            if name not in classmap or pid not in classmap[name]:
                raise InputError(f"{path}: expected an entry [{name!r}][{pid!r}], found none; "
                                 f"rebuild the class-slice index")
            sets.append(set(int(z) for z in classmap[name][pid]))
        out[pid] = set.union(*sets) if mode == "any" else set.intersection(*sets)
    return out


def make_recipe(views: Sequence[tuple[int, int]], plans: Sequence[dict], *, step: int,
                support_scans: Sequence[str], support_z: Sequence[int], query_scan: str,
                query_z: int, superpixel_id: int, class_id: int) -> dict:
    """An episode's recipe: per view (support shots, then the query) its (bank slice, foreground
    id) and its augmentation plan (:func:`dataloaders.augment.draw_view`), as small tensors,
    with the episode's metadata (the module docstring's table, less the image tensors)."""
    slices, ids = zip(*views)
    plan = ViewPlan.of(plans)
    return {
        "slices": torch.tensor(slices, dtype=torch.int64),
        "ids": torch.tensor(ids, dtype=torch.int64),
        **{k: getattr(plan, k) for k in ViewPlan.FIELDS},
        "support_z": torch.tensor([int(z) for z in support_z], dtype=torch.int64),
        "scan_id": ",".join(str(s) for s in support_scans),
        "z": int(support_z[0]),
        "query_scan_id": str(query_scan),
        "query_z": int(query_z),
        "superpixel_id": int(superpixel_id),
        "class_id": int(class_id),
        "step": int(step),
    }


def supervoxel_pairs(superpix: np.ndarray, excluded: set[int] | Sequence[int],
                     min_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Every valid (supervoxel id v, start slice s) of one volume [Z, H, W] and its probability.

    Q-Net's proposal draws v uniformly over the volume's non-zero ids, a run uniformly among the
    runs of >= 2 consecutive non-excluded slices holding v, and s uniformly among the run's slices
    but its last; it rejects until ``max(|v ∩ s|, |v ∩ s+1|) >= min_size``. The accepted
    distribution is the proposal's restricted to valid pairs, renormalised: returned as
    (ids [n], starts [n], probabilities [n]); None when no pair is valid.
    """
    n_slices = superpix.shape[0]
    ids, inverse = np.unique(superpix, return_inverse=True)
    inverse = inverse.reshape(superpix.shape)
    counts = np.stack([np.bincount(inverse[z].ravel(), minlength=ids.size)
                       for z in range(n_slices)])          # [Z, n_ids]
    counts[sorted(int(z) for z in excluded if 0 <= int(z) < n_slices), :] = 0
    keep_ids = np.flatnonzero(ids > 0)
    out_ids, out_starts, out_w = [], [], []
    for j in keep_ids:
        present = np.concatenate([[False], counts[:, j] > 0, [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(present))
        runs = [(a, b - 1) for a, b in zip(edges[::2], edges[1::2]) if b - 1 > a]
        for a, b in runs:
            for s in range(a, b):
                if max(counts[s, j], counts[s + 1, j]) >= min_size:
                    out_ids.append(int(ids[j]))
                    out_starts.append(s)
                    out_w.append(1.0 / (keep_ids.size * len(runs) * (b - a)))
    if not out_ids:
        return None
    w = np.array(out_w)
    return np.array(out_ids), np.array(out_starts), w / w.sum()


class EpisodeDataset(torch.utils.data.Dataset):
    """Base: item ``i`` → the episode of global step ``i``, from its own generator.

    An episode is made in two parts. :meth:`recipe` draws it on the host (slice, pseudolabel,
    augmentation parameters: a few numbers, microseconds); :meth:`assemble` makes a batch of
    recipes into episode tensors on any device, from the training slices staged there once
    (:meth:`bank`), the augmentation being one batched warp (:func:`augment_views`). Training
    loads recipes (:attr:`recipes`) and assembles them on its device; ``dataset[i]`` is the same
    episode assembled on the CPU.
    """

    def __init__(self, length: int, seed: int, aug: str | AugParams | None) -> None:
        if length < 1:
            raise InputError(f"{type(self).__name__}: expected length >= 1, got {length}")
        if seed < 0:
            raise InputError(f"{type(self).__name__}: expected a non-negative seed, got {seed}")
        self.length, self.seed = int(length), int(seed)
        self.aug = get_aug_params(aug)
        self._banks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        recipe = self.recipe(index)
        episode = self.assemble(default_collate([recipe]), "cpu")
        return {**{k: v for k, v in recipe.items() if k not in RECIPE_TENSORS},
                **{k: episode[k][0] for k in EPISODE_TENSORS}}

    def recipe(self, index: int) -> dict:
        """The recipe of global step ``index`` (:func:`make_recipe`)."""
        index = int(index)
        if index < 0:
            raise IndexError(f"{type(self).__name__}: expected a non-negative index (a global "
                             f"step), got {index}")
        return self.draw_recipe(episode_rng(self.seed, index), index)

    @property
    def recipes(self) -> "Recipes":
        """The dataset of recipes (what the training loader loads)."""
        return Recipes(self)

    def draw_recipe(self, rng: np.random.Generator, step: int) -> dict:
        raise NotImplementedError

    def _load_scans(self, ds: Dataset, pids: Sequence[str], stats: NormStats | None,
                    source: str, **load) -> list[Volume]:
        """The training scans, normalised (CT statistics from them unless ``stats`` is given),
        and staged as one bank of slices: images [n, H, W] float32 and the ids of ``source``
        ('superpix' or 'label') in the smallest integer type that holds them. Each volume's
        arrays become views into the bank; volume ``v`` slice ``z`` is bank slice
        ``offsets[v] + z``."""
        if not pids:
            raise InputError(f"{ds.root}: expected at least one training scan, got none")
        self.stats = stats if stats is not None else normalization_stats(ds, list(pids))
        volumes = load_volumes(ds, list(pids), stats=self.stats, **load)
        sizes = {}
        for vol in volumes:
            sizes.setdefault(vol.image.shape[1:], []).append(vol.pid)
        if len(sizes) > 1:
            raise InputError(f"{ds.root}: expected training scans of one in-plane size, got "
                             + "; ".join(f"{s} for {p}" for s, p in sizes.items()))
        images = np.concatenate([vol.image for vol in volumes])
        ids = np.concatenate([getattr(vol, source) for vol in volumes])
        top = int(ids.max()) if ids.size else 0
        ids = ids.astype(np.uint8 if top < 2 ** 8 else np.int16 if top < 2 ** 15 else np.int32)
        self.offsets = np.cumsum([0] + [vol.n_slices for vol in volumes])[:-1].tolist()
        for vol, first in zip(volumes, self.offsets):
            vol.image = images[first:first + vol.n_slices]
            setattr(vol, source, ids[first:first + vol.n_slices])
        self._banks = {"cpu": (torch.from_numpy(images), torch.from_numpy(ids))}
        self.slice_shape = tuple(images.shape[1:])  # (H, W) of every slice
        return volumes

    def bank(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """The staged slices (images, ids) on ``device``, copied there on first use."""
        device = torch.device(device)
        key = str(device)
        if key not in self._banks:
            self._banks[key] = tuple(t.to(device) for t in self._banks["cpu"])
        return self._banks[key]

    def __getstate__(self) -> dict:
        # pickled (a worker started by spawn): the host bank, not the copies on devices
        return {**self.__dict__, "_banks": {k: v for k, v in self._banks.items() if k == "cpu"}}

    def drawing_only(self) -> "EpisodeDataset":
        """A shallow copy that can draw recipes but holds no image data (no bank, volumes
        without arrays): what a loader worker started by spawn receives."""
        light = copy.copy(self)
        light._banks = {}
        light.volumes = [Volume(v.pid, np.empty((0,) + self.slice_shape, np.float32),
                                body_z=v.body_z) for v in self.volumes]
        return light

    def assemble(self, recipes: dict, device: torch.device | str) -> dict:
        """Episode tensors on ``device`` of a collated batch of B recipes of V views each: the
        module docstring's tensors with a leading batch axis, support ``[B, V − 1, …]``, query
        ``[B, 1, …]``. Reads nothing back from the device."""
        images, ids = self.bank(device)
        b, v = recipes["slices"].shape
        rows = upload(recipes["slices"].flatten(), images.device)
        want = upload(recipes["ids"].flatten(), images.device).view(-1, 1, 1)
        stack = one_hot_stack(images.index_select(0, rows), ids.index_select(0, rows) == want, 2)
        plan = ViewPlan(*(recipes[k].flatten(0, 1) for k in ViewPlan.FIELDS))
        grey, label = augment_views(stack, plan, self.aug)
        tiled = tile_grey(grey.unflatten(0, (b, v))).contiguous()
        label = label.unflatten(0, (b, v))
        support_fg = (label[:, :-1] == 1).float()
        return {"support_images": tiled[:, :-1], "support_fg": support_fg,
                "support_bg": 1.0 - support_fg, "query_images": tiled[:, -1:],
                "query_labels": label[:, -1:]}


class Recipes(torch.utils.data.Dataset):
    """Item ``i``: the recipe of an :class:`EpisodeDataset`'s global step ``i``."""

    def __init__(self, episodes: EpisodeDataset) -> None:
        self.episodes = episodes

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, index: int) -> dict:
        return self.episodes.recipe(index)

    def __getstate__(self) -> dict:
        # a worker started by spawn draws recipes: it gets no image data
        return {"episodes": self.episodes.drawing_only()}


class SuperpixelEpisodes(EpisodeDataset):
    """Self-supervised 2-D superpixel episodes (method.md §3.2–§3.7, with the §0 fixes).

    The training scans ``pids`` are loaded once (normalised per the dataset's rule; CT statistics
    from these scans unless ``stats`` is given). A slice is *eligible* when it holds at least one
    superpixel id of ≥ ``min_superpixel_px`` pixels and, for Setting 2, no pixel (per
    ``classmap_1.json``) of any class in ``exclude_labels``. An episode draws an eligible slice
    uniformly, then a superpixel id uniformly among its eligible ids, so it is never empty.
    ``draw='original'`` restores the original id draw ``UniformInt[1, max − 1]`` (the largest id
    never drawn; an absent id gives an empty mask) on slices whose largest id is ≥ 2 (the
    original crashed on a largest id of 1). Support and query are two independent
    augmentations of the same (slice, superpixel mask) pair (``aug=None``: none).

    ``slice_draw='original'`` restores the original's slice sampling (its superpixel dataset's
    ``__getitem__`` fed by a shuffling ``DataLoader``; measured in docs/episodes.md): every
    epoch of ``L = max(1000, n)`` steps is one shuffled pass over the indices ``0 .. L−1``,
    taken modulo the ``n`` slices of the training scans in scan and slice order; a slice
    without a drawable superpixel passes to the next slice, and a Setting-2 excluded slice to a
    uniformly drawn index in ``[0, L − 1)``. With CHAOS-T2's ~540 training slices the indices past
    ``1000 − n`` appear once per epoch instead of twice, so the last scans are drawn about half
    as often, and each scan's first slice takes the draws of the previous scan's empty
    trailing slice.
    """

    def __init__(self, dataset: Dataset | str | os.PathLike, pids: Sequence[str], *,
                 superpix_scale: str = "MIDDLE", exclude_labels: Sequence[int] = (),
                 length: int = 1000, seed: int = 1234, aug: str | AugParams | None = "sabs_aug",
                 min_superpixel_px: int = 1, draw: str = "uniform",
                 slice_draw: str = "uniform", stats: NormStats | None = None,
                 crop: int | None = CROP) -> None:
        super().__init__(length, seed, aug)
        ds = as_dataset(dataset)
        if draw not in SUPERPIXEL_DRAWS:
            raise InputError(f"superpixel draw: expected one of {SUPERPIXEL_DRAWS}, got {draw!r}")
        if slice_draw not in SLICE_DRAWS:
            raise InputError(f"slice draw: expected one of {SLICE_DRAWS}, got {slice_draw!r}")
        if min_superpixel_px < 1:
            raise InputError(f"min_superpixel_px: expected >= 1, got {min_superpixel_px}")
        if draw == "original" and min_superpixel_px != 1:
            raise InputError(f"min_superpixel_px: the original draw has no size check, expected 1 "
                             f"with draw='original', got {min_superpixel_px}")
        self.dataset_root, self.draw, self.min_superpixel_px = ds.root, draw, min_superpixel_px
        self.slice_draw = slice_draw
        self.exclude_labels = _check_classes(ds, exclude_labels, "exclude_labels")
        self.volumes = self._load_scans(ds, pids, stats, "superpix", label=False,
                                        superpix_scale=superpix_scale, crop=crop)
        excluded = excluded_slices_from_classmap(ds, pids, self.exclude_labels)
        self.slices: list[tuple[int, int]] = []   # eligible (volume index, z)
        self._choices: list[np.ndarray] = []      # per eligible slice: ids (uniform) or [max]
        self.n_total = self.n_excluded = self.n_without_superpixel = 0
        # the original's slice table, every slice in scan and z order: its entry in self.slices
        # (-1: not drawn from), whether it has no drawable superpixel, whether Setting 2
        # excludes it
        self._table: list[tuple[int, bool, bool]] = []
        self._epoch_length = max(ORIGINAL_EPOCH, sum(v.n_slices for v in self.volumes))
        for vi, vol in enumerate(self.volumes):
            for z in range(vol.n_slices):
                self.n_total += 1
                sp = vol.superpix[z]
                if draw == "uniform":
                    counts = np.bincount(sp.ravel())
                    counts[0] = 0
                    choice = np.flatnonzero(counts >= min_superpixel_px)
                else:
                    top = int(sp.max())
                    choice = np.array([top]) if top >= 2 else np.zeros(0, int)
                is_excluded, is_empty = z in excluded[vol.pid], choice.size == 0
                self.n_excluded += is_excluded
                self.n_without_superpixel += is_empty and not is_excluded
                entry = -1 if is_excluded or is_empty else len(self.slices)
                self._table.append((entry, is_empty, is_excluded))
                if entry >= 0:
                    self.slices.append((vi, z))
                    self._choices.append(choice)
        if not self.slices:
            raise InputError(f"{ds.root}: expected eligible slices among scans {list(pids)}, "
                             f"found none ({self.n_total} slices, {self.n_excluded} excluded for "
                             f"classes {self.exclude_labels}, {self.n_without_superpixel} without "
                             f"a superpixel of >= {min_superpixel_px} px)")

    def eligible_slices(self) -> set[tuple[str, int]]:
        """Every (scan id, z) an episode can come from."""
        return {(self.volumes[vi].pid, z) for vi, z in self.slices}

    @functools.lru_cache(maxsize=4)
    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The original's shuffled pass of one epoch, a pure function of (seed, epoch)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch), 1]))
        return rng.permutation(self._epoch_length)

    def draw_slice(self, rng: np.random.Generator, step: int) -> int:
        """The index into ``self.slices`` of the episode of ``step``."""
        if self.slice_draw == "uniform":
            return int(rng.integers(len(self.slices)))
        n, length = len(self._table), self._epoch_length
        epoch, pos = divmod(step, length)
        i = int(self._epoch_order(epoch)[pos]) % n
        while True:  # terminates: __init__ checked that some slice is drawable
            entry, is_empty, is_excluded = self._table[i]
            if is_empty:                  # the original checks this first: the next slice
                i = (i + 1) % n
            elif is_excluded:             # Setting 2: a uniformly drawn index of the epoch
                i = int(rng.integers(length - 1)) % n
            else:
                return entry

    def draw_superpixel(self, rng: np.random.Generator, step: int) -> tuple[int, int, int]:
        """(volume index, z, superpixel id) of the episode of ``step``, before augmentation."""
        k = self.draw_slice(rng, step)
        vi, z = self.slices[k]
        choice = self._choices[k]
        if self.draw == "uniform":
            return vi, z, int(choice[rng.integers(choice.size)])
        return vi, z, int(rng.integers(1, int(choice[0])))

    def draw_recipe(self, rng: np.random.Generator, step: int) -> dict:
        vi, z, sp_id = self.draw_superpixel(rng, step)
        vol = self.volumes[vi]
        plans = [draw_view(rng, self.aug, self.slice_shape)  # the support, the query
                 for _ in range(2)]
        return make_recipe([(self.offsets[vi] + z, sp_id)] * 2, plans, step=step,
                           support_scans=[vol.pid], support_z=[z], query_scan=vol.pid,
                           query_z=z, superpixel_id=sp_id, class_id=1)


class SupervoxelEpisodes(EpisodeDataset):
    """3-D supervoxel episodes (method.md §9.3): support and query are *adjacent* slices of one
    scan.

    Per item: a training scan uniformly; then (supervoxel v, run of ≥ 2 consecutive non-excluded
    slices holding v, start s inside the run but not its last slice) as Q-Net proposes them (v
    uniform over the scan's ids, run uniform, s uniform), conditioned on
    ``max(|v ∩ slice s|, |v ∩ slice s+1|) ≥ min_size``. Q-Net reaches this distribution by
    rejection; here it is sampled exactly from precomputed weights (no loop). With probability
    0.5 the pair is swapped (support = s + 1). The geometric transform (affine + elastic) goes to
    support or query (50/50), and gamma, independently, to support or query (50/50).

    Exclusion is by OR over ``exclude_labels`` (``exclude_mode='all'`` restores Q-Net's AND bug).
    ``superpix_scale`` names pseudolabel files holding volume-wide 3-D ids; 2-D superpixel files
    (per-slice ids, recorded as ``felzenszwalb2d``) are refused.
    """

    def __init__(self, dataset: Dataset | str | os.PathLike, pids: Sequence[str], *,
                 superpix_scale: str, exclude_labels: Sequence[int] = (),
                 exclude_mode: str = "any", length: int = 1000, seed: int = 1234,
                 aug: str | AugParams | None = "sabs_aug", min_size: int = 200,
                 stats: NormStats | None = None, crop: int | None = CROP) -> None:
        super().__init__(length, seed, aug)
        ds = as_dataset(dataset)
        record = ds.meta.get("pseudolabels", {}).get(superpix_scale, {})
        if "2d" in str(record.get("method", "")):
            raise InputError(f"{ds.root / 'dataset.json'}: pseudolabels {superpix_scale!r} are "
                             f"{record['method']} (per-slice ids); supervoxel episodes expect "
                             f"3-D ids consistent across slices")
        if min_size < 1:
            raise InputError(f"min_size: expected >= 1 px, got {min_size}")
        self.min_size = int(min_size)
        self.exclude_labels = _check_classes(ds, exclude_labels, "exclude_labels")
        self.volumes = self._load_scans(ds, pids, stats, "superpix", label=False,
                                        superpix_scale=superpix_scale, crop=crop)
        excluded = excluded_slices_from_classmap(ds, pids, self.exclude_labels, exclude_mode)
        self._tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # ids, starts, cum p
        self.volume_index: list[int] = []
        for vi, vol in enumerate(self.volumes):
            table = supervoxel_pairs(vol.superpix, excluded[vol.pid], self.min_size)
            if table is not None:
                ids, starts, prob = table
                self._tables.append((ids, starts, np.cumsum(prob)))
                self.volume_index.append(vi)
        if not self._tables:
            raise InputError(f"{ds.root}: expected a supervoxel on two adjacent slices with >= "
                             f"{min_size} px on one of them in scans {list(pids)}, found none")

    def draw_recipe(self, rng: np.random.Generator, step: int) -> dict:
        t = int(rng.integers(len(self._tables)))
        ids, starts, cum = self._tables[t]
        k = min(int(np.searchsorted(cum, rng.random(), side="right")), ids.size - 1)
        vi = self.volume_index[t]
        vol = self.volumes[vi]
        v, s = int(ids[k]), int(starts[k])
        zs, zq = (s + 1, s) if rng.random() < 0.5 else (s, s + 1)
        geo_on_query = gamma_on_query = False
        if self.aug is not None:
            geo_on_query, gamma_on_query = rng.random() < 0.5, rng.random() < 0.5
        shape = self.slice_shape
        plans = [draw_view(rng, self.aug, shape, not geo_on_query, not gamma_on_query),
                 draw_view(rng, self.aug, shape, geo_on_query, gamma_on_query)]
        first = self.offsets[vi]
        return make_recipe([(first + zs, v), (first + zq, v)], plans, step=step,
                           support_scans=[vol.pid], support_z=[zs], query_scan=vol.pid,
                           query_z=zq, superpixel_id=v, class_id=1)


class ManualLabelEpisodes(EpisodeDataset):
    """Supervised few-shot episodes from manual labels (the "manual annotation" baseline).

    ``classes`` are the training classes (e.g. :func:`training_classes`); a slice is eligible
    for class c when it holds ≥ ``min_fg_px`` pixels of c and (Setting 2) no pixel of any class
    in ``exclude_labels``. Per item: c uniformly, the query slice uniformly among c's eligible
    slices, then ``n_shots`` distinct support slices among the others, from other scans whenever
    another scan has an eligible slice (else other slices of the same scan). Foreground is
    ``label == c``, background everything else (other organs included). Support and query are
    augmented independently.
    """

    def __init__(self, dataset: Dataset | str | os.PathLike, pids: Sequence[str],
                 classes: Sequence[int], *, exclude_labels: Sequence[int] = (),
                 n_shots: int = 1, min_fg_px: int = 100, length: int = 1000, seed: int = 1234,
                 aug: str | AugParams | None = "sabs_aug", stats: NormStats | None = None,
                 crop: int | None = CROP) -> None:
        super().__init__(length, seed, aug)
        ds = as_dataset(dataset)
        self.classes = _check_classes(ds, classes, "classes")
        self.exclude_labels = _check_classes(ds, exclude_labels, "exclude_labels")
        if not self.classes:
            raise InputError("classes: expected at least one training class, got none")
        clash = sorted(set(self.classes) & set(self.exclude_labels))
        if clash:
            raise InputError(f"classes: expected training classes disjoint from exclude_labels "
                             f"{self.exclude_labels}, got {clash} in both")
        if n_shots < 1 or min_fg_px < 1:
            raise InputError(f"expected n_shots >= 1 and min_fg_px >= 1, got {n_shots}, "
                             f"{min_fg_px}")
        self.n_shots, self.min_fg_px = int(n_shots), int(min_fg_px)
        self.volumes = self._load_scans(ds, pids, stats, "label", label=True, crop=crop)
        flats = [vol.label.reshape(vol.n_slices, -1) for vol in self.volumes]
        allowed = [~np.isin(flat, self.exclude_labels).any(axis=1) for flat in flats]
        self.eligible: dict[int, np.ndarray] = {}   # class → [n, 2] (volume index, z)
        for c in self.classes:
            rows = []
            for vi, (flat, ok) in enumerate(zip(flats, allowed)):
                fg = (flat == c).sum(axis=1)
                rows += [(vi, z) for z in np.flatnonzero((fg >= self.min_fg_px) & ok)]
            if len(rows) < self.n_shots + 1:
                raise InputError(f"{ds.root}: class {c} ({ds.labels[c]}) has {len(rows)} "
                                 f"eligible slices (>= {min_fg_px} px, not excluded) in scans "
                                 f"{list(pids)}; expected at least {self.n_shots + 1}")
            self.eligible[c] = np.array(rows, dtype=np.int64)

    def draw_recipe(self, rng: np.random.Generator, step: int) -> dict:
        c = self.classes[int(rng.integers(len(self.classes)))]
        rows = self.eligible[c]
        q = int(rng.integers(len(rows)))
        qv, qz = (int(x) for x in rows[q])
        others = np.delete(np.arange(len(rows)), q)
        other_scan = others[rows[others, 0] != qv]
        pool = other_scan if other_scan.size >= self.n_shots else others
        picks = rng.choice(pool, size=self.n_shots, replace=False)
        shots = [(int(rows[p][0]), int(rows[p][1])) for p in picks] + [(qv, qz)]
        plans = [draw_view(rng, self.aug, self.slice_shape)  # the shots, then the query
                 for _ in shots]
        return make_recipe([(self.offsets[vi] + z, c) for vi, z in shots], plans, step=step,
                           support_scans=[self.volumes[vi].pid for vi, _ in shots[:-1]],
                           support_z=[z for _, z in shots[:-1]],
                           query_scan=self.volumes[qv].pid, query_z=qz, superpixel_id=-1,
                           class_id=c)
