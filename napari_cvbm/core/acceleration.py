"""Speed-ups for training and inference (issue 6): mixed precision, channels-last, torch.compile.

* Mixed precision: autocast to bfloat16 on CUDA devices that support it, else float16 with a
  gradient scaler; on CPUs with native bfloat16 arithmetic (AMX or AVX512-BF16), bfloat16
  convolutions through oneDNN (1.4-1.7x faster training on a Sapphire Rapids core); on other
  CPUs and MPS everything stays float32 (bfloat16 would be emulated there, and slower).
* Channels-last: the NHWC / NDHWC memory layout (faster for 3D float32 convolutions on CPUs; on
  GPUs, each run times both layouts on its own batch and keeps the faster, ``faster_layout``).
* ``torch.compile`` of the student's forward pass (optional; the first steps pay the compile).
"""

import contextlib
import copy
import functools
import time
from typing import Callable, Dict, Optional, Tuple

import torch


@functools.lru_cache(maxsize=None)
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX512-BF16)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """bfloat16 on CUDA devices and CPUs that support it, float16 on other CUDA devices, else None."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bfloat16():
        return torch.bfloat16
    return None


def precision_name(device: torch.device, amp: bool = True) -> str:
    """The arithmetic that convolutions on ``device`` use: "bfloat16", "float16" or "float32"."""
    dtype = autocast_dtype(device) if amp else None
    return str(dtype or torch.float32).replace("torch.", "")


def autocast(device: torch.device, enabled: bool = True):
    """Mixed-precision context for ``device`` (a no-op where :func:`autocast_dtype` is None or not ``enabled``)."""
    dtype = autocast_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def use_channels_last(setting: Optional[bool], dim: int, device: torch.device, amp: bool) -> Optional[bool]:
    """The training layout: ``setting`` when given; on a CPU, channels-last only where it measured
    faster, 3D float32 training (1.3-1.5x, docs/PERFORMANCE.md; under bfloat16 autocast the
    channels-last norms make training about 2x slower); None on CUDA, where the run measures both
    layouts (:func:`faster_layout`); contiguous elsewhere (Apple MPS)."""
    if setting is not None:
        return setting
    if device.type == "cuda":
        return None
    return dim == 3 and device.type == "cpu" and not (amp and autocast_dtype(device))


def memory_format(dim: int) -> torch.memory_format:
    return torch.channels_last if dim == 2 else torch.channels_last_3d


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously), so that timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def training_step_seconds(model: torch.nn.Module, batch_shape: Tuple[int, ...], device: torch.device,
                          amp: bool, channels_last: bool, repeats: int = 3) -> float:
    """Seconds per forward + backward of a copy of ``model`` (all heads) on a random batch, in
    one layout, after two warm-up steps; ``model`` itself is not touched."""
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

    return seconds_per_call(step, device, repeats, warmup=2)


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
