"""Label values mean what the user meant: binary masks stored as 0/255 (or 0/65535) are one class,
true multi-class sets are left alone, an image in a labels folder is refused, the class count comes
from one place, and `cvbm evaluate` scores every labelled case or says which it cannot."""

import warnings
from contextlib import contextmanager

import numpy as np
import pytest
from conftest import blob_volume
from test_cli import TINY, assert_one_error_line, cvbm_here

from napari_cvbm.core.checkpoint import load_model
from napari_cvbm.core.classes import infer_num_classes, interpret_labels
from napari_cvbm.core.data import load_cases
from napari_cvbm.core.errors import CVBMInputError, CVBMNotice
from napari_cvbm.core.io import write_image


def write_set(root, labels: dict, folder="labels"):
    """``root/images`` (blob images) and ``root/folder`` holding ``labels`` (case name -> label map)."""
    for i, (name, label) in enumerate(labels.items()):
        write_image(root / "images" / f"{name}.nii.gz", blob_volume(i)[0])
        write_image(root / folder / f"{name}.nii.gz", label)
    return root


def blob(seed, scale=1, dtype=np.uint8):
    return (blob_volume(seed)[1] * scale).astype(dtype)


@contextmanager
def no_notice():
    """Any CVBMNotice inside fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CVBMNotice)
        yield


@pytest.mark.parametrize("foreground, dtype", [(255, np.uint8), (65535, np.uint16)])
def test_binary_masks_are_one_foreground_class(tmp_path, foreground, dtype):
    """8-bit 0/255 and 16-bit 0/65535 masks, alone or mixed with 0/1 masks, train one class."""
    write_set(tmp_path, {"c0": blob(0, foreground, dtype), "c1": blob(1), "c2": blob(2, foreground, dtype)})
    with pytest.warns(CVBMNotice, match=f"foreground stored as {foreground} .* in 2 label files: read as class 1"):
        cases = load_cases(tmp_path / "images", tmp_path / "labels")
    for i, case in enumerate(cases):
        np.testing.assert_array_equal(case.label, blob_volume(i)[1])
    assert infer_num_classes(c.label for c in cases) == 2


def test_multiclass_sets_are_left_alone():
    """ACDC-like: classes 0..3, a file may hold only some of them; nothing is remapped."""
    labels = {"a": np.array([[0, 1], [2, 3]]), "b": np.array([[0, 2], [2, 0]]), "c": np.array([[0, 1], [1, 1]])}
    with no_notice():
        meant = interpret_labels(labels)
    assert all(meant[name] is labels[name] for name in labels)
    assert infer_num_classes(meant.values()) == 4
    assert infer_num_classes(meant.values(), given=6) == 6


def test_255_mixed_with_other_classes_is_an_error():
    labels = {"a.nii.gz": np.array([[0, 255]]), "b.nii.gz": np.array([[0, 1], [2, 0]])}
    with pytest.raises(CVBMInputError, match=r"foreground 255 in a\.nii\.gz\) with class 2 \(e\.g\. in b\.nii\.gz\)"):
        interpret_labels(labels)
    with pytest.raises(CVBMInputError, match="class 3"):
        interpret_labels({"a": np.array([[0, 3, 255]])})


def test_255_stays_a_class_when_the_count_is_given():
    """With 256 classes given, 255 is a class like any other."""
    labels = {"a": np.array([[0, 255], [7, 1]])}
    with no_notice():
        assert interpret_labels(labels, num_classes=256)["a"] is labels["a"]
    with pytest.warns(CVBMNotice):  # with 2 classes, 255 can only be a binary mask's foreground
        assert interpret_labels({"a": np.array([[0, 255]])}, num_classes=2)["a"].max() == 1


def test_an_image_is_not_a_label_map():
    """Hundreds of distinct values (or values beyond the inferred-class limit) are refused unless the
    number of classes is given."""
    image = np.arange(600, dtype=np.uint16).reshape(6, 10, 10)
    with pytest.raises(CVBMInputError, match=r"label file x\.tif holds 600 distinct values .*is this an image"):
        interpret_labels({"x.tif": image})
    with pytest.raises(CVBMInputError, match="holds 2 distinct values"):
        interpret_labels({"x.tif": np.array([[0, 100]])})
    with no_notice():
        assert interpret_labels({"x.tif": image}, num_classes=600)["x.tif"] is image


def test_cli_trains_binary_masks_as_one_class(tmp_path, capsys):
    """`cvbm train` on 0/255 masks: a 2-class model and one note (the validation set says the same)."""
    data = write_set(tmp_path / "data", {"c0": blob(0, 255), "c1": blob(1, 255)})
    out = tmp_path / "run"
    result = cvbm_here(capsys, "train", "--images", data / "images", "--labels", data / "labels", "--val-images",
                       data / "images", "--val-labels", data / "labels", "--out", out, *TINY)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("cvbm: note: ")]
    assert notes == ["cvbm: note: foreground stored as 255 (binary masks) in 2 label files: read as class 1"]
    assert load_model(out / "model.pt")[1].num_classes == 2


def test_cli_refuses_an_image_folder_as_labels(tmp_path, capsys):
    data = write_set(tmp_path, {"c0": np.arange(32 * 40 * 40, dtype=np.uint16).reshape(32, 40, 40) % 600})
    assert_one_error_line(cvbm_here(capsys, "train", "--images", data / "images", "--labels", data / "labels",
                                    "--out", tmp_path / "o"), "c0.nii.gz holds 600 distinct values")


def test_evaluate_names_missing_predictions(tmp_path, capsys):
    labels = {f"c{i}": blob(i) for i in range(3)}
    write_set(tmp_path, labels)
    for name in ("c0", "c1"):
        write_image(tmp_path / "preds" / f"{name}.nii.gz", labels[name])
    result = cvbm_here(capsys, "evaluate", tmp_path / "preds", tmp_path / "labels")
    assert_one_error_line(result, "1 of 3 labelled cases", "'c2'", "--only-predicted")

    result = cvbm_here(capsys, "evaluate", tmp_path / "preds", tmp_path / "labels", "--only-predicted")
    assert result.returncode == 0, result.stderr
    assert "2 of 3 labelled cases (no prediction for 'c2')" in result.stdout
    assert "100.00" in result.stdout


def test_evaluate_names_predictions_without_label(tmp_path, capsys):
    write_set(tmp_path, {"c0": blob(0)})
    write_set(tmp_path, {"c0": blob(0), "c9": blob(1)}, folder="preds")
    assert_one_error_line(cvbm_here(capsys, "evaluate", tmp_path / "preds", tmp_path / "labels"), "'c9'")


def test_evaluate_reads_binary_masks_like_training(tmp_path, capsys):
    """0/255 labels against a 0/1 prediction: one class, a perfect score, and a note."""
    write_set(tmp_path, {"c0": blob(0, 255), "c1": blob(1)})
    write_set(tmp_path, {"c0": blob(0), "c1": blob(1, 65535, np.uint16)}, folder="preds")
    result = cvbm_here(capsys, "evaluate", tmp_path / "preds", tmp_path / "labels")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "2 case(s)" and "Mean" in result.stdout
    assert result.stdout.count("100.00") == 4  # class 1 and the mean: Dice and Jaccard
    assert sorted(result.stderr.splitlines()) == [
        "cvbm: note: foreground stored as 255 (binary masks) in 1 label file: read as class 1",
        "cvbm: note: foreground stored as 65535 (binary masks) in 1 prediction file: read as class 1"]


def test_evaluate_refuses_a_prediction_off_its_label_grid_and_keeps_an_existing_csv(tmp_path, capsys):
    write_set(tmp_path, {"c0": blob(0)})
    shifted = np.eye(4)
    shifted[0, 3] = 12.5
    write_image(tmp_path / "preds" / "c0.nii.gz", blob(0), affine=shifted)
    assert_one_error_line(cvbm_here(capsys, "evaluate", tmp_path / "preds", tmp_path / "labels"),
                          "origin differs by 12.5 mm")
    write_image(tmp_path / "preds" / "c0.nii.gz", blob(0))
    (tmp_path / "metrics.csv").write_text("the user's notes\n")
    result = cvbm_here(capsys, "evaluate", tmp_path / "preds", tmp_path / "labels", "--csv", tmp_path / "metrics.csv")
    assert_one_error_line(result, "metrics.csv already exists", "--overwrite")
    assert (tmp_path / "metrics.csv").read_text() == "the user's notes\n"
    result = cvbm_here(capsys, "evaluate", tmp_path / "preds", tmp_path / "labels", "--csv", tmp_path / "metrics.csv",
                       "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "case,class,dice,jaccard,hd95,asd"
