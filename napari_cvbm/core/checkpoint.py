"""Checkpoints: atomic writes, a format version, safe loading (weights only) and validation.

A checkpoint is a plain dict of tensors and Python values, loaded with
``torch.load(weights_only=True)`` so that a crafted pickle cannot run code. It always holds
``config`` (a :class:`TrainConfig` dict) and ``model`` (the network's state dict); training
checkpoints add the state needed to resume.
"""

import os
import pickle
from pathlib import Path
from typing import Tuple

import torch

from .config import TrainConfig
from .errors import CVBMInputError
from .networks import CVBMNet

FORMAT = "napari-cvbm"
FORMAT_VERSION = 1


def build_model(config: TrainConfig) -> CVBMNet:
    """The network described by ``config`` (spec 1)."""
    return CVBMNet(dim=config.dim, num_classes=config.num_classes, width=config.width,
                   background_branch=config.background_branch, norm=config.norm)


def save_checkpoint(path, payload: dict) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed writer
        stale.unlink(missing_ok=True)
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def load_checkpoint(path) -> dict:
    """Read and check a checkpoint; anything unsafe, foreign or broken raises CVBMInputError."""
    path = Path(path)
    if not path.is_file():
        raise CVBMInputError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CVBMInputError(
            f"checkpoint {path} was refused: it is not a plain weights file and could run code "
            f"when loaded ({str(exc).splitlines()[0][:120]})") from None
    except Exception as exc:  # truncated zip, not a torch file, ...
        raise CVBMInputError(f"checkpoint {path} is not a readable napari-cvbm checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CVBMInputError(f"checkpoint {path} is not a napari-cvbm checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CVBMInputError(f"checkpoint {path} has format version {payload.get('format_version')}; "
                             f"this napari-cvbm reads version {FORMAT_VERSION}")
    for key in ("config", "model"):
        if key not in payload:
            raise CVBMInputError(f"checkpoint {path} lacks its {key!r} entry")
    return payload


def model_from_payload(payload: dict, source="checkpoint") -> Tuple[CVBMNet, TrainConfig]:
    """Build the network from a loaded checkpoint and load its weights, checking keys and shapes."""
    config = TrainConfig.from_dict(payload["config"])
    model = build_model(config)
    expected = model.state_dict()
    state = payload["model"]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        detail = "; ".join(f"{name}: {', '.join(keys[:3])}{'...' if len(keys) > 3 else ''}"
                           for name, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("wrong shape", wrong)) if keys)
        raise CVBMInputError(f"{source} does not match its network ({detail})")
    model.load_state_dict(state)
    return model, config


def load_model(path) -> Tuple[CVBMNet, TrainConfig]:
    """The trained network and its config from a model or training checkpoint (on the CPU, eval mode)."""
    model, config = model_from_payload(load_checkpoint(path), source=f"checkpoint {path}")
    return model.eval(), config


def save_model(path, model: torch.nn.Module, config: TrainConfig, dtype=None, **meta) -> Path:
    """A model-only checkpoint that ``cvbm predict`` and the napari widgets read.

    ``dtype=torch.float16`` halves the file (weights load back into float32 parameters).
    """
    state = {k: v.detach().cpu().to(dtype) if dtype is not None and v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    return save_checkpoint(path, {"kind": "model", "config": config.to_dict(), "model": state, **meta})
