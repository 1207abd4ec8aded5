"""Training speed-ups (issue 6): channels-last gives the same training, the fp16 gradient scaler path."""

import dataclasses

import torch

from napari_cvbm.core import acceleration
from napari_cvbm.core.training import TrainingRun


def _losses(config, cases):
    return [e.losses["total"] for e in TrainingRun(config, *cases).events()]


def test_channels_last_trains_the_same(tiny_cases, tiny_config):
    config = dataclasses.replace(tiny_config, pretrain_iterations=2, selftrain_iterations=2)
    plain = _losses(config, tiny_cases)
    fast_config = dataclasses.replace(config, channels_last=True)
    run = TrainingRun(fast_config, *tiny_cases)
    conv = next(m for m in run.model.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size == (3, 3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    fast = [e.losses["total"] for e in run.events()]
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(plain), rtol=1e-3, atol=1e-4)


def test_no_autocast_off_cuda():
    assert acceleration.autocast_dtype(torch.device("cpu")) is None
    assert acceleration.GradientStep(torch.device("cpu"), amp=True).scaler is None


def test_float16_gradient_scaler_path(monkeypatch):
    """Where autocast is float16 (CUDA without bf16) the step goes through a GradScaler."""
    monkeypatch.setattr(acceleration, "autocast_dtype", lambda device: torch.float16)
    step = acceleration.GradientStep(torch.device("cpu"), amp=True)
    assert step.scaler is not None
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    step((weight * torch.tensor([1.0, 2.0, 3.0])).sum(), optimizer)
    torch.testing.assert_close(weight.detach(), torch.tensor([0.9, 0.8, 0.7]))
