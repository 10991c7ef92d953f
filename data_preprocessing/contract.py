"""The dataset folder contract: ``dataset.json`` and ``splits.json``.

A preprocessed dataset folder holds ``image_<pid>.nii.gz`` and ``label_<pid>.nii.gz`` for every
case, optional pseudolabels ``superpix-<SCALE>_<pid>.nii.gz`` and body masks
``fgmask_<pid>.nii.gz``, the class-slice index ``classmap_<N>.json``, and two JSON files that
describe it. Later code reads labels, groups, normalisation and folds from these files only.

Register a folder (write both JSON files) with::

    python -m data_preprocessing.contract --dataset CHAOST2 --dir data/CHAOST2
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_preprocessing.registry import REGISTRY, RECORD_KEYS, DatasetInfo, get_dataset_info, \
    make_folds
from util.io import ensure_writable_dir, found_at, read_json, sort_pids, write_json
from util.errors import InputError, MissingInput

CONTRACT_VERSION = 1
DATASET_JSON = "dataset.json"
SPLITS_JSON = "splits.json"
# spacing / origin / direction agreement between an image and its label or pseudolabels
GEOMETRY_TOL = 1e-4
FILE_PATTERNS = {
    "image": "image_{pid}.nii.gz",
    "label": "label_{pid}.nii.gz",
    "pseudolabel": "superpix-{scale}_{pid}.nii.gz",
    "fgmask": "fgmask_{pid}.nii.gz",
    "classmap": "classmap_{min_tp}.json",
}


def discover_cases(folder: str | os.PathLike) -> list[str]:
    """Case ids of the ``image_<id>.nii.gz`` files in ``folder`` (``<id>`` as written),
    numeric ids sorted numerically, named ones after them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInput(f"{folder}: expected a dataset folder, found {found_at(folder)}")
    return sort_pids(p.name[len("image_"):-len(".nii.gz")]
                     for p in folder.glob("image_?*.nii.gz"))


def no_labels_error(where: str | os.PathLike, what: str) -> InputError:
    """The one message for a run that needs labels on a folder imported without them."""
    return InputError(f"{where}: {what} needs labels, and this folder has none (imported "
                      f"without labels); train with setting=1 and val_every=0, then segment "
                      f"with predict.py")


def folder_facts(data_dir: str) -> dict | None:
    """The name in ``data_dir``'s dataset.json and whether every scan is labelled; None when
    there is no readable one (the run then stops on it with the loader's message)."""
    try:
        meta = read_json(Path(data_dir) / "dataset.json")
        labelled = set(meta.get("labelled", meta["cases"]))
        return {"name": str(meta["name"]), "n_cases": len(meta["cases"]),
                "n_labelled": len(labelled), "all_labelled": labelled >= set(meta["cases"]),
                "preset": bool(meta.get("preset") or meta["name"] in REGISTRY),
                "where": str(Path(data_dir) / "dataset.json")}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_labels_needed(cfg: dict, command: str, n_labelled: int, n_cases: int,
                        where: str) -> None:
    """Stop in one line when the run needs labels that the folder lacks: Setting 2 (every scan),
    val_every, manual episodes and validation (some)."""
    needs = [what for what, needed in (
        ("validation", command == "validate"),
        ("setting=2", command == "train" and cfg["setting"] == 2),
        ("val_every > 0", command == "train" and cfg["val_every"] > 0),
        ("pseudolabel='manual'", command == "train" and cfg["pseudolabel"] == "manual"))
        if needed]
    if needs and n_labelled == 0:
        raise no_labels_error(where, " and ".join(needs))
    if "setting=2" in needs and n_labelled < n_cases:
        raise InputError(f"{where}: setting=2 removes every slice holding a test class, which "
                         f"needs every scan labelled; {n_labelled} of {n_cases} are; expects "
                         f"setting=1")


