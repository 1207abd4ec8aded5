"""The Fine-tune widget in a real napari viewer: annotated slices, training, cancel, snapshot, errors."""

import errno
import time

import numpy as np
import pytest
import torch
from napari.utils.notifications import notification_manager
from napari.utils.task_status import TaskStatusManager
from qtpy.QtCore import QThreadPool, QTimer
from qtpy.QtWidgets import QFileDialog

from napari_cvbm.core.checkpoint import build_model, load_model
from napari_cvbm.core.config import preset
from napari_cvbm.core.errors import CVBMNotice
from napari_cvbm.core.inference import predict
from napari_cvbm.core.io import read_image, read_labels
from napari_cvbm.gui import models
from napari_cvbm.gui.finetune import FineTuneWidget
from napari_cvbm.synthetic import SAMPLE_DATA

SAMPLE = SAMPLE_DATA
WIDGET = ("napari-cvbm", "Fine-tune with unlabeled data")
LONG_MS = 120_000


@pytest.fixture
def store(monkeypatch):
    """A fresh model store whose active model is the bundled starter."""
    fresh = models.ModelStore()
    monkeypatch.setattr(models, "MODEL_STORE", fresh)
    return fresh


@pytest.fixture
def notes():
    """Messages of the napari notifications shown during the test."""
    seen = []

    def record(notification):
        seen.append(str(notification.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def sample():
    image = read_image(SAMPLE / "labeled" / "images" / "case_001.nii.gz")
    label = read_labels(SAMPLE / "labeled" / "labels" / "case_001.nii.gz").array.astype(np.uint8)
    unlabeled = read_image(SAMPLE / "unlabeled" / "images" / "case_004.nii.gz")
    return image, label, unlabeled


@pytest.fixture
def viewer(make_napari_viewer, store, sample):
    """A viewer with a sample image, a CVBM 'segmentation' of it (3 slices corrected) and an unlabeled image."""
    image, label, unlabeled = sample
    viewer = make_napari_viewer()
    viewer.add_image(image.array, name="case_001", scale=image.spacing)
    viewer.add_image(unlabeled.array, name="case_004", scale=unlabeled.spacing)
    corrected = label.copy()
    corrected[[20, 21, 30], :4, :4] = 1  # the user's edits
    viewer.add_labels(corrected, name="case_001 segmentation", scale=image.spacing,
                      metadata={"cvbm_role": "segmentation", "cvbm_source": "case_001", "cvbm_original": label})
    return viewer


def dock(viewer) -> FineTuneWidget:
    _, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    return widget


def tiny(widget, pretrain=3, selftrain=3):
    widget.pretrain.setValue(pretrain)
    widget.selftrain.setValue(selftrain)


def state_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_reports_edited_slices_and_fine_tunes(viewer, store, qtbot):
    widget = dock(viewer)
    assert widget.update_summary() == "case_001 segmentation: slices 20–21, 30 count as labeled (3 of 48)"
    assert [item.name for item in widget.checked_unlabeled()] == ["case_004"]

    # painting another slice is picked up through the layer's events
    viewer.layers["case_001 segmentation"].paint((40, 60, 60), 1, refresh=True)
    qtbot.waitUntil(lambda: "slices 20–21, 30, 40 count as labeled (4 of 48)" in widget.summary.text())

    previous = store.active
    before = state_of(store.get()[0])
    tiny(widget)
    ticks = []
    timer = QTimer(interval=20, timeout=lambda: ticks.append(time.perf_counter()))
    timer.start()
    worker = widget.start()
    assert worker.pbar.total == 6  # napari's activity dock shows the run's progress
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    timer.stop()
    assert worker.pbar.n == 6
    assert np.percentile(np.diff(ticks), 99) < 1.0  # the GUI thread kept running while it trained

    assert [e.phase for e in widget.events_seen] == ["pretrain"] * 3 + ["selftrain"] * 3
    assert store.active == "fine-tuned 1" and store.active != previous
    model, config = store.get()
    assert config.num_classes == 2 and config.pretrain_iterations == 3
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    assert widget.progress.value() == widget.progress.maximum() == 6
    assert len(widget.loss_plot.series["total"][0]) == 6
    qtbot.waitUntil(lambda: widget.loss_plot.redraws >= 1)
    assert "fine-tuned 1" in widget.status.text()
    assert widget.phase_label.text().endswith(f"min on cpu ({widget.run.precision})")  # where and how it ran
    # only the 4 counted slices were annotated in the training case
    case = widget.run.labeled.cases[0]
    np.testing.assert_array_equal(np.flatnonzero(case.annotated.any((1, 2))), [20, 21, 30, 40])


def test_cancel_keeps_the_previous_model(viewer, store, qtbot):
    widget = dock(viewer)
    previous = store.active
    tiny(widget, pretrain=500, selftrain=500)
    widget.start()
    qtbot.waitUntil(lambda: len(widget.events_seen) >= 1, timeout=LONG_MS)
    seen, step = len(widget.events_seen), widget.run.iteration
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)

    assert len(widget.events_seen) - seen <= 1
    assert widget.run.iteration - step <= 1  # stopped within the step in progress
    assert store.active == previous and not any(n.startswith("fine-tuned") for n in store.names())
    assert widget.status.text().startswith("Cancelled at Teacher pre-training")
    model, config = store.get()  # still usable
    assert predict(model, np.zeros((32, 48, 48), np.float32), patch_size=config.patch_size).labels.shape == (32, 48, 48)


def test_edits_during_training_change_nothing_and_second_start_is_refused(viewer, store, qtbot, notes):
    widget = dock(viewer)
    labels = viewer.layers["case_001 segmentation"]
    expected_label = labels.data.copy()
    expected_image = viewer.layers["case_001"].data.copy()
    tiny(widget, pretrain=2, selftrain=0)
    first = widget.start()
    assert first is not None and not widget.start_button.isEnabled()
    assert widget.start() is None  # refused while running
    assert widget.worker is first and any("already running" in n for n in notes)
    labels.data[:] = 0  # the user keeps editing while the network trains
    viewer.layers["case_001"].data[:] = 0
    labels.refresh()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)

    case = widget.run.labeled.cases[0]
    np.testing.assert_array_equal(case.label, expected_label)
    assert case.image.std() > 0.5 and expected_image.std() > 0  # normalised copy of the original image
    assert np.flatnonzero(case.annotated.any((1, 2))).tolist() == [20, 21, 30]
    assert len(widget.events_seen) == 2 and widget.start_button.isEnabled()


