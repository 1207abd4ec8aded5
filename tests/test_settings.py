"""Every training setting is checked up front: one CVBMInputError line, never another exception."""

import dataclasses
import math
from types import SimpleNamespace
from typing import Optional, Tuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import assert_one_error_line, cvbm, make_folder

from napari_cvbm import cli
from napari_cvbm.core.config import TrainConfig, parse_setting, preset
from napari_cvbm.core.errors import CVBMInputError
from napari_cvbm.core.inference import predict
from napari_cvbm.core.networks import CVBMNet

NAN, INF = math.nan, math.inf
FIELDS = {f.name: f.type for f in dataclasses.fields(TrainConfig)}

# wrong types, by the field's annotation
BAD_TYPES = {
    int: ["abc", "", None, 1.5, 2.0, True, False, NAN, INF, (4,), [4]],
    float: ["abc", "", None, True, NAN, INF, -INF, (0.5,), 10 ** 400],
    bool: ["yes", "true", 1, 0, 0.5, None, NAN, (True,)],
    str: ["nonsense", "", 1, None, True, ("poly",)],
    Optional[bool]: ["yes", 1, 0, NAN],
    Tuple[int, ...]: [32, "32", "abc", (32, 32), (32, 32, 32, 32), (0, 32, 32), (-32, 32, 32), (32.0, 32, 32),
                      (True, 32, 32), ("a", 32, 32), (NAN, 32, 32), (24, 32, 32), (16, 16, 16), None, ()],
    Optional[Tuple[int, int]]: [(32, 32)],  # a 3D run has no slice size
    Optional[Tuple[float, ...]]: [1.25, "1.25", (0, 1.0, 1.0), (-1.25, 1.0, 1.0), (NAN, 1.0, 1.0),
                                  (INF, 1.0, 1.0), (True, 1.0, 1.0), ("a", 1.0, 1.0), (1.25, 1.25), ()],
    # names of the channels or classes: text, one per channel or class (in these checks in_channels is 1
    # and num_classes 2)
    Optional[Tuple[str, ...]]: ["red", ("red", 1), (1,), ("",), ("red", "green", "blue"), (), [None]],
}
# values of the right type outside the field's range
OUT_OF_RANGE = {
    "dim": [0, 1, 4, -3], "num_classes": [1, 0, -2], "width": [0, -4], "in_channels": [0, -3],
    "batch_labeled": [0, -2, 3], "batch_unlabeled": [0, 4, 6],
    "pretrain_iterations": [0, -1], "selftrain_iterations": [-1], "lr": [0, 0.0, -0.01],
    "momentum": [-0.1, 1, 1.5], "weight_decay": [-1e-4], "ema_decay": [-0.01, 1.01],
    "alpha": [-0.5], "cutmix_beta": [0, 1, 1.5, -0.2], "consistency_weight": [-1.0],
    "consistency_rampup": [-1], "rot_flip_probability": [-0.1, 1.5], "rotate_degrees": [-1, 181],
    "validate_every": [0, -5], "checkpoint_every": [0, -1], "inference_overlap": [1, 1.0, -0.1, 1.5],
    "seed": [-1, 2 ** 32, 10 ** 400],
}
# edge values that are fine
VALID = {"selftrain_iterations": 0, "consistency_rampup": 0, "lr": 1e6, "momentum": 0, "ema_decay": 1.0,
         "alpha": 0, "inference_overlap": 0, "channels_last": None, "rotate_degrees": 180, "seed": 2 ** 32 - 1,
         "patch_size": (16, 16, 32), "width": 1, "weight_decay": 0, "spacing": (2.5, 0.7, 0.7),
         "in_channels": 4, "channel_names": ("T1",), "class_names": ("background", "left atrium")}


def assert_refused(value, name, **overrides):
    with pytest.raises(CVBMInputError) as caught:
        preset("cpu", 3, **{name: value}, **overrides)
    message = str(caught.value)
    assert "\n" not in message and name in message, message
    return message


def test_every_field_has_a_battery():
    assert set(FIELDS.values()) <= set(BAD_TYPES)


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_bad_values_of_every_field_are_refused_in_one_line(name):
    for value in BAD_TYPES[FIELDS[name]] + OUT_OF_RANGE.get(name, []):
        assert_refused(value, name)


