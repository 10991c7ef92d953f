"""Dataset presets: the preprocessing record of each published dataset.

A dataset is described by its record (:class:`DatasetInfo`): modality, labels and their stored
values, label groups, fold rule, intensity rule, body threshold, target spacing, in-plane size
and orientation. The record is written into the folder's ``dataset.json`` when the folder is
registered (see :mod:`data_preprocessing.contract`) and travels in every checkpoint trained on
it; everything downstream reads it from there. The entries here are only presets that fill the
record for CHAOS-T2, SABS, CMR and the synthetic phantom.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from util.errors import InputError, UnknownName


# the intensity rules a record may name, with the parameter each needs (preprocess.py applies
# them): MR clips at a percentile (optionally rescaling), CT windows Hounsfield units
INTENSITY_PARAMETERS = {"clip_percentile": "percentile", "ct_window": "window"}


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of one dataset.

    ``labels`` maps class id to name (0 is background). ``raw_label_values`` maps values stored on
    disk to class ids when they differ (CMR stores 200/500/600). ``label_groups[g]`` is the set
    of classes *not* tested under label group ``g``; the test classes are ``all_test_labels`` minus
    it. ``fold_sep`` are the fold boundaries on the numerically sorted scan list.
    """

    name: str
    modality: str  # "MR" or "CT"
    labels: dict[int, str]
    all_test_labels: tuple[int, ...]
    label_groups: tuple[tuple[int, ...], ...]
    fold_sep: tuple[int, ...]
    normalization: str  # "zscore_volume" or "zscore_train_fold"
    body_threshold: float  # raw-intensity threshold of the body mask (method.md §2.2)
    target_spacing: tuple[float, float, float] | None = None  # (x, y, z) mm, method.md §1
    raw_label_values: dict[int, int] = field(default_factory=dict)
    support_idx: int = -1  # index into a fold's val ids of the 1-shot support scan
    # orientation code of the stored training volumes (predict.py reorients new scans to it);
    # None where the volumes share none (CMR: oblique short-axis stacks, PSR or LSP)
    orientation: str | None = None
    size: int = 256  # in-plane size of the stored volumes (centre crop or pad)
    # the intensity step before resampling: MR clips at a percentile, CT windows HU to [0, 255]
    intensity: dict = field(default_factory=lambda: {"rule": "clip_percentile",
                                                     "percentile": 99.5})

    def record(self) -> dict:
        """The JSON record of ``dataset.json`` (class ids and stored values as strings)."""
        out = asdict(self)
        out["labels"] = {str(k): v for k, v in self.labels.items()}
        out["raw_label_values"] = {str(k): v for k, v in self.raw_label_values.items()}
        out["all_test_labels"] = list(self.all_test_labels)
        out["label_groups"] = [list(g) for g in self.label_groups]
        out["fold_sep"] = list(self.fold_sep)
        out["target_spacing"] = None if self.target_spacing is None else list(self.target_spacing)
        out["intensity"] = dict(self.intensity)
        return out

    @classmethod
    def from_record(cls, record: dict, where: str = "dataset record") -> DatasetInfo:
        """The inverse of :meth:`record`; a missing key is an error naming it."""
        missing = [k for k in RECORD_KEYS if k not in record]
        if missing:
            raise InputError(f"{where}: expected the preprocessing record keys {missing}, "
                             f"missing them")
        try:
            return cls._from_complete_record(record)
        except (AttributeError, TypeError, ValueError) as err:
            found = err if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
            raise InputError(f"{where}: expected a preprocessing record of the types "
                             f"DatasetInfo declares, found {found}") from None

    @classmethod
    def _from_complete_record(cls, record: dict) -> DatasetInfo:
        rule = dict(record["intensity"])
        needs = INTENSITY_PARAMETERS.get(rule.get("rule"))
        if needs is None or needs not in rule:
            raise InputError(f"intensity expects one of "
                             f"{[{'rule': r, p: '...'} for r, p in INTENSITY_PARAMETERS.items()]}, "
                             f"found {rule}")
        if int(record["size"]) < 32:
            raise InputError(f"size expects at least 32 pixels, found {record['size']}")
        spacing = record["target_spacing"]
        return cls(name=str(record["name"]), modality=str(record["modality"]),
                   labels={int(k): str(v) for k, v in record["labels"].items()},
                   all_test_labels=tuple(int(c) for c in record["all_test_labels"]),
                   label_groups=tuple(tuple(int(c) for c in g) for g in record["label_groups"]),
                   fold_sep=tuple(int(i) for i in record["fold_sep"]),
                   normalization=str(record["normalization"]),
                   body_threshold=float(record["body_threshold"]),
                   target_spacing=None if spacing is None else tuple(float(x) for x in spacing),
                   raw_label_values={int(k): int(v)
                                     for k, v in record.get("raw_label_values", {}).items()},
                   support_idx=int(record["support_idx"]), orientation=record["orientation"],
                   size=int(record["size"]), intensity=dict(record["intensity"]))


