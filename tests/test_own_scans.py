"""Your own scans: nnU-Net, MSD, plain and DICOM folders built from the shared CHAOS-T2 and CMR
scans, each through prepare → a 20-step training → predict; the importers' bad inputs."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import cli, one_line_error
from data_preprocessing.contract import load_dataset
from data_preprocessing.registry import CHAOST2
from data_preprocessing.resample import normalize_resample_crop
from inference.predict import prepare_scan
from dataloaders.volumes import normalize

SLICES = slice(8, 20)  # 12 slices of each scan keep the imports and trainings short
CHAOS_IDS = ("1", "2", "3", "5", "8", "10")


def chaos_scan(chaos_dir: Path, pid: str) -> tuple[sitk.Image, sitk.Image]:
    image = sitk.ReadImage(str(chaos_dir / f"image_{pid}.nii.gz"))[:, :, SLICES]
    label = sitk.ReadImage(str(chaos_dir / f"label_{pid}.nii.gz"))[:, :, SLICES]
    return sitk.Cast(image, sitk.sitkInt16), sitk.Cast(label, sitk.sitkUInt8)


def write_dicom_series(image: sitk.Image, folder: Path, modality: str, uid: str,
                       skip: int | None = None) -> None:
    """``image`` as a DICOM series (one file per slice) with the position tags GDCM sorts by;
    ``skip`` leaves that slice out (a missing slice)."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    cosines = "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                               direction[1], direction[4], direction[7]))
    sx, sy, sz = image.GetSpacing()
    for k in range(image.GetDepth()):
        if k == skip:
            continue
        sl = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in {"0008|0060": modality, "0020|000d": uid, "0020|000e": uid + ".1",
                           "0008|0018": f"{uid}.1.{k + 1}", "0020|0013": str(k + 1),
                           "0020|0037": cosines,
                           "0020|0032": "\\".join(f"{v:.6f}" for v in position),
                           "0028|0030": f"{sy:.6f}\\{sx:.6f}", "0018|0050": f"{sz:.6f}"}.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


def prepare(src: Path, dst: Path, *extra: str):
    return cli("-m", "data_preprocessing.prepare", "--src", str(src), "--dst", str(dst),
               "--workers", "1", *extra)


def train_and_predict(data: Path, tmp: Path, support: tuple[Path, Path], query: Path,
                      label: int = 1) -> sitk.Image:
    """20 training steps with the dataset's folder only, then predict one query."""
    out = cli("training.py", "with", f"data_dir={data}", "encoder=tiny", "n_steps=20",
              "num_workers=0", "device=cpu", f"log_dir={tmp / 'exps'}", "print_interval=10")
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = next((tmp / "exps").glob("train/*/*/snapshots/latest.pth"))
    out = cli("predict.py", "--checkpoint", str(ckpt), "--support", str(support[0]),
              "--support-mask", str(support[1]), "--label", str(label), "--query", str(query),
              "--out", str(tmp / "preds"), "--device", "cpu")
    assert out.returncode == 0, out.stderr[-3000:]
    pred = sitk.ReadImage(str(next((tmp / "preds").glob("*_pred.nii.gz"))))
    assert pred.GetSize() == sitk.ReadImage(str(query)).GetSize()
    return pred


def support_and_query(chaos_dir: Path, tmp_path: Path, support: str, query: str
                      ) -> tuple[tuple[Path, Path], Path]:
    """A support scan with its labels and a query scan (12 slices each) written as new files."""
    image, label = chaos_scan(chaos_dir, support)
    sitk.WriteImage(image, str(tmp_path / "sup.nii.gz"))
    sitk.WriteImage(label, str(tmp_path / "sup_mask.nii.gz"))
    sitk.WriteImage(chaos_scan(chaos_dir, query)[0], str(tmp_path / "q.nii.gz"))
    return (tmp_path / "sup.nii.gz", tmp_path / "sup_mask.nii.gz"), tmp_path / "q.nii.gz"


