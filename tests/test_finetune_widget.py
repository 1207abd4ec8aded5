"""The Fine-tune widget in a real napari viewer: annotated slices, held-out check, training, cancel,
snapshot, errors, the plan from the data."""

import errno
import time

import numpy as np
import pytest
import torch
from conftest import STEP_S, blob_volume
from napari.utils.task_status import TaskStatusManager
from qtpy.QtCore import QThreadPool, QTimer
from qtpy.QtWidgets import QFileDialog

from napari_cvbm.core import planning
from napari_cvbm.core.annotation import annotated_mask
from napari_cvbm.core.checkpoint import build_model, load_model
from napari_cvbm.core.config import preset
from napari_cvbm.core.data import Case, load_cases
from napari_cvbm.core.errors import CVBMNotice
from napari_cvbm.core.holdout import split_corrections
from napari_cvbm.core.inference import predict
from napari_cvbm.core.io import read_image, read_labels
from napari_cvbm.core.training import TrainingRun
from napari_cvbm.gui import finetune
from napari_cvbm.gui.finetune import FOLDERS_PLANNED_AT_START, PLAN_DELAY_MS, FineTuneWidget
from napari_cvbm.gui.widgets.training_settings import PLANNED, PRESETS, START_ACTIVE, START_NEW_2D, START_NEW_3D
from napari_cvbm.synthetic import SAMPLE_DATA

SAMPLE = SAMPLE_DATA
WIDGET = ("napari-cvbm", "Fine-tune with unlabeled data")
LONG_MS = 120_000
CPU_PRESET = next(name for name, key in PRESETS.items() if key == "cpu")


@pytest.fixture(autouse=True)
def quick_plans(fixed_step):
    """Every plan here is made with the fixed step time: quick and repeatable."""


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


BLIND = torch.tensor([6.0, -6.0])  # added to the fg head's output bias: it then sees no foreground


@pytest.fixture
def blind_model(store):
    """The starter model made blind to the foreground (held-out Dice 0), as the active model."""
    model, config = store.get()
    blind = build_model(config)
    blind.load_state_dict(model.state_dict())
    with torch.no_grad():
        blind.decoder_fg.out.bias += BLIND
    return store.add("blind starter", blind, config)


def dock(viewer) -> FineTuneWidget:
    _, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    return widget


def tiny(widget, pretrain=3, selftrain=3):
    widget.settings.fields["pretrain_iterations"].value = pretrain
    widget.settings.fields["selftrain_iterations"].value = selftrain


def state_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def plan_shown(widget, qtbot, text="Plan: "):
    """Wait until the plan line shows a plan (containing ``text``); returns the line."""
    line = widget.settings.plan_line
    qtbot.waitUntil(lambda: line.text().startswith("Plan: ") and text in line.text(), timeout=LONG_MS)
    return line.text()