CHAOST2 = DatasetInfo(
    name="CHAOST2",
    modality="MR",
    labels={0: "BG", 1: "LIVER", 2: "RK", 3: "LK", 4: "SPLEEN"},
    all_test_labels=(1, 2, 3, 4),
    label_groups=((1, 4), (2, 3)),
    fold_sep=(0, 4, 8, 12, 16, 20),
    normalization="zscore_volume",
    body_threshold=50.0001,
    target_spacing=(1.25, 1.25, 7.70),
    orientation="LAS",  # all 20 shared scans
)

SABS = DatasetInfo(
    name="SABS",
    modality="CT",
    labels={0: "BGD", 1: "SPLEEN", 2: "KID_R", 3: "KID_l", 4: "GALLBLADDER", 5: "ESOPHAGUS",
            6: "LIVER", 7: "STOMACH", 8: "AORTA", 9: "IVC", 10: "PS_VEIN", 11: "PANCREAS",
            12: "AG_R", 13: "AG_L"},
    all_test_labels=(1, 2, 3, 6),
    label_groups=((1, 6), (2, 3)),
    fold_sep=(0, 6, 12, 18, 24, 30),
    normalization="zscore_train_fold",
    body_threshold=1e-4,
    intensity={"rule": "ct_window", "window": [-125.0, 275.0]},
)

CMR = DatasetInfo(
    name="CMR",
    modality="MR",
    labels={0: "BG", 1: "LV-MYO", 2: "LV-BP", 3: "RV"},
    all_test_labels=(1, 2, 3),
    label_groups=((2, 3), (1, 3), (1, 2)),
    fold_sep=(0, 7, 14, 21, 28, 35),
    normalization="zscore_volume",
    body_threshold=50.0001,
    target_spacing=(1.25, 1.25, 7.99),
    raw_label_values={200: 1, 500: 2, 600: 3},
)

# The synthetic phantom (data_preprocessing.phantom): abdominal-like, same organ ids as CHAOS-T2.
PHANTOM = DatasetInfo(
    name="PHANTOM",
    modality="MR",
    labels=dict(CHAOST2.labels),
    all_test_labels=CHAOST2.all_test_labels,
    label_groups=CHAOST2.label_groups,
    fold_sep=(0, 2, 4, 6, 8, 10),
    normalization="zscore_volume",
    body_threshold=50.0001,
    target_spacing=(1.25, 1.25, 7.70),
    orientation="LAS",  # written so by data_preprocessing.phantom
)

REGISTRY: dict[str, DatasetInfo] = {d.name: d for d in (CHAOST2, SABS, CMR, PHANTOM)}
# every key of a record (the fields of DatasetInfo)
RECORD_KEYS = tuple(DatasetInfo.__dataclass_fields__)


def get_dataset_info(name: str) -> DatasetInfo:
    key = name.upper().removesuffix("_SUPERPIX")
    if key not in REGISTRY:
        raise UnknownName(f"unknown dataset {name!r}; expected one of {sorted(REGISTRY)}")
    return REGISTRY[key]


def make_folds(pids: list[str], fold_sep: tuple[int, ...], n_shots: int = 1,
               support_idx: int = -1) -> list[dict]:
    """Five folds as method.md §3.1: val = sorted pids[sep[f] : sep[f+1] + n_shots] (circular).

    The last ``n_shots`` val scans (or ``support_idx`` for 1 shot) are the support; the remaining
    val scans are the queries; every other scan trains.
    """
    n = len(pids)
    if fold_sep[-1] > n:
        raise InputError(f"fold boundaries {list(fold_sep)} need {fold_sep[-1]} scans, got {n}")
    if n_shots < 1:
        raise InputError(f"n_shots expects at least 1 support scan, got {n_shots}")
    smallest = min(b - a for a, b in zip(fold_sep, fold_sep[1:])) + n_shots
    if n_shots >= smallest:
        raise InputError(f"n_shots expects fewer support scans than a fold's {smallest} "
                         f"validation scans (queries must remain), got {n_shots}")
    if n_shots == 1 and not -smallest <= support_idx < smallest:
        raise InputError(f"support_idx expects an index into a fold's {smallest} validation "
                         f"scans ({-smallest}..{smallest - 1}), got {support_idx}")
    folds = []
    for f in range(len(fold_sep) - 1):
        val = [pids[i % n] for i in range(fold_sep[f], fold_sep[f + 1] + n_shots)]
        if n_shots == 1:
            support = [val[support_idx]]
        else:
            support = val[-n_shots:]
        query = [p for p in val if p not in support]
        train = [p for p in pids if p not in val]
        folds.append({"fold": f, "train": train, "query": query, "support": support})
    return folds