@dataclass
class Dataset:
    """A registered dataset folder: its description and folds, read from the JSON files."""

    root: Path
    meta: dict
    splits: dict

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def info(self) -> DatasetInfo:
        """The folder's preprocessing record."""
        return DatasetInfo.from_record(self.meta, str(self.root / DATASET_JSON))

    @property
    def cases(self) -> list[str]:
        return list(self.meta["cases"])

    @property
    def labelled(self) -> list[str]:
        """The cases with a label (every case of a folder that does not say otherwise)."""
        return list(self.meta.get("labelled", self.meta["cases"]))

    def training_cases(self, fold: int) -> tuple[list[str], dict | None]:
        """The scans that train under fold ``fold`` and the fold itself; a folder without folds
        (no labels, or too few for folds) trains on every scan, with no fold, unless it was
        registered as preprocessing-only (``--no-folds``)."""
        if not self.splits["folds"] and not self.splits.get("no_folds"):
            return self.cases, None
        chosen = self.fold(fold)
        return list(chosen["train"]), chosen

    def require_labels(self, what: str) -> None:
        """Stop with one line when the folder has no labels and ``what`` needs them."""
        if not self.labelled:
            raise no_labels_error(self.root / DATASET_JSON, what)

    @property
    def labels(self) -> dict[int, str]:
        return {int(k): v for k, v in self.meta["labels"].items()}

    @property
    def raw_label_values(self) -> dict[int, int]:
        return {int(k): int(v) for k, v in self.meta.get("raw_label_values", {}).items()}

    def path(self, kind: str, pid: str, scale: str = "MIDDLE") -> Path:
        return self.root / FILE_PATTERNS[kind].format(pid=pid, scale=scale)

    def classmap_path(self, min_tp: int = 1) -> Path:
        return self.root / FILE_PATTERNS["classmap"].format(min_tp=min_tp)

    def fold(self, fold: int) -> dict:
        folds = self.splits["folds"]
        if not folds:
            raise InputError(f"{self.root / SPLITS_JSON}: expected folds, found none "
                             f"({self.splits.get('note')})")
        if not 0 <= fold < len(folds):
            raise InputError(f"{self.root / SPLITS_JSON}: fold must be in 0..{len(folds) - 1}, "
                             f"got {fold}")
        return folds[fold]

    def test_labels(self, label_group: int) -> list[int]:
        groups = self.meta["label_groups"]
        if not 0 <= label_group < len(groups):
            raise InputError(f"{self.root / DATASET_JSON}: label group must be in "
                             f"0..{len(groups) - 1}, got {label_group}")
        return [c for c in self.meta["all_test_labels"] if c not in set(groups[label_group])]


def build_metadata(info: DatasetInfo, cases: list[str], pseudolabels: dict | None = None,
                   classmaps: list[int] | None = None, preprocessing: dict | None = None,
                   labelled: list[str] | None = None, sources: dict | None = None) -> dict:
    return {
        "contract_version": CONTRACT_VERSION,
        **info.record(),                    # the preprocessing record (registry.DatasetInfo)
        "preset": info.name if info.name in REGISTRY else None,
        "cases": list(cases),
        "file_patterns": dict(FILE_PATTERNS),
        "pseudolabels": dict(pseudolabels or {}),
        "classmaps": sorted(classmaps or []),
        "preprocessing": dict(preprocessing or {}),
        "labelled": list(cases if labelled is None else labelled),
        "sources": dict(sources or {}),
    }


def build_splits(info: DatasetInfo, cases: list[str], n_shots: int = 1,
                 unlabelled: list[str] | None = None) -> dict:
    """Five folds of the labelled ``cases`` as published; for a folder with another number of
    scans (a partial download, the 7 shared CMR scans), fold boundaries scaled to the scans
    present, with a warning. ``unlabelled`` scans train in every fold."""
    sep = list(info.fold_sep)
    n_folds = len(sep) - 1
    note = None
    if not sep:
        sep = []
        note = (f"{info.name}: no folds ({len(cases)} labelled scans); every scan trains"
                if cases else f"{info.name}: no labels; every scan trains, nothing validates")
    elif len(cases) < n_folds + n_shots:
        sep = []
        note = (f"{info.name}: {len(cases)} scans are too few for {n_folds} folds with "
                f"{n_shots} shot(s) (need {n_folds + n_shots}); no folds written")
        print(f"NOTE: {note}", file=sys.stderr)
    elif len(cases) != sep[-1] and info.name in REGISTRY:
        sep = [round(i * len(cases) / n_folds) for i in range(n_folds + 1)]
        note = (f"{info.name} defines folds for {info.fold_sep[-1]} scans, the folder holds "
                f"{len(cases)}: boundaries scaled to {sep}; results are not comparable with "
                f"published numbers")
        print(f"NOTE: {note}", file=sys.stderr)
    return {
        "contract_version": CONTRACT_VERSION,
        "fold_sep": sep,
        "published_fold_sep": list(info.fold_sep),
        "note": note,
        "n_shots": n_shots,
        "folds": [{**f, "train": f["train"] + list(unlabelled or [])}
                  for f in make_folds(cases, tuple(sep), n_shots, info.support_idx)] if sep else [],
    }


