"""GPU speed-ups for training and inference (issue 6): mixed precision, channels-last, torch.compile.

* Mixed precision: autocast to bfloat16 on CUDA devices that support it, else float16 with a
  gradient scaler; on CPU and MPS everything stays float32 (exact, and not slower).
* Channels-last: the NHWC / NDHWC memory layout that cuDNN's tensor-core convolutions prefer.
* ``torch.compile`` of the student's forward pass (optional; the first steps pay the compile).
"""

import contextlib
from typing import Optional

import torch


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """bfloat16 where the CUDA device supports it, float16 on other CUDA devices, None elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool = True):
    """Mixed-precision context for ``device`` (a no-op off CUDA or when not ``enabled``)."""
    dtype = autocast_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
