"""napari sample data, the synthetic generator module and the sample_data/generate.py CLI."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_cvbm import _sample_data, synthetic

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


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


def test_samples_are_generated_identically_without_the_folder(monkeypatch, tmp_path):
    """An installed wheel has no sample_data/: the same layers are then built in memory."""
    from_files = _sample_data.labeled_sample() + _sample_data.unlabeled_sample()
    monkeypatch.setattr(_sample_data, "SAMPLE_DATA", tmp_path / "absent")
    generated = _sample_data.labeled_sample() + _sample_data.unlabeled_sample()
    for (data, kwargs, layer_type), (data2, kwargs2, layer_type2) in zip(from_files, generated):
        assert data.dtype == data2.dtype and layer_type == layer_type2
        np.testing.assert_array_equal(data, data2)
        assert kwargs["name"] == kwargs2["name"] and kwargs["scale"] == pytest.approx(kwargs2["scale"])


def test_synthetic_module_is_headless():
    code = "import sys, napari_cvbm.synthetic; print(sorted({'napari', 'qtpy', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_generate_cli_writes_byte_identical_files_and_checks_them(monkeypatch, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("cvbm_sample_generate", SAMPLE / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    monkeypatch.setattr(synthetic, "SPLITS", {"labeled": (1, 1, True)})  # just case_001
    assert generate.main(["--out", str(tmp_path)]) == 0
    for kind in ("images", "labels"):
        relative = f"labeled/{kind}/case_001.nii.gz"
        assert (tmp_path / relative).read_bytes() == (SAMPLE / relative).read_bytes()
    assert generate.main(["--check", "--out", str(tmp_path)]) == 0
    assert "case_001: identical" in capsys.readouterr().out


def test_viewer_opens_the_samples(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cvbm", "labeled")
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Labels"]
    viewer.open_sample("napari-cvbm", "unlabeled")
    assert [layer.name for layer in viewer.layers] == ["case_001", "case_001 label", "case_004 (unlabeled)"]
    for layer in viewer.layers:
        np.testing.assert_allclose(layer.scale, synthetic.SPACING)