@pytest.fixture(scope="module")
def nnunet_copy(chaos_dir, tmp_path_factory) -> Path:
    """An nnU-Net v2 raw dataset: 5 labelled CHAOS-T2 scans in imagesTr, one in imagesTs."""
    root = tmp_path_factory.mktemp("nnunet") / "Dataset101_Abdomen"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    for k, pid in enumerate(CHAOS_IDS):
        image, label = chaos_scan(chaos_dir, pid)
        sub = "imagesTr" if k < 5 else "imagesTs"
        sitk.WriteImage(image, str(root / sub / f"abd_{pid:0>3}_0000.nii.gz"))
        if sub == "imagesTr":
            sitk.WriteImage(label, str(root / "labelsTr" / f"abd_{pid:0>3}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2"}, "file_ending": ".nii.gz", "numTraining": 5,
        "labels": {"background": 0, "liver": 1, "right kidney": 2, "left kidney": 3,
                   "spleen": 4}}))
    return root


def test_nnunet_with_the_preset_equals_the_preset_path_and_predict(nnunet_copy, chaos_dir,
                                                                   tmp_path):
    """--preset CHAOST2: each stored array equals the published MR step 3 on the same scan, and
    predict.py's preparation of that scan gives the same array (z-scored)."""
    dst = tmp_path / "CHAOST2"
    out = prepare(nnunet_copy, dst, "--preset", "CHAOST2", "--folds", "4")
    assert out.returncode == 0, out.stderr[-3000:]
    ds = load_dataset(dst)
    assert ds.cases == ["abd_001", "abd_002", "abd_003", "abd_005", "abd_008", "abd_010"]
    assert ds.labelled == ds.cases[:5] and ds.meta["preset"] == "CHAOST2"
    assert ds.meta["sources"]["abd_010"]["label"] is None
    for pid in ("1", "10"):
        image, label = chaos_scan(chaos_dir, pid)
        ref_image, ref_label, _ = normalize_resample_crop(image, label, CHAOST2.target_spacing)
        stored = sitk.GetArrayFromImage(sitk.ReadImage(str(ds.path("image", f"abd_{pid:0>3}"))))
        np.testing.assert_array_equal(stored, sitk.GetArrayFromImage(ref_image))
        if pid == "1":
            lab = sitk.GetArrayFromImage(sitk.ReadImage(str(ds.path("label", "abd_001"))))
            np.testing.assert_array_equal(lab, sitk.GetArrayFromImage(ref_label))
        prepared = prepare_scan(image, CHAOST2.target_spacing, ds.info, "query")
        np.testing.assert_array_equal(prepared.image, normalize(stored.astype(np.float32),
                                                                "zscore_volume"))
    assert len(ds.splits["folds"]) == 4
    assert all("abd_010" in f["train"] for f in ds.splits["folds"])  # unlabelled: trains
    support, _ = support_and_query(chaos_dir, tmp_path, "2", "1")
    pred = train_and_predict(dst, tmp_path, support,
                             nnunet_copy / "imagesTs" / "abd_010_0000.nii.gz")
    assert sitk.GetArrayViewFromImage(pred).any()


def test_nnunet_defaults_record_the_median_spacing_and_names(nnunet_copy, tmp_path):
    out = prepare(nnunet_copy, tmp_path / "abd", "--label-groups", "1,4", "2,3")
    assert out.returncode == 0, out.stderr[-3000:]
    ds = load_dataset(tmp_path / "abd")
    assert ds.meta["preset"] is None
    assert ds.name == "abd" and ds.info.modality == "MR"
    assert ds.info.target_spacing == pytest.approx((1.25, 1.25, 7.7))
    assert ds.labels[2] == "right kidney" and ds.info.orientation == "LAS"
    assert ds.info.intensity["rescale"] == [0.0, 1000.0]
    assert ds.test_labels(0) == [1, 4] and ds.test_labels(1) == [2, 3]
    assert not ds.splits["folds"]  # 5 labelled scans: too few for 5 folds with a support
    assert "5 labelled scan(s) are too few for 5 folds (need 6)" in out.stdout
    assert "channel 0 ('T2') of 1; normalised as MR" in out.stdout


