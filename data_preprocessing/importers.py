"""Import a user's own scans into a dataset folder (docs/own_scans.md).

Four source layouts are recognised by :func:`find_source`:

- **nnU-Net v2** raw dataset: ``dataset.json`` with ``channel_names``, ``labels`` and
  ``file_ending``; ``imagesTr/<case>_<XXXX><ending>``, ``labelsTr/<case><ending>``, optional
  ``imagesTs/`` (unlabelled). One channel is used (``--channel``, default 0).
- **Medical Segmentation Decathlon** task: ``dataset.json`` with ``modality`` and ``labels``;
  ``imagesTr``/``labelsTr`` with equal names, optional ``imagesTs`` (unlabelled). A 4-D image
  gives its channel ``--channel``.
- **DICOM**: any folder tree holding DICOM series; each series (SeriesInstanceUID) is one case.
- **A plain folder** of volumes (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``, ``.mhd``) with any
  names, unlabelled, or with labels in a ``labels/`` subfolder (the same names) or beside the
  images with a suffix (``--label-suffix _seg``: ``a.nii.gz`` and ``a_seg.nii.gz``).

Every source is checked whole (headers, label grids and values, case names) before anything is
written; scans are then brought to the dataset's orientation and through
:func:`data_preprocessing.preprocess.preprocess` into a staging folder, which replaces nothing
until every scan has passed. Case ids keep the user's names; ``dataset.json`` maps each back to
its source files.
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from data_preprocessing.contract import FILE_PATTERNS
from data_preprocessing.dicom import dicom_files, is_dicom, keep_locale, read_dicom_series
from data_preprocessing.preprocess import (HU_AIR, apparent_modality, is_oblique, orientation,
                                           preprocess, preprocess_label, reorient)
from data_preprocessing.registry import DatasetInfo, get_dataset_info
from data_preprocessing.resample import HU_WINDOW, CROP_SIZE, fmt_spacing
from util.io import read_image, read_image_info, read_json, write_image
from util.errors import InputError, MissingInput

VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
MODALITIES = ("CT", "MR")
# Imported MR: [min, 99.5th percentile] rescaled to [0, 1000], the range of the published
# CHAOS-T2 files (clip values 744-1010), so that the CHAOS body threshold and the superpixel
# parameters, tuned on that range, apply unchanged.
MR_RESCALE = (0.0, 1000.0)
MR_BODY_THRESHOLD = 50.0001
CT_BODY_THRESHOLD = 1e-4  # SABS: the window maps the lowest HU to 0
SPACING_SPREAD = 4.0      # warn about scans whose spacing differs more from the median
CASE_CHARS = re.compile(r"[^\w.-]+")  # \w: letters (accented ones too), digits, _
# name endings of label files kept beside their images (refused unless --label-suffix says so)
LABEL_ENDINGS = ("_seg", "_label", "_labels", "_mask", "_gt", "-seg", "-label", "-mask")
DICOM_MODALITY_TAG = "0008|0060"
DICOM_UID_TAG = "0020|000e"


@dataclass
class Case:
    """One scan of a source: its id, where its image is (a file, or a DICOM series' files),
    its label file (None: unlabelled) and the channel to take from a multi-channel image."""

    name: str
    image: Path | tuple[Path, ...]
    label: Path | None = None
    channel: int = 0
    modality: str | None = None  # where the source says it (DICOM's Modality tag)

    @property
    def source(self) -> str:
        return str(self.image[0].parent if isinstance(self.image, tuple) else self.image)


@dataclass
class Source:
    """A recognised source folder: its layout, its cases, and what it says about itself."""

    layout: str
    root: Path
    cases: list[Case]
    modality: str | None = None
    labels: dict[int, str] | None = None  # class id -> name, where the source names them
    notes: list[str] = field(default_factory=list)


def case_name(text: str) -> str:
    """A case id from a file or folder name: characters other than letters (accented ones
    included), digits, ``.``, ``_`` and ``-`` become ``_``."""
    return CASE_CHARS.sub("_", text).strip("_") or "case"


def strip_ending(name: str) -> str | None:
    """``name`` without its volume ending, or None when it has none of :data:`VOLUME_ENDINGS`."""
    for ending in VOLUME_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return None


def _volumes(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Volume files of ``folder`` by stem, and the names of other files (hidden ones and the
    ``.raw``/``.zraw`` payloads of ``.mhd`` headers are not counted)."""
    found, other = {}, []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue  # hidden files (MSD archives carry macOS "._" copies) and folders
        stem = strip_ending(path.name)
        if stem is None:
            if path.suffix.lower() not in (".raw", ".zraw", ".json"):
                other.append(path.name)
            continue
        if stem in found:
            raise InputError(f"{folder}: expected one volume per case name, found "
                             f"{found[stem].name} and {path.name} both named {stem!r}")
        found[stem] = path
    return found, other


def _unique(cases: list[Case], root: Path) -> list[Case]:
    """Refuse two cases whose ids collide after :func:`case_name`."""
    seen: dict[str, Case] = {}
    for case in cases:
        if case.name in seen:
            raise InputError(f"{root}: expected distinct case names, found {seen[case.name].source}"
                             f" and {case.source} both as case {case.name!r}")
        seen[case.name] = case
    return cases


def _read_source_json(path: Path, keys: tuple[str, ...]) -> dict:
    meta = read_json(path)
    missing = [k for k in keys if k not in meta]
    if missing:
        raise InputError(f"{path}: expected the keys {list(keys)}, missing {missing}")
    return meta


# ---------------------------------------------------------------- the four layouts

def find_source(src: str | os.PathLike, channel: int = 0, label_suffix: str | None = None
                ) -> Source:
    """Recognise the layout of ``src`` and list its cases (nothing is read but names and
    JSON)."""
    root = Path(src)
    if not root.is_dir():
        raise MissingInput(f"{root}: expected a folder of scans (plain, nnU-Net, MSD or "
                                f"DICOM), found {'a file' if root.exists() else 'nothing'} there")
    meta_path = root / "dataset.json"
    if meta_path.is_file() and (root / "imagesTr").is_dir():
        meta = read_json(meta_path)
        if "channel_names" in meta or "file_ending" in meta:
            return nnunet_source(root, channel)
        if "modality" in meta:
            return msd_source(root, channel)
        raise InputError(f"{meta_path}: expected an nnU-Net v2 dataset.json (channel_names, "
                         f"labels, file_ending) or an MSD one (modality, labels), found the keys "
                         f"{sorted(meta)}")
    if (root / "imagesTr").is_dir():
        raise MissingInput(f"{meta_path}: expected the dataset.json of this nnU-Net / MSD "
                                f"folder (imagesTr/ is there), found nothing there")
    volumes, other = _volumes(root)
    if not volumes and dicom_files(root):
        return dicom_source(root)
    return plain_source(root, label_suffix, volumes, other)


def plain_source(root: Path, label_suffix: str | None = None, volumes=None, other=None
                 ) -> Source:
    """A folder of volumes: labels in ``labels/`` (same names), beside the images with
    ``label_suffix``, or the ``image_<id>`` / ``label_<id>`` pairs of the published files."""
    if volumes is None:
        volumes, other = _volumes(root)
    notes = []
    if other:
        notes.append(f"skipped {len(other)} file(s) of unsupported types: "
                     f"{', '.join(other[:5])}{' ...' if len(other) > 5 else ''}")
    if not volumes:
        raise MissingInput(f"{root}: expected volumes ({', '.join(VOLUME_ENDINGS)}) or "
                                f"DICOM series, found none{' (' + notes[0] + ')' if notes else ''}")
    labels: dict[str, Path] = {}
    images = dict(volumes)
    if (root / "labels").is_dir():
        labels, _ = _volumes(root / "labels")
        unmatched = sorted(set(labels) - set(images))
        if unmatched:
            raise InputError(f"{root / 'labels'}: expected a label per image of the same name, "
                             f"found labels without an image: {unmatched[:5]}")
    elif label_suffix:
        labels = {stem[: -len(label_suffix)]: path for stem, path in volumes.items()
                  if stem.endswith(label_suffix)}
        images = {s: p for s, p in volumes.items() if not s.endswith(label_suffix)}
        unmatched = sorted(set(labels) - set(images))
        if unmatched:
            raise InputError(f"{root}: expected an image beside every *{label_suffix} label, "
                             f"found labels without an image: {unmatched[:5]}")
        if not labels:
            raise MissingInput(f"{root}: expected labels named <case>{label_suffix}.<ext> "
                                    f"(--label-suffix), found none")
    elif any(s.startswith("label_") for s in volumes) and any(s.startswith("image_")
                                                              for s in volumes):
        labels = {s.removeprefix("label_"): p for s, p in volumes.items()
                  if s.startswith("label_")}
        images = {s.removeprefix("image_"): p for s, p in volumes.items()
                  if s.startswith("image_")}
        unmatched = sorted(set(labels) - set(images))
        if unmatched:
            raise InputError(f"{root}: expected an image_<id> beside every label_<id>, found "
                             f"labels without an image: {unmatched[:5]}")
    if not labels:
        looks = [(stem, end) for stem in images for end in LABEL_ENDINGS
                 if stem.endswith(end) and stem[: -len(end)] in images]
        if looks:
            shown = ", ".join(f"{stem} (beside {stem[: -len(end)]})" for stem, end in looks[:5])
            raise InputError(f"{root}: found files named like the labels of other scans: "
                             f"{shown}; pass --label-suffix {looks[0][1]} to import them as "
                             f"labels, or move them out of --src")
    cases = [Case(case_name(stem), path, labels.get(stem)) for stem, path in images.items()]
    return Source("plain", root, _unique(cases, root), notes=notes)


def nnunet_source(root: Path, channel: int = 0) -> Source:
    """An nnU-Net v2 raw dataset; ``dataset.json`` must agree with the files."""
    meta_path = root / "dataset.json"
    meta = _read_source_json(meta_path, ("channel_names", "labels", "file_ending"))
    ending = str(meta["file_ending"])
    channels = {int(k): str(v) for k, v in meta["channel_names"].items()}
    if channel not in channels:
        raise InputError(f"--channel: expected one of the channels {sorted(channels)} of "
                         f"{meta_path}, got {channel}")
    labels = {}
    for name, value in meta["labels"].items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(f"{meta_path}: expected integer label values, found {name!r}: "
                             f"{value!r} (region-based labels are not supported)")
        labels[value] = str(name)
    if 0 not in labels:
        raise InputError(f"{meta_path}: expected a background label of value 0, found "
                         f"{sorted(labels)}")
    cases = []
    for sub, lab_dir in (("imagesTr", root / "labelsTr"), ("imagesTs", None)):
        folder = root / sub
        if not folder.is_dir():
            continue
        pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
        found: dict[str, set[int]] = {}
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            match = pattern.match(path.name)
            if match is None:
                raise InputError(f"{path}: expected an nnU-Net image named <case>_<XXXX>{ending} "
                                 f"(file_ending of {meta_path}), found another name")
            found.setdefault(match.group(1), set()).add(int(match.group(2)))
        for name, chans in sorted(found.items()):
            if chans != set(channels):
                raise InputError(f"{folder}: case {name!r} has channels {sorted(chans)}, "
                                 f"{meta_path} declares {sorted(channels)}")
            label = None
            if lab_dir is not None:
                label = lab_dir / f"{name}{ending}"
                if not label.is_file():
                    raise MissingInput(f"{label}: expected the label of {name} "
                                            f"(imagesTr), found nothing there")
            cases.append(Case(case_name(name), folder / f"{name}_{channel:04d}{ending}", label,
                              channel))
        if lab_dir is not None and lab_dir.is_dir():
            extra = sorted(p.name for p in lab_dir.iterdir()
                           if p.name.endswith(ending) and p.name[: -len(ending)] not in found)
            if extra:
                raise InputError(f"{lab_dir}: expected a label per imagesTr case, found labels "
                                 f"without an image: {extra[:5]}")
    return _task_source("nnU-Net v2", root, meta, channels, channel, cases, labels)


def msd_source(root: Path, channel: int = 0) -> Source:
    """A Medical Segmentation Decathlon task folder."""
    meta_path = root / "dataset.json"
    meta = _read_source_json(meta_path, ("modality", "labels"))
    modalities = {int(k): str(v) for k, v in meta["modality"].items()}
    if channel not in modalities:
        raise InputError(f"--channel: expected one of the channels {sorted(modalities)} of "
                         f"{meta_path}, got {channel}")
    labels = {int(k): str(v) for k, v in meta["labels"].items()}
    cases = []
    images, _ = _volumes(root / "imagesTr")
    lab_dir = root / "labelsTr"
    labs, _ = _volumes(lab_dir) if lab_dir.is_dir() else ({}, [])
    missing = sorted(set(images) - set(labs))
    if missing:
        raise MissingInput(f"{lab_dir}: expected a label per imagesTr case, missing "
                                f"{missing[:5]}")
    extra = sorted(set(labs) - set(images))
    if extra:
        raise InputError(f"{lab_dir}: expected a label per imagesTr case, found labels without "
                         f"an image: {extra[:5]}")
    cases += [Case(case_name(s), p, labs[s], channel) for s, p in images.items()]
    if (root / "imagesTs").is_dir():
        test, _ = _volumes(root / "imagesTs")
        cases += [Case(case_name(s), p, None, channel) for s, p in test.items()]
    return _task_source("MSD", root, meta, modalities, channel, cases, labels)


def _task_source(layout: str, root: Path, meta: dict, channels: dict[int, str], channel: int,
                 cases: list[Case], labels: dict[int, str]) -> Source:
    """An nnU-Net or MSD source: ``numTraining`` checked against the labelled cases, the
    modality from the chosen channel's name (CT, else MR as nnU-Net normalises)."""
    n_train = sum(c.label is not None for c in cases)
    if "numTraining" in meta and int(meta["numTraining"]) != n_train:
        raise InputError(f"{root / 'dataset.json'}: numTraining says {meta['numTraining']}, "
                         f"imagesTr holds {n_train} cases")
    name = channels[channel]
    modality = "CT" if name.upper() == "CT" else "MR"
    notes = [f"channel {channel} ({name!r}) of {len(channels)}; normalised as {modality}"]
    return Source(layout, root, _unique(cases, root), modality, labels, notes)


def dicom_source(root: Path) -> Source:
    """Every DICOM series under ``root``, one case each (read with GDCM's series reader)."""
    cases, ignored = [], 0
    folders = sorted({p.parent for p in dicom_files(root)})
    for folder in folders:
        with keep_locale():
            uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        for k, uid in enumerate(uids):
            with keep_locale():
                files = tuple(Path(f) for f in
                              sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
            rel = folder.relative_to(root).as_posix()
            name = case_name(rel if rel != "." else root.name)
            if len(uids) > 1:
                name = f"{name}_series{k + 1}"
            cases.append(Case(name, files, None, modality=_dicom_tag(files[0],
                                                                    DICOM_MODALITY_TAG)))
        ignored += sum(1 for p in folder.iterdir() if p.is_file() and not is_dicom(p))
    if not cases:
        raise MissingInput(f"{root}: expected DICOM image series, found none")
    notes = [f"{len(cases)} DICOM series"] + ([f"ignored {ignored} non-DICOM file(s)"]
                                               if ignored else [])
    return Source("DICOM", root, _unique(cases, root), notes=notes)


def _dicom_tag(path: Path, tag: str) -> str | None:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else None


# ---------------------------------------------------------------- reading

def read_case_image(case: Case) -> sitk.Image:
    """The scan of ``case`` as one scalar 3-D image (a 4-D file gives channel ``case.channel``;
    a DICOM series is checked for evenly spaced slices)."""
    if isinstance(case.image, tuple):
        return read_dicom_series(case.image, case.source)
    info = read_image_info(case.image)
    if info.GetDimension() == 4:
        n = info.GetSize()[3]
        if not 0 <= case.channel < n:
            raise InputError(f"{case.image}: expected channel {case.channel} (--channel), the "
                             f"image has {n}")
        image = sitk.ReadImage(str(case.image))
        size = list(image.GetSize())
        size[3] = 0
        return sitk.Extract(image, size, [0, 0, 0, case.channel])
    image = read_image(case.image)
    if image.GetNumberOfComponentsPerPixel() != 1:
        image = sitk.VectorIndexSelectionCast(image, case.channel)
    return image


# ---------------------------------------------------------------- checking and planning

@dataclass
class Plan:
    """What an import will do: the record, and per case its geometry and label values."""

    info: DatasetInfo
    cases: list[Case]
    notes: list[str]


def _header(case: Case):
    """(size, spacing, direction) of a case's image without reading its voxels."""
    if isinstance(case.image, tuple):
        image = read_dicom_series(case.image, case.source)
        return image.GetSize(), image.GetSpacing(), image.GetDirection()
    info = read_image_info(case.image)
    dim = info.GetDimension()
    if dim not in (3, 4):
        raise InputError(f"{case.image}: expected a 3-D scan, found a {dim}-D image of size "
                         f"{info.GetSize()}")
    return info.GetSize()[:3], info.GetSpacing()[:3], _direction3(info.GetDirection(), dim)


def _direction3(direction, dim: int) -> tuple[float, ...]:
    d = np.asarray(direction, float).reshape(dim, dim)[:3, :3]
    return tuple(d.ravel())


def plan_import(source: Source, *, name: str, preset: str | None = None,
                modality: str | None = None, spacing: list[float] | None = None,
                size: int | None = None, window: list[float] | None = None,
                n_folds: int = 5, test_labels: list[int] | None = None,
                label_groups: list[list[int]] | None = None) -> Plan:
    """Check every case's header and label, and build the preprocessing record."""
    notes = list(source.notes)
    if not source.cases:
        raise MissingInput(f"{source.root}: expected scans, found none")
    if preset:
        if test_labels is not None or label_groups is not None:
            raise InputError(f"--test-labels / --label-groups: the {preset} preset keeps its "
                             f"published classes and groups; expected them only without "
                             f"--preset")
        base = get_dataset_info(preset)
        modality = modality or base.modality
        if modality != base.modality:
            raise InputError(f"--modality {modality} contradicts --preset {preset} "
                             f"({base.modality})")
    modality = _modality(source, modality)
    headers, code, median = _geometry(source, notes)
    label_values = _check_labels(source, headers)
    labels, label_map = _label_table(source, label_values)
    n_labelled = sum(c.label is not None for c in source.cases)
    fold_sep = tuple(round(i * n_labelled / n_folds) for i in range(n_folds + 1)) \
        if n_labelled >= n_folds + 1 else ()
    if n_labelled and not fold_sep:
        notes.append(f"{n_labelled} labelled scan(s) are too few for {n_folds} folds (need "
                     f"{n_folds + 1}); no folds written")
    if preset:
        # the published folds where the scans are the published set, else --folds
        published = n_labelled == base.fold_sep[-1] and n_folds == len(base.fold_sep) - 1
        info = replace(base, orientation=base.orientation or code,
                       fold_sep=base.fold_sep if published else fold_sep)
        if spacing:
            info = replace(info, target_spacing=tuple(spacing))
        if info.target_spacing is None:
            raise InputError(f"--preset {preset} resamples each scan to its own spacing; "
                             f"expected --spacing for an import")
        if size:
            info = replace(info, size=size)
        unknown = sorted(set(label_values) - set(base.raw_label_values or base.labels))
        if unknown:
            raise InputError(f"{source.root}: expected the {preset} label values "
                             f"{sorted(base.raw_label_values or base.labels)}, found {unknown}")
        return Plan(info, source.cases, notes)
    target = tuple(float(s) for s in spacing) if spacing else median
    if len(target) == 2:
        target = target + (median[2],)
    tests = _test_labels(labels, test_labels)
    groups = _label_groups(labels, tests, label_groups)
    intensity = ({"rule": "ct_window", "window": list(window or HU_WINDOW)} if modality == "CT"
                 else {"rule": "clip_percentile", "percentile": 99.5,
                       "rescale": list(MR_RESCALE)})
    info = DatasetInfo(
        name=name, modality=modality, labels=labels, all_test_labels=tests,
        label_groups=groups, fold_sep=fold_sep, normalization="zscore_volume",
        body_threshold=CT_BODY_THRESHOLD if modality == "CT" else MR_BODY_THRESHOLD,
        target_spacing=target, raw_label_values=label_map, orientation=code,
        size=size or CROP_SIZE, intensity=intensity)
    return Plan(info, source.cases, notes)


def _geometry(source: Source, notes: list[str]) -> tuple[dict, str | None, tuple]:
    """Every case's header (size, spacing, direction), checked; the most common orientation
    code (None when every scan is oblique) and the median spacing in it. Mixed orientations
    and outlying spacings are noted."""
    headers = {}
    for case in source.cases:
        size3, sp, direction = _header(case)
        if size3[2] < 2:
            raise InputError(f"{case.source}: expected a 3-D scan of several slices, found size "
                             f"{size3}")
        if not all(s > 0 for s in sp):
            raise InputError(f"{case.source}: expected positive voxel spacing, found "
                             f"{fmt_spacing(sp)} mm")
        headers[case.name] = (size3, sp, direction)
    codes = Counter(orientation(d) for _, _, d in headers.values()
                    if not is_oblique(d))
    code = codes.most_common(1)[0][0] if codes else None
    if len(codes) > 1:
        notes.append(f"orientations {dict(codes)}: every scan brought to {code}")
    # spacings in the common orientation: the reorientation permutes the axes
    spacings = {n: _reoriented_spacing(sp, d, code) for n, (_, sp, d) in headers.items()}
    median = tuple(statistics.median(s[i] for s in spacings.values()) for i in range(3))
    odd = [f"{n} ({fmt_spacing(s)})" for n, s in spacings.items()
           if any(max(a / b, b / a) > SPACING_SPREAD for a, b in zip(s, median))]
    if odd:
        notes.append(f"WARNING: {len(odd)} scan(s) with a spacing more than "
                     f"{SPACING_SPREAD:g}x off the median {fmt_spacing(median)} mm: "
                     f"{', '.join(odd[:10])}")
    return headers, code, median


def _reoriented_spacing(spacing, direction, code: str | None) -> tuple[float, float, float]:
    if code is None or is_oblique(direction):
        return tuple(spacing)
    image = sitk.Image([2, 2, 2], sitk.sitkUInt8)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return reorient(image, code).GetSpacing()


def _modality(source: Source, given: str | None) -> str:
    said = {c.modality for c in source.cases if c.modality}
    if said:  # DICOM Modality tags
        mapped = {"CT" if m == "CT" else "MR" for m in said}
        if len(mapped) > 1:
            by = {m: [c.name for c in source.cases if c.modality == m][:3] for m in said}
            raise InputError(f"{source.root}: expected one modality, found {sorted(said)} "
                             f"(for example {by}); import each modality into its own folder")
        found = mapped.pop()
        if given and given != found:
            raise InputError(f"--modality {given}: the DICOM Modality tags say {sorted(said)}")
        return found
    if source.modality:
        if given and given != source.modality:
            raise InputError(f"--modality {given}: {source.root / 'dataset.json'} says "
                             f"{source.modality}")
        return source.modality
    if not given:
        raise InputError(f"{source.root}: the folder does not say its modality; expected "
                         f"--modality CT or --modality MR")
    return given


def _check_labels(source: Source, headers: dict) -> list[int]:
    """Every label's grid equals its image's; returns the sorted label values found."""
    values: set[int] = set()
    for case in source.cases:
        if case.label is None:
            continue
        label = read_image(case.label)
        size, sp, direction = headers[case.name]
        if label.GetSize() != tuple(size) or not np.allclose(label.GetSpacing(), sp, atol=1e-4) \
                or not np.allclose(label.GetDirection(), direction, atol=1e-4):
            raise InputError(f"{case.label}: expected the grid of its image {case.source} "
                             f"(size {tuple(size)}, spacing {fmt_spacing(sp)}), found size "
                             f"{label.GetSize()}, spacing {fmt_spacing(label.GetSpacing())}")
        arr = sitk.GetArrayViewFromImage(label)
        found = np.unique(arr)
        if not np.array_equal(found, np.rint(found)) or found.min(initial=0) < 0:
            raise InputError(f"{case.label}: expected non-negative integer label values, found "
                             f"{found[:10].tolist()}")
        values |= set(int(v) for v in found)
        if source.labels is not None:
            unknown = sorted(set(int(v) for v in found) - set(source.labels))
            if unknown:
                raise InputError(f"{case.label}: expected label values {sorted(source.labels)} "
                                 f"(the labels of {source.root / 'dataset.json'}), found "
                                 f"{unknown}")
    return sorted(values)


def _label_table(source: Source, values: list[int]) -> tuple[dict[int, str], dict[int, int]]:
    """Class ids and names, and the stored-value map when the values are not 0..K."""
    names = dict(sorted(source.labels.items())) if source.labels is not None else \
        {0: "background", **{v: f"label{v}" for v in values if v != 0}}
    fg = [v for v in names if v != 0]
    if fg == list(range(1, len(fg) + 1)):
        return names, {}
    # stored values such as 200/500/600 stay on disk; the record maps them to 1..K
    return ({0: names.get(0, "background"), **{i + 1: names[v] for i, v in enumerate(fg)}},
            {v: i + 1 for i, v in enumerate(fg)})


def _test_labels(labels: dict[int, str], given: list[int] | None) -> tuple[int, ...]:
    fg = sorted(c for c in labels if c != 0)
    if given is None:
        return tuple(fg)
    unknown = sorted(set(given) - set(fg))
    if unknown:
        raise InputError(f"--test-labels: expected class ids among {fg}, got {unknown}")
    return tuple(sorted(set(given)))


def _label_groups(labels: dict[int, str], tests: tuple[int, ...],
                  given: list[list[int]] | None) -> tuple[tuple[int, ...], ...]:
    """Stored as the classes *not* tested in each group (the record's convention); the user
    gives the tested ones. Default: every test class its own group."""
    groups = given if given is not None else [[c] for c in tests]
    out = []
    for group in groups:
        unknown = sorted(set(group) - set(tests))
        if unknown or not group:
            raise InputError(f"--label-groups: expected non-empty groups of test classes "
                             f"{list(tests)}, got {group}")
        out.append(tuple(c for c in tests if c not in group))
    return tuple(out) if out else ((),)


# ---------------------------------------------------------------- writing

def import_scans(plan: Plan, dst: str | os.PathLike, log=print) -> dict:
    """Preprocess every case into a staging folder of ``dst``, then move the files in place;
    returns {case: {"image": source, "label": source or None}}."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    staging = dst / ".staging-import"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    info = plan.info
    sources, seen = {}, {}
    try:
        for case in plan.cases:
            image = read_case_image(case)
            seen[case.name] = apparent_modality(image)[0]
            stored, label = prepare_case(image, case, info)
            write_image(stored, staging / FILE_PATTERNS["image"].format(pid=case.name))
            if label is not None:
                write_image(label, staging / FILE_PATTERNS["label"].format(pid=case.name))
            sources[case.name] = {"image": case.source,
                                  "label": None if case.label is None else str(case.label)}
            log(f"{case.name}: {image.GetSize()} @ {fmt_spacing(image.GetSpacing())} mm -> "
                f"{stored.GetSize()} @ {fmt_spacing(stored.GetSpacing())} mm"
                f"{'' if case.label is None else ', labelled'}")
        check_intensities(seen, info.modality, plan.cases[0].source, log)
        for path in sorted(staging.iterdir()):
            os.replace(path, dst / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sources


def check_intensities(seen: dict[str, str], modality: str, where: str, log=print) -> None:
    """Refuse a folder whose scans look like two modalities (some hold air in Hounsfield units,
    others not); warn when all look like the other one (CT already windowed, for example)."""
    looks = {m: sorted(n for n, s in seen.items() if s == m) for m in MODALITIES}
    if looks["CT"] and looks["MR"]:
        raise InputError(f"{Path(where).parent}: expected one modality, found scans that look "
                         f"like CT (air below {HU_AIR:g} HU: {looks['CT'][:3]}) and others "
                         f"that do not ({looks['MR'][:3]}); import each modality on its own")
    other = "MR" if modality == "CT" else "CT"
    if looks[other]:
        log(f"WARNING: every scan looks like {other} by its intensities, imported as {modality} "
            f"as the folder or --modality says")


def prepare_case(image: sitk.Image, case: Case, info: DatasetInfo
                 ) -> tuple[sitk.Image, sitk.Image | None]:
    """One case: brought to the record's orientation (oblique scans as stored), then
    :func:`preprocess`; its label likewise."""
    label = read_image(case.label) if case.label is not None else None
    if label is not None:  # its grid equals the image's within 1e-4 (checked): made exact
        label.CopyInformation(image)
    if info.orientation is not None and not is_oblique(image):
        image = reorient(image, info.orientation)
        label = reorient(label, info.orientation) if label is not None else None
    prepared = preprocess(image, info, name=case.source)
    if label is None:
        return prepared.image, None
    return prepared.image, preprocess_label(label, prepared, info.size, str(case.label))


def parse_group(text: str, flag: str) -> list[int]:
    """``"1,4"`` → [1, 4]; anything else names ``flag``."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{flag}: expected comma-separated class ids such as 1,4, got "
                         f"{text!r}") from None
