"""The model panel's Export bioimage.io… button (Qt: run under Xvfb)."""

import torch
from qtpy.QtWidgets import QFileDialog

from napari_cvbm.core import bioimageio
from napari_cvbm.core.checkpoint import build_model
from napari_cvbm.core.config import TrainConfig
from napari_cvbm.gui.job_status import JobStatus
from napari_cvbm.gui.widgets.model_panel import ModelPanel

CONFIG = TrainConfig(dim=2, width=4, patch_size=(32, 32))


def test_export_button_writes_the_active_model_and_never_replaces_a_file_unasked(qtbot, store, tmp_path, notes,
                                                                                 monkeypatch):
    torch.manual_seed(0)
    model = build_model(CONFIG)
    store.add("tiny gui model", model, CONFIG)
    panel = ModelPanel(JobStatus())
    qtbot.addWidget(panel)

    def export_to(path):
        monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args, **kwargs: (str(path), ""))
        panel.export_button.click()
        qtbot.waitUntil(panel.export_button.isEnabled, timeout=60_000)  # the worker has finished

    export_to(tmp_path / "exported")  # the dialog's name without a suffix: .zip is added
    out = tmp_path / "exported.zip"
    assert panel.status.message == f"Exported 'tiny gui model' as a bioimage.io model package to {out}"
    loaded, config = bioimageio.load_package(out)
    assert config == CONFIG and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                      loaded.state_dict().values()))
    before = out.read_bytes()
    export_to(tmp_path / "exported")  # Qt asked about "exported", not about the "exported.zip" it becomes
    assert f"{out} already exists" in notes[-1] and out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["exported.zip"]
    assert panel.load_model(out) == "file: exported.zip" == store.active  # Load model… takes the package back
    assert store.get()[1] == CONFIG