@pytest.fixture(scope="module")
def msd_copy(cmr_dir, tmp_path_factory) -> Path:
    """A Decathlon-style task of 4 CMR scans (3 labelled, one in imagesTs): labels 1/2/3, but
    heart_3 keeps the challenge's 200/500/600 in a copy (``raw_copy``)."""
    root = tmp_path_factory.mktemp("msd") / "Task99_Heart"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    for k in range(1, 5):
        image = sitk.ReadImage(str(cmr_dir / f"image_{k}.nii.gz"))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(cmr_dir / f"label_{k}.nii.gz")))
        mapped = np.zeros(label.shape, np.uint8)
        for raw, cid in ((200, 1), (500, 2), (600, 3)):
            mapped[label == raw] = cid
        sub = "imagesTr" if k < 4 else "imagesTs"
        sitk.WriteImage(image, str(root / sub / f"heart_{k}.nii.gz"))
        if k < 4:
            lab = sitk.GetImageFromArray(mapped)
            lab.CopyInformation(image)
            sitk.WriteImage(lab, str(root / "labelsTr" / f"heart_{k}.nii.gz"))
    (root / "imagesTr" / "._heart_1.nii.gz").write_bytes(b"macOS resource fork")
    (root / "dataset.json").write_text(json.dumps({
        "name": "Heart", "modality": {"0": "MRI"}, "numTraining": 3,
        "labels": {"0": "background", "1": "LV-MYO", "2": "LV-BP", "3": "RV"}}))
    raw = root.parent / "Task98_HeartRaw"
    shutil.copytree(root, raw)
    for k in range(1, 4):
        shutil.copy(cmr_dir / f"label_{k}.nii.gz", raw / "labelsTr" / f"heart_{k}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({
        "name": "Heart", "modality": {"0": "MRI"}, "numTraining": 3,
        "labels": {"0": "background", "200": "LV-MYO", "500": "LV-BP", "600": "RV"}}))
    return root


def test_msd_task_trains_and_predicts(msd_copy, cmr_dir, tmp_path):
    dst = tmp_path / "heart"
    out = prepare(msd_copy, dst)
    assert out.returncode == 0, out.stderr[-3000:]
    ds = load_dataset(dst)
    assert ds.cases == ["heart_1", "heart_2", "heart_3", "heart_4"]
    assert ds.labelled == ["heart_1", "heart_2", "heart_3"] and not ds.splits["folds"]
    assert ds.info.orientation is None  # oblique short-axis stacks: kept as stored
    pred = train_and_predict(dst, tmp_path, (cmr_dir / "image_5.nii.gz",
                                             cmr_dir / "label_5.nii.gz"),
                             cmr_dir / "image_6.nii.gz", label=500)
    assert pred.GetSize() == sitk.ReadImage(str(cmr_dir / "image_6.nii.gz")).GetSize()
    # stored values 200/500/600 are kept on disk and mapped to class ids 1/2/3 by the record
    out = prepare(msd_copy.parent / "Task98_HeartRaw", tmp_path / "raw")
    assert out.returncode == 0, out.stderr[-3000:]
    raw = load_dataset(tmp_path / "raw")
    assert raw.raw_label_values == {200: 1, 500: 2, 600: 3}
    assert raw.labels == {0: "background", 1: "LV-MYO", 2: "LV-BP", 3: "RV"}
    from dataloaders.volumes import load_volume
    assert set(np.unique(load_volume(raw, "heart_1").label)) == {0, 1, 2, 3}


