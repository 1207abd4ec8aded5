"""Training configuration and the `paper` / `cpu` presets (spec 6, 9).

Every setting is checked when a :class:`TrainConfig` is made: its type (from the annotation), its
range and how it fits the others; all problems are reported in one CVBMInputError line.
"""

import math
from dataclasses import asdict, dataclass, fields, replace
from difflib import get_close_matches
from typing import List, NamedTuple, Optional, Tuple, Union, get_args, get_origin

from .errors import CVBMInputError
from .networks import CVBMNet


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a CVBM run. Sizes are in the (z, y, x) / (y, x) array order."""

    dim: int = 3
    in_channels: int = 1  # image channels, first when more than one (core.channels)
    channel_names: Optional[Tuple[str, ...]] = None  # what they are, e.g. red, green, blue; None: not named
    num_classes: int = 2
    # what each class index is, index 0 first, e.g. background, myocardium; None: not named. Not part of the
    # network: kept when fine-tuning a model (MEANING), shown by the widgets, written by the packaging tool
    class_names: Optional[Tuple[str, ...]] = None
    width: int = 16
    background_branch: bool = True  # False: the foreground-only ablation (no bg decoder, no psi, no L_bcl)
    norm: str = "instance"  # or "batch" (the 2D U-Net of the release uses BatchNorm)
    patch_size: Tuple[int, ...] = (80, 112, 112)
    slice_size: Optional[Tuple[int, int]] = None  # 2D only: resize whole slices to this (ACDC protocol)
    spacing: Optional[Tuple[float, ...]] = None  # working voxel spacing in mm (the plan); None: each image's own
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
    # keep each class's largest connected component (spec 7); None: decided on validation when training ends
    largest_component: Optional[bool] = None
    amp: bool = True  # mixed precision: bf16 on CUDA and on CPUs with native bf16, fp16 on older GPUs
    channels_last: Optional[bool] = None  # NHWC / NDHWC layout; None: where faster (acceleration.py)
    compile: bool = False  # torch.compile the student's forward pass
    seed: int = 0

    def __post_init__(self):
        problems = _value_problems({f.name: getattr(self, f.name) for f in fields(self)}) or self._fit_problems()
        if problems:
            raise CVBMInputError("invalid training settings: " + "; ".join(problems))
        for f in fields(self):
            if f.type is float:  # 1 -> 1.0: whole numbers are fine where a float belongs
                object.__setattr__(self, f.name, float(getattr(self, f.name)))

    def _fit_problems(self) -> List[str]:
        """How settings that are each valid fail to fit together (or the network)."""
        problems = []
        if len(self.patch_size) != self.dim:
            problems.append(f"patch_size {self.patch_size} must have {self.dim} sides for dim={self.dim}")
        if self.slice_size is not None and self.dim != 2:
            problems.append("slice_size is for 2D runs (dim=2) only; a 3D run uses patch_size")
        if self.spacing is not None and len(self.spacing) != self.dim:
            problems.append(f"spacing {self.spacing} must have {self.dim} values for dim={self.dim}")
        name = "slice_size" if self.slice_size else "patch_size"
        size = self.slice_size or self.patch_size
        if len(size) == self.dim:
            problems += _size_problems(name, size, self.norm)
        if self.channel_names is not None and len(self.channel_names) != self.in_channels:
            problems.append(f"channel_names {self.channel_names} must name the {self.in_channels} channel(s)")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            problems.append(f"class_names {self.class_names} must name the {self.num_classes} classes, "
                            f"background (index 0) first")
        elif self.class_names is not None and len(set(self.class_names)) != len(self.class_names):
            problems.append(f"class_names {self.class_names} must be different names")
        if self.batch_labeled % 2:
            problems.append("batch_labeled must be even (pre-training mixes labeled pairs)")
        if self.batch_unlabeled != self.batch_labeled:
            problems.append("batch_unlabeled must equal batch_labeled (each labeled image is mixed with one unlabeled)")
        return problems

    def to_dict(self) -> dict:
        return asdict(self)

    def architecture(self) -> dict:
        """The settings that define the network (spec 1): a model is rebuilt from these alone."""
        return {name: getattr(self, name) for name in ARCHITECTURE}

    def meaning(self) -> dict:
        """What the network's outputs are (:data:`MEANING`): every fine-tune of the model keeps it."""
        return {name: getattr(self, name) for name in MEANING}

    def model_input(self) -> dict:
        """What the network was trained to see (spec 7): window or slice size and working spacing;
        fine-tuning a model keeps them, and its predictor uses them."""
        return {name: getattr(self, name) for name in MODEL_INPUT}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """The config of a dict of settings (lists become tuples); anything invalid raises CVBMInputError."""
        if not isinstance(values, dict):
            raise CVBMInputError(f"training settings must be a dict, not {type(values).__name__}")
        _check_names(values)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class Range(NamedTuple):
    """The allowed values of a number: from ``low`` to ``high``, each end included unless open."""

    low: float
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def holds(self, value) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.open_low else '>='} {self.low}"
        return f"in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"


FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}
CHOICES = {"dim": (2, 3), "norm": ("instance", "batch"), "lr_schedule": ("constant", "poly"),
           "consistency_schedule": ("release", "paper")}
RANGES = {
    "num_classes": Range(2), "in_channels": Range(1), "width": Range(1), "batch_labeled": Range(2),
    "batch_unlabeled": Range(2),
    "pretrain_iterations": Range(1), "selftrain_iterations": Range(0), "lr": Range(0, open_low=True),
    "momentum": Range(0, 1, open_high=True), "weight_decay": Range(0), "ema_decay": Range(0, 1),
    "alpha": Range(0), "cutmix_beta": Range(0, 1, open_low=True, open_high=True),
    "consistency_weight": Range(0), "consistency_rampup": Range(0), "rot_flip_probability": Range(0, 1),
    "rotate_degrees": Range(0, 180), "validate_every": Range(1), "checkpoint_every": Range(1),
    "inference_overlap": Range(0, 1, open_high=True), "seed": Range(0, 2 ** 32 - 1),
}
#: The settings that define the network and what its inputs are: every rebuild of a trained model keeps them.
ARCHITECTURE = ("dim", "in_channels", "channel_names", "num_classes", "width", "background_branch", "norm")
#: What a trained network expects of its input: the window or slice size and the working spacing.
MODEL_INPUT = ("patch_size", "slice_size", "spacing")
#: What a trained network's outputs mean (not the network): every fine-tune of it keeps them.
MEANING = ("class_names",)
#: What a resumed run may change: how long it trains, how often it validates and saves, how it computes.
RESUMABLE = ("pretrain_iterations", "selftrain_iterations", "validate_every", "checkpoint_every", "amp",
             "compile", "channels_last", "largest_component")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _expected(value, kind) -> Optional[str]:
    """What a value of the annotated ``kind`` must be, when ``value`` is not one (None when it is)."""
    if get_origin(kind) is Union:  # Optional[X]
        wanted = _expected(value, next(a for a in get_args(kind) if a is not type(None)))
        return None if value is None or wanted is None else f"{wanted.replace(' or ', ', ')} or none"
    checks = {bool: (lambda v: isinstance(v, bool), "true or false"), int: (_is_int, "a whole number"),
              float: (_is_finite_number, "a finite number"), str: (lambda v: isinstance(v, str), "text")}
    if kind in checks:
        check, wanted = checks[kind]
        return None if check(value) else wanted
    sides = get_args(kind)  # Tuple[int, ...], Tuple[int, int], Tuple[float, ...] or Tuple[str, ...]
    if sides[0] is str:
        fine = isinstance(value, tuple) and all(isinstance(v, str) and v for v in value)
        return None if fine else "a tuple of names (e.g. red,green,blue)"
    count = None if sides[-1] is Ellipsis else len(sides)
    whole = sides[0] is int
    positive = (lambda v: _is_int(v) and v > 0) if whole else (lambda v: _is_finite_number(v) and v > 0)
    fine = isinstance(value, tuple) and len(value) > 0 and all(positive(v) for v in value) \
        and count in (None, len(value))
    example = ",".join((["32", "48", "48"] if whole else ["2.5", "1.25", "1.25"])[-(count or 3):])
    what = "positive whole numbers" if whole else "positive numbers"
    return None if fine else f"{count or 'a tuple of'} {what} (e.g. {example})"


def _shown(value) -> str:
    """``repr(value)`` kept short."""
    text = f"a {value.bit_length()}-bit number" if _is_int(value) and value.bit_length() > 64 else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _value_problems(values: dict) -> List[str]:
    """What is wrong with each setting on its own (type, choices, range)."""
    problems = []
    for name, value in values.items():
        wanted = _expected(value, FIELD_TYPES[name])
        if name in CHOICES and (wanted or value not in CHOICES[name]):
            wanted = " or ".join(map(repr, CHOICES[name]))
        if wanted is None and name in RANGES and not RANGES[name].holds(value):
            wanted = str(RANGES[name])
        if wanted is not None:
            problems.append(f"{name} must be {wanted}, not {_shown(value)}")
    return problems


