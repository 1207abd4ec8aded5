"""A trained model together with the inference settings it was trained for (spec 7).

Like nnU-Net's predictor, it carries its own patch or slice size and window overlap, so no caller
passes them by hand: the CLI, the widgets, validation and the benchmarks all segment through it.
"""

from dataclasses import dataclass

import numpy as np
import torch

from .checkpoint import load_model
from .config import TrainConfig
from .inference import Prediction, predict


@dataclass(frozen=True)
class Predictor:
    """``model`` with the ``config`` it was trained with."""

    model: torch.nn.Module
    config: TrainConfig

    @classmethod
    def load(cls, path) -> "Predictor":
        """The model of a checkpoint file, through the safe loading path (core.checkpoint)."""
        return cls(*load_model(path))

    def __call__(self, image: np.ndarray, **options) -> Prediction:
        """:func:`~.inference.predict` with this model's window settings; ``options`` as predict's
        (mode, heads, device, largest_component, progress, amp...)."""
        return predict(self.model, image, patch_size=self.config.patch_size, slice_size=self.config.slice_size,
                       overlap=self.config.inference_overlap, **options)