def test_plain_unlabelled_folder_trains_and_refuses_what_needs_labels(chaos_dir, tmp_path):
    src = tmp_path / "my scans"
    src.mkdir()
    for name, pid in (("patient A", "1"), ("patient-b", "2"), ("c.second", "3")):
        image, _ = chaos_scan(chaos_dir, pid)
        sitk.WriteImage(image, str(src / f"{name}.nrrd" if pid == "2" else src /
                                   f"{name}.nii.gz"))
    (src / "notes.txt").write_text("not a scan")
    dst = tmp_path / "mine"
    missing = prepare(src, dst)
    one_line_error(missing, "python -m data_preprocessing.prepare",
                   "does not say its modality; expected --modality CT or --modality MR")
    assert not dst.exists() or not any(dst.glob("image_*"))
    out = prepare(src, dst, "--modality", "MR")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipped 1 file(s) of unsupported types: notes.txt" in out.stdout
    ds = load_dataset(dst)
    assert sorted(ds.cases) == ["c.second", "patient-b", "patient_A"] and ds.labelled == []
    assert ds.meta["sources"]["patient-b"]["image"].endswith("patient-b.nrrd")
    train_and_predict(dst, tmp_path, *support_and_query(chaos_dir, tmp_path, "5", "8"))
    for extra, what in ((["setting=2"], "setting=2 needs labels"),
                        (["val_every=10"], "val_every > 0 needs labels")):
        out = cli("training.py", "with", f"data_dir={dst}", "encoder=tiny", "n_steps=2",
                  "num_workers=0", f"log_dir={tmp_path / 'x'}", *extra)
        one_line_error(out, "training.py", what)
    out = cli("validation.py", "with", f"data_dir={dst}", "encoder=tiny",
              f"log_dir={tmp_path / 'x'}")
    one_line_error(out, "validation.py", "validation needs labels, and this folder has none")
    assert not (tmp_path / "x").exists()  # refused before any run folder was made


def test_dicom_export_of_two_scans(chaos_dir, tmp_path):
    src = tmp_path / "dicom"
    for k, pid in enumerate(("1", "2")):
        write_dicom_series(chaos_scan(chaos_dir, pid)[0], src / f"study{k}" / "t2", "MR",
                           f"1.2.826.0.1.3680043.2.1125.{90 + k}")
    (src / "study0" / "t2" / "DICOMDIR.txt").write_text("index")
    dst = tmp_path / "dcm"
    out = prepare(src, dst)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 DICOM series" in out.stdout and "ignored 1 non-DICOM file(s)" in out.stdout
    ds = load_dataset(dst)
    assert ds.cases == ["study0_t2", "study1_t2"] and ds.info.modality == "MR"
    assert ds.info.target_spacing == pytest.approx((1.25, 1.25, 7.7), rel=1e-5)
    train_and_predict(dst, tmp_path, *support_and_query(chaos_dir, tmp_path, "3", "5"))


# ---------------------------------------------------------------- bad inputs: one line, nothing

def _refused(src: Path, tmp_path: Path, message: str, *extra: str) -> None:
    dst = tmp_path / "out"
    out = prepare(src, dst, *extra)
    one_line_error(out, "python -m data_preprocessing.prepare", message)
    assert not dst.exists() or not any(dst.iterdir()), sorted(dst.iterdir())


