"""CVBM network: shared encoder, foreground / background decoders and mixing layer (spec 1).

One model, three heads. ``dim=3`` builds the V-Net of the paper, ``dim=2`` the classic
semi-supervised medical segmentation U-Net. Both are assembled from the same few blocks
(``ConvBlock``, ``DownBlock``, ``UpBlock``), parametrised by the spatial dimensionality.
"""

from typing import NamedTuple, Optional

import torch
from torch import nn

from .errors import CVBMInputError

__all__ = ["CVBMNet", "CVBMOutput", "count_parameters"]


class CVBMOutput(NamedTuple):
    """Logits of the three heads (spec 1); ``bg`` and ``mix`` are None for a fg-only model."""

    fg: torch.Tensor
    bg: Optional[torch.Tensor]
    mix: Optional[torch.Tensor]


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _layers(dim: int, norm: str) -> dict:
    """Pick the 2D or 3D layer classes (conv, transposed conv, norm, pooling)."""
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    if norm not in ("instance", "batch"):
        raise ValueError(f"norm must be 'instance' or 'batch', got {norm!r}")
    two = dim == 2
    norms = {
        # InstanceNorm with learned affine parameters, computed as GroupNorm with one channel per
        # group: the same values and state-dict keys (weight, bias) as nn.InstanceNormNd(affine=True),
        # 20-35% faster on CPU (issue 6).
        "instance": lambda c: nn.GroupNorm(c, c),
        "batch": nn.BatchNorm2d if two else nn.BatchNorm3d,
    }
    return {
        "conv": nn.Conv2d if two else nn.Conv3d,
        "convT": nn.ConvTranspose2d if two else nn.ConvTranspose3d,
        "norm": norms[norm],
        "pool": nn.MaxPool2d if two else nn.MaxPool3d,
    }


class ConvBlock(nn.Sequential):
    """``n_convs`` x (conv3 + norm + activation); optional dropout after the first unit."""

    def __init__(self, L: dict, n_convs: int, c_in: int, c_out: int, act: type,
                 dropout: float = 0.0):
        layers = []
        for i in range(n_convs):
            conv = L["conv"](c_in if i == 0 else c_out, c_out, 3, padding=1)
            layers += [conv, L["norm"](c_out), act()]
            if i == 0 and dropout > 0:
                layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class DownBlock(nn.Sequential):
    """Halve the resolution: V-Net stride-2 conv (k=2) + norm + act, or U-Net 2x max-pool.

    For ``mode="pool"`` the channel change is done by the conv block that follows.
    """

    def __init__(self, L: dict, mode: str, c_in: int, c_out: int, act: type):
        if mode == "conv":
            super().__init__(L["conv"](c_in, c_out, 2, stride=2), L["norm"](c_out), act())
        else:
            super().__init__(L["pool"](2))


