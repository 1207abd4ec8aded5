"""Where the engine computes, and in which precision.

* Device: ``"auto"`` takes CUDA, then Apple MPS, then the CPU; a named device is checked before
  use (:func:`choose_device`). :func:`available_devices` lists the choices that work here.
* Mixed precision: autocast to bfloat16 on CUDA devices that support it, else float16 (training
  then scales the loss, :class:`~.acceleration.GradientStep`); on CPUs with AMX tiles, bfloat16
  convolutions through oneDNN; on other CPUs and on MPS everything stays float32: bfloat16 would be
  emulated there, and slower, and on CPUs with AVX512-BF16 but no AMX (AMD Zen 4) oneDNN's
  bfloat16 training of the 3D network gave NaN gradients within a few dozen steps. Measurements:
  ``docs/PERFORMANCE.md``.
"""

import contextlib
import functools
from typing import List, Optional, Union

import torch

from .errors import CVBMInputError


# --------------------------------------------------------------------------------------------
# device
# --------------------------------------------------------------------------------------------
def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> List[str]:
    """Device choices that work on this machine: "auto", "cpu", then "cuda" and "mps" where available."""
    return (["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
            + (["mps"] if _mps_available() else []))


def choose_device(preference: Union[str, torch.device, None] = "auto") -> torch.device:
    """Return the torch device to compute on.

    ``"auto"`` (or None): CUDA if available, then Apple MPS, then CPU. ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` and ``"mps"`` are checked and raise :class:`CVBMInputError` when unavailable.
    """
    if preference is None:
        preference = "auto"
    if isinstance(preference, torch.device):
        preference = str(preference)
    pref = str(preference).strip().lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "cuda" or pref.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise CVBMInputError(
                f"device {preference!r} requested but CUDA is not available "
                "(no NVIDIA GPU, or a CPU-only PyTorch); use 'auto' or 'cpu'")
        try:
            dev = torch.device(pref)
        except RuntimeError as exc:
            raise CVBMInputError(f"invalid CUDA device {preference!r}") from exc
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CVBMInputError(
                f"device {preference!r} requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible")
        return dev
    if pref == "mps":
        if not _mps_available():
            raise CVBMInputError(
                "device 'mps' requested but Apple MPS is not available; use 'auto' or 'cpu'")
        return torch.device("mps")
    raise CVBMInputError(f"unknown device {preference!r}; use 'auto', 'cpu', 'cuda' or 'mps'")


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously), so that timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# precision
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU trains in bfloat16 in hardware: AMX tiles (AVX512-BF16 alone is not used,
    module docstring)."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


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