def test_bad_sources_are_refused_before_anything_is_written(chaos_dir, nnunet_copy, tmp_path):
    image, label = chaos_scan(chaos_dir, "1")
    # mixed modalities in one DICOM folder
    mixed = tmp_path / "mixed"
    write_dicom_series(image, mixed / "a", "MR", "1.2.3.1")
    write_dicom_series(image, mixed / "b", "CT", "1.2.3.2")
    _refused(mixed, tmp_path, "expected one modality, found ['CT', 'MR']")
    # a missing slice in a series
    gap = tmp_path / "gap"
    write_dicom_series(image, gap / "a", "MR", "1.2.3.3", skip=5)
    _refused(gap, tmp_path, "expected evenly spaced DICOM slices")
    # a label on another grid, a label without an image, a 2-D image, duplicate names
    plain = tmp_path / "plain"
    (plain / "labels").mkdir(parents=True)
    sitk.WriteImage(image, str(plain / "a.nii.gz"))
    sitk.WriteImage(label[:, :, :5], str(plain / "labels" / "a.nii.gz"))
    _refused(plain, tmp_path, "expected the grid of its image", "--modality", "MR")
    sitk.WriteImage(label, str(plain / "labels" / "a.nii.gz"))
    sitk.WriteImage(label, str(plain / "labels" / "b.nii.gz"))
    _refused(plain, tmp_path, "found labels without an image: ['b']", "--modality", "MR")
    shutil.rmtree(plain / "labels")
    sitk.WriteImage(image[:, :, 0], str(plain / "flat.nii.gz"))
    _refused(plain, tmp_path, "expected a 3-D scan, found a 2-D image", "--modality", "MR")
    (plain / "flat.nii.gz").unlink()
    sitk.WriteImage(image, str(plain / "a.nrrd"))
    _refused(plain, tmp_path, "found a.nii.gz and a.nrrd both named 'a'", "--modality", "MR")
    (plain / "a.nrrd").unlink()
    sitk.WriteImage(label, str(plain / "a_seg.nii.gz"))
    _refused(plain, tmp_path, "found files named like the labels of other scans: a_seg (beside "
             "a); pass --label-suffix _seg", "--modality", "MR")
    (plain / "a_seg.nii.gz").unlink()
    for name, content in (("b.nii.gz", b""), ("c.nrrd", b"not an image")):
        (plain / name).write_bytes(content)
        _refused(plain, tmp_path, str(plain / name), "--modality", "MR")
        (plain / name).unlink()
    # an nnU-Net dataset.json that disagrees with its files; label values outside its table
    broken = tmp_path / "nnunet"
    shutil.copytree(nnunet_copy, broken)
    meta = json.loads((broken / "dataset.json").read_text())
    (broken / "dataset.json").write_text(json.dumps({**meta, "numTraining": 7}))
    _refused(broken, tmp_path, "numTraining says 7, imagesTr holds 5 cases")
    labels = dict(meta["labels"])
    del labels["spleen"]
    (broken / "dataset.json").write_text(json.dumps({**meta, "labels": labels}))
    _refused(broken, tmp_path, "expected label values [0, 1, 2, 3]")
    (broken / "dataset.json").write_text(json.dumps(meta))
    _refused(broken, tmp_path, "--channel: expected one of the channels [0]", "--channel", "1")
    _refused(broken, tmp_path, "--modality CT: ", "--modality", "CT")


def test_own_labelled_folder_has_folds_and_validates(nnunet_copy, tmp_path):
    """--folds 4 over the 5 labelled scans: 4 folds of one support and the rest queries, the
    unlabelled scan training in each; validation.py scores the folder's own classes."""
    dst = tmp_path / "abd4"
    out = prepare(nnunet_copy, dst, "--folds", "4", "--test-labels", "1", "4")
    assert out.returncode == 0, out.stderr[-3000:]
    ds = load_dataset(dst)
    folds = ds.splits["folds"]
    assert len(folds) == 4 and ds.meta["all_test_labels"] == [1, 4]
    for fold in folds:
        assert len(fold["support"]) == 1 and fold["support"][0] not in fold["train"]
        assert "abd_010" in fold["train"] and not set(fold["query"]) & set(fold["train"])
    out = cli("training.py", "with", f"data_dir={dst}", "encoder=tiny", "n_steps=2",
              "num_workers=0", "device=cpu", f"log_dir={tmp_path / 't'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert list((tmp_path / "t" / "train").glob("abd4_setting1_*"))  # own folders: Setting 1
    out = cli("validation.py", "with", f"data_dir={dst}", "encoder=tiny", "label_sets=all",
              "eval_fold=1", "device=cpu", "num_workers=0", f"log_dir={tmp_path / 'v'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "evaluating an UNTRAINED model" in out.stderr
    assert "liver" in out.stdout + out.stderr and "spleen" in out.stdout + out.stderr