def register(folder: str | os.PathLike, dataset: str | DatasetInfo, *, n_shots: int = 1,
             preprocessing: dict | None = None, force: bool = False,
             no_folds: bool = False, labelled: list[str] | None = None,
             sources: dict | None = None) -> Dataset:
    """Write ``dataset.json`` and ``splits.json`` for ``folder``, keeping recorded extras.

    Pseudolabel variants and class maps already recorded in an existing ``dataset.json`` are kept
    when their files are still present. A folder registered as another dataset is refused
    unless ``force``. Too few scans for the folds leave ``splits.json`` without folds; verify
    then fails unless ``no_folds`` marks the folder as meant for preprocessing only.
    """
    folder = Path(folder)
    info = dataset if isinstance(dataset, DatasetInfo) else get_dataset_info(dataset)
    cases = discover_cases(folder)
    if not cases:
        raise MissingInput(f"{folder}: expected image_<id>.nii.gz files, found none")
    old = read_json(folder / DATASET_JSON) if (folder / DATASET_JSON).is_file() else {}
    if old.get("name") not in (None, info.name) and not force:
        raise InputError(f"{folder / DATASET_JSON}: the folder is registered as {old['name']}, "
                         f"not {info.name}; expected the same dataset (re-register it as "
                         f"{info.name} with `python -m data_preprocessing.contract --dataset "
                         f"{info.name} --dir {folder} --force`, or choose another folder)")
    pseudo = {s: p for s, p in old.get("pseudolabels", {}).items()
              if all((folder / FILE_PATTERNS["pseudolabel"].format(pid=c, scale=s)).is_file()
                     for c in cases)}
    classmaps = [n for n in old.get("classmaps", [])
                 if (folder / FILE_PATTERNS["classmap"].format(min_tp=n)).is_file()]
    prep = dict(old.get("preprocessing", {}))
    prep.update(preprocessing or {})
    labelled = cases if labelled is None else [c for c in cases if c in set(labelled)]
    meta = build_metadata(info, cases, pseudo, classmaps, prep, labelled,
                          sources if sources is not None else old.get("sources"))
    splits = build_splits(info, labelled, n_shots,
                          unlabelled=[c for c in cases if c not in set(labelled)])
    if not splits["folds"]:
        splits["no_folds"] = bool(no_folds)  # preprocessing only: training refuses it
    write_json(folder / DATASET_JSON, meta)
    write_json(folder / SPLITS_JSON, splits)
    return Dataset(folder, meta, splits)


def update_metadata(folder: str | os.PathLike, **changes) -> dict:
    """Merge ``changes`` into ``dataset.json`` (dict values are merged one level deep)."""
    path = Path(folder) / DATASET_JSON
    meta = read_json(path)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(meta.get(key), dict):
            meta[key].update(value)
        elif isinstance(value, list) and isinstance(meta.get(key), list):
            meta[key] = sorted(set(meta[key]) | set(value))
        else:
            meta[key] = value
    write_json(path, meta)
    return meta


STAGING_PREFIX = ".staging-"
COMMIT_JOURNAL = "COMMIT.json"


def staging_folder(folder: str | os.PathLike, name: str) -> Path:
    """A fresh staging folder for a new file set ``name`` (a left-over one from an interrupted
    run, never committed, is removed: the set in place is still the described one)."""
    staging = Path(folder) / f"{STAGING_PREFIX}{name}"
    if staging.exists() and not (staging / COMMIT_JOURNAL).is_file():
        shutil.rmtree(staging)
    finish_commits(folder)
    staging.mkdir()
    return staging


@contextlib.contextmanager
def discard_on_error(staging: Path) -> Iterator[None]:
    """Remove ``staging`` when the block fails or is stopped (nothing of it was committed)."""
    try:
        yield
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def commit_staged(folder: str | os.PathLike, staging: Path, metadata: dict) -> None:
    """Put every file of ``staging`` in place of its namesake in ``folder`` and merge
    ``metadata`` into dataset.json, as one step: a journal is written first, so a run cut short
    while switching is completed by the next :func:`load_dataset` (roll forward)."""
    names = sorted(p.name for p in staging.iterdir() if p.name != COMMIT_JOURNAL)
    write_json(staging / COMMIT_JOURNAL, {"files": names, "metadata": metadata})
    _finish(Path(folder), staging)