def test_reports_edited_slices_and_fine_tunes(viewer, store, blind_model, qtbot):
    widget = dock(viewer)
    assert widget.data.update_summary() == "case_001 segmentation: slices 20–21, 30 count as labeled (3 of 48)"
    assert [item.name for item in widget.data.checked_unlabeled()] == ["case_004"]

    # painting another slice is picked up through the layer's events
    viewer.layers["case_001 segmentation"].paint((40, 60, 60), 1, refresh=True)
    qtbot.waitUntil(lambda: "slices 20–21, 30, 40 count as labeled (4 of 48)" in widget.data.summary.text())

    previous = store.active
    before = state_of(store.get()[0])
    tiny(widget)
    plan_shown(widget, qtbot, "3 + 3 steps")
    ticks = []
    timer = QTimer(interval=20, timeout=lambda: ticks.append(time.perf_counter()))
    timer.start()
    details = []
    widget.status.events.detail.connect(details.append)
    assert widget.start() is not None
    assert "checked on held-out slice" in widget.status.message
    bar = widget.runner.pbar
    assert bar.total == 6  # napari's activity dock shows the run's progress
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    timer.stop()
    assert bar.n == 6 and widget.runner.pbar is None
    assert np.percentile(np.diff(ticks), 99) < 1.0  # the GUI thread kept running while it trained

    assert [e.phase for e in widget.status.history] == ["pretrain"] * 3 + ["selftrain"] * 3
    assert store.active == "fine-tuned 1" and store.active != previous
    model, config = store.get()
    assert config.num_classes == 2 and config.pretrain_iterations == 3
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    assert widget.progress.progress.value() == widget.progress.progress.maximum() == 6
    assert len(widget.progress.loss_plot.series["total"][0]) == 6
    qtbot.waitUntil(lambda: widget.progress.loss_plot.redraws >= 1)
    assert "fine-tuned 1" in widget.status.message == widget.progress.message.text()
    assert widget.progress.detail.text().endswith(f"min on cpu ({widget.run.precision})")  # where and how it ran
    # one of the 4 counted slices was held out to check the run, the training case has the other 3
    run = widget.run
    (held,) = run.validation
    trained = np.flatnonzero(run.labeled.cases[0].annotated.any((1, 2))).tolist()
    checked = np.flatnonzero(held.annotated.any((1, 2))).tolist()
    assert checked in ([21], [30]) and sorted(trained + checked) == [20, 21, 30, 40]
    assert widget.status.held_out == f"slice {checked[0]} of 'case_001 segmentation'"
    # checked before the first step and at every step (6 steps: about 10 checks, at least one a step)
    assert run.config.validate_every == 1 and run.initial_dice == 0.0  # the blind model finds nothing
    assert widget.status.message.startswith(f"Held-out Dice on your corrections: before 0.00, after "
                                            f"{run.final_dice:.2f}. 'fine-tuned 1' is now the active model")
    plot = widget.progress.loss_plot
    assert plot.dice == [list(range(7)), [0.0] + [e.validation_dice for e in widget.status.history]]
    assert plot.dice_axes.get_visible() and plot.dice_axes.get_ylim() == (0.0, 1.0)
    assert any("held-out Dice" in d for d in details)  # shown while it ran


def test_cancel_keeps_the_previous_model(viewer, store, qtbot):
    widget = dock(viewer)
    previous = store.active
    tiny(widget, pretrain=500, selftrain=500)
    widget.start()
    qtbot.waitUntil(lambda: len(widget.status.history) >= 1, timeout=LONG_MS)
    seen, step = len(widget.status.history), widget.run.iteration
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)

    assert len(widget.status.history) - seen <= 1
    assert widget.run.iteration - step <= 1  # stopped within the step in progress
    assert store.active == previous and not any(n.startswith("fine-tuned") for n in store.names())
    assert widget.progress.message.text().startswith("Cancelled at Teacher pre-training")
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
    assert widget.runner.worker is first and any("already running" in n for n in notes)
    labels.data[:] = 0  # the user keeps editing while the network trains
    viewer.layers["case_001"].data[:] = 0
    labels.refresh()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)

    case = widget.run.labeled.cases[0]
    np.testing.assert_array_equal(case.label, expected_label)
    assert case.image.std() > 0.5 and expected_image.std() > 0  # normalised copy of the original image
    assert np.flatnonzero(case.annotated.any((1, 2))).tolist() == [20, 21, 30]
    assert len(widget.status.history) == 2 and widget.start_button.isEnabled()


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
    qtbot.waitUntil(lambda: len(widget.status.history) >= 1, timeout=LONG_MS)
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
    assert "seg: nothing was corrected" in widget.data.update_summary()
    viewer.layers.remove(unchanged)

    viewer.add_labels(label[:40], name="short")
    assert widget.start() is None and "choose the image" in notes[-1]
    widget.data.rows[0].image.value = viewer.layers["img"]
    assert widget.start() is None and "must match" in notes[-1]

    viewer.layers.clear()
    viewer.add_image(image.array, name="img")
    viewer.add_labels(label * 3, name="three")
    widget.data.complete.setChecked(True)
    assert widget.start() is None and "classes" in notes[-1]

    viewer.layers.clear()
    viewer.add_image(image.array[20], name="slice")
    viewer.add_labels(label[20], name="slice labels")
    assert widget.start() is None and "2D image" in notes[-1]

    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    active = store.active
    assert widget.model_panel.load_model(bad) is None and "broken.pt" in notes[-1] and store.active == active
    assert not widget.running


