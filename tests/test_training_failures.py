"""A diverging run stops with a clear error and keeps its last good checkpoints; NaN weights are
never written nor loaded; a resumed run applies the safe setting changes and refuses the others."""

import dataclasses
import math

import pytest
import torch
from test_cli import TINY, cvbm, make_folder

from napari_cvbm import cli
from napari_cvbm.core import training
from napari_cvbm.core.checkpoint import build_model, load_checkpoint, load_model, save_checkpoint, save_model
from napari_cvbm.core.errors import CVBMInputError
from napari_cvbm.core.training import TrainingRun


def finite(state):
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_divergence_stops_at_once_and_keeps_the_last_good_checkpoint(tiny_cases, tiny_config, tmp_path):
    config = dataclasses.replace(tiny_config, lr=1e6, checkpoint_every=1)
    run = TrainingRun(config, *tiny_cases, out_dir=tmp_path)
    seen = []
    with pytest.raises(CVBMInputError) as caught:
        for event in run.events():
            seen.append(event)
    message = str(caught.value)
    assert "\n" not in message and "diverged" in message and "learning rate" in message
    assert f"pretrain iteration {len(seen) + 1}/4" in message
    assert all(math.isfinite(v) for e in seen for v in e.losses.values())
    last = load_checkpoint(tmp_path / "last.pt")  # the last step whose weights were finite
    assert (last["phase"], last["iteration"]) == ("pretrain", len(seen))
    assert {p.name for p in tmp_path.iterdir()} == {"last.pt"}


def test_a_mixed_precision_run_that_diverges_points_at_float32(tiny_cases, tiny_config, monkeypatch):
    """In bfloat16 (forced here: this CPU may have none) the error says so and names amp=false."""
    from napari_cvbm.core import device

    monkeypatch.setattr(device, "cpu_has_native_bfloat16", lambda: True)
    run = TrainingRun(dataclasses.replace(tiny_config, width=2, lr=1e6), *tiny_cases)
    with pytest.raises(CVBMInputError) as caught, torch.backends.mkldnn.flags(enabled=False):
        for _ in run.events():
            pass
    assert "trained in bfloat16" in str(caught.value) and "amp=false" in str(caught.value)


def _poison(monkeypatch, name, from_call):
    """Make training's loss function ``name`` return NaN from its ``from_call``-th call on."""
    original, calls = getattr(training, name), []

    def poisoned(*args, **kwargs):
        calls.append(1)
        out = original(*args, **kwargs)
        if len(calls) < from_call:
            return out
        return {k: v * math.nan for k, v in out.items()} if isinstance(out, dict) else out * math.nan

    monkeypatch.setattr(training, name, poisoned)


def test_a_non_finite_loss_term_is_named_and_never_applied(tiny_cases, tiny_config, tmp_path, monkeypatch):
    _poison(monkeypatch, "complementary_seg_loss", from_call=5)  # two calls a step: the 3rd step
    run = TrainingRun(dataclasses.replace(tiny_config, checkpoint_every=1), *tiny_cases, out_dir=tmp_path)
    with pytest.raises(CVBMInputError, match=r"pretrain iteration 3/4: loss term\(s\) bg, total"):
        list(run.events())
    assert same(load_checkpoint(tmp_path / "last.pt")["model"], run.model.state_dict())  # the step was not taken


def test_divergence_in_self_training_keeps_the_pretrained_teacher(tiny_cases, tiny_config, tmp_path, monkeypatch):
    _poison(monkeypatch, "bidirectional_consistency", from_call=3)  # two calls a step: the 2nd student step
    run = TrainingRun(dataclasses.replace(tiny_config, checkpoint_every=1), *tiny_cases, out_dir=tmp_path)
    events = run.events()
    for _ in range(tiny_config.pretrain_iterations + 1):
        next(events)
    pretrained = (tmp_path / "pretrained.pt").read_bytes()
    with pytest.raises(CVBMInputError, match=r"selftrain iteration 2/4: loss term\(s\) bcl_direct"):
        next(events)
    assert (tmp_path / "pretrained.pt").read_bytes() == pretrained and not (tmp_path / "best.pt").exists()
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 1


def _poison_weights(run, at_step):
    """Make the ``at_step``-th optimiser step leave an Inf weight (a finite loss, then overflow)."""
    original, calls = run._gradient_step, []

    def step_then_overflow(loss, optimizer):
        original(loss, optimizer)
        calls.append(1)
        if len(calls) == at_step:
            with torch.no_grad():
                next(run.model.parameters()).fill_(math.inf)

    run._gradient_step = step_then_overflow


def test_non_finite_weights_are_never_written_nor_selected(tiny_cases, tiny_config, tmp_path):
    run = TrainingRun(dataclasses.replace(tiny_config, checkpoint_every=1), *tiny_cases, out_dir=tmp_path)
    _poison_weights(run, at_step=2)
    with pytest.raises(CVBMInputError, match=r"pretrain iteration 2/4: the weights became NaN/Inf \(encoder"):
        list(run.events())
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 1

    run = TrainingRun(tiny_config, *tiny_cases)  # no checkpoints (the Fine-tune widget): nothing to select
    _poison_weights(run, at_step=8)
    with pytest.raises(CVBMInputError, match="selftrain iteration 4/4: the weights became NaN/Inf"):
        list(run.events())
    assert run.phase == "selftrain"


