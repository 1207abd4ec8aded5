"""bioimage.io model packages: export (validated by bioimageio.spec, run by bioimageio.core), re-import, CLI."""

import io
import zipfile

import numpy as np
import pytest
import torch
from ruyaml import YAML

from napari_cvbm import cli
from napari_cvbm.core import bioimageio as bio
from napari_cvbm.core.checkpoint import build_model, save_model
from napari_cvbm.core.config import TrainConfig
from napari_cvbm.core.errors import CVBMInputError
from napari_cvbm.core.io import read_labels, write_image
from napari_cvbm.core.predictor import Predictor

CONFIG_2D = TrainConfig(dim=2, width=4, patch_size=(32, 32), num_classes=3)
CONFIG_3D = TrainConfig(dim=3, width=4, patch_size=(32, 32, 32), spacing=(2.0, 1.0, 1.0))
CONFIG_RGB = TrainConfig(dim=2, width=4, in_channels=3, channel_names=("red", "green", "blue"), patch_size=(32, 32),
                         slice_size=(32, 32), class_names=("background", "vessel"))


def _model(config, seed=0):
    torch.manual_seed(seed)
    return build_model(config).eval()


def _export(tmp_path_factory, config, file, **options):
    model = _model(config)
    path = bio.export_package(model, config, tmp_path_factory.mktemp("package") / file, **options)
    return model, path


def cli_export(checkpoint, out) -> list:
    return ["export", str(checkpoint), str(out), "--name", "tiny 2D model", "--author", "Ada Lovelace",
            "--author", "Alan Turing"]


@pytest.fixture(scope="module")
def package_2d(tmp_path_factory):
    """(model, package, checkpoint): a 2D model exported by `cvbm export`."""
    folder = tmp_path_factory.mktemp("cli")
    model = _model(CONFIG_2D)
    checkpoint = save_model(folder / "m.pt", model, CONFIG_2D)
    out = folder / "tiny2d.zip"
    assert cli.main(cli_export(checkpoint, out)) == 0
    return model, out, checkpoint


@pytest.fixture(scope="module")
def package_3d(tmp_path_factory):
    return _export(tmp_path_factory, CONFIG_3D, "tiny3d.zip", name="tiny 3D model", authors=["Ada Lovelace"])


def rdf(path) -> dict:
    with zipfile.ZipFile(path) as package:
        return YAML(typ="safe").load(package.read("rdf.yaml"))


def member(path, name) -> bytes:
    with zipfile.ZipFile(path) as package:
        return package.read(name)


