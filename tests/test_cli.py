"""`cvbm` end to end, and one clear error line (exit 2, no traceback) for each bad input."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import blob_volume

from napari_cvbm.core.io import read_labels, write_image

TINY = ["--set", "width=4", "--set", "patch_size=32,32,32", "--set", "pretrain_iterations=2",
        "--set", "selftrain_iterations=2", "--set", "checkpoint_every=1"]


def cvbm(*args):
    """`cvbm ARGS` as a user runs it: a fresh `python -m napari_cvbm.cli` process."""
    return subprocess.run([sys.executable, "-m", "napari_cvbm.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def cvbm_here(capsys, *args):
    """`cvbm ARGS` run by `cli.main` in this process, as the `cvbm` script calls it (without the ~5 s of
    imports a fresh process pays): the same exit code, stdout and stderr as :func:`cvbm`. An exception
    `cvbm` would show as a traceback fails the test here; torch's thread count is put back."""
    from napari_cvbm import cli

    capsys.readouterr()  # only what this command prints
    threads = torch.get_num_threads()
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def assert_one_error_line(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cvbm: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def make_folder(root: Path, n=2, shape=(32, 40, 40), label_shape=None, transform=None):
    for i in range(n):
        image, label = blob_volume(i, shape)
        if transform:
            image, label = transform(image, label)
        write_image(root / "images" / f"c{i}.nii.gz", image, spacing=(2.0, 1.0, 1.0))
        lab = label if label_shape is None else np.zeros(label_shape, np.uint8)
        write_image(root / "labels" / f"c{i}.nii.gz", lab.astype(np.uint8), spacing=(2.0, 1.0, 1.0))
    return root


def test_train_predict_evaluate_resume(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    out = tmp_path / "run"
    partly = np.zeros((32, 40, 40), np.uint8)
    partly[12:16] = 1  # case c0: only four corrected slices count as labeled
    write_image(data / "annotated" / "c0.nii.gz", partly)
    result = cvbm_here(capsys, "train", "--images", data / "images", "--labels", data / "labels", "--annotated",
                       data / "annotated", "--unlabeled", data / "images", "--out", out, *TINY)
    assert result.returncode == 0, result.stderr
    assert {"model.pt", "last.pt", "best.pt", "pretrained.pt"} <= {p.name for p in out.iterdir()}
    assert re.search(r"device cpu \((bfloat16|float32), (contiguous|channels-last) layout\)", result.stdout)

    resumed = cvbm_here(capsys, "train", "--images", data / "images", "--labels", data / "labels",
                        "--out", out, "--resume", out / "last.pt")
    assert resumed.returncode == 0 and "resuming done" in resumed.stdout, resumed.stderr

    preds = tmp_path / "preds"
    result = cvbm_here(capsys, "predict", out / "model.pt", data / "images", "--out", preds, "--mode", "avg",
                       "--probabilities")
    assert result.returncode == 0, result.stderr
    written = read_labels(preds / "c0.nii.gz")
    assert written.array.shape == (32, 40, 40) and written.spacing == pytest.approx((2.0, 1.0, 1.0))
    assert (preds / "maps" / "c0_confidence_bg.nii.gz").exists()
    assert (preds / "maps" / "c0_disagreement.nii.gz").exists()
    exact = cvbm_here(capsys, "predict", out / "model.pt", data / "images", "--out", tmp_path / "preds32", "--float32")
    assert exact.returncode == 0, exact.stderr
    assert read_labels(tmp_path / "preds32" / "c1.nii.gz").array.shape == (32, 40, 40)

    table = tmp_path / "metrics.csv"
    result = cvbm_here(capsys, "evaluate", preds, data / "labels", "--csv", table, "--mm")
    assert result.returncode == 0, result.stderr
    assert "Dice" in result.stdout
    rows = list(csv.DictReader(table.open()))
    assert [r["case"] for r in rows] == ["c0", "c1"] and all(0 <= float(r["dice"]) <= 1 for r in rows)


def test_train_reports_the_measured_layout(tmp_path, monkeypatch, capsys):
    """Where the run measures both layouts (on CUDA; forced here on the CPU), `cvbm train` says
    what each cost."""
    from napari_cvbm import cli
    from napari_cvbm.core import training

    monkeypatch.setattr(training, "use_channels_last", lambda *args: None)
    data = make_folder(tmp_path / "data")
    assert cli.main(["train", "--images", str(data / "images"), "--labels", str(data / "labels"),
                     "--out", str(tmp_path / "run"), *TINY]) == 0
    assert re.search(r"layout measured on cpu: contiguous \d+\.\d ms, channels-last \d+\.\d ms a step",
                     capsys.readouterr().out)


def test_missing_folder(tmp_path):
    """In a real `cvbm` process (the other error tests run `cli.main` here): exit 2, one line, no traceback."""
    assert_one_error_line(cvbm("train", "--images", tmp_path / "nope", "--labels", tmp_path, "--out", tmp_path),
                          "nope")


def test_empty_labeled_set(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    assert_one_error_line(cvbm_here(capsys, "train", "--images", tmp_path / "images", "--labels", tmp_path / "labels",
                                    "--out", tmp_path / "o"), "found in")


def test_shape_mismatch(tmp_path, capsys):
    data = make_folder(tmp_path, n=1, label_shape=(32, 40, 39))
    assert_one_error_line(cvbm_here(capsys, "train", "--images", data / "images", "--labels", data / "labels",
                                    "--out", tmp_path / "o"), "does not match")


def test_label_values_outside_classes(tmp_path, capsys):
    data = make_folder(tmp_path, n=1, transform=lambda im, lab: (im, lab * 5))
    assert_one_error_line(cvbm_here(capsys, "train", "--images", data / "images", "--labels", data / "labels",
                                    "--num-classes", "2", "--out", tmp_path / "o"), "outside 0..1")


def test_nan_image(tmp_path, capsys):
    def poison(image, label):
        image[3, 4, 5] = np.nan
        return image, label
    data = make_folder(tmp_path, n=1, transform=poison)
    assert_one_error_line(cvbm_here(capsys, "train", "--images", data / "images", "--labels", data / "labels",
                                    "--out", tmp_path / "o"), "NaN")


def test_unreadable_image_and_checkpoint(tmp_path, capsys):
    (tmp_path / "fake.nii.gz").write_text("not an image")
    (tmp_path / "model.pt").write_text("not a model")
    assert_one_error_line(cvbm_here(capsys, "predict", tmp_path / "model.pt", tmp_path / "fake.nii.gz", "--out",
                                    tmp_path), "model.pt")
    assert_one_error_line(cvbm_here(capsys, "predict", tmp_path / "missing.pt", tmp_path, "--out", tmp_path),
                          "does not exist")


def test_bad_setting(tmp_path, capsys):
    data = make_folder(tmp_path, n=1)
    assert_one_error_line(cvbm_here(capsys, "train", "--images", data / "images", "--labels", data / "labels",
                                    "--out", tmp_path / "o", "--set", "batch_labeled=3"), "even")
    assert_one_error_line(cvbm_here(capsys, "train", "--images", data / "images", "--labels", data / "labels",
                                    "--out", tmp_path / "o", "--set", "colour=blue"), "unknown")


def test_annotated_mask_must_mark_something(tmp_path, capsys):
    data = make_folder(tmp_path, n=1)
    write_image(data / "annotated" / "c0.nii.gz", np.zeros((32, 40, 40), np.uint8))
    assert_one_error_line(cvbm_here(capsys, "train", "--images", data / "images", "--labels", data / "labels",
                                    "--annotated", data / "annotated", "--out", tmp_path / "o"), "annotated")


def test_4d_image_needs_a_channel(tmp_path, capsys):
    import nibabel as nib

    from napari_cvbm.core.checkpoint import build_model, save_model
    from napari_cvbm.core.config import preset

    config = preset("cpu", 3, width=4, patch_size=(32, 32, 32))
    model = save_model(tmp_path / "m.pt", build_model(config), config)
    frames = np.random.default_rng(0).normal(size=(20, 24, 16, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(frames, np.eye(4)), str(tmp_path / "cine.nii.gz"))
    assert_one_error_line(cvbm_here(capsys, "predict", model, tmp_path / "cine.nii.gz", "--out", tmp_path / "p"),
                          "2 channels or time frames", "--channel")
    result = cvbm_here(capsys, "predict", model, tmp_path / "cine.nii.gz", "--out", tmp_path / "p", "--channel", "1")
    assert result.returncode == 0, result.stderr
    assert read_labels(tmp_path / "p" / "cine.nii.gz").array.shape == (16, 24, 20)


def test_predict_writes_the_slice_ranking(tmp_path, capsys):
    from napari_cvbm.core.checkpoint import build_model, save_model
    from napari_cvbm.core.config import preset
    from napari_cvbm.core.io import read_image

    config = preset("cpu", 3, width=4, patch_size=(32, 32, 32))
    model = save_model(tmp_path / "m.pt", build_model(config), config)
    data = make_folder(tmp_path / "data")
    out = tmp_path / "p"
    result = cvbm_here(capsys, "predict", model, data / "images", "--out", out, "--ranking", "--probabilities")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((out / "ranking.csv").open()))
    assert list(rows[0]) == ["case", "slice", "rows", "columns", "score", "rank"] and len(rows) == 2 * 32
    for case in ("c0", "c1"):
        mine = [r for r in rows if r["case"] == case]
        assert [int(r["rank"]) for r in mine] == list(range(1, 33))
        scores = np.array([float(r["score"]) for r in mine])
        slices = [int(r["slice"]) for r in mine]
        assert sorted(slices) == list(range(32)) and scores[0] == scores.max()
        # a 3D model at the images' own spacing: first rows at least 2 slices apart, then the rest, each by score
        spread = next(i for i in range(1, 33) if i == 32 or any(abs(slices[i] - z) < 2 for z in slices[:i]))
        assert 11 <= spread <= 16 and np.all(np.diff(scores[:spread]) <= 0) and np.all(np.diff(scores[spread:]) <= 0)
        wrong = np.minimum(1.0, 1.0 - read_image(out / "maps" / f"{case}_confidence_fg.nii.gz").array
                           + read_image(out / "maps" / f"{case}_disagreement.nii.gz").array)
        expected = wrong.reshape(32, -1).sum(1, dtype=np.float64)
        np.testing.assert_allclose(scores, expected[[int(r["slice"]) for r in mine]], rtol=1e-4)

    # fg mode: bg still run
    alone = cvbm_here(capsys, "predict", model, data / "images", "--out", tmp_path / "q", "--ranking")
    assert alone.returncode == 0, alone.stderr
    again = list(csv.DictReader((tmp_path / "q" / "ranking.csv").open()))
    np.testing.assert_allclose([float(r["score"]) for r in again], [float(r["score"]) for r in rows], rtol=1e-3)

    taken = tmp_path / "r"
    taken.mkdir()
    (taken / "ranking.csv").write_text("mine")
    assert_one_error_line(cvbm_here(capsys, "predict", model, data / "images", "--out", taken, "--ranking"),
                          "ranking.csv already exists", "--overwrite")
    assert [p.name for p in taken.iterdir()] == ["ranking.csv"] and (taken / "ranking.csv").read_text() == "mine"


def test_predict_applies_the_models_largest_component_setting(tmp_path, capsys):
    from scipy import ndimage

    from napari_cvbm.core.checkpoint import build_model, save_model
    from napari_cvbm.core.config import preset
    from napari_cvbm.core.io import read_image
    from napari_cvbm.core.predictor import Predictor

    def pieces(labels):
        return ndimage.label(labels == 1, np.ones((3, 3, 3)))[1]

    config = preset("cpu", 3, width=4, patch_size=(32, 32, 32), largest_component=True)
    data = make_folder(tmp_path / "data", n=1)
    image = read_image(data / "images" / "c0.nii.gz").array
    for seed in range(20):  # an untrained network whose prediction is in pieces
        torch.manual_seed(seed)
        network = build_model(config)
        if pieces(Predictor(network, config)(image, largest_component=False).labels) > 1:
            break
    model = save_model(tmp_path / "m.pt", network, config)
    for out, flag in (("own", []), ("raw", ["--no-largest-component"])):
        result = cvbm_here(capsys, "predict", model, data / "images", "--out", tmp_path / out, *flag)
        assert result.returncode == 0, result.stderr
    own, raw = (read_labels(tmp_path / out / "c0.nii.gz").array for out in ("own", "raw"))
    assert pieces(raw) > 1 and pieces(own) == 1 and np.all(raw[own == 1] == 1)  # the model's setting: one piece
