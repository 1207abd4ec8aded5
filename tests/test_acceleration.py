"""Training speed-ups (issue 6): channels-last gives the same training, bfloat16 autocast on CPUs
that have it trains close to float32, the fp16 gradient scaler path."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cvbm.core import acceleration, device
from napari_cvbm.core.checkpoint import load_model
from napari_cvbm.core.inference import predict
from napari_cvbm.core.io import read_image, read_labels
from napari_cvbm.core.metrics import dice_score
from napari_cvbm.core.training import TrainingRun
from napari_cvbm.synthetic import SAMPLE_DATA

ROOT = Path(__file__).resolve().parents[1]
STARTER = ROOT / "napari_cvbm" / "models" / "starter.pt"
SAMPLE_TEST = SAMPLE_DATA / "test"


def _losses(config, cases):
    return [e.losses["total"] for e in TrainingRun(config, *cases).events()]


def test_channels_last_trains_the_same(tiny_cases, tiny_config):
    """Supervised steps only: in self-training, rounding differences of the layout can flip a few voxels
    of the thresholded pseudo-labels, a discrete change that is not a difference of the arithmetic."""
    config = dataclasses.replace(tiny_config, pretrain_iterations=4, selftrain_iterations=0, amp=False,
                                 channels_last=False)
    plain = _losses(config, tiny_cases)
    fast_config = dataclasses.replace(config, channels_last=True)
    run = TrainingRun(fast_config, *tiny_cases)
    conv = next(m for m in run.model.modules() if isinstance(m, torch.nn.Conv3d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    fast = [e.losses["total"] for e in run.events()]
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(plain), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("native", [True, False])
def test_cpu_autocasts_to_bfloat16_only_with_native_support(monkeypatch, native):
    monkeypatch.setattr(device, "cpu_has_native_bfloat16", lambda: native)
    cpu = torch.device("cpu")
    assert device.autocast_dtype(cpu) == (torch.bfloat16 if native else None)
    assert acceleration.GradientStep(cpu, amp=True).scaler is None  # bfloat16 needs no loss scaling
    conv = torch.nn.Conv2d(1, 2, 3)
    with device.autocast(cpu):
        assert conv(torch.ones(1, 1, 5, 5)).dtype == (torch.bfloat16 if native else torch.float32)
    with device.autocast(cpu, enabled=False):
        assert conv(torch.ones(1, 1, 5, 5)).dtype == torch.float32


@pytest.mark.parametrize("amx, avx512_bf16", [(True, True), (False, True), (False, False)])
def test_cpu_trains_in_bfloat16_only_with_amx(monkeypatch, amx, avx512_bf16):
    """AVX512-BF16 without AMX (AMD Zen 4) stays float32: oneDNN's bfloat16 training of the 3D network
    gave NaN gradients there within a few dozen steps (core/device.py)."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    device.cpu_has_native_bfloat16.cache_clear()
    try:
        assert device.cpu_has_native_bfloat16() is amx
        assert device.precision_name(torch.device("cpu")) == ("bfloat16" if amx else "float32")
    finally:
        monkeypatch.undo()
        device.cpu_has_native_bfloat16.cache_clear()


def test_bfloat16_training_on_cpu_follows_float32(monkeypatch, tiny_cases, tiny_config):
    """Mixed-precision steps (forced on here, so that any CPU runs them) give the float32 losses
    to bfloat16 accuracy, and the weights stay float32. Width 2: where bfloat16 is not native (AVX2),
    PyTorch emulates it, several times slower than float32; the arithmetic checked is the same. The
    convolutions run through PyTorch's own kernels, not oneDNN's: on AVX512-BF16 without AMX (AMD
    Zen 4), where the product stays float32 (test above), oneDNN's bfloat16 3D convolutions give NaN
    gradients within a few steps, which would fail this check of our own mixed-precision path."""
    monkeypatch.setattr(device, "cpu_has_native_bfloat16", lambda: True)
    config = dataclasses.replace(tiny_config, width=2, pretrain_iterations=3, selftrain_iterations=3)
    exact = _losses(dataclasses.replace(config, amp=False), tiny_cases)
    run = TrainingRun(config, *tiny_cases)
    with torch.backends.mkldnn.flags(enabled=False):
        mixed = [e.losses["total"] for e in run.events()]
    assert all(p.dtype == torch.float32 for p in run.model.parameters())
    assert mixed != exact  # the bfloat16 path really ran
    convs = []
    run.model.encoder.register_forward_hook(lambda module, inputs, output: convs.append(output[0].dtype))
    logits = run._forward(run.net, torch.zeros(1, 1, *tiny_config.patch_size))
    assert convs == [torch.bfloat16] and all(t.dtype == torch.float32 for t in logits)  # losses in float32
    torch.testing.assert_close(torch.tensor(mixed), torch.tensor(exact), rtol=0.03, atol=0.01)