def test_save_and_load_model(make_napari_viewer, store, tmp_path):
    widget = dock(make_napari_viewer())
    path = widget.model_panel.save_model(tmp_path / "model.pt")
    model, config = load_model(path)  # what `cvbm predict` reads
    assert config == store.get()[1]
    assert widget.model_panel.load_model(path) == "file: model.pt" == store.active


def test_save_model_never_replaces_a_file_unasked(make_napari_viewer, store, tmp_path, notes, monkeypatch):
    def dialog_returns(path):
        monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args, **kwargs: (str(path), ""))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    widget = dock(make_napari_viewer())
    path = widget.model_panel.save_model(tmp_path / "model.pt")
    before, inode = path.read_bytes(), path.stat().st_ino
    assert widget.model_panel.save_model(path) is None and f"{path} already exists" in notes[-1]
    dialog_returns(tmp_path / "model")  # Qt asked about "model", not about the "model.pt" it becomes
    widget.model_panel._save_dialog()
    assert f"{path} already exists" in notes[-1] and path.stat().st_ino == inode

    dialog_returns(path)  # the user picked model.pt and confirmed Qt's "replace?"
    real_save = torch.save
    monkeypatch.setattr(torch, "save", disk_full)
    widget.model_panel._save_dialog()
    assert f"{path}: No space left on device" in notes[-1] and path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left
    monkeypatch.setattr(torch, "save", real_save)
    widget.model_panel._save_dialog()
    assert path.stat().st_ino != inode and load_model(path)[1] == store.get()[1]


def test_new_network_settings_and_2d_training(viewer, store, qtbot):
    widget = dock(viewer)
    widget.settings.preset.value = CPU_PRESET
    assert widget.settings.plan_line.isHidden() and widget.settings.budget.native.isHidden()
    widget.settings.start_from.value = START_ACTIVE  # the active model fixes the network shape
    assert not widget.settings.fields["patch_size"].enabled
    config, weights = widget.settings.training_config()
    assert config.patch_size == store.get()[1].patch_size and weights is not None

    widget.settings.start_from.value = START_NEW_2D
    assert widget.settings.fields["patch_size"].enabled and widget.settings.fields["patch_size"].value == "128, 128"
    widget.settings.fields["width"].value = 8
    config, weights = widget.settings.training_config(num_classes=3)
    assert (config.dim, config.width, config.num_classes, config.slice_size, weights) == (2, 8, 3, (128, 128), None)

    widget.settings.fields["patch_size"].value = "32, 32"
    widget.settings.fields["width"].value = 4
    widget.settings.fields["batch_labeled"].value = 2
    tiny(widget, 2, 2)
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    model, config = store.get()
    assert store.active == "fine-tuned 1" and (config.dim, config.slice_size, config.width) == (2, (32, 32), 4)
    assert widget.settings.fields["patch_size"].value == "32, 32"  # the user's settings survive the model change


def test_folders_on_disk(make_napari_viewer, store, qtbot, notes):
    widget = dock(make_napari_viewer())
    widget.data.source.setCurrentText("Folders on disk")
    assert widget.start() is None and "choose the folders" in notes[-1]
    widget.data.folders["images"].setText(str(SAMPLE / "labeled" / "images"))
    widget.data.folders["labels"].setText(str(SAMPLE / "labeled" / "labels"))
    widget.data.folders["unlabeled"].setText(str(SAMPLE / "unlabeled" / "images"))
    tiny(widget, 1, 1)
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    run = widget.run
    names = sorted(c.name for c in run.labeled.cases + run.validation)
    assert names == ["case_001", "case_002", "case_003"] and len(run.validation) == 1  # one image held out
    assert len(run.unlabeled.cases) == 8 and run.phase == "done"

    widget.data.folders["labels"].setText(str(SAMPLE / "nowhere"))
    assert widget.start() is None  # refused before anything starts
    assert "nowhere" in notes[-1] and widget.status.message.startswith("Not trained")


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
    widget.data.complete.setChecked(True)
    assert widget.start() is None and "origin differs by 66 mm" in notes[-1]