def _size_problems(name: str, size: Tuple[int, ...], norm: str) -> List[str]:
    """Whether the network's downsamplings take a patch (or slice) of ``size``."""
    divisor = CVBMNet.size_divisor
    halvings = int(math.log2(divisor))
    if any(s % divisor for s in size):
        return [f"{name} {size} must be multiples of {divisor} (the network halves it {halvings} times)"]
    if norm == "instance" and all(s == divisor for s in size):
        # one voxel per channel at the bottleneck: instance norm cannot normalise it in a batch of one
        # window (prediction of a patch-sized image or of a last partial batch)
        example = size[:-1] + (2 * divisor,)
        return [f"{name} {size} leaves a single voxel after the network's {halvings} halvings, which "
                f"instance normalisation cannot take (prediction would fail); make a side at least "
                f"{2 * divisor}, e.g. {example}, or set norm=batch"]
    return []


def _check_names(values: dict) -> None:
    unknown = sorted(map(str, set(values) - set(FIELD_TYPES)))
    if unknown:
        hints = [f"{name!r} (did you mean {close[0]}?)" if (close := get_close_matches(name, FIELD_TYPES, 1))
                 else repr(name) for name in unknown]
        raise CVBMInputError(f"unknown training setting(s): {', '.join(hints)}")


def check_settings(values: dict) -> None:
    """Any subset of the settings checked on their own (names, types, choices, ranges); CVBMInputError
    lists every problem. A full :class:`TrainConfig` also checks how they fit together."""
    _check_names(values)
    problems = _value_problems(values)
    if problems:
        raise CVBMInputError("invalid training settings: " + "; ".join(problems))


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


def preset(name: str, dim: int, /, **overrides) -> TrainConfig:
    """The named preset ("paper" or "cpu") for 2D or 3D, with ``overrides`` applied.

    A shorter or longer self-training keeps the preset's consistency ramp as a fraction of it (spec 4:
    the weight reaches its full value at the same point of the run), unless the ramp is given too.
    """
    names = sorted({n for n, _ in PRESETS})
    if name not in names:
        raise CVBMInputError(f"unknown preset {name!r}; choose one of {names}")
    if dim not in CHOICES["dim"] or isinstance(dim, bool):
        raise CVBMInputError(f"invalid training settings: dim must be 2 or 3, not {_shown(dim)}")
    base = PRESETS[(name, dim)]
    values = {"dim": dim, **base, **overrides}
    iterations = overrides.get("selftrain_iterations")
    if "consistency_rampup" not in overrides and _is_int(iterations) and iterations >= 0:
        values["consistency_rampup"] = round(base["consistency_rampup"] * iterations / base["selftrain_iterations"])
    return TrainConfig.from_dict(values)


def resumed_config(saved: TrainConfig, given: dict, preset_name: Optional[str] = None) -> Tuple[TrainConfig, List[str]]:
    """The config a run saved with ``saved`` resumes with, and its changes ("name old -> new").

    ``given``: the settings the user gave again; with ``preset_name``, every value of that preset
    counts as given too. Those in :data:`RESUMABLE` may change; any other difference raises
    CVBMInputError naming the setting and both values.
    """
    check_settings(given)
    if preset_name is not None:
        given = preset(preset_name, given.get("dim", saved.dim),
                       **{"num_classes": saved.num_classes, **saved.meaning(), **given}).to_dict()
    changed = {name: value for name, value in given.items() if value != getattr(saved, name)}
    refused = [f"{name} is {_shown(getattr(saved, name))} in the checkpoint, {_shown(value)} given"
               for name, value in changed.items() if name not in RESUMABLE]
    if refused:
        raise CVBMInputError(f"cannot resume with other settings: {'; '.join(refused)} (a resumed run may only "
                             f"change {', '.join(RESUMABLE)}; start a new run to change the others)")
    return replace(saved, **changed), [f"{name} {getattr(saved, name)} -> {value}" for name, value in changed.items()]


def parse_setting(text: str):
    """``key=value`` (the CLI's ``--set``) -> (key, value), the value parsed as int, float, bool, none,
    a comma-separated tuple or text; :class:`TrainConfig` then checks it."""
    if "=" not in text:
        raise CVBMInputError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    if "," in raw:
        return key, tuple(parse_setting(f"x={part}")[1] for part in raw.split(",") if part)
    for cast in (int, float):
        try:
            return key, cast(raw)
        except ValueError:
            pass
    return key, {"true": True, "false": False, "none": None}.get(raw.lower(), raw)