class UpBlock(nn.Module):
    """Double the resolution, merge the skip (add or concat), then a conv block.

    ``mode``: "transpose" (transposed conv k=2 s=2 + norm + act), "nearest" (nearest upsampling +
    conv3 + norm + act), both from V-Net; "bilinear" (1x1 conv + (bi/tri)linear upsampling) and
    "nearest1x1" (1x1 conv + nearest), "transpose_plain" (transposed conv only), from U-Net.
    The up-sampling op maps ``c_in`` to ``c_skip`` channels.
    """

    def __init__(self, L: dict, mode: str, merge: str, c_in: int, c_skip: int, c_out: int,
                 n_convs: int, act: type, dim: int):
        super().__init__()
        interp = "bilinear" if dim == 2 else "trilinear"
        if mode == "transpose":
            up = [L["convT"](c_in, c_skip, 2, stride=2), L["norm"](c_skip), act()]
        elif mode == "nearest":
            up = [nn.Upsample(scale_factor=2, mode="nearest"),
                  L["conv"](c_in, c_skip, 3, padding=1), L["norm"](c_skip), act()]
        elif mode == "bilinear":
            up = [L["conv"](c_in, c_skip, 1),
                  nn.Upsample(scale_factor=2, mode=interp, align_corners=True)]
        elif mode == "nearest1x1":
            up = [L["conv"](c_in, c_skip, 1), nn.Upsample(scale_factor=2, mode="nearest")]
        elif mode == "transpose_plain":
            up = [L["convT"](c_in, c_skip, 2, stride=2)]
        else:
            raise ValueError(f"unknown upsampling mode {mode!r}")
        self.up = nn.Sequential(*up)
        self.merge = merge
        self.conv = ConvBlock(L, n_convs, c_skip * (2 if merge == "cat" else 1), c_out, act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        x = torch.cat([skip, x], dim=1) if self.merge == "cat" else x + skip
        return self.conv(x)


# Architecture of each dimensionality (spec 1): convs per stage, down/up ops, skip merge.
_ARCH = {
    3: dict(enc_convs=(1, 2, 3, 3, 3), dec_convs=(3, 3, 2, 1), down="conv", merge="add",
            act=nn.ReLU, fg_up="transpose", bg_up={"nearest": "nearest", "transpose": "transpose"},
            out_kernel=1),
    2: dict(enc_convs=(2, 2, 2, 2, 2), dec_convs=(2, 2, 2, 2), down="pool", merge="cat",
            act=nn.LeakyReLU, fg_up="bilinear",
            bg_up={"nearest": "nearest1x1", "transpose": "transpose_plain"}, out_kernel=3),
}


class Encoder(nn.Module):
    """Shared encoder E: 5 stages of widths n, 2n, 4n, 8n, 16n; returns the 5 feature maps.

    3D (V-Net): stride-2 conv down, Dropout3d on the bottleneck. 2D (U-Net): max-pool down,
    dropout inside every block, growing to ``dropout`` at the bottleneck (0.1,0.2,0.4,0.6,1 x p).
    """

    def __init__(self, L: dict, arch: dict, dim: int, in_channels: int, widths: list,
                 dropout: float):
        super().__init__()
        act = arch["act"]
        self.downs = nn.ModuleList()
        self.blocks = nn.ModuleList()
        c_prev = in_channels
        for i, (n_convs, c) in enumerate(zip(arch["enc_convs"], widths)):
            down = nn.Identity() if i == 0 else DownBlock(L, arch["down"], c_prev, c, act)
            self.downs.append(down)
            c_in = c if arch["down"] == "conv" and i > 0 else c_prev
            p = dropout * (0.1, 0.2, 0.4, 0.6, 1.0)[i] if dim == 2 else 0.0
            self.blocks.append(ConvBlock(L, n_convs, c_in, c, act, dropout=p))
            c_prev = c
        use_3d_dropout = dim == 3 and dropout > 0
        self.bottleneck_dropout = nn.Dropout3d(dropout) if use_3d_dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> list:
        feats = []
        for down, block in zip(self.downs, self.blocks):
            x = block(down(x))
            feats.append(x)
        feats[-1] = self.bottleneck_dropout(feats[-1])
        return feats


class Decoder(nn.Module):
    """Decoder (D_fg or D_bg): 4 up blocks from 16n back to n, then a conv to class logits."""

    def __init__(self, L: dict, arch: dict, dim: int, widths: list, num_classes: int, up_mode: str):
        super().__init__()
        self.ups = nn.ModuleList(
            UpBlock(L, up_mode, arch["merge"], widths[i + 1], widths[i], widths[i], n_convs,
                    arch["act"], dim)
            for i, n_convs in zip(range(3, -1, -1), arch["dec_convs"])
        )
        k = arch["out_kernel"]
        self.out = L["conv"](widths[0], num_classes, k, padding=k // 2)

    def forward(self, feats: list) -> torch.Tensor:
        x = feats[-1]
        for up, skip in zip(self.ups, reversed(feats[:-1])):
            x = up(x, skip)
        return self.out(x)


class CVBMNet(nn.Module):
    """CVBM three-head network (spec 1): shared encoder E, decoders D_fg and D_bg, mixing layer psi.

    ``forward`` returns ``CVBMOutput(fg, bg, mix)`` logits; ``psi`` is a 1x1 conv over
    concat(fg logits, bg logits). ``background_branch=False`` builds E + D_fg only (ablation).
    ``dim=3``: V-Net (9.45M parameters for E + D_fg at width 16); ``dim=2``: U-Net (1.81M).
    ``bg_upsampling``: "nearest" (release: nearest + conv in D_bg) or "transpose" (as D_fg).
    Spatial input sizes must be multiples of ``size_divisor``; with InstanceNorm, training also
    needs a bottleneck of more than one voxel (e.g. not a 16^3 patch).
    """

    size_divisor = 16

    # norm: InstanceNorm (affine) as in the release; BatchNorm has the same parameter count.
    def __init__(self, dim: int = 3, in_channels: int = 1, num_classes: int = 2, width: int = 16,
                 background_branch: bool = True, dropout: float = 0.5, norm: str = "instance",
                 bg_upsampling: str = "nearest"):
        super().__init__()
        L = _layers(dim, norm)
        arch = _ARCH[dim]
        if bg_upsampling not in arch["bg_up"]:
            raise ValueError(
                f"bg_upsampling must be 'nearest' or 'transpose', got {bg_upsampling!r}")
        self.dim, self.in_channels, self.num_classes = dim, in_channels, num_classes
        self.width, self.background_branch, self.norm = width, background_branch, norm
        widths = [width * 2 ** i for i in range(5)]
        self.encoder = Encoder(L, arch, dim, in_channels, widths, dropout)
        self.decoder_fg = Decoder(L, arch, dim, widths, num_classes, arch["fg_up"])
        if background_branch:
            bg_up = arch["bg_up"][bg_upsampling]
            self.decoder_bg = Decoder(L, arch, dim, widths, num_classes, bg_up)
            self.mix = L["conv"](2 * num_classes, num_classes, 1)
        else:
            self.decoder_bg = None
            self.mix = None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != self.dim + 2 or x.shape[1] != self.in_channels:
            raise CVBMInputError(
                f"expected input (batch, {self.in_channels}, {self.dim} spatial dims), "
                f"got {tuple(x.shape)}")
        if any(s % self.size_divisor for s in x.shape[2:]):
            raise CVBMInputError(
                f"spatial size {tuple(x.shape[2:])} is not a multiple of {self.size_divisor}")

    def forward(self, x: torch.Tensor) -> CVBMOutput:
        self._check_input(x)
        feats = self.encoder(x)
        fg = self.decoder_fg(feats)
        if not self.background_branch:
            return CVBMOutput(fg, None, None)
        bg = self.decoder_bg(feats)
        return CVBMOutput(fg, bg, self.mix(torch.cat([fg, bg], dim=1)))

    def forward_fg(self, x: torch.Tensor) -> torch.Tensor:
        """Foreground logits only (E + D_fg): the plain-network inference cost of spec 1."""
        self._check_input(x)
        return self.decoder_fg(self.encoder(x))

    def fg_parameter_count(self) -> int:
        """Parameters of E + D_fg, the figure the paper quotes (9.45M V-Net, 1.81M U-Net)."""
        return count_parameters(self.encoder) + count_parameters(self.decoder_fg)
