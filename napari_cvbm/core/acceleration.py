"""Speed-ups for training and inference (issue 6): mixed precision, channels-last, torch.compile.

* Mixed precision: autocast to bfloat16 on CUDA devices that support it, else float16 with a
  gradient scaler; on CPUs with native bfloat16 arithmetic (AMX or AVX512-BF16), bfloat16
  convolutions through oneDNN (1.4-1.7x faster training on a Sapphire Rapids core); on other
  CPUs and MPS everything stays float32 (bfloat16 would be emulated there, and slower).
* Channels-last: the NHWC / NDHWC memory layout (faster for 3D float32 convolutions on CPUs).
* ``torch.compile`` of the student's forward pass (optional; the first steps pay the compile).
"""

import contextlib
import functools
from typing import Optional

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


def use_channels_last(setting: Optional[bool], dim: int, device: torch.device, amp: bool) -> bool:
    """The training layout: ``setting`` when given, else channels-last only where it measured
    faster, 3D float32 training on a CPU (1.3-1.5x, docs/PERFORMANCE.md). Under CPU bfloat16
    autocast, channels-last norms and activations are slow (training about 2x slower than contiguous);
    on GPUs the layout is unmeasured, so it stays contiguous unless asked for."""
    if setting is not None:
        return setting
    return dim == 3 and device.type == "cpu" and not (amp and autocast_dtype(device))


def memory_format(dim: int) -> torch.memory_format:
    return torch.channels_last if dim == 2 else torch.channels_last_3d


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
