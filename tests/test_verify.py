"""verify: a clean folder passes; every kind of damage is reported, all at once."""
import gzip
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from data_preprocessing import superpixels
from data_preprocessing.classmap import write_classmap
from data_preprocessing.contract import load_dataset
from data_preprocessing.phantom import write_phantom
from data_preprocessing.verify import DatasetVerificationError, verify_dataset


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    write_phantom(root, seed=2, size=64, n_slices=4)
    superpixels.generate(root, workers=1)
    write_classmap(root, 1)
    return root


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _rewrite(path, fn):
    img = sitk.ReadImage(str(path))
    new = fn(img)
    sitk.WriteImage(new, str(path), useCompression=True)


def test_clean_folder_passes(clean_folder):
    ds = verify_dataset(clean_folder)
    assert ds.meta["pseudolabels"]["MIDDLE"]["min_size"] == 400


def test_every_problem_is_listed_once(clean_folder, tmp_path):
    root = _copy(clean_folder, tmp_path / "broken")
    (root / "label_1.nii.gz").unlink()                                   # missing label

    def shrink(img):                                                     # shape mismatch
        small = sitk.GetImageFromArray(sitk.GetArrayFromImage(img)[:, :32, :])
        small.SetSpacing(img.GetSpacing())
        small.SetDirection(img.GetDirection())
        small.SetOrigin(img.GetOrigin())
        return small
    _rewrite(root / "label_2.nii.gz", shrink)

    def respace(img):                                                    # spacing mismatch
        img.SetSpacing((2.0, 2.0, 5.0))
        return img
    _rewrite(root / "label_3.nii.gz", respace)

    def nan(img):                                                        # NaN voxel
        arr = sitk.GetArrayFromImage(img)
        arr[0, 0, 0] = np.nan
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(img)
        return out
    _rewrite(root / "image_4.nii.gz", nan)

    def unknown_value(img):                                              # unknown label value
        arr = sitk.GetArrayFromImage(img)
        arr[0, 0, 0] = 9
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(img)
        return out
    _rewrite(root / "label_5.nii.gz", unknown_value)

    def zero(img):                                                       # empty pseudolabels
        out = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(img)))
        out.CopyInformation(img)
        return out
    _rewrite(root / "superpix-MIDDLE_6.nii.gz", zero)

    data = (root / "image_7.nii.gz").read_bytes()                        # truncated file
    (root / "image_7.nii.gz").write_bytes(data[: len(data) // 2])

    cm = json.loads((root / "classmap_1.json").read_text(encoding="utf-8"))              # classmap disagrees
    cm["LIVER"]["8"] = [0]
    (root / "classmap_1.json").write_text(json.dumps(cm), encoding="utf-8")

    with pytest.raises(DatasetVerificationError) as info:
        verify_dataset(root)
    problems = info.value.problems
    text = "\n".join(problems)
    assert "label_1.nii.gz: expected the label of case 1" in text
    assert "label_2.nii.gz: expected size (64, 64, 4)" in text and "found (64, 32, 4)" in text
    assert "label_3.nii.gz: expected spacing (1.25, 1.25, 7.7)" in text
    assert "image_4.nii.gz: expected finite voxel values, found 1 NaN/inf" in text
    assert "label_5.nii.gz: expected label values [0, 1, 2, 3, 4], found [9.0]" in text
    assert "superpix-MIDDLE_6.nii.gz: expected superpixel ids on body slices, found an all-zero" \
        in text
    assert "image_7.nii.gz: expected a complete NIfTI file" in text and "truncated" in text
    assert "classmap_1.json: LIVER of scan 8 disagrees with label_8.nii.gz" in text
    assert len(problems) >= 8
    assert str(info.value).startswith(f"{root}: {len(problems)} problem(s) found")


def test_missing_pseudolabel_file_and_unknown_fold_case(clean_folder, tmp_path):
    root = _copy(clean_folder, tmp_path / "broken2")
    (root / "superpix-MIDDLE_9.nii.gz").unlink()
    splits = json.loads((root / "splits.json").read_text(encoding="utf-8"))
    splits["folds"][0]["query"].append("99")
    (root / "splits.json").write_text(json.dumps(splits), encoding="utf-8")
    with pytest.raises(DatasetVerificationError) as info:
        verify_dataset(root)
    text = "\n".join(info.value.problems)
    assert "superpix-MIDDLE_9.nii.gz: expected an image file, found nothing there" in text
    assert "fold 0 query names unknown case(s) ['99']" in text


def test_truncated_gzip_is_reported_not_crashing(clean_folder, tmp_path):
    root = _copy(clean_folder, tmp_path / "broken3")
    raw = gzip.decompress((root / "label_10.nii.gz").read_bytes())
    (root / "label_10.nii.gz").write_bytes(gzip.compress(raw[: len(raw) - 100]))
    with pytest.raises(DatasetVerificationError, match="label_10.nii.gz"):
        verify_dataset(root)


def test_unusable_volumes_are_reported_against_the_file(clean_folder, tmp_path):
    import nibabel as nib

    from dataloaders.volumes import load_volumes
    from util.io import read_image

    root = _copy(clean_folder, tmp_path / "broken4")
    (root / "label_2.nii.gz").write_bytes(b"")                             # zero-byte label
    flat = nib.load(root / "image_3.nii.gz")
    nib.save(nib.Nifti1Image(np.asanyarray(flat.dataobj)[:, :, 0], flat.affine),
             root / "image_3.nii.gz")                                       # a 2-D image
    zero = sitk.ReadImage(str(root / "image_5.nii.gz"))
    blank = sitk.GetImageFromArray(np.zeros(sitk.GetArrayFromImage(zero).shape, np.float32))
    blank.CopyInformation(zero)
    sitk.WriteImage(blank, str(root / "image_5.nii.gz"))                    # all-zero image
    with pytest.raises(DatasetVerificationError) as info:
        verify_dataset(root)
    text = "\n".join(info.value.problems)
    assert "label_2.nii.gz: expected a NIfTI volume, found an empty (zero-byte) file" in text
    assert "image_3.nii.gz: expected a 3-D volume, found a 2-D image of shape (64, 64)" in text
    assert "image_5.nii.gz: expected an image with varying intensities, found a constant image" \
        in text
    assert "superpix-MIDDLE_5" not in text  # reported against the image, not its superpixels
    # every reader says the same, naming the file
    with pytest.raises(ValueError, match=r"label_2\.nii\.gz: expected a NIfTI volume, found an "
                                         r"empty"):
        read_image(root / "label_2.nii.gz")
    ds = load_dataset(root)
    with pytest.raises(ValueError, match=r"image_5\.nii\.gz: expected an image with varying"):
        load_volumes(ds, ["5"])
    with pytest.raises(ValueError, match=r"image_3\.nii\.gz: expected a 3-D volume"):
        load_volumes(ds, ["3"])


def test_a_nan_voxel_stops_every_reader(clean_folder, tmp_path):
    import nibabel as nib

    from dataloaders.volumes import load_volumes

    root = _copy(clean_folder, tmp_path / "broken5")
    img = nib.load(root / "image_4.nii.gz")
    arr = np.asanyarray(img.dataobj).astype(np.float32)
    arr[3, 3, 1] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), root / "image_4.nii.gz")
    with pytest.raises(ValueError, match=r"image_4\.nii\.gz: expected finite voxel values, found "
                                         r"1 NaN/inf voxel"):
        load_volumes(load_dataset(root), ["4"])


def test_a_usable_folder_needs_folds_and_its_own_name(tmp_path):
    import warnings

    from data_preprocessing.contract import register

    write_phantom(tmp_path, seed=1, size=64, n_slices=4)
    superpixels.generate(tmp_path, workers=1)
    write_classmap(tmp_path, 1)
    verify_dataset(tmp_path)
    with pytest.raises(ValueError, match=r"registered as PHANTOM, not CHAOST2; .* --force"):
        register(tmp_path, "CHAOST2")
    # two scans: no folds, and verify says so unless the folder is marked preprocessing-only
    for pid in load_dataset(tmp_path).cases[2:]:
        for kind in ("image", "label"):
            (tmp_path / f"{kind}_{pid}.nii.gz").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        register(tmp_path, "PHANTOM")
    with pytest.raises(DatasetVerificationError, match=r"expected folds for training and "
                                                       r"validation, found none"):
        verify_dataset(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        register(tmp_path, "PHANTOM", no_folds=True)
    write_classmap(tmp_path, 1)
    verify_dataset(tmp_path)
    with pytest.raises(ValueError, match=r"splits\.json: expected folds, found none"):
        load_dataset(tmp_path).fold(0)  # training and validation refuse it