def test_cvbm_train_with_a_huge_learning_rate_fails(tmp_path):
    data = make_folder(tmp_path / "data")
    out = tmp_path / "run"
    result = cvbm("train", "--images", data / "images", "--labels", data / "labels", "--out", out, *TINY,
                  "--set", "lr=1e6")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("cvbm: error: training diverged") and "learning rate" in last_line
    assert not (out / "model.pt").exists()
    assert finite(load_checkpoint(out / "last.pt")["model"])


# -- checkpoints with NaN/Inf weights ------------------------------------------------------------
def test_nan_weights_are_never_written(tiny_config, tmp_path):
    model = build_model(tiny_config)
    good = save_model(tmp_path / "m.pt", model, tiny_config)
    before = good.read_bytes()
    with torch.no_grad():
        next(model.parameters())[0] = math.nan
    with pytest.raises(CVBMInputError, match="NaN/Inf"):
        save_model(good, model, tiny_config)
    assert good.read_bytes() == before
    with torch.no_grad():
        next(model.parameters()).fill_(1e6)  # finite in float32, Inf in float16
    with pytest.raises(CVBMInputError, match="NaN/Inf"):
        save_model(tmp_path / "half.pt", model, tiny_config, dtype=torch.float16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


@pytest.mark.parametrize("entry", ["model", "teacher"])
def test_checkpoints_with_nan_weights_are_refused(tiny_config, tmp_path, entry):
    state = build_model(tiny_config).state_dict()
    payload = {"format": "napari-cvbm", "format_version": 1, "config": tiny_config.to_dict(), "model": state,
               "teacher": {k: v.clone() for k, v in state.items()}}
    payload[entry]["encoder.blocks.0.0.weight"][0] = math.inf
    torch.save(payload, tmp_path / "bad.pt")  # written by something other than napari-cvbm
    with pytest.raises(CVBMInputError, match=rf"bad.pt.*NaN/Inf.*{entry}.encoder.blocks.0.0.weight"):
        load_model(tmp_path / "bad.pt")
    fresh = build_model(tiny_config).state_dict()
    save_checkpoint(tmp_path / "ok.pt", {"config": tiny_config.to_dict(), "model": fresh})
    assert load_model(tmp_path / "ok.pt")[1] == tiny_config


# -- resuming with other settings -----------------------------------------------------------------
@pytest.fixture
def finished(tiny_cases, tiny_config, tmp_path):
    """A tiny run (4 + 4 steps, no validation) that finished, and its cases."""
    list(TrainingRun(tiny_config, *tiny_cases, out_dir=tmp_path).events())
    return tmp_path / "last.pt"


def test_resume_extends_a_finished_run(finished, tiny_cases):
    run = TrainingRun.resume(finished, *tiny_cases, overrides={"selftrain_iterations": 6, "checkpoint_every": 3})
    assert run.resume_changes == ["selftrain_iterations 4 -> 6", "checkpoint_every 2 -> 3"]
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    events = list(run.events())
    assert [(e.phase, e.iteration) for e in events] == [("selftrain", 5), ("selftrain", 6)]
    assert run.phase == "done" and not same(before, run.final_model().state_dict())


@pytest.mark.parametrize("overrides, preset_name, fragments", [
    ({"width": 8}, None, ["width", "4", "8"]),
    ({"lr": 0.1, "seed": 3}, None, ["lr", "0.01", "0.1", "seed"]),
    ({"dim": 2}, None, ["dim", "3", "2"]),
    ({"num_classes": 3}, None, ["num_classes", "2", "3"]),
    ({}, "cpu", ["width", "4", "8", "patch_size"]),
    ({"pretrain_iterations": 9}, None, ["pretrain_iterations", "pre-training has finished"]),
    ({"selftrain_iterations": 3}, None, ["selftrain_iterations", "3", "4"]),
])
def test_resume_refuses_other_changes(finished, tiny_cases, overrides, preset_name, fragments):
    with pytest.raises(CVBMInputError) as caught:
        TrainingRun.resume(finished, *tiny_cases, overrides=overrides, preset_name=preset_name)
    assert "\n" not in str(caught.value) and all(f in str(caught.value) for f in fragments), caught.value


def test_resume_with_the_same_settings_changes_nothing(finished, tiny_cases, tiny_config):
    run = TrainingRun.resume(finished, *tiny_cases, overrides={"width": 4, "dim": 3}, preset_name=None)
    decided = dataclasses.replace(tiny_config, largest_component=False)  # decided at the end: no validation
    assert run.resume_changes == [] and run.config == decided


def test_cvbm_train_resume_applies_and_refuses_settings(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    out = tmp_path / "run"
    base = ["train", "--images", str(data / "images"), "--labels", str(data / "labels"), "--out", str(out)]
    assert cli.main([*base, *TINY]) == 0
    capsys.readouterr()
    assert cli.main([*base, "--resume", str(out / "last.pt"), "--set", "selftrain_iterations=3"]) == 0
    assert "resume: selftrain_iterations 2 -> 3" in capsys.readouterr().out
    assert load_checkpoint(out / "last.pt")["config"]["selftrain_iterations"] == 3
    for extra, fragment in ((["--dim", "2"], "dim"), (["--num-classes", "3"], "num_classes"),
                            (["--preset", "cpu"], "width"), (["--set", "lr=0.5"], "lr")):
        assert cli.main([*base, "--resume", str(out / "last.pt"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("cvbm: error: ") and fragment in err[0], err
