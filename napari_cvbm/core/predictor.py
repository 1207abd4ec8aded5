"""A trained model together with the inference settings it was trained for (spec 7).

Like nnU-Net's predictor, it carries its own patch or slice size, window overlap and working
spacing (the plan, ``core.planning``), so no caller passes them by hand: the CLI, the widgets,
validation and the benchmarks all segment through it.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from . import resampling
from .channels import check_channels, spatial_shape
from .config import TrainConfig
from .errors import CVBMInputError
from .inference import Prediction, predict
from .model_source import open_model


@dataclass(frozen=True)
class Predictor:
    """``model`` with the ``config`` it was trained with."""

    model: torch.nn.Module
    config: TrainConfig

    @classmethod
    def load(cls, source) -> "Predictor":
        """The model of ``source``: a bundled model's name, a bioimage.io package or a checkpoint file
        (:func:`~.model_source.open_model`; checkpoints through the safe loading path, core.checkpoint)."""
        return cls(*open_model(source))

    def __call__(self, image: np.ndarray, spacing: Optional[Sequence[float]] = None,
                 channels: Optional[Sequence[str]] = None, valid: Optional[np.ndarray] = None,
                 **options) -> Prediction:
        """:func:`~.inference.predict` with this model's window settings; ``options`` as predict's
        (mode, heads, device, largest_component, progress, amp...); ``largest_component`` (None or not
        given) is the model's own setting (decided on validation when it was trained).

        ``image`` follows core.channels (channels first for a model of several); ``channels``, the
        names of the image's channels as its reader knows them (() for one channel), are checked
        against the model's (:func:`~.channels.check_channels`).

        With ``spacing`` (the image's voxel size in mm, array order) and a model trained at a working
        spacing (the plan), the image is resampled to it and the probabilities back onto the image's
        own grid, where the labels and maps are computed: the result always has the image's shape.
        With ``valid`` (a field-of-view mask of that shape), everything outside it is certain
        background (:meth:`~.inference.Prediction.restrict`)."""
        shape = spatial_shape(image, self.config.in_channels)
        if valid is not None and np.shape(valid) != tuple(shape):
            raise CVBMInputError(f"the field of view has shape {np.shape(valid)}; the image has {tuple(shape)}")
        prediction = self._on_image_grid(image, spacing, channels, **options)
        return prediction if valid is None else prediction.restrict(valid)

    def _on_image_grid(self, image, spacing, channels, **options) -> Prediction:
        check_channels(self.config.in_channels, self.config.channel_names or (), channels)
        if options.get("largest_component") is None:  # not given: the model's own setting
            options["largest_component"] = bool(self.config.largest_component)
        factors = resampling.zoom_factors(spacing, self.config.spacing) if spacing is not None else None
        if factors is None:
            return self._predict(image, **options)
        largest = options.pop("largest_component")
        shape = spatial_shape(image, self.config.in_channels)
        small = self._predict(resampling.resample_image(np.asarray(image), resampling.working_shape(
            shape, factors)), **options)
        views = [None if v is None else resampling.resample_probabilities(v, shape)
                 for v in (small.fg, small.bg, small.mix)]
        return Prediction.from_views(*views, mode=small.mode, largest_component=largest)

    def _predict(self, image: np.ndarray, **options) -> Prediction:
        return predict(self.model, image, patch_size=self.config.patch_size, slice_size=self.config.slice_size,
                       overlap=self.config.inference_overlap, **options)