def test_binary_mask_layer_is_one_class(make_napari_viewer, store, sample, qtbot):
    """A 0/255 labels layer (a binary mask from another tool) trains one foreground class, with a notice."""
    image, label, _ = sample
    viewer = make_napari_viewer()
    viewer.add_image(image.array, name="img", scale=image.spacing)
    viewer.add_labels(label * 255, name="mask", scale=image.spacing)
    widget = dock(viewer)
    widget.data.complete.setChecked(True)
    widget.settings.start_from.value = START_NEW_3D  # the classes come from the labels
    widget.settings.fields["patch_size"].value = "32, 32, 32"
    widget.settings.fields["width"].value = 4
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
    widget.settings.fields["lr"].max = 1e9  # past the field's range, to force a diverging run
    widget.settings.fields["lr"].value = 1e6
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    assert "training diverged" in notes[-1] and "lr=1e+06" in notes[-1]
    assert widget.progress.message.text().startswith("Not trained: training diverged")
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


def test_the_status_is_the_jobs_one_source_of_truth(viewer, store, qtbot):
    """Panels only display the status; its state goes preparing -> running -> done, in the GUI thread."""
    widget = dock(viewer)
    states = []
    widget.status.events.state.connect(lambda state: states.append(state.value))
    tiny(widget, pretrain=2, selftrain=1)
    widget.start()
    assert widget.running and not widget.start_button.isEnabled() and widget.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    assert states == ["preparing", "running", "done"]
    assert widget.run.validation == [] and widget.run.initial_dice is None  # 3 corrected slices: none held out
    assert widget.status.message.startswith("Not checked on held-out corrections: too few corrected slices to "
                                            "hold any out: add corrections in at least 4 slices. 'fine-tuned 1'")
    assert not widget.progress.loss_plot.dice_axes.get_visible()
    assert widget.progress.loss_plot.axes.get_xlim() == (0.0, 3.0)  # cleared for this run
    assert widget.status.step == 3 and widget.progress.progress.value() == 3
    assert widget.status.run is widget.run and widget.run.phase == "done"
    assert widget.progress.detail.text() == widget.status.detail and widget.status.detail.startswith("Done: 3 steps")
    assert widget.start_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_layer_pickers_follow_the_layer_list(viewer, store, qtbot):
    widget = dock(viewer)
    row = widget.data.rows[0]
    image = viewer.layers["case_001"]
    assert row.layers() == (image, viewer.layers["case_001 segmentation"])
    image.name = "renamed scan"  # napari calls reset_choices: the picker shows the new name
    assert row.image.native.currentText() == "renamed scan" and row.image.value is image
    assert [item.text() for item in widget.data._unlabeled_items()] == ["renamed scan", "case_004"]
    viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="new labels")  # a new labels layer gets its own pair
    assert [r.labels.value.name for r in widget.data.rows] == ["case_001 segmentation", "new labels"]
    viewer.layers.remove("new labels")
    assert len(widget.data.rows) == 1
    viewer.layers.remove(image)
    assert row.layers() == (None, viewer.layers["case_001 segmentation"])
    assert [row.image.native.itemText(i) for i in range(row.image.native.count())] == ["-----", "case_004"]


def test_advanced_form_is_generated_from_train_config(make_napari_viewer, store):
    from napari_cvbm.core.config import RANGES
    from napari_cvbm.gui.widgets.training_settings import ADVANCED, SPIN_HINTS

    widget = dock(make_napari_viewer())
    fields = widget.settings.fields
    assert list(fields) == list(ADVANCED)
    for name, field in fields.items():
        if name in RANGES:  # the range's lower end, unless a display bound is narrower
            assert field.min == SPIN_HINTS.get(name, {}).get("min", RANGES[name].low), name
    widget.settings.start_from.value = START_NEW_3D
    fields["pretrain_iterations"].value = 7
    fields["batch_labeled"].value = 6
    fields["patch_size"].value = "32 x 64 x 48"
    config, _ = widget.settings.training_config()
    assert (config.pretrain_iterations, config.batch_labeled, config.batch_unlabeled, config.patch_size) == \
        (7, 6, 6, (32, 64, 48))
    fields["patch_size"].value = "32, 64"
    with pytest.raises(Exception, match="patch size must be 3 whole numbers"):
        widget.settings.training_config()


