"""Foreground one-hot and complementary background labels (spec 2)."""

import torch


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, *S) integer labels -> (N, C, *S) float one-hot."""
    return torch.nn.functional.one_hot(y.long(), num_classes).movedim(-1, 1).float()


def background_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Complementary labels Y_bg[c] = 1 where Y != c (spec 2), shape (N, C, *S), values 0/1.

    Binary case: channel 1 is 1 - Y. Multi-class: every one-hot channel inverted, so a
    voxel of class c is 0 in channel c and 1 in all others.
    """
    return 1.0 - one_hot(y, num_classes)