def test_float16_gradient_scaler_path(monkeypatch):
    """Where autocast is float16 (CUDA without bf16) the step goes through a GradScaler."""
    monkeypatch.setattr(acceleration, "autocast_dtype", lambda device: torch.float16)
    step = acceleration.GradientStep(torch.device("cpu"), amp=True)
    assert step.scaler is not None
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    step((weight * torch.tensor([1.0, 2.0, 3.0])).sum(), optimizer)
    torch.testing.assert_close(weight.detach(), torch.tensor([0.9, 0.8, 0.7]))


def test_bfloat16_inference_matches_float32(monkeypatch):
    """The starter model on a sample test volume: bfloat16 windows give (nearly) the float32 labels.
    Only the fg head runs (heads="fg"): the labels and probabilities checked are the fg view's, the
    same as with all heads, at half the cost of (emulated, on AVX2) bfloat16."""
    image = read_image(SAMPLE_TEST / "images" / "case_012.nii.gz").array
    reference = read_labels(SAMPLE_TEST / "labels" / "case_012.nii.gz").array
    model, config = load_model(STARTER)
    monkeypatch.setattr(device, "cpu_has_native_bfloat16", lambda: True)
    exact, mixed = (predict(model, image, heads="fg", patch_size=config.patch_size, device="cpu", amp=amp)
                    for amp in (False, True))
    assert not np.array_equal(exact.fg, mixed.fg)  # the bfloat16 path really ran
    assert np.abs(exact.fg - mixed.fg).max() < 0.1
    assert (exact.labels == mixed.labels).mean() > 0.995
    assert abs(dice_score(exact.labels, reference, 2) - dice_score(mixed.labels, reference, 2)) < 0.01


@pytest.mark.parametrize("native", [True, False])
def test_automatic_layout_is_channels_last_only_for_3d_float32_on_cpu(monkeypatch, tiny_cases, tiny_config, native):
    monkeypatch.setattr(device, "cpu_has_native_bfloat16", lambda: native)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert acceleration.use_channels_last(None, 3, cpu, amp=True) is not native  # bfloat16: contiguous
    assert acceleration.use_channels_last(None, 3, cpu, amp=False)
    assert not acceleration.use_channels_last(None, 2, cpu, amp=False)
    assert acceleration.use_channels_last(None, 3, gpu, amp=False) is None  # measured by the run
    assert acceleration.use_channels_last(None, 3, torch.device("mps"), amp=True) is False
    assert acceleration.use_channels_last(True, 2, gpu, amp=True)
    assert not acceleration.use_channels_last(False, 3, cpu, amp=False)
    assert tiny_config.channels_last is None  # the presets choose automatically
    run = TrainingRun(tiny_config, *tiny_cases)
    conv = next(m for m in run.model.modules() if isinstance(m, torch.nn.Conv3d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d) is not native


def test_measured_layout_is_the_faster_one_and_leaves_the_run_unchanged(monkeypatch, tiny_cases, tiny_config):
    """Where the layout is measured (CUDA; forced here on the CPU), the run times both layouts on its
    own batch, trains in the faster one, and trains exactly as a run given that layout: the
    measurement touches neither the weights nor the random streams."""
    from napari_cvbm.core import training

    config = dataclasses.replace(tiny_config, pretrain_iterations=2, selftrain_iterations=2, amp=False)
    monkeypatch.setattr(training, "use_channels_last", lambda *args: None)
    measured = TrainingRun(config, *tiny_cases)
    seconds = measured.layout_seconds
    assert set(seconds) == {"contiguous", "channels-last"} and all(s > 0 for s in seconds.values())
    assert measured.channels_last == (seconds["channels-last"] < seconds["contiguous"])
    conv = next(m for m in measured.model.modules() if isinstance(m, torch.nn.Conv3d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d) == measured.channels_last
    losses = [e.losses["total"] for e in measured.events()]
    monkeypatch.setattr(training, "use_channels_last", lambda *args: measured.channels_last)
    assert _losses(config, tiny_cases) == losses
