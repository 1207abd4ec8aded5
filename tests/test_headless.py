"""The engine and the CLI import and run with no Qt or napari module loaded."""

import subprocess
import sys

CHECK = """
import sys


class BlockGUI:  # any attempt to import a GUI toolkit fails loudly, installed or not
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in GUI_MODULES:
            raise ImportError('headless engine tried to import ' + name)


sys.meta_path.insert(0, BlockGUI())
import napari_cvbm.core.checkpoint, napari_cvbm.core.config, napari_cvbm.core.cutmix, napari_cvbm.core.data
import napari_cvbm.core.device, napari_cvbm.core.views
import napari_cvbm.core.inference, napari_cvbm.core.io, napari_cvbm.core.labels, napari_cvbm.core.losses
import napari_cvbm.core.metrics, napari_cvbm.core.networks, napari_cvbm.core.pseudo_labels
import napari_cvbm.core.training, napari_cvbm.cli, napari_cvbm.demo
napari_cvbm.cli.build_parser().parse_args(["demo"])
"""

GUI_MODULES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy")


def test_engine_and_cli_import_without_qt_or_napari():
    code = f"GUI_MODULES = {GUI_MODULES!r}\n" + CHECK + f"""
loaded = sorted(m for m in sys.modules if m.split('.')[0] in {GUI_MODULES!r})
print('LOADED', loaded)
assert not loaded, loaded
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout
