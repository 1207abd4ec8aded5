"""Bundled models by name: packaging a run (benchmarks/bundle_model.py), the registry and its cards
(core.bundled), one resolver for every caller (core.model_source), the CLI and the Segment widget."""

import csv
import json
import shutil
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cvbm import cli
from napari_cvbm.core import bundled, planning
from napari_cvbm.core.checkpoint import build_model, load_model, save_checkpoint, save_model
from napari_cvbm.core.config import TrainConfig, preset, resumed_config
from napari_cvbm.core.data import make_case
from napari_cvbm.core.errors import CVBMInputError
from napari_cvbm.core.io import read_image, read_labels, write_image
from napari_cvbm.core.metrics import write_csv
from napari_cvbm.core.model_source import open_model
from napari_cvbm.core.predictor import Predictor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bundle_model  # noqa: E402
from accuracy import evaluate  # noqa: E402

NAME = "acdc-cardiac"
CLASSES = ("background", "right ventricle", "myocardium", "left ventricle")
TIMEOUT_MS = 60_000


def tiny_config(**overrides) -> TrainConfig:
    """A 2D, 4-class, width-4 U-Net on 32×32 slices: milliseconds a slice."""
    values = dict(width=4, patch_size=(32, 32), slice_size=(32, 32), num_classes=4, batch_labeled=2,
                  batch_unlabeled=2, pretrain_iterations=2, selftrain_iterations=1, validate_every=1,
                  checkpoint_every=1, amp=False)
    return preset("cpu", 2, **{**values, **overrides})


def result(dice: float, cases: int = 3) -> dict:
    """One view's entry of accuracy.py's summary["results"] (core.metrics.summarize, JSON keys)."""
    classes = {str(c): {"dice": dice + 0.01 * c, "jaccard": 0.5, "hd95": 2.0, "asd": 1.0} for c in (1, 2, 3)}
    return {"num_cases": cases, "classes": classes, "mean": {"dice": dice, "jaccard": 0.5, "hd95": 2.0, "asd": 1.0}}


def fake_run(folder: Path, eval_split: str = "test", seed: int = 0) -> Path:
    """What benchmarks/accuracy.py leaves in --out: model/best.pt, summary.json and the fg view's CSV."""
    torch.manual_seed(seed)
    config = tiny_config()
    save_model(folder / "model" / "best.pt", build_model(config), config, phase="selftrain")
    views = {"fg": 0.8125, "mix": 0.8, "avg": 0.79, "bg": 0.7}
    summary = {"data": "../shared/data/acdc", "labeled": "all", "arm": "cvbm", "scale": "cpu",
               "plan": "slices resized to 32×32, batch 2+2, width 4, 2 + 1 steps: about 1 min on cpu",
               "eval_split": eval_split, "train_seconds": 61.5, "config": config.to_dict(), "precision": "float32",
               "channels_last": False, "layout_seconds": {}, "selection_dice": 0.77,
               "results": {**{f"cvbm {v}": result(d) for v, d in views.items()},
                           "supervised (its teacher) fg": result(0.6)}}
    (folder / "summary.json").write_text(json.dumps(summary))
    write_csv([{"case": case, "class": c, "dice": 0.8, "jaccard": 0.7, "hd95": 1.0, "asd": 1.0}
               for case in ("p101_ed", "p101_es", "p102_ed") for c in (1, 2, 3)], folder / "cvbm_fg.csv")
    return folder


def bundle(run: Path, name: str = NAME, *extra) -> int:
    return bundle_model.main([str(run), "--name", name, "--classes", ",".join(CLASSES),
                              "--data-terms", "ACDC, research use only", "--intended-use", "trying CVBM",
                              "--command", "python benchmarks/accuracy.py acdc --labeled all", *extra])


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    """An empty bundled-models folder in place of napari_cvbm/models/."""
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setattr(bundled, "MODELS_DIR", folder)
    return folder


@pytest.fixture(scope="module")
def packaged_once(tmp_path_factory):
    """A tiny model packaged as NAME by bundle_model.py, once: (its models folder, the run folder)."""
    root = tmp_path_factory.mktemp("bundled")
    run = fake_run(root / "run")
    assert bundle(run, NAME, "--models-dir", str(root / "models")) == 0
    return root / "models", run


@pytest.fixture
def packaged(packaged_once, models_dir):
    """NAME in this test's bundled-models folder: (models folder, run folder)."""
    folder, run = packaged_once
    for file in folder.iterdir():
        shutil.copy(file, models_dir / file.name)
    return models_dir, run


def test_card_figures_come_from_the_run_summary(packaged, tmp_path):
    folder, run = packaged
    summary = json.loads((run / "summary.json").read_text())
    card = bundled.card(NAME)
    assert set(card) == set(bundled.CARD_FIELDS)
    holdout = card["holdout"]
    assert holdout["dice"] == {v: summary["results"][f"cvbm {v}"]["mean"]["dice"] for v in ("fg", "mix", "avg", "bg")}
    assert holdout["dice_per_class"] == {CLASSES[c]: summary["results"]["cvbm fg"]["classes"][str(c)]["dice"]
                                         for c in (1, 2, 3)}
    assert holdout["split"] == "test" and holdout["independent"] and holdout["cases"] == 3
    assert holdout["case_names"] == ["p101_ed", "p101_es", "p102_ed"]
    assert card["classes"] == list(CLASSES) and card["dim"] == 2 and card["input"]["slice_size"] == [32, 32]
    assert card["training"]["seconds"] == 61.5 and card["input"]["plan"] == summary["plan"]
    assert card["data"]["terms"] == "ACDC, research use only" and card["licence"] == "ACDC, research use only"
    pt = folder / f"{NAME}.pt"
    assert card["file"]["bytes"] == pt.stat().st_size and card["file"]["sha256"] == bundled.sha256(pt)

    # scored on the split that selected the model: said so, never called a hold-out
    assert bundle(fake_run(tmp_path / "val_run", eval_split="val"), "acdc-val") == 0
    assert not bundled.card("acdc-val")["holdout"]["independent"]
    assert "validation Dice 0.81" in bundled.describe("acdc-val") and "hold-out" not in bundled.describe("acdc-val")


def test_names_card_and_describe(packaged):
    folder, _ = packaged
    (folder / "stray.pt").write_bytes(b"")  # no card: not a bundled model
    assert bundled.names() == [NAME]
    assert bundled.path(NAME) == folder / f"{NAME}.pt"
    assert bundled.describe(NAME) == (f"{NAME}: cardiac cine MRI, 2D, right ventricle / myocardium / left ventricle, "
                                      f"hold-out Dice 0.81 (3 cases)")


def test_bundle_refuses_to_replace_a_model_unless_overwrite(packaged, tmp_path, capsys):
    folder, run = packaged
    before = (folder / f"{NAME}.json").read_text()
    assert bundle(fake_run(tmp_path / "other", seed=1)) == 2
    assert "already exists" in capsys.readouterr().err
    assert (folder / f"{NAME}.json").read_text() == before
    assert bundle(tmp_path / "other", NAME, "--overwrite") == 0
    assert f"({(folder / f'{NAME}.pt').stat().st_size / 1e6:.2f} MB, float16)" in capsys.readouterr().out
    assert bundled.card(NAME)["file"]["sha256"] != json.loads(before)["file"]["sha256"]


def test_rescore_writes_the_cards_figures_from_the_model_as_it_segments(packaged, tmp_path, monkeypatch):
    """benchmarks/rescore_bundled.py scores the cases the card names with the model's own
    post-processing and writes their Dice to the card; the weights and their checksum stay."""
    import rescore_bundled

    folder, _ = packaged
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for case in bundled.card(NAME)["holdout"]["case_names"]:
        label = np.zeros((4, 32, 32), np.uint8)
        label[:, 8:24, 8:24] = rng.integers(0, 4, (4, 16, 16))
        write_image(data / "images" / f"{case}.nii.gz", label + rng.normal(0, 0.5, label.shape).astype(np.float32))
        write_image(data / "labels" / f"{case}.nii.gz", label)
    before = bundled.card(NAME)
    seen = []

    def scored(model, cases, config, views):
        seen.append(config.largest_component)
        return evaluate(model, cases, config, views)

    monkeypatch.setattr(rescore_bundled, "evaluate", scored)
    assert rescore_bundled.main([NAME, str(data), "--out", str(tmp_path / "out")]) == 0
    after = bundled.card(NAME)
    assert seen == [open_model(NAME)[1].largest_component]  # scored with the model's own setting
    assert after["file"] == before["file"] and bundled.load(NAME)  # the weights are untouched
    assert {k: v for k, v in after.items() if k != "holdout"} == {k: v for k, v in before.items() if k != "holdout"}
    rows = list(csv.DictReader((tmp_path / "out" / NAME / "cvbm_fg.csv").open()))
    cases = dict.fromkeys(r["case"] for r in rows)
    per_case = [np.mean([float(r["dice"]) for r in rows if r["case"] == c]) for c in cases]
    assert after["holdout"]["dice"]["fg"] == pytest.approx(np.mean(per_case))
    assert after["holdout"]["dice"]["fg"] != before["holdout"]["dice"]["fg"]  # 0.8125 was the fake run's
    assert set(after["holdout"]["dice"]) == {"fg", "mix", "avg", "bg"}
    assert set(after["holdout"]["dice_per_class"]) == set(CLASSES[1:])


