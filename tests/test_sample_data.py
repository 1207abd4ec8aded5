"""napari sample data, the synthetic generator module and the sample_data/generate.py CLI."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_cvbm import _sample_data, synthetic
from napari_cvbm.core.errors import CVBMInputError

GENERATOR = Path(__file__).resolve().parents[1] / "sample_data" / "generate.py"


def test_labeled_sample_gives_image_and_label_map():
    (image, image_kw, image_type), (label, label_kw, label_type) = _sample_data.labeled_sample()
    assert (image_type, label_type) == ("image", "labels")
    assert (image_kw["name"], label_kw["name"]) == ("case_001", "case_001 label")
    assert image.shape == label.shape == synthetic.SHAPE
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1}
    assert image_kw["scale"] == label_kw["scale"] == pytest.approx(synthetic.SPACING)
    assert label_kw["metadata"]["cvbm_role"] == "label"


def test_unlabeled_sample_gives_one_image():
    [(image, kwargs, layer_type)] = _sample_data.unlabeled_sample()
    assert layer_type == "image" and kwargs["name"] == "case_004 (unlabeled)"
    assert image.shape == synthetic.SHAPE and kwargs["scale"] == pytest.approx(synthetic.SPACING)


def test_missing_sample_files_are_named(monkeypatch, tmp_path):
    """The wheel ships the files; a damaged install says which one is missing instead of guessing."""
    monkeypatch.setattr(synthetic, "SAMPLE_DATA", tmp_path / "absent")
    with pytest.raises(CVBMInputError, match="case_004.nii.gz"):
        _sample_data.unlabeled_sample()


def test_synthetic_module_is_headless():
    code = "import sys, napari_cvbm.synthetic; print(sorted({'napari', 'qtpy', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_generate_cli_writes_byte_identical_files_and_checks_them(monkeypatch, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("cvbm_sample_generate", GENERATOR)
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    monkeypatch.setattr(synthetic, "SPLITS", {"labeled": (1, 1, True)})  # just case_001
    assert generate.main(["--out", str(tmp_path)]) == 0
    for kind in ("images", "labels"):
        relative = f"labeled/{kind}/case_001.nii.gz"
        assert (tmp_path / relative).read_bytes() == (synthetic.SAMPLE_DATA / relative).read_bytes()
    for out in (["--out", str(tmp_path)], []):  # the default is the package folder the wheel ships
        assert generate.main(["--check"] + out) == 0
        assert "case_001: identical" in capsys.readouterr().out


def test_viewer_opens_the_samples(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cvbm", "labeled")
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Labels"]
    viewer.open_sample("napari-cvbm", "unlabeled")
    assert [layer.name for layer in viewer.layers] == ["case_001", "case_001 label", "case_004 (unlabeled)"]
    for layer in viewer.layers:
        np.testing.assert_allclose(layer.scale, synthetic.SPACING)
