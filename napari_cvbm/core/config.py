"""Training configuration and the `paper` / `cpu` presets (spec 6, 9)."""

from dataclasses import asdict, dataclass, fields
from typing import Optional, Tuple

from .errors import CVBMInputError


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a CVBM run. Sizes are in the (z, y, x) / (y, x) array order."""

    dim: int = 3
    num_classes: int = 2
    width: int = 16
    background_branch: bool = True  # False: the foreground-only ablation (no bg decoder, no psi, no L_bcl)
    norm: str = "instance"  # or "batch" (the 2D U-Net of the release uses BatchNorm)
    patch_size: Tuple[int, ...] = (80, 112, 112)
    slice_size: Optional[Tuple[int, int]] = None  # 2D only: resize whole slices to this (ACDC protocol)
    batch_labeled: int = 4
    batch_unlabeled: int = 4
    pretrain_iterations: int = 2000
    selftrain_iterations: int = 15000
    lr: float = 0.01
    lr_schedule: str = "constant"  # or "poly": lr * (1 - t/T)^0.9 within each phase
    momentum: float = 0.9
    weight_decay: float = 1e-4
    ema_decay: float = 0.99
    alpha: float = 0.5
    cutmix_beta: float = 2 / 3
    consistency_schedule: str = "release"  # or "paper"
    consistency_weight: float = 1.0
    consistency_rampup: int = 6000
    pretrain_mix_head: bool = True  # paper: L_M in pre-training; the release leaves it out
    selftrain_mix_head: bool = True  # ours: L_M in L_rw too; paper and release: L_bcl only
    clean_pseudo_labels: bool = True
    augment: bool = True
    rot_flip_probability: float = 0.5  # the rest: half rotated by up to rotate_degrees, half as is
    rotate_degrees: float = 20.0
    validate_every: int = 200
    checkpoint_every: int = 100
    inference_overlap: float = 0.5
    amp: bool = True  # mixed precision: bf16 on CUDA and on CPUs with native bf16, fp16 on older GPUs
    channels_last: Optional[bool] = None  # NHWC / NDHWC layout; None: where faster (acceleration.py)
    compile: bool = False  # torch.compile the student's forward pass
    seed: int = 0

    def __post_init__(self):
        problems = []
        if self.dim not in (2, 3):
            problems.append(f"dim must be 2 or 3, not {self.dim}")
        elif len(self.patch_size) != self.dim:
            problems.append(f"patch_size {tuple(self.patch_size)} must have {self.dim} sides for dim={self.dim}")
        elif any(s % 16 for s in (self.slice_size or self.patch_size)):
            problems.append(f"patch/slice sides must be multiples of 16, got {self.slice_size or self.patch_size}")
        if self.num_classes < 2:
            problems.append("num_classes counts the background too and must be at least 2")
        if self.batch_labeled < 2 or self.batch_labeled % 2:
            problems.append("batch_labeled must be even and >= 2 (pre-training mixes labeled pairs)")
        if self.batch_unlabeled != self.batch_labeled:
            problems.append("batch_unlabeled must equal batch_labeled (each labeled image is mixed with one unlabeled)")
        if not 0.0 <= self.rot_flip_probability <= 1.0:
            problems.append(f"rot_flip_probability must be in [0, 1], not {self.rot_flip_probability}")
        if not 0.0 <= self.rotate_degrees <= 180.0:
            problems.append(f"rotate_degrees must be in [0, 180], not {self.rotate_degrees}")
        if self.norm not in ("instance", "batch"):
            problems.append(f"norm must be 'instance' or 'batch', not {self.norm!r}")
        if self.lr_schedule not in ("constant", "poly"):
            problems.append(f"lr_schedule must be 'constant' or 'poly', not {self.lr_schedule!r}")
        if self.channels_last not in (True, False, None):
            problems.append(f"channels_last must be true, false or none (automatic), not {self.channels_last!r}")
        if self.consistency_schedule not in ("release", "paper"):
            problems.append(f"consistency_schedule must be 'release' or 'paper', not {self.consistency_schedule!r}")
        if problems:
            raise CVBMInputError("invalid training settings: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CVBMInputError(f"unknown training setting(s): {', '.join(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        try:
            return cls(**values)
        except TypeError as exc:  # e.g. a number where a size tuple belongs
            raise CVBMInputError(f"invalid training settings: {exc}") from None


# Spec 6 (LA for 3D, ACDC for 2D) and spec 9 (CPU: same algorithm, smaller sizes).
PRESETS = {
    ("paper", 3): dict(width=16, patch_size=(80, 112, 112), batch_labeled=4, batch_unlabeled=4,
                       pretrain_iterations=2000, selftrain_iterations=15000,
                       consistency_weight=1.0, consistency_rampup=6000, inference_overlap=0.75),
    ("paper", 2): dict(width=16, patch_size=(256, 256), slice_size=(256, 256), batch_labeled=12,
                       batch_unlabeled=12, pretrain_iterations=10000, selftrain_iterations=30000,
                       consistency_weight=0.5, consistency_rampup=30000),
    ("cpu", 3): dict(width=8, patch_size=(32, 48, 48), batch_labeled=2, batch_unlabeled=2,
                     pretrain_iterations=150, selftrain_iterations=300, lr_schedule="poly",
                     consistency_weight=1.0, consistency_rampup=300, validate_every=50,
                     checkpoint_every=50),
    ("cpu", 2): dict(width=16, patch_size=(128, 128), slice_size=(128, 128), batch_labeled=8,
                     batch_unlabeled=8, pretrain_iterations=1500, selftrain_iterations=1500,
                     lr_schedule="poly", consistency_weight=0.5, consistency_rampup=1500,
                     validate_every=150, checkpoint_every=150),
}


def preset(name: str, dim: int, **overrides) -> TrainConfig:
    """The named preset ("paper" or "cpu") for 2D or 3D, with ``overrides`` applied."""
    try:
        values = PRESETS[(name, dim)]
    except KeyError:
        names = sorted({n for n, _ in PRESETS})
        raise CVBMInputError(f"unknown preset {name!r} for dim={dim}; choose one of {names}") from None
    return TrainConfig.from_dict({"dim": dim, **values, **overrides})