def _running_fine_tune(make_napari_viewer, sample, qtbot, monkeypatch, pretrain):
    """(viewer, worker) of a fine-tune that has made its first step."""
    # napari cancels the workers it registered with the *current* viewer; the widget must not rely on it
    monkeypatch.setattr(TaskStatusManager, "cancel_all", lambda self: None)
    image, label, _ = sample
    viewer = make_napari_viewer()
    viewer.add_image(image.array, name="img")
    viewer.add_labels(label, name="img labels")
    widget = dock(viewer)
    tiny(widget, pretrain=pretrain, selftrain=0)
    worker = widget.start()
    qtbot.waitUntil(lambda: len(widget.events_seen) >= 1, timeout=LONG_MS)
    return viewer, worker


def test_closing_the_viewer_stops_training(make_napari_viewer, store, sample, qtbot, monkeypatch):
    viewer, worker = _running_fine_tune(make_napari_viewer, sample, qtbot, monkeypatch, pretrain=500)
    with qtbot.waitSignal(worker.finished, timeout=LONG_MS):
        viewer.close()
    assert not worker.is_running
    assert QThreadPool.globalInstance().waitForDone(10_000)
    assert not any(n.startswith("fine-tuned") for n in store.names())


def test_bad_inputs_are_notified(make_napari_viewer, store, sample, notes, tmp_path):
    image, label, _ = sample
    viewer = make_napari_viewer()
    viewer.add_image(image.array, name="img")
    widget = dock(viewer)
    assert widget.start() is None and "no labeled data" in notes[-1]

    blank = viewer.add_labels(np.zeros_like(label), name="blank")
    assert widget.start() is None and "no slice is annotated" in notes[-1]
    viewer.layers.remove(blank)

    unchanged = viewer.add_labels(label, name="seg", metadata={"cvbm_source": "img", "cvbm_original": label.copy()})
    assert widget.start() is None and "nothing was corrected" in notes[-1]
    assert "seg: nothing was corrected" in widget.update_summary()
    viewer.layers.remove(unchanged)

    viewer.add_labels(label[:40], name="short")
    assert widget.start() is None and "choose the image" in notes[-1]
    widget.rows[0].image.setCurrentIndex(1)
    assert widget.start() is None and "must match" in notes[-1]

    viewer.layers.clear()
    viewer.add_image(image.array, name="img")
    viewer.add_labels(label * 3, name="three")
    widget.complete.setChecked(True)
    assert widget.start() is None and "classes" in notes[-1]

    viewer.layers.clear()
    viewer.add_image(image.array[20], name="slice")
    viewer.add_labels(label[20], name="slice labels")
    assert widget.start() is None and "2D image" in notes[-1]

    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    active = store.active
    assert widget.load_model(bad) is None and "broken.pt" in notes[-1] and store.active == active
    assert not widget.running


