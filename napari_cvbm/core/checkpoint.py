"""Checkpoints: atomic writes, a format version, safe loading (weights only) and validation.

A checkpoint is a plain dict of tensors and Python values, loaded with
``torch.load(weights_only=True)`` so that a crafted pickle cannot run code. It always holds
``config`` (a :class:`TrainConfig` dict) and ``model`` (the network's state dict); training
checkpoints add the state needed to resume.
"""

import pickle
from pathlib import Path
from typing import List, Sequence, Tuple

import torch

from .config import TrainConfig
from .errors import CVBMInputError
from .networks import CVBMNet
from .outputs import atomic_write

FORMAT = "napari-cvbm"
FORMAT_VERSION = 1
WEIGHT_ENTRIES = ("model", "teacher", "best_state", "pretrained_state")  # the state dicts a checkpoint holds


def build_model(config: TrainConfig) -> CVBMNet:
    """The network described by ``config`` (spec 1)."""
    network = {k: v for k, v in config.architecture().items() if k != "channel_names"}
    return CVBMNet(**network)


def save_checkpoint(path, payload: dict) -> Path:
    """Write ``payload`` to ``path`` atomically (:func:`outputs.atomic_write`: a failed write keeps the
    previous file and raises CVBMInputError naming ``path``). NaN/Inf weights are refused, unwritten."""
    _refuse_nonfinite(payload, f"{path} was not written", "the model diverged (learning rate too high?)")
    with atomic_write(path) as f:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, f)
    return Path(path)


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
        raise CVBMInputError(f"checkpoint {path} is not a readable napari-cvbm checkpoint "
                             f"({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CVBMInputError(f"checkpoint {path} is not a napari-cvbm checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CVBMInputError(f"checkpoint {path} has format version {payload.get('format_version')}; "
                             f"this napari-cvbm reads version {FORMAT_VERSION}")
    for key in ("config", "model"):
        if key not in payload:
            raise CVBMInputError(f"checkpoint {path} lacks its {key!r} entry")
    _refuse_nonfinite(payload, f"checkpoint {path} was refused",
                      "it was written by a diverged training; use an earlier checkpoint")
    return payload


def nonfinite_tensors(state: dict) -> List[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or Inf."""
    return [name for name, value in state.items()
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()]


def _refuse_nonfinite(payload: dict, what: str, why: str) -> None:
    """CVBMInputError ``what: ...; why`` naming the tensors of the payload's weights that hold NaN or Inf."""
    bad = [f"{entry}.{name}" for entry in WEIGHT_ENTRIES if isinstance(payload.get(entry), dict)
           for name in nonfinite_tensors(payload[entry])]
    if bad:
        raise CVBMInputError(f"{what}: its weights hold NaN/Inf ({_some(bad)}); {why}")


def _some(names: Sequence[str]) -> str:
    """The first three ``names``, with "..." when there are more."""
    return ", ".join(names[:3]) + ("..." if len(names) > 3 else "")


def model_from_payload(payload: dict, source="checkpoint") -> Tuple[CVBMNet, TrainConfig]:
    """Build the network from a loaded checkpoint and load its weights, checking keys and shapes."""
    try:
        config = TrainConfig.from_dict(payload["config"])
    except CVBMInputError as exc:
        raise CVBMInputError(f"{source}: {exc}") from None
    model = build_model(config)
    expected = model.state_dict()
    state = payload["model"]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        detail = "; ".join(f"{name}: {_some(keys)}" for name, keys in (
            ("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
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