def test_a_fine_tune_worse_on_the_held_out_slices_keeps_the_model(viewer, store, qtbot, monkeypatch, notes):
    optimise = TrainingRun._optimise

    def blinding(self, terms):  # every step also blinds the fg head: the run ends worse than it began
        losses = optimise(self, terms)
        with torch.no_grad():
            self.model.decoder_fg.out.bias += BLIND
        return losses

    monkeypatch.setattr(TrainingRun, "_optimise", blinding)
    widget = dock(viewer)
    viewer.layers["case_001 segmentation"].paint((40, 60, 60), 1, refresh=True)  # a 4th corrected slice
    previous, before = store.active, state_of(store.get()[0])
    tiny(widget, pretrain=2, selftrain=1)
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    run = widget.run
    assert len(run.validation) == 1 and run.initial_dice > 0.8 and run.final_dice == 0.0
    message = (f"Fine-tuning made the model worse on your held-out corrections (before {run.initial_dice:.2f}, "
               f"after 0.00): the active model is still '{previous}'.")
    assert widget.status.message == message == widget.progress.message.text() and message in notes[-1]
    assert store.active == previous and not any(n.startswith("fine-tuned") for n in store.names())
    assert all(torch.equal(before[k], v) for k, v in store.get()[0].state_dict().items())


def sample_plan(sample, store, budget_s=planning.DEFAULT_BUDGET_S, **overrides):
    """``core.planning.plan`` of the ``viewer`` fixture's data (slices 20, 21, 30 of case_001 counted,
    case_004 unlabeled) for fine-tuning the active model on the CPU within ``budget_s``."""
    image, label, unlabeled = sample
    corrected = label.copy()
    corrected[[20, 21, 30], :4, :4] = 1
    labeled = [Case("case_001 segmentation", image.array, corrected, annotated_mask(label.shape, [20, 21, 30]),
                    image.spacing)]
    keeps = {"dim": 3, **overrides, **planning.fine_tune_overrides(store.get()[1])}
    return planning.plan(labeled, [Case("case_004", unlabeled.array, spacing=unlabeled.spacing)],
                         torch.device("cpu"), budget_s, keeps)


def test_plan_line_is_planned_from_the_data_in_a_worker(viewer, store, sample, qtbot, monkeypatch):
    def slow_step(config, device):
        time.sleep(1.5)  # measuring a step takes a while: the GUI thread must not wait for it
        return STEP_S

    monkeypatch.setattr(planning, "_step_seconds", slow_step)
    widget = dock(viewer)
    settings = widget.settings
    assert settings.preset.value == PLANNED and settings.planned and settings.budget.value == 10
    assert not settings.budget.native.isHidden() and not settings.plan_line.isHidden()
    ticks = []
    timer = QTimer(interval=20, timeout=lambda: ticks.append(time.perf_counter()))
    timer.start()
    qtbot.waitUntil(lambda: settings.plan_line.text() == "Planning…", timeout=LONG_MS)
    text = plan_shown(widget, qtbot)
    timer.stop()
    assert np.percentile(np.diff(ticks), 99) < 0.5  # the GUI thread kept running while it planned
    expected = sample_plan(sample, store)
    assert text == f"Plan: {expected.describe()}" and "about 10 min on cpu" in text
    # the fields show the plan: the starter was trained at the images' own spacing, so it gets a planned one
    config, fields = expected.config, settings.fields
    assert (fields["spacing"].value, fields["patch_size"].value) == ("1.5, 1, 1", "32, 64, 64")
    assert (fields["pretrain_iterations"].value, fields["selftrain_iterations"].value) == \
        (config.pretrain_iterations, config.selftrain_iterations)
    assert fields["patch_size"].enabled and not fields["width"].enabled and not settings.edited

    # a newer request supersedes an older one still running: its plan is never shown
    budgets = []
    show = settings.show_plan
    monkeypatch.setattr(settings, "show_plan", lambda plan: (budgets.append(plan.budget_s), show(plan)))
    first = widget.plan()
    settings.budget.value = 5
    second = widget.plan()
    qtbot.waitUntil(lambda: not first.is_running and not second.is_running, timeout=LONG_MS)
    plan_shown(widget, qtbot, "about 5 min on cpu")
    assert budgets and set(budgets) == {300.0}

    # nothing to plan from: the line says what is missing; folders are planned when they are read
    viewer.layers.remove("case_001 segmentation")
    qtbot.waitUntil(lambda: settings.plan_line.text().startswith("Plan: no labeled data: add a labeled pair"))
    widget.data.source.setCurrentText("Folders on disk")
    qtbot.waitUntil(lambda: settings.plan_line.text() == FOLDERS_PLANNED_AT_START)


