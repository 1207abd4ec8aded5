"""Checkpoints: atomic, versioned, safe to load (no code runs), validated against the network."""

import os
import pickle

import pytest
import torch

from napari_cvbm.core.checkpoint import FORMAT_VERSION, load_checkpoint, load_model, save_checkpoint, save_model
from napari_cvbm.core.config import preset
from napari_cvbm.core.errors import CVBMInputError
from napari_cvbm.core.networks import CVBMNet

CONFIG = preset("cpu", 3, width=4, patch_size=(32, 32, 32))


def _model():
    return CVBMNet(dim=3, num_classes=2, width=4)


def test_model_round_trip(tmp_path):
    model = _model()
    path = save_model(tmp_path / "m.pt", model, CONFIG, phase="final")
    loaded, config = load_model(path)
    assert config == CONFIG
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    payload = load_checkpoint(path)
    assert payload["format_version"] == FORMAT_VERSION and payload["phase"] == "final"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "napari-cvbm", "format_version": 1, "config": {}, "model": _RunsCode(str(marker))}, evil)
    with pytest.raises(CVBMInputError, match="refused"):
        load_model(evil)
    assert not marker.exists()
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(_RunsCode(str(marker)), f, protocol=2)
    with pytest.raises(CVBMInputError):
        load_model(tmp_path / "plain.pkl")
    assert not marker.exists()


def test_wrong_shapes_and_foreign_files_are_refused(tmp_path):
    state = _model().state_dict()
    state[next(iter(state))] = torch.zeros(1)
    save_checkpoint(tmp_path / "bad.pt", {"config": CONFIG.to_dict(), "model": state})
    with pytest.raises(CVBMInputError, match="wrong shape"):
        load_model(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CVBMInputError, match="not a napari-cvbm checkpoint"):
        load_model(tmp_path / "foreign.pt")
    good = save_model(tmp_path / "good.pt", _model(), CONFIG)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    with pytest.raises(CVBMInputError, match="not a readable"):
        load_model(tmp_path / "cut.pt")
    with pytest.raises(CVBMInputError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = save_model(tmp_path / "m.pt", _model(), CONFIG)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(CVBMInputError, match="m.pt: disk full"):  # one line naming the file
        save_model(path, _model(), CONFIG)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
