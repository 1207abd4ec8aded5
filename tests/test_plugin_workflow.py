"""The whole user workflow through the plugin manifest: open sample data, Segment, correct a few
slices, Fine-tune with unlabeled data, and see the predictions refresh with the new model."""

import subprocess
import sys

import numpy as np

from napari_cvbm.synthetic import SAMPLE_DATA

LONG_MS = 240_000
TEST_IMAGE = SAMPLE_DATA / "test" / "images" / "case_013.nii.gz"


def test_open_segment_correct_finetune_refresh(make_napari_viewer, store, qtbot, tmp_path, fixed_step):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cvbm", "labeled")
    viewer.open_sample("napari-cvbm", "unlabeled")
    _, segment = viewer.window.add_plugin_dock_widget("napari-cvbm", "Segment")
    _, finetune = viewer.window.add_plugin_dock_widget("napari-cvbm", "Fine-tune with unlabeled data")
    image = next(layer for layer in viewer.layers if layer.name == "case_001")
    truth = next(layer for layer in viewer.layers if layer.name == "case_001 label").data

    segment.segment(image)
    qtbot.waitUntil(lambda: not segment.busy, timeout=LONG_MS)
    seg = next(layer for layer in viewer.layers if layer.metadata.get("cvbm_role") == "segmentation")
    starter_fg = next(layer for layer in viewer.layers if layer.metadata.get("cvbm_role") == "prob_fg_view").data.copy()
    dice = 2 * np.sum((seg.data > 0) & (truth > 0)) / (np.sum(seg.data > 0) + np.sum(truth > 0))
    assert dice > 0.7

    # the user corrects three slices with the ground truth (as a brush would)
    for z in (22, 23, 24):
        seg.data[z] = truth[z]
    seg.refresh()
    viewer.layers.remove(next(layer for layer in viewer.layers if layer.name == "case_001 label"))
    qtbot.waitUntil(lambda: "22–24 count as labeled (3 of 48)" in finetune.data.summary.text())

    finetune.settings.fields["pretrain_iterations"].value = 2
    finetune.settings.fields["selftrain_iterations"].value = 2
    assert finetune.start() is not None
    qtbot.waitUntil(lambda: not finetune.running, timeout=LONG_MS)
    assert store.active == "fine-tuned 1"
    # the Segment widget re-ran with the fine-tuned model: the layers hold its prediction
    qtbot.waitUntil(lambda: segment.runner.worker is not None and not segment.busy, timeout=LONG_MS)
    refreshed = next(layer for layer in viewer.layers if layer.metadata.get("cvbm_role") == "prob_fg_view")
    qtbot.waitUntil(lambda: not np.array_equal(refreshed.data, starter_fg), timeout=LONG_MS)

    # the saved model is the CLI's format: `cvbm predict` reads it
    path = finetune.model_panel.save_model(tmp_path / "fine_tuned.pt")
    out = tmp_path / "pred"
    result = subprocess.run([sys.executable, "-m", "napari_cvbm.cli", "predict", str(path),
                             str(TEST_IMAGE), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (out / "case_013.nii.gz").is_file()