def rewritten(source, target, **replace):
    """A copy of the package ``source`` at ``target`` with some members' bytes replaced (name -> function)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            data = old.read(name)
            new.writestr(name, replace.get(name.replace(".", "_"), lambda d: d)(data))
    return target


def one_line_error(call, *args) -> str:
    with pytest.raises(CVBMInputError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_export_passes_bioimageio_validation(package_2d, package_3d):
    for path in (package_2d[1], package_3d[1]):
        summary = bio.validate_package(path)
        assert summary.status == "valid-format"
        warnings = [w.msg for detail in summary.details for w in detail.warnings]
        # the only alert: no author has a GitHub user name (bioimage.io's maintainers), which we cannot know
        assert warnings and all("github_user" in w for w in warnings), warnings
    description = rdf(package_2d[1])
    image, probabilities = description["inputs"][0], description["outputs"][0]
    assert [a["type"] for a in image["axes"]] == ["batch", "channel", "space", "space"]
    assert image["axes"][1]["channel_names"] == ["intensity"]
    # instance norm: x from twice the divisor (sides all of 16 leave one voxel at the bottleneck)
    assert [a["size"] for a in image["axes"][2:]] == [{"min": 16, "step": 16}, {"min": 32, "step": 16}]
    assert {"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"], "eps": 1e-6}} in image["preprocessing"]
    assert probabilities["axes"][1]["channel_names"] == ["background", "class1", "class2"]
    assert set(description["weights"]) == {"torchscript", "pytorch_state_dict"}
    assert description["config"]["napari_cvbm"]["checkpoint"] in [a["source"] for a in description["attachments"]]
    assert description["license"] == "BSD-3-Clause" and description["cite"][0]["doi"]
    readme = member(package_2d[1], "README.md").decode()
    assert "foreground (fg) network" in readme and "background (bg) and mix views" in readme
    assert f"checkpoint `{bio.CHECKPOINT_FILE}`" in readme and "sliding windows of 32 × 32" in readme
    assert "# Validation" in readme or "## Validation" in readme

    description = rdf(package_3d[1])
    space = description["inputs"][0]["axes"][2:]
    assert [(a["id"], a["unit"], a["scale"]) for a in space] == [("z", "millimeter", 2.0), ("y", "millimeter", 1.0),
                                                                  ("x", "millimeter", 1.0)]
    assert description["authors"] == [{"name": "Ada Lovelace"}]
    assert [a["name"] for a in rdf(package_2d[1])["authors"]] == ["Ada Lovelace", "Alan Turing"]
    assert np.load(io.BytesIO(member(package_3d[1], "test_input.npy"))).shape == (1, 1, 32, 32, 32)
    assert "2 × 1 × 1 mm" in member(package_3d[1], "README.md").decode()


def test_bioimageio_core_runs_the_package(package_2d, monkeypatch):
    core = pytest.importorskip("bioimageio.core")
    path = package_2d[1]
    # test_model turns deterministic algorithms off (their default), which imports torch's compiler (~4 s)
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda mode, **kwargs: None)
    states = torch.get_rng_state(), np.random.get_state()  # test_model seeds both
    try:
        summary = core.test_model(str(path), weight_format="torchscript")
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
    assert summary.status == "passed", [e.msg for d in summary.details for e in d.errors]
    assert any("Reproduce test outputs" in d.name and d.status == "passed" for d in summary.details)

    # the state-dict weights (napari-cvbm's own network class) compute what the TorchScript does
    description = rdf(path)
    fg = bio.FgProbabilities(**description["weights"]["pytorch_state_dict"]["architecture"]["kwargs"])
    fg.load_state_dict(torch.load(io.BytesIO(member(path, "weights_state_dict.pt")), weights_only=True))
    scripted = torch.jit.load(io.BytesIO(member(path, "weights_torchscript.pt")))
    x = torch.from_numpy(bio._zscore(np.load(io.BytesIO(member(path, "test_input.npy")))))
    with torch.no_grad():
        expected = np.load(io.BytesIO(member(path, "test_output.npy")))
        assert np.allclose(fg.eval()(x).numpy(), expected, atol=1e-6)
        assert np.allclose(scripted(x).numpy(), expected, atol=1e-6)


def test_reimported_model_predicts_the_same(package_3d, tmp_path):
    model, path = package_3d
    assert bio.is_package(path) and not bio.is_package(save_model(tmp_path / "m.pt", model, CONFIG_3D))
    loaded, config = bio.load_package(path)
    assert config == CONFIG_3D and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    image = np.random.default_rng(1).normal(size=(32, 32, 44)).astype(np.float32)  # two windows
    before, after = (Predictor(m, CONFIG_3D)(image, mode="avg", amp=False, device="cpu") for m in (model, loaded))
    assert np.array_equal(before.labels, after.labels) and len(np.unique(before.labels)) == 2
    for view in ("fg", "bg", "mix"):  # every head came back, not only the exported fg network
        assert np.array_equal(getattr(before, view), getattr(after, view))


def test_slice_model_with_colour_channels_runs_as_napari_cvbm_predicts(tmp_path_factory):
    photo = np.random.default_rng(2).uniform(0, 255, size=(3, 45, 50)).astype(np.float32)
    card = {"licence": "CC-BY-4.0", "task": "vessels of fundus photographs", "tags": ["retina"]}
    model, path = _export(tmp_path_factory, CONFIG_RGB, "rgb.zip", name="RGB vessels", card=card, test_image=photo)
    description = rdf(path)
    image = description["inputs"][0]
    assert image["axes"][1]["channel_names"] == ["red", "green", "blue"]
    assert [a["size"] for a in image["axes"][2:]] == [{"min": 16, "step": 1}] * 2  # resized inside: any side
    assert description["outputs"][0]["axes"][1]["channel_names"] == ["background", "vessel"]
    assert description["license"] == "CC-BY-4.0" and "retina" in description["tags"]
    assert "vessels of fundus photographs" in member(path, "README.md").decode()
    test_input = np.load(io.BytesIO(member(path, "test_input.npy")))
    assert test_input.shape == (1, 3, 32, 32) and np.array_equal(test_input[0], photo[:, 6:38, 9:41])  # centre crop

    # what another consumer computes with the TorchScript weights = napari-cvbm's prediction of the photo
    scripted = torch.jit.load(io.BytesIO(member(path, "weights_torchscript.pt")))
    with torch.no_grad():
        theirs = scripted(torch.from_numpy(bio._zscore(photo[None]))).numpy()[0]
    ours = Predictor(model, CONFIG_RGB)(photo, heads="fg", amp=False, device="cpu").fg
    assert theirs.shape == ours.shape == (2, 45, 50) and np.abs(theirs - ours).max() < 1e-4


def test_export_refuses_what_it_should(tmp_path):
    model = _model(CONFIG_2D)
    kept = tmp_path / "kept.zip"
    kept.write_bytes(b"keep me")
    assert "already exists" in one_line_error(lambda: bio.export_package(model, CONFIG_2D, kept, name="tiny model"))
    assert kept.read_bytes() == b"keep me"
    message = one_line_error(lambda: bio.export_package(model, CONFIG_2D, tmp_path / "m.pt", name="tiny model"))
    assert ".zip" in message
    message = one_line_error(lambda: bio.export_package(model, CONFIG_2D, tmp_path / "m.zip", name="model v1.2"))
    assert "'.'" in message and "'model v1 2'" in message
    assert list(tmp_path.iterdir()) == [kept]
    assert bio.package_name("file: m.pt") == "file m pt" and bio.package_name("m") == "CVBM model m"


def test_test_images_are_cut_to_valid_sizes():
    config = TrainConfig(dim=2, width=4, patch_size=(16, 64))  # instance norm: y from 16, x from 32
    assert bio._test_input(config, None).shape == (1, 1, 16, 64)
    small = np.arange(10 * 100, dtype=np.float32).reshape(10, 100)
    cut = bio._test_input(config, small)  # y padded (edge) to 16, x cut to the window's 64 around the centre
    assert cut.shape == (1, 1, 16, 64) and np.array_equal(cut[0, 0, :10], small[:, 18:82])
    volume = np.stack([small * k for k in range(5)])  # a 2D model's volume: its middle slice
    assert np.array_equal(bio._test_input(config, volume)[0, 0, :10], 2 * small[:, 18:82])
    assert "3 channels first" in one_line_error(bio._test_input, CONFIG_RGB, small)


def test_foreign_and_corrupt_packages_are_refused_in_one_line(package_2d, tmp_path):
    path = package_2d[1]
    text = member(path, "rdf.yaml").decode()
    assert "\n  napari_cvbm:\n" in text
    foreign = rewritten(path, tmp_path / "foreign.zip",
                        rdf_yaml=lambda d: d.decode().replace("\n  napari_cvbm:\n", "\n  another_tool:\n").encode())
    assert bio.is_package(foreign)
    assert "not made by napari-cvbm" in one_line_error(bio.load_package, foreign)

    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"this is not a zip archive")
    assert bio.is_package(broken) and "not a readable" in one_line_error(bio.load_package, broken)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "not a readable" in one_line_error(bio.load_package, truncated)

    def damage(data):
        return data[:1000] + bytes([data[1000] ^ 1]) + data[1001:]

    damaged = rewritten(path, tmp_path / "damaged.zip", napari_cvbm_model_pt=damage)
    assert "changed or damaged" in one_line_error(bio.load_package, damaged)
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("notes.txt", "no description")
    assert "no rdf.yaml" in one_line_error(bio.load_package, plain)
    assert "does not exist" in one_line_error(bio.load_package, tmp_path / "missing.zip")

    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(path) as package:
        package.extractall(folder)
    assert bio.is_package(folder) and bio.is_package(folder / "rdf.yaml")
    assert bio.load_package(folder)[1] == CONFIG_2D


def test_cli_export(package_2d, capsys, tmp_path):
    model, out, checkpoint = package_2d  # written by `cvbm export` (the fixture)
    loaded, _ = bio.load_package(out)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    before = out.read_bytes()
    assert cli.main(cli_export(checkpoint, out)) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before
    assert cli.main(cli_export(checkpoint, out) + ["--overwrite", "--description", "again"]) == 0
    assert str(out) in capsys.readouterr().out and rdf(out)["description"] == "again"

    # `cvbm predict` takes the package as it takes the checkpoint, and segments alike
    image = write_image(tmp_path / "scan.tif", np.random.default_rng(4).normal(size=(40, 48)).astype(np.float32))
    for source, folder in ((out, "from_package"), (checkpoint, "from_checkpoint")):
        assert cli.main(["predict", str(source), str(image), "--out", str(tmp_path / folder), "--float32"]) == 0
    labels = [read_labels(tmp_path / folder / "scan.tif").array for folder in ("from_package", "from_checkpoint")]
    assert np.array_equal(*labels)