def test_edited_fields_win_over_the_plan(viewer, store, sample, qtbot):
    widget = dock(viewer)
    fields = widget.settings.fields
    plan_shown(widget, qtbot)
    fields["patch_size"].value = "32, 48, 48"
    fields["spacing"].value = "3, 2, 2"
    text = plan_shown(widget, qtbot, "3×2×2 mm voxels")
    assert widget.settings.edited == {"patch_size", "spacing"}
    edits = dict(patch_size=(32, 48, 48), spacing=(3.0, 2.0, 2.0))
    longer = sample_plan(sample, store, **edits)
    assert text == f"Plan: {longer.describe()}"
    assert "patches 32×48×48" in text
    widget.settings.budget.value = 2  # the fields the user left alone follow the plan, the edited ones stay
    plan_shown(widget, qtbot, "about 2 min")
    shorter = sample_plan(sample, store, 120, **edits).config
    assert fields["pretrain_iterations"].value == shorter.pretrain_iterations < longer.config.pretrain_iterations
    assert (fields["patch_size"].value, fields["spacing"].value) == ("32, 48, 48", "3, 2, 2")

    # a model trained at a working spacing keeps its input: only the step counts are planned
    config = preset("cpu", 3, width=4, patch_size=(32, 32, 32), spacing=(2.0, 2.0, 2.0))
    torch.manual_seed(0)
    store.add("planned net", build_model(config), config)
    text = plan_shown(widget, qtbot, "2×2×2 mm voxels (images ×0.50), patches 32×32×32, batch 2+2, width 4")
    assert not fields["spacing"].enabled and not fields["patch_size"].enabled