def test_save_and_load_model(make_napari_viewer, store, tmp_path):
    widget = dock(make_napari_viewer())
    path = widget.save_model(tmp_path / "model.pt")
    model, config = load_model(path)  # what `cvbm predict` reads
    assert config == store.get()[1]
    assert widget.load_model(path) == "file: model.pt" == store.active


def test_save_model_never_replaces_a_file_unasked(make_napari_viewer, store, tmp_path, notes, monkeypatch):
    def dialog_returns(path):
        monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args, **kwargs: (str(path), ""))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    widget = dock(make_napari_viewer())
    path = widget.save_model(tmp_path / "model.pt")
    before, inode = path.read_bytes(), path.stat().st_ino
    assert widget.save_model(path) is None and f"{path} already exists" in notes[-1]
    dialog_returns(tmp_path / "model")  # Qt asked about "model", not about the "model.pt" it becomes
    widget._save_dialog()
    assert f"{path} already exists" in notes[-1] and path.stat().st_ino == inode

    dialog_returns(path)  # the user picked model.pt and confirmed Qt's "replace?"
    real_save = torch.save
    monkeypatch.setattr(torch, "save", disk_full)
    widget._save_dialog()
    assert f"{path}: No space left on device" in notes[-1] and path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left
    monkeypatch.setattr(torch, "save", real_save)
    widget._save_dialog()
    assert path.stat().st_ino != inode and load_model(path)[1] == store.get()[1]


def test_new_network_settings_and_2d_training(viewer, store, qtbot):
    widget = dock(viewer)
    widget.start_from.setCurrentIndex(0)  # the active model fixes the network shape
    assert not widget.patch.isEnabled()
    config, weights = widget.training_config()
    assert config.patch_size == store.get()[1].patch_size and weights is not None

    widget.start_from.setCurrentIndex(2)  # new 2D network
    assert widget.patch.isEnabled() and widget.patch.text() == "128, 128"
    widget.width_.setValue(8)
    config, weights = widget.training_config(num_classes=3)
    assert (config.dim, config.width, config.num_classes, config.slice_size, weights) == (2, 8, 3, (128, 128), None)

    widget.patch.setText("32, 32")
    widget.width_.setValue(4)
    widget.batch.setValue(2)
    tiny(widget, 2, 2)
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    model, config = store.get()
    assert store.active == "fine-tuned 1" and (config.dim, config.slice_size, config.width) == (2, (32, 32), 4)
    assert widget.patch.text() == "32, 32"  # the user's settings survive the model change


def test_folders_on_disk(make_napari_viewer, store, qtbot, notes):
    widget = dock(make_napari_viewer())
    widget.source.setCurrentText("Folders on disk")
    assert widget.start() is None and "choose the folders" in notes[-1]
    widget.folders["images"].setText(str(SAMPLE / "labeled" / "images"))
    widget.folders["labels"].setText(str(SAMPLE / "labeled" / "labels"))
    widget.folders["unlabeled"].setText(str(SAMPLE / "unlabeled" / "images"))
    tiny(widget, 1, 1)
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    assert [c.name for c in widget.run.labeled.cases] == ["case_001", "case_002", "case_003"]
    assert len(widget.run.unlabeled.cases) == 8 and store.active == "fine-tuned 1"

    widget.folders["labels"].setText(str(SAMPLE / "nowhere"))
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    assert "nowhere" in notes[-1] and widget.status.text().startswith("Not trained")