def test_open_model_by_name_predicts_like_its_file(packaged):
    folder, _ = packaged
    image = np.random.default_rng(0).normal(size=(40, 48)).astype(np.float32)
    by_name, by_file = Predictor.load(NAME), Predictor(*load_model(folder / f"{NAME}.pt"))
    assert by_name.config == by_file.config and by_name.config.class_names == CLASSES
    a, b = by_name(image, heads="all", device="cpu"), by_file(image, heads="all", device="cpu")
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.fg, b.fg)


def test_unknown_names_and_missing_files_are_one_line_with_close_matches(packaged):
    for source in ("acdc-cardic", "missing.pt"):
        with pytest.raises(CVBMInputError) as caught:
            open_model(source)
        message = str(caught.value)
        assert "\n" not in message and "file" in message and "bundled model" in message and NAME in message
    with pytest.raises(CVBMInputError, match=f"did you mean {NAME}"):
        open_model("acdc-cardic")
    with pytest.raises(CVBMInputError, match=f"no bundled model called 'hrf'; bundled models: {NAME}"):
        bundled.card("hrf")


def test_a_bundled_file_changed_after_packaging_is_refused(packaged):
    folder, _ = packaged
    model, config = load_model(folder / f"{NAME}.pt")
    save_model(folder / f"{NAME}.pt", model, config, dtype=torch.float32)
    with pytest.raises(CVBMInputError, match="not the file its card describes"):
        open_model(NAME)


def test_bioimageio_packages_go_to_load_package(packaged, tmp_path, monkeypatch):
    calls = []
    marker = tmp_path / "package.zip"
    marker.write_bytes(b"PK")
    fake = types.ModuleType("napari_cvbm.core.bioimageio")
    fake.is_package = lambda path: Path(path).suffix == ".zip"
    fake.load_package = lambda path: calls.append(Path(path)) or ("model", "config")
    monkeypatch.setitem(sys.modules, "napari_cvbm.core.bioimageio", fake)
    assert open_model(marker) == ("model", "config") and calls == [marker]
    assert open_model(NAME)[1].class_names == CLASSES and calls == [marker]  # a name never asks the package reader