def finish_commits(folder: str | os.PathLike) -> None:
    """Complete the commits of file sets interrupted while switching (journal present)."""
    for staging in sorted(Path(folder).glob(f"{STAGING_PREFIX}*")):
        if (staging / COMMIT_JOURNAL).is_file():
            _finish(Path(folder), staging)


def _finish(folder: Path, staging: Path) -> None:
    journal = read_json(staging / COMMIT_JOURNAL)
    for name in journal["files"]:
        if (staging / name).exists():
            os.replace(staging / name, folder / name)
    update_metadata(folder, **journal["metadata"])
    shutil.rmtree(staging)


def load_dataset(folder: str | os.PathLike) -> Dataset:
    """Read a registered dataset folder; a missing or wrong file is a clear error. A file set
    whose switch was interrupted is completed first (:func:`commit_staged`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInput(f"{folder}: expected a dataset folder, found {found_at(folder)}")
    finish_commits(folder)
    meta_path, splits_path = folder / DATASET_JSON, folder / SPLITS_JSON
    for path in (meta_path, splits_path):
        if not path.is_file():
            raise MissingInput(
                f"{path}: expected the dataset contract file, found nothing there; register the "
                f"folder with `python -m data_preprocessing.contract --dataset <NAME> --dir "
                f"{folder}`")
    meta, splits = read_json(meta_path), read_json(splits_path)
    for path, obj, keys in ((meta_path, meta, ("name", "labels", "cases", "label_groups",
                                               "all_test_labels", "normalization")),
                            (splits_path, splits, ("folds",))):
        missing = [k for k in keys if k not in obj]
        if missing:
            raise InputError(f"{path}: expected keys {list(keys)}, missing {missing}")
        if obj.get("contract_version") != CONTRACT_VERSION:
            raise InputError(f"{path}: expected contract_version {CONTRACT_VERSION}, found "
                             f"{obj.get('contract_version')!r}; re-register the folder")
    missing = [k for k in RECORD_KEYS if k not in meta]
    if missing and meta["name"] in REGISTRY:  # registered before the record was written whole
        meta = {**REGISTRY[meta["name"]].record(), **meta}
    DatasetInfo.from_record(meta, str(meta_path))
    return Dataset(folder, meta, splits)


def check_writable_dataset(folder: str | os.PathLike, flag: str = "--dir") -> Dataset:
    """A registered dataset folder that files can be written in (checked before any work)."""
    if Path(folder).is_dir():
        ensure_writable_dir(folder, f"{flag}, the dataset folder")
    return load_dataset(folder)


def map_label_values(label: np.ndarray, raw_label_values: dict[int, int],
                     where: str = "label") -> np.ndarray:
    """Stored label values to class ids (CMR 200/500/600 to 1/2/3); int64 output.

    Values must be integral; with a non-empty ``raw_label_values`` every non-zero value must be a
    key of it.
    """
    if not np.all(np.isfinite(label)) or not np.array_equal(label, np.rint(label)):
        raise InputError(f"{where}: expected integer label values, found non-integral values")
    out = label.astype(np.int64)
    if raw_label_values:
        mapped = np.zeros_like(out)
        for raw, cid in raw_label_values.items():
            mapped[out == raw] = cid
        unknown = set(np.unique(out[(mapped == 0) & (out != 0)]).tolist())
        if unknown:
            raise InputError(f"{where}: expected stored label values {{0, "
                             f"{', '.join(map(str, raw_label_values))}}}, found {sorted(unknown)}")
        out = mapped
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="CHAOST2, SABS, CMR or PHANTOM")
    parser.add_argument("--dir", required=True, help="preprocessed dataset folder")
    parser.add_argument("--n-shots", type=int, default=1)
    parser.add_argument("--force", action="store_true",
                        help="re-register a folder registered as another dataset")
    parser.add_argument("--no-folds", action="store_true",
                        help="too few scans for folds: mark the folder as preprocessing-only "
                             "(training and validation refuse it)")
    args = parser.parse_args(argv)
    ds = register(args.dir, args.dataset, n_shots=args.n_shots, force=args.force,
                  no_folds=args.no_folds)
    print(f"registered {ds.name}: {len(ds.cases)} cases, {len(ds.splits['folds'])} folds "
          f"-> {ds.root / DATASET_JSON}, {ds.root / SPLITS_JSON}")


if __name__ == "__main__":
    from util.cli import run_main

    run_main("python -m data_preprocessing.contract", main)