def test_labels_file_elsewhere_in_space_than_its_image_is_refused(make_napari_viewer, store, notes, tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    (tmp_path / "labels").mkdir()
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(rng.normal(size=(48, 48, 40)).astype(np.float32), affine), str(tmp_path / "scan.nii.gz"))
    shifted = affine.copy()
    shifted[:3, 3] = (0.0, 66.0, 0.0)
    label = np.zeros((48, 48, 40), np.uint8)
    label[10:30, 10:30, 5:30] = 1
    nib.save(nib.Nifti1Image(label, shifted), str(tmp_path / "labels" / "scan.nii.gz"))
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "scan.nii.gz"), plugin="napari-cvbm")
    viewer.open(str(tmp_path / "labels" / "scan.nii.gz"), plugin="napari-cvbm", layer_type="labels")
    widget = dock(viewer)
    widget.complete.setChecked(True)
    assert widget.start() is None and "origin differs by 66 mm" in notes[-1]


def test_binary_mask_layer_is_one_class(make_napari_viewer, store, sample, qtbot):
    """A 0/255 labels layer (a binary mask from another tool) trains one foreground class, with a notice."""
    image, label, _ = sample
    viewer = make_napari_viewer()
    viewer.add_image(image.array, name="img", scale=image.spacing)
    viewer.add_labels(label * 255, name="mask", scale=image.spacing)
    widget = dock(viewer)
    widget.complete.setChecked(True)
    widget.start_from.setCurrentText("new 3D network")  # the classes come from the labels
    widget.patch.setText("32, 32, 32")
    widget.width_.setValue(4)
    tiny(widget, 1, 1)
    with pytest.warns(CVBMNotice, match="foreground stored as 255 .* in 1 labels layer: read as class 1"):
        widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    assert store.get()[1].num_classes == 2
    np.testing.assert_array_equal(widget.run.labeled.cases[0].label, label)


def test_diverging_fine_tune_is_a_failure_and_keeps_the_model(viewer, store, qtbot, notes):
    widget = dock(viewer)
    previous, before = store.active, state_of(store.get()[0])
    tiny(widget, pretrain=3, selftrain=3)
    widget.lr.setMaximum(1e9)  # past the field's range, to force a diverging run
    widget.lr.setValue(1e6)
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    assert "training diverged" in notes[-1] and "lr=1e+06" in notes[-1]
    assert widget.status.text().startswith("Not trained: training diverged")
    assert store.active == previous and not any(n.startswith("fine-tuned") for n in store.names())
    assert all(torch.equal(before[k], v) for k, v in store.get()[0].state_dict().items())


def test_fine_tunes_a_batch_norm_model(viewer, store, qtbot, notes):
    config = preset("cpu", 3, width=4, patch_size=(32, 32, 32), norm="batch")
    torch.manual_seed(0)
    store.add("batch-norm net", build_model(config), config)
    widget = dock(viewer)
    tiny(widget, pretrain=2, selftrain=2)
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    assert store.active == "fine-tuned 1", notes
    assert store.get()[1].norm == "batch"


def test_closing_the_viewer_returns_before_the_step_in_progress_ends(make_napari_viewer, store, sample, qtbot,
                                                                    monkeypatch):
    from napari_cvbm.core.training import TrainingRun

    step = TrainingRun._pretrain_step

    def slow_step(self, batch):
        time.sleep(3.0)  # a long step, as on a big volume
        return step(self, batch)

    monkeypatch.setattr(TrainingRun, "_pretrain_step", slow_step)
    viewer, worker = _running_fine_tune(make_napari_viewer, sample, qtbot, monkeypatch, pretrain=50)
    viewer.close()
    assert worker.is_running  # close did not wait for the step: the GUI thread stays free
    qtbot.waitUntil(lambda: not worker.is_running, timeout=LONG_MS)
    assert QThreadPool.globalInstance().waitForDone(10_000)
    assert not any(n.startswith("fine-tuned") for n in store.names())