def test_float16_weights_load_into_float32_parameters(packaged, tmp_path):
    folder, run = packaged
    stored = torch.load(folder / f"{NAME}.pt", weights_only=True)["model"]
    floats = [v for v in stored.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    model, _ = open_model(NAME)
    original, _ = load_model(run / "model" / "best.pt")
    for (key, value), ref in zip(model.state_dict().items(), original.state_dict().values()):
        if value.is_floating_point():
            assert value.dtype == torch.float32, key
            torch.testing.assert_close(value, ref, rtol=1e-3, atol=1e-4)
    assert (folder / f"{NAME}.pt").stat().st_size < 0.6 * (run / "model" / "best.pt").stat().st_size


def test_class_names_round_trip_are_checked_and_survive_a_fine_tune(tmp_path, fixed_step):
    config = tiny_config(class_names=CLASSES)
    path = save_model(tmp_path / "named.pt", build_model(config), config)
    assert load_model(path)[1].class_names == CLASSES
    old = config.to_dict()
    del old["class_names"]  # a checkpoint written before class names existed
    save_checkpoint(tmp_path / "old.pt", {"kind": "model", "config": old, "model": build_model(config).state_dict()})
    assert load_model(tmp_path / "old.pt")[1].class_names is None
    for bad in (CLASSES[:3], CLASSES[:3] + ("myocardium",)):
        with pytest.raises(CVBMInputError, match="class_names"):
            replace(config, class_names=bad)

    saved = preset("cpu", 2, num_classes=4, class_names=CLASSES)
    assert resumed_config(saved, {}, "cpu")[0].class_names == CLASSES  # a run resumed with its preset keeps them
    keeps = planning.fine_tune_overrides(config)
    assert keeps["class_names"] == CLASSES and "class_names" not in config.architecture()
    rng = np.random.default_rng(0)
    labeled = [make_case(f"l{i}", rng.normal(size=(48, 48)).astype(np.float32), rng.integers(0, 4, (48, 48)))
               for i in range(2)]
    planned = planning.plan(labeled, budget_s=60, overrides=keeps).config
    assert planned.class_names == CLASSES and planned.architecture() == config.architecture()


def write_images(folder: Path, count: int = 2) -> Path:
    rng = np.random.default_rng(1)
    for i in range(count):
        write_image(folder / f"c{i}.tif", rng.normal(size=(40, 48)).astype(np.float32))
    return folder


def test_cvbm_predict_takes_a_model_name(packaged, tmp_path, capsys):
    images = write_images(tmp_path / "images")
    assert cli.main(["predict", "--model", NAME, str(images), "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "classes: 0 background, 1 right ventricle, 2 myocardium, 3 left ventricle" in out
    expected = Predictor.load(NAME)(read_image(images / "c0.tif").array, device="cpu").labels
    np.testing.assert_array_equal(read_labels(tmp_path / "a" / "c0.tif").array, expected)
    # the positional form (a name too), and a positional after an option, as argparse used to take
    assert cli.main(["predict", NAME, str(images), "--out", str(tmp_path / "b")]) == 0
    assert cli.main(["predict", NAME, "--out", str(tmp_path / "c"), str(images)]) == 0
    for out in ("b", "c"):
        np.testing.assert_array_equal(read_labels(tmp_path / out / "c0.tif").array, expected)
    capsys.readouterr()
    assert cli.main(["predict", "--model", NAME, NAME, str(images), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one image file or folder" in err[0] and not (tmp_path / "d").exists()


def test_cvbm_models_lists_and_prints_cards(packaged, capsys):
    assert cli.main(["models"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [bundled.describe(NAME)]
    assert cli.main(["models", NAME]) == 0
    assert json.loads(capsys.readouterr().out) == bundled.card(NAME)
    assert cli.main(["models", "acdc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"did you mean {NAME}" in err[0]


def test_cvbm_train_init_fine_tunes_a_bundled_model(packaged, tmp_path, capsys):
    rng = np.random.default_rng(2)
    for i in range(2):
        write_image(tmp_path / "images" / f"c{i}.tif", rng.normal(size=(40, 48)).astype(np.float32))
        write_image(tmp_path / "labels" / f"c{i}.tif", rng.integers(0, 4, (40, 48)).astype(np.uint8))
    args = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"), "--init", NAME,
            "--preset", "cpu", "--set", "pretrain_iterations=2", "--set", "selftrain_iterations=1",
            "--set", "batch_labeled=2", "--set", "batch_unlabeled=2", "--set", "amp=false", "--device", "cpu",
            "--threads", "1"]
    assert cli.main(args + ["--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    _, config = load_model(tmp_path / "run" / "model.pt")
    bundled_config = open_model(NAME)[1]
    assert config.class_names == CLASSES and config.architecture() == bundled_config.architecture()
    assert config.slice_size == bundled_config.slice_size
    # the model stays the teacher (held fixed, its student at a tenth of its lr); the counts given win
    assert (config.ema_decay, config.pretrain_iterations) == (1.0, 2)
    assert config.lr == pytest.approx(bundled_config.lr / 10)
    assert "it stays the teacher (ema_decay=1, lr=0.001)" in capsys.readouterr().out
    assert cli.main(args + ["--out", str(tmp_path / "run2"), "--set", "width=8"]) == 2
    assert "fixes width 8 (the model's: 4)" in capsys.readouterr().err


# ------------------------------------------------------------------ napari
@pytest.fixture
def store(monkeypatch, packaged):
    """The session's model store, made once the bundled model is in place (the conftest's, overridden)."""
    from napari_cvbm.gui import models

    fresh = models.ModelStore()
    monkeypatch.setattr(models, "MODEL_STORE", fresh)
    return fresh


def test_segment_widget_lists_the_bundled_model_and_names_its_classes(viewer_widget, store, qtbot, tmp_path):
    from napari_cvbm.gui import models
    from napari_cvbm.gui.widgets.training_settings import TrainingSettingsPanel

    viewer, widget = viewer_widget
    assert store.names()[:2] == [models.STARTER, NAME] and store.active == models.STARTER
    assert NAME in widget.model_panel.choice.choices and NAME not in store._models  # loads on first use
    widget.model_panel.choice.value = NAME
    assert store.active == NAME
    info = widget.model_panel.info.value
    assert "2D U-Net, width 4, 4 classes, 1 channel, slice by slice (slices resized to 32×32)" in info
    assert "right ventricle / myocardium / left ventricle" in info
    assert "hold-out Dice 0.81 (3 cases)" in info
    settings = TrainingSettingsPanel()
    assert settings.model_settings()["class_names"] == CLASSES  # Fine-tune starts from it, as its teacher
    kept = {k: settings.overrides()[k] for k in ("pretrain_iterations", "ema_decay", "lr")}
    assert kept == {"pretrain_iterations": 1, "ema_decay": 1.0, "lr": pytest.approx(store.get()[1].lr / 10)}
    assert settings.fields["ema_decay"].value == 1.0  # the Advanced form shows it
    store.add("fine-tuned from the starter", *store.get(models.STARTER), activate=False, trained=False)
    assert store.is_trained() and not store.is_trained(models.STARTER)
    assert not store.is_trained("fine-tuned from the starter")
    store.activate(models.STARTER)  # the starter is fine-tuned as a new network is
    settings.on_model_changed()  # as the Fine-tune widget calls it
    assert "ema_decay" not in settings.overrides() and settings.fields["ema_decay"].value == 0.99
    store.activate(NAME)

    image = viewer.add_image(np.random.default_rng(0).normal(size=(40, 48)).astype(np.float32), name="cine")
    worker = widget.segment(image)
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    seg = next(layer for layer in viewer.layers if layer.metadata.get("cvbm_role") == "segmentation")
    assert list(seg.features["index"]) == [0, 1, 2, 3] and list(seg.features["class"]) == list(CLASSES)
    assert seg.metadata["cvbm_class_names"] == CLASSES
    y, x = np.argwhere(seg.data == seg.data.max())[0]
    status = seg.get_status((y, x), world=True)["coordinates"]
    assert f"class: {CLASSES[seg.data[y, x]]}" in status, status
    assert "right ventricle" in widget.status.message

    plain = save_model(tmp_path / "plain.pt", build_model(tiny_config()), tiny_config())  # no class names
    assert widget.load_checkpoint(plain) == "file: plain.pt"  # segments the image again
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    assert seg in viewer.layers and seg.features.shape[1] == 0 and "cvbm_class_names" not in seg.metadata


def test_every_shipped_model_is_the_file_its_card_describes():
    """The models in napari_cvbm/models/ as they ship: each loads through the checked path, and its
    card says what its config holds (dimension, classes, channels, input) and names its hold-out."""
    shipped = bundled.names()
    assert set(bundled.PLANNED) <= set(shipped)
    for name in shipped:
        card = bundled.card(name)
        model, config = bundled.load(name)
        assert config.dim == card["dim"] and list(config.class_names) == card["classes"], name
        assert config.num_classes == len(card["classes"]) == model.num_classes, name
        assert model.in_channels == config.in_channels == card["channels"]["count"], name
        assert list(config.channel_names or []) == card["channels"]["names"], name
        assert list(config.patch_size) == card["input"]["patch_size"], name
        assert card["holdout"]["cases"] == len(card["holdout"]["case_names"]) > 0, name
        assert 0 < card["holdout"]["dice"][bundled.HEADLINE_VIEW] <= 1, name


def test_the_model_line_says_its_channels_and_input():
    from napari_cvbm.gui.widgets.model_panel import describe_model

    rgb = preset("cpu", 2, in_channels=3, channel_names=("red", "green", "blue"), patch_size=(128, 128),
                 slice_size=None, num_classes=2)
    assert describe_model(build_model(rgb), rgb).endswith(
        "2 classes, 3 channels (red, green, blue), 128×128 windows at the image's resolution")
    mri = preset("cpu", 3, spacing=(1.25, 1.25, 2.5))
    assert describe_model(build_model(mri), mri).endswith("1 channel, at 1.25×1.25×2.5 mm")
    native = preset("cpu", 3)
    assert describe_model(build_model(native), native).endswith("1 channel, at each image's own spacing")
