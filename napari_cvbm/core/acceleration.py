"""Training speed-ups beyond mixed precision (which :mod:`.device` decides), and their timing.

* Channels-last: the NHWC / NDHWC memory layout. On a CPU it is used where it measured faster
  (:func:`use_channels_last`); on a GPU each run times both layouts on its own batch and keeps the
  faster (:func:`faster_layout`).
* :class:`GradientStep`: the optimiser step, through a gradient scaler under float16 autocast.
* ``torch.compile`` of the student's forward pass (optional, config ``compile``) is applied by
  :class:`~.training.TrainingRun`; the first steps pay the compile.

Measurements: ``docs/PERFORMANCE.md``.
"""

import copy
import time
from typing import Callable, Dict, Optional, Tuple

import torch

from .device import autocast, autocast_dtype, synchronize


def use_channels_last(setting: Optional[bool], dim: int, device: torch.device, amp: bool) -> Optional[bool]:
    """The training layout: ``setting`` when given; on a CPU, channels-last only where it measured
    faster, 3D float32 training (under bfloat16 autocast the channels-last norms make training
    slower; docs/PERFORMANCE.md); None on CUDA, where the run measures both layouts
    (:func:`faster_layout`); contiguous elsewhere (Apple MPS)."""
    if setting is not None:
        return setting
    if device.type == "cuda":
        return None
    return dim == 3 and device.type == "cpu" and not (amp and autocast_dtype(device))


def memory_format(dim: int) -> torch.memory_format:
    return torch.channels_last if dim == 2 else torch.channels_last_3d


def seconds_per_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Mean wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def fastest_call_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 3) -> float:
    """Wall time of the fastest of ``repeats`` timed calls of ``fn()`` after two untimed ones (the
    first calls of a process set up their kernels; a shared machine only ever slows a call down)."""
    return min(seconds_per_call(fn, device, repeats=1, warmup=2 if i == 0 else 0) for i in range(repeats))


def training_step_seconds(model: torch.nn.Module, batch_shape: Tuple[int, ...], device: torch.device,
                          amp: bool, channels_last: bool, repeats: int = 3) -> float:
    """Seconds per forward + backward of a copy of ``model`` (all heads) on a random batch, in
    one layout: the fastest of ``repeats`` timed steps after two warm-up steps (a shared machine
    only ever slows a step down); ``model`` itself is not touched."""
    net = copy.deepcopy(model).to(device).train()
    x = torch.randn(batch_shape, device=device)
    if channels_last:
        layout = memory_format(len(batch_shape) - 2)
        net.to(memory_format=layout)
        x = x.contiguous(memory_format=layout)

    def step():
        with autocast(device, amp):
            output = net(x)
        sum(t.float().sum() for t in output if t is not None).backward()

    return fastest_call_seconds(step, device, repeats)


def inference_window_seconds(model: torch.nn.Module, batch_shape: Tuple[int, ...], device: torch.device,
                             amp: bool) -> float:
    """Seconds per window of the fg head's forward pass (no gradients, as validation predicts) of a
    copy of ``model`` on a random batch of windows, the fastest of three timings after two untimed
    calls (a shared machine only ever slows a call down); ``model`` itself is not touched."""
    net = copy.deepcopy(model).to(device).eval()
    x = torch.randn(batch_shape, device=device)

    @torch.no_grad()
    def forward():
        with autocast(device, amp):
            torch.softmax(net.forward_fg(x).float(), dim=1)

    return fastest_call_seconds(forward, device) / batch_shape[0]


def faster_layout(model: torch.nn.Module, batch_shape: Tuple[int, ...], device: torch.device,
                  amp: bool) -> Tuple[bool, Dict[str, float]]:
    """Whether channels-last trains ``model`` faster than contiguous on ``device``, and the seconds
    per step of each; the random streams are left as they were, so the run stays reproducible."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # dropout and the random batch draw from them
        seconds = {layout: training_step_seconds(model, batch_shape, device, amp, layout == "channels-last")
                   for layout in ("contiguous", "channels-last")}
    return seconds["channels-last"] < seconds["contiguous"], seconds


class GradientStep:
    """zero_grad, backward, optimiser step; with float16 autocast, through a gradient scaler."""

    def __init__(self, device: torch.device, amp: bool):
        scale = amp and autocast_dtype(device) == torch.float16
        self.scaler = torch.amp.GradScaler(device.type) if scale else None

    def __call__(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
