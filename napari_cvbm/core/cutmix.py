"""Cut-mix of two inputs with one cuboid mask per iteration (spec 3)."""

from typing import Optional, Sequence, Tuple

import torch


def cutmix_mask(
    spatial_shape: Sequence[int],
    beta: float = 2 / 3,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Binary mask M of ``spatial_shape``: 0 inside a random cuboid of ``beta`` of each side, 1 outside.

    The cuboid position is uniform over all positions that keep it inside the image.
    """
    mask = torch.ones(tuple(spatial_shape))
    box = []
    for size in spatial_shape:
        side = max(1, int(round(size * beta)))
        start = int(torch.randint(0, size - side + 1, (1,), generator=generator))
        box.append(slice(start, start + side))
    mask[tuple(box)] = 0
    return mask


def cutmix(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``a`` where M = 1 and ``b`` where M = 0 (``a*M + b*(1-M)``), for images or integer labels.

    ``mask`` has the spatial shape and broadcasts over leading batch/channel dimensions.
    """
    return torch.where(mask.bool().to(a.device), a, b)


def cutmix_pair(
    a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two complementary mixes (X_a, X_b) = (a*M + b*(1-M), a*(1-M) + b*M) of spec 3."""
    return cutmix(a, b, mask), cutmix(b, a, mask)
