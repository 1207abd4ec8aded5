"""Teacher pseudo-labels for the student (spec 5)."""

from typing import Optional, Tuple

import numpy as np
import torch

from .components import largest_component_per_class


def _clean(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Largest component per class, sample by sample (2D slices or 3D volumes)."""
    cleaned = [largest_component_per_class(sample, num_classes) for sample in labels.cpu().numpy()]
    return torch.from_numpy(np.stack(cleaned)).to(labels.device)


def class_map(logits: torch.Tensor) -> torch.Tensor:
    """argmax over the class axis 1; ``max(1).indices`` gives the same map (first index on ties)
    about 25x faster than ``argmax(1)`` on CPU, where that reduction is slow."""
    return logits.max(1).indices


@torch.no_grad()
def pseudo_labels(teacher_output, clean: bool = True, valid: Optional[torch.Tensor] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(fg, bg) class maps of shape (N, *S) from the teacher's logits (spec 5).

    fg: argmax of P_fg. bg: argmax of the bg view 1 - Q_bg (the loss turns it into
    complementary labels). Both keep only the largest connected component per class when
    ``clean``. Without a bg head, the bg map repeats the fg one. ``valid`` (N, *S), a field of view:
    outside it both maps are background before cleaning, so that no component there is the one kept
    (those voxels take no loss either way).
    """
    num_classes = teacher_output.fg.shape[1]
    fg = class_map(teacher_output.fg)
    bg = fg if teacher_output.bg is None else class_map(-teacher_output.bg)  # argmax(1 - sigmoid) = argmax(-logit)
    if valid is not None:
        outside = valid <= 0
        fg = fg.masked_fill(outside, 0)
        bg = fg if teacher_output.bg is None else bg.masked_fill(outside, 0)
    if clean:
        fg = _clean(fg, num_classes)
        bg = fg if teacher_output.bg is None else _clean(bg, num_classes)
    return fg, bg