@pytest.fixture
def blob_data(make_napari_viewer):
    """(viewer, image, label, labelled slices): a small volume (2 mm slices) with 3 slices labelled."""
    from conftest import blob_volume

    image, label = blob_volume(0)
    z = np.flatnonzero(label.any((1, 2)))
    slices = z[len(z) // 2 - 1:len(z) // 2 + 2].tolist()
    drawn = np.zeros(label.shape, np.uint8)
    drawn[slices] = label[slices]
    viewer = make_napari_viewer()
    viewer.add_image(image, name="blob", scale=(2.0, 1.0, 1.0))
    viewer.add_labels(drawn, name="blob labels", scale=(2.0, 1.0, 1.0))
    return viewer, image, drawn, slices


def test_a_planned_run_trains_with_the_plan(blob_data, store, qtbot):
    viewer, image, label, slices = blob_data
    widget = dock(viewer)
    widget.settings.start_from.value = START_NEW_3D
    widget.settings.fields["width"].value = 4
    tiny(widget, 2, 1)
    shown = plan_shown(widget, qtbot, "width 4, 2 + 1 steps")
    cases = [Case("blob labels", image, label, annotated_mask(label.shape, slices), (2.0, 1.0, 1.0))]
    given = {"dim": 3, "width": 4, "pretrain_iterations": 2, "selftrain_iterations": 1}
    expected = planning.plan(cases, [], torch.device("cpu"), planning.DEFAULT_BUDGET_S, given)
    assert shown == f"Plan: {expected.describe()}"
    assert widget.start() is not None and widget.status.total == 3  # the plan shown: its length is known
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    config = widget.run.config
    assert (config.spacing, config.patch_size, config.pretrain_iterations, config.selftrain_iterations,
            config.width) == (expected.config.spacing, expected.config.patch_size, 2, 1, 4)
    assert config.spacing == (2.0, 1.0, 1.0)
    assert store.active == "fine-tuned 1" and store.get()[1].spacing == (2.0, 1.0, 1.0)  # Segment uses it

    # started before the new setting was planned: the worker plans it, and the line shows what runs
    widget.settings.fields["spacing"].value = "4, 2, 2"
    messages = []
    widget.status.events.message.connect(messages.append)
    assert widget.start() is not None and "(planning the run first)" in widget.status.message
    bar = widget.runner.pbar
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    config = widget.run.config
    assert (config.spacing, config.patch_size, config.pretrain_iterations) == ((4.0, 2.0, 2.0), (32, 32, 32), 2)
    plan_shown(widget, qtbot, "4×2×2 mm voxels (images ×0.50), patches 32×32×32")
    assert widget.status.total == bar.total == 3 and any("for 3 steps on 1 labeled" in m for m in messages)


# -- folders on disk: planned, held out and checked as layers are ------------------------------------
def write_nifti(path, array):
    """Write a (z, y, x) or (volumes, z, y, x) array as NIfTI (x, y, z[, volumes]), 1 mm voxels."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(np.transpose(array)), np.eye(4)), str(path))


def blob_folders(root, labeled=3, unlabeled=0, volumes=1, fov=False):
    """Folders of small blob volumes under ``root``: images/ and labels/ (case0, case1...), unlabeled/
    (more0...), each image 4D of ``volumes`` volumes when more than one, and fov/ masks (the middle
    rows of every image) when ``fov``."""
    shape = (16, 32, 32)
    names = [("images", f"case{i}", i) for i in range(labeled)] + [("unlabeled", f"more{i}", 10 + i)
                                                                  for i in range(unlabeled)]
    for folder, name, seed in names:
        image, label = blob_volume(seed, shape=shape)
        if volumes > 1:
            image = np.stack([image * (v + 1) for v in range(volumes)])
        write_nifti(root / folder / f"{name}.nii.gz", image.astype(np.float32))
        if folder == "images":
            write_nifti(root / "labels" / f"{name}.nii.gz", label.astype(np.uint8))
        if fov:
            mask = np.zeros(shape, np.uint8)
            mask[:, 6:-6] = 1
            write_nifti(root / "fov" / f"{name}.nii.gz", mask)
    return root


def folder_widget(make_napari_viewer, root) -> FineTuneWidget:
    """The widget on the folders under ``root``, training a small new 3D network."""
    widget = dock(make_napari_viewer())
    widget.data.source.setCurrentText("Folders on disk")
    for key, field in widget.data.folders.items():
        if (root / key).is_dir():
            field.setText(str(root / key))
    widget.settings.start_from.value = START_NEW_3D
    widget.settings.fields["width"].value = 4
    widget.settings.fields["patch_size"].value = "16, 32, 32"
    return widget


def test_a_folder_run_is_planned_and_checked_on_a_held_out_image(make_napari_viewer, store, qtbot, monkeypatch,
                                                                 tmp_path):
    monkeypatch.setattr(planning, "_step_seconds", lambda config, device: 30.0)  # 1 min: the fewest steps
    root = blob_folders(tmp_path)
    widget = folder_widget(make_napari_viewer, root)
    settings, line = widget.settings, widget.settings.plan_line
    settings.budget.value = 1
    qtbot.waitUntil(lambda: line.text() == FOLDERS_PLANNED_AT_START)
    messages = []
    widget.status.events.message.connect(messages.append)
    assert widget.start() is not None and "(reading the folders first)" in widget.status.message
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)

    cases = load_cases(root / "images", root / "labels")
    expected = planning.plan(cases, [], settings.device(), 60.0, {**settings.overrides(), "num_classes": 2})
    held = split_corrections(cases, seed=settings.fields["seed"].value)
    assert held.summary().startswith("image 'case")
    assert any(f"planning the run first) on 3 labeled + 0 unlabeled images, checked on held-out "
               f"{held.summary()}…" in m for m in messages)
    run, config = widget.run, widget.run.config
    assert [c.name for c in run.validation] == [c.name for c in held.held_out] and len(run.labeled.cases) == 2
    assert run.initial_dice is not None and run.final_dice is not None
    assert f"before {run.initial_dice:.2f}, after {run.final_dice:.2f}" in widget.status.message
    assert (config.pretrain_iterations, config.selftrain_iterations) == (10, 20) == \
        (expected.config.pretrain_iterations, expected.config.selftrain_iterations)
    assert (config.spacing, config.patch_size, widget.status.total) == (expected.config.spacing, (16, 32, 32), 30)
    assert line.text() == f"Plan: {expected.describe()}"
    qtbot.wait(PLAN_DELAY_MS + 200)  # planned again once the run ended: the folders' plan stays
    assert line.text() == f"Plan: {expected.describe()}"

    # started again on the same folders and settings: the plan shown is the one that runs
    messages.clear()
    widget.start()
    qtbot.waitUntil(lambda: any("for 30 steps on 3 labeled" in m for m in messages), timeout=LONG_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    assert not any("planning the run first" in m for m in messages)


def test_folders_of_4d_images_train_on_all_their_volumes_or_the_first(make_napari_viewer, store, qtbot,
                                                                     monkeypatch, tmp_path):
    monkeypatch.setattr(finetune, "got_worse", lambda before, after: False)  # the channels are tested here
    widget = folder_widget(make_napari_viewer, blob_folders(tmp_path, labeled=1, volumes=2))
    tiny(widget, 1, 1)
    widget.data.volumes.setCurrentText("all volumes as channels")
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    model, config = store.get()
    assert store.active == "fine-tuned 1" and (config.in_channels, config.channel_names) == (2, ("0", "1"))
    assert model.in_channels == 2

    widget.data.volumes.setCurrentText("first volume")
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    model, config = store.get()
    assert store.active == "fine-tuned 2" and (config.in_channels, model.in_channels) == (1, 1)


def test_field_of_view_masks_from_a_folder_bound_the_run(make_napari_viewer, store, qtbot, tmp_path):
    widget = folder_widget(make_napari_viewer, blob_folders(tmp_path, labeled=1, unlabeled=1, fov=True))
    tiny(widget, 1, 1)
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG_MS)
    run = widget.run
    cases = run.labeled.cases + run.validation + run.unlabeled.cases
    assert [c.name for c in cases] == ["case0", "case0", "more0"]
    assert all(c.valid is not None and 0.5 < c.valid.mean() < 0.8 for c in cases)  # 20 of 32 rows inside


def test_a_folder_with_a_missing_label_file_starts_nothing(make_napari_viewer, store, notes, tmp_path):
    root = blob_folders(tmp_path)
    (root / "labels" / "case2.nii.gz").unlink()
    widget = folder_widget(make_napari_viewer, root)
    previous = store.active
    assert widget.start() is None
    message = f"No label in {root / 'labels'} for 1 image(s): 'case2'"
    assert notes[-1] == message and widget.status.message == f"Not trained: {message}"
    assert widget.run is None and not widget.running and store.active == previous
    assert widget.data.folders["labels"].text() == str(root / "labels")  # nothing typed is lost


def test_first_volume_of_folders_keeps_a_photographs_colour(tmp_path):
    from PIL import Image

    from napari_cvbm.core.channels import RGB
    from napari_cvbm.gui.workers import Folders

    rng = np.random.default_rng(0)
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "images" / "eye.png")
    Image.fromarray(np.eye(32, dtype=np.uint8)).save(tmp_path / "labels" / "eye.png")
    (case,), unlabeled = Folders(str(tmp_path / "images"), str(tmp_path / "labels")).read()
    assert case.channel_names == RGB and case.image.shape == (3, 32, 32) and unlabeled == []