@pytest.mark.parametrize("name, value", sorted(VALID.items()))
def test_edge_values_are_accepted(name, value):
    assert getattr(preset("cpu", 3, **{name: value}), name) == value


def test_float_settings_take_whole_numbers_as_floats():
    config = preset("cpu", 3, lr=1, rotate_degrees=20)
    assert type(config.lr) is float and type(config.rotate_degrees) is float


def test_2d_sizes():
    assert preset("cpu", 2, slice_size=(16, 32)).slice_size == (16, 32)
    for value in [(16, 16), (32,), (32, 32, 32), (24, 32), (0, 32), "abc", 32]:
        with pytest.raises(CVBMInputError, match="slice_size"):
            preset("cpu", 2, slice_size=value)
    with pytest.raises(CVBMInputError, match="patch_size"):
        preset("cpu", 2, patch_size=(32, 32, 32))


def test_single_voxel_bottleneck_names_the_minimum():
    message = assert_refused((16, 16, 16), "patch_size")
    assert "32" in message and "instance" in message
    assert preset("cpu", 3, patch_size=(16, 16, 16), norm="batch").patch_size == (16, 16, 16)


@pytest.mark.parametrize("dim, size", [(3, (16, 16, 16)), (3, (16, 16, 32)), (3, (32, 16, 16)), (3, (16, 32, 16)),
                                       (2, (16, 16)), (2, (16, 32))])
@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_refused_sizes_are_exactly_those_that_fail_to_predict(dim, size, norm):
    """A window of one image, a batch of one: what a patch-sized image (or a last partial batch) meets."""
    name = "patch_size" if dim == 3 else "slice_size"
    try:
        preset("cpu", dim, norm=norm, **{name: size})
        accepted = True
    except CVBMInputError:
        accepted = False
    model = CVBMNet(dim=dim, width=4, norm=norm)
    image = np.random.default_rng(0).normal(size=size).astype(np.float32)
    try:
        predict(model, image, **{name: size}, device="cpu")
        predicts = True
    except ValueError:
        predicts = False
    assert accepted == predicts


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(FIELDS) + ["name", "", "colour"]), raw=st.text(max_size=20))
def test_any_set_value_is_a_valid_setting_or_one_input_error(name, raw):
    try:
        key, value = parse_setting(f"{name}={raw}")
        preset("cpu", 3, **{key: value})
    except CVBMInputError as exc:
        assert "\n" not in str(exc)


def test_parse_setting_without_equals():
    with pytest.raises(CVBMInputError, match="key=value"):
        parse_setting("lr")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data"), n=1)


@pytest.mark.parametrize("args, fragments", [
    (["--set", "lr=nan"], ["lr", "nan"]),
    (["--set", "width=1.5"], ["width", "1.5"]),
    (["--set", "amp=1"], ["amp", "true or false"]),
    (["--set", "patch_size=16,16,16"], ["patch_size", "32"]),
    (["--set", "patch_size=32,32"], ["patch_size", "3 sides"]),
    (["--set", "inference_overlap=1"], ["inference_overlap"]),
    (["--set", "name=x"], ["unknown", "name"]),
    (["--set", "dim=abc"], ["dim"]),
    (["--set", "num_classes=abc"], ["num_classes"]),
    (["--dim", "3", "--set", "dim=2"], ["--dim 3", "dim=2"]),
    (["--num-classes", "3", "--set", "num_classes=4"], ["--num-classes 3", "num_classes=4"]),
])
def test_cli_settings_are_refused_in_one_line(data, tmp_path, capsys, args, fragments):
    quick = ["--set", "width=4", "--set", "pretrain_iterations=1", "--set", "selftrain_iterations=1"]  # if accepted
    code = cli.main(["train", "--images", str(data / "images"), "--labels", str(data / "labels"),
                     "--out", str(tmp_path / "o"), *quick, *args])
    err = capsys.readouterr().err
    assert_one_error_line(SimpleNamespace(returncode=code, stdout="", stderr=err), *fragments)
    assert not (tmp_path / "o" / "last.pt").exists()


def test_cli_setting_refused_by_the_real_command(data, tmp_path):
    assert_one_error_line(cvbm("train", "--images", data / "images", "--labels", data / "labels",
                               "--out", tmp_path / "o", "--set", "cutmix_beta=inf"), "cutmix_beta")
