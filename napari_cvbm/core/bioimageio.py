"""bioimage.io model packages (BioImage Model Zoo, model description format 0.5).

:func:`export_package` writes a CVBM model as a package (.zip) that other bioimage.io consumers run
(bioimageio.core, ilastik, deepImageJ...): its fg network (E + D_fg) followed by a softmax, as
TorchScript and as a PyTorch state dict, with test tensors, a cover image, a README and the full
napari-cvbm checkpoint (fg, bg and mix heads) attached. :func:`load_package` rebuilds the model from
that attachment, losslessly, through the safe checkpoint path (``core.checkpoint``).

What other consumers see (inputs "image", outputs "probabilities"):

* input (batch, channel, [z,] y, x), z-scored per image and channel (bioimage.io
  ``zero_mean_unit_variance`` over the spatial axes); output (batch, class, same spatial axes) =
  softmax of the fg head, the fg view of ``core.views``.
* sides: multiples of the network's divisor (16), from 16 (instance norm: x from 32, as sides all
  of 16 leave one voxel per channel at the bottleneck). A 2D model trained on whole slices resized
  to ``slice_size`` has the resizing built into its weights (any side from 16), as napari-cvbm
  predicts it.
* what bioimage.io cannot express (sliding windows with Gaussian blending, resampling to the
  working spacing, z-scoring a whole volume for a 2D model) is written in the package's README.

No Qt, no napari; bioimageio.spec is imported only to export and validate.
"""

import string
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from torch import nn

from .channels import channels_first
from .checkpoint import load_checkpoint, model_from_payload, save_model
from .config import TrainConfig
from .errors import CVBMInputError
from .networks import CVBMNet
from .outputs import atomic_write, refuse_existing

__all__ = ["FgProbabilities", "export_package", "is_package", "load_package", "package_name", "validate_package"]

YAML_NAMES = ("rdf.yaml", "bioimageio.yaml", "model.yaml")  # bioimage.io's names, also as NAME.<one of them>
CONFIG_KEY = "napari_cvbm"  # config.napari_cvbm of the rdf.yaml: what marks a package as ours
CHECKPOINT_FILE = "napari_cvbm_model.pt"
INPUT_ID, OUTPUT_ID = "image", "probabilities"
DEFAULT_LICENSE = "BSD-3-Clause"  # napari-cvbm's own licence, when the model card gives none
DEFAULT_AUTHORS = ({"name": "napari-cvbm"},)
CITATION = {
    "text": "Cao L, Li J, Shi Y. Background Matters: A Cross-view Bidirectional Modeling Framework for "
            "Semi-supervised Medical Image Segmentation (CVBM). arXiv:2505.16625, 2025.",
    "doi": "10.48550/arXiv.2505.16625",  # a DOI, not a URL: validating it needs no network
}
NAME_CHARACTERS = string.ascii_letters + string.digits + "_+- ()"  # what bioimage.io allows in a name
ZSCORE_EPS = 1e-6  # bioimage.io's zero_mean_unit_variance: (x - mean) / (std + eps)


# --------------------------------------------------------------------------------------------
# the network other consumers run
# --------------------------------------------------------------------------------------------
class FgProbabilities(nn.Module):
    """Softmax of the fg head (E + D_fg) of a CVBM model: the network of an exported package.

    With ``slice_size`` (a 2D model trained on whole slices resized to it) the input is resized to
    ``slice_size`` and the probabilities back to the input's size (bilinear), as ``core.inference``
    does. Its state dict holds the ``encoder.*`` and ``decoder_fg.*`` entries of the CVBM model.
    """

    def __init__(self, dim: int = 3, in_channels: int = 1, num_classes: int = 2, width: int = 16,
                 norm: str = "instance", slice_size: Optional[Sequence[int]] = None):
        super().__init__()
        net = CVBMNet(dim=dim, in_channels=in_channels, num_classes=num_classes, width=width,
                      background_branch=False, norm=norm)
        self.encoder, self.decoder_fg = net.encoder, net.decoder_fg
        self.slice_size = tuple(int(s) for s in slice_size) if slice_size else None

    @classmethod
    def of(cls, model: nn.Module, config: TrainConfig) -> "FgProbabilities":
        """The fg network of a CVBM ``model`` (a copy on the CPU, eval mode)."""
        fg = cls(**_architecture_kwargs(config))
        fg.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()
                            if k.split(".", 1)[0] in ("encoder", "decoder_fg")})
        return fg.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        if self.slice_size is not None:
            x = F.interpolate(x, size=self.slice_size, mode="bilinear", align_corners=False)
        probabilities = torch.softmax(self.decoder_fg(self.encoder(x)), dim=1)
        if self.slice_size is not None:
            probabilities = F.interpolate(probabilities, size=size, mode="bilinear", align_corners=False)
        return probabilities


def _architecture_kwargs(config: TrainConfig) -> dict:
    return {"dim": config.dim, "in_channels": config.in_channels, "num_classes": config.num_classes,
            "width": config.width, "norm": config.norm,
            "slice_size": list(config.slice_size) if config.slice_size else None}


def _axis_sizes(config: TrainConfig) -> List[Tuple[int, int]]:
    """(min, step) of each spatial input side: multiples of the network's divisor; with instance norm
    the last side starts at twice the divisor (sides all of one divisor leave one voxel per channel
    at the bottleneck, which instance norm cannot normalise). A resized-slice model takes any side."""
    divisor, dim = CVBMNet.size_divisor, config.dim
    if config.slice_size:
        return [(divisor, 1)] * dim
    last = 2 * divisor if config.norm == "instance" else divisor
    return [(divisor, divisor)] * (dim - 1) + [(last, divisor)]


def _window(config: TrainConfig) -> Tuple[int, ...]:
    return tuple(config.slice_size or config.patch_size)


def _channel_names(config: TrainConfig) -> list:
    if config.channel_names:
        return list(config.channel_names)
    return ["intensity"] if config.in_channels == 1 else [f"channel{i}" for i in range(config.in_channels)]


def _class_names(config: TrainConfig) -> list:
    names = getattr(config, "class_names", None)
    if names:
        return [str(n) for n in names]
    return ["background"] + [f"class{i}" for i in range(1, config.num_classes)]


# --------------------------------------------------------------------------------------------
# names, licence, authors
# --------------------------------------------------------------------------------------------
def package_name(text: str) -> str:
    """``text`` made a valid bioimage.io model name (letters, digits, ``_+- ()``, 5 to 64 characters)."""
    name = " ".join("".join(c if c in NAME_CHARACTERS else " " for c in str(text)).split())[:64].strip()
    return name if len(name) >= 5 else f"CVBM model {name}".strip()


def _check_name(name: str) -> str:
    bad = sorted({c for c in str(name) if c not in NAME_CHARACTERS})
    if bad or not 5 <= len(str(name)) <= 128:
        why = f"it holds {''.join(bad)!r}" if bad else f"it has {len(str(name))} characters"
        raise CVBMInputError(f"bioimage.io model name {name!r} is not allowed ({why}); use 5 to 128 letters, "
                             f"digits, spaces and _+-() only, e.g. {package_name(name)!r}")
    return str(name)


def _authors(authors) -> list:
    entries = []
    for author in authors or DEFAULT_AUTHORS:
        entry = {"name": author} if isinstance(author, str) else dict(author)
        name = str(entry.get("name", "")).strip()
        if not name or "/" in name or "\\" in name:
            raise CVBMInputError(f"author {name!r} is not allowed: give a name without slashes")
        entries.append({**entry, "name": name})
    return entries


def _licence(card: Optional[dict]):
    """(SPDX id or None, custom licence text or None, the README's sentence about it)."""
    from bioimageio.spec.model.v0_5 import LicenseId

    text = str((card or {}).get("licence") or (card or {}).get("license") or "").strip()
    if not text:
        return DEFAULT_LICENSE, None, (f"{DEFAULT_LICENSE}: no licence was given, so napari-cvbm's own licence was "
                                       f"used; the licence of the training data may call for another one.")
    try:
        return str(LicenseId(text)), None, f"{text}, from the model card."
    except ValueError:
        return None, text, "From the model card, in LICENSE.txt (it is not an SPDX licence identifier)."


# --------------------------------------------------------------------------------------------
# test tensors and cover
# --------------------------------------------------------------------------------------------
def _zscore(x: np.ndarray) -> np.ndarray:
    """bioimage.io's zero_mean_unit_variance per image and channel of a (batch, channel, ...) array."""
    axes = tuple(range(2, x.ndim))
    x = x.astype(np.float32)
    return ((x - x.mean(axis=axes, keepdims=True)) / (x.std(axis=axes, keepdims=True) + ZSCORE_EPS)).astype(np.float32)


def _valid_side(side: int, window: int, low: int, step: int) -> int:
    """The largest valid side up to ``side`` and ``window`` (at least ``low``)."""
    side = max(low, min(side, window))
    return low + (side - low) // step * step


def _test_input(config: TrainConfig, test_image) -> np.ndarray:
    """(1, C, *spatial) float32: a centre crop of ``test_image`` (core.channels layout; a 2D model's
    volume gives its middle slice) of at most the window size, else a deterministic random image."""
    window, sizes = _window(config), _axis_sizes(config)
    channels = config.in_channels
    if test_image is None:
        rng = np.random.default_rng(0)
        grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in window], indexing="ij")
        blob = (sum(g ** 2 for g in grid) < 0.25).astype(np.float32)
        image = np.stack([blob + 0.3 * rng.standard_normal(window).astype(np.float32) for _ in range(channels)])
        return image[None]
    image = np.asarray(test_image)
    if channels > 1 and (image.ndim < 3 or image.shape[0] != channels):
        raise CVBMInputError(f"the test image must have the model's {channels} channels first, not shape {image.shape}")
    image = channels_first(image, channels).astype(np.float32)
    if config.dim == 2 and image.ndim == 4:
        image = image[:, image.shape[1] // 2]
    if image.ndim - 1 != config.dim:
        raise CVBMInputError(f"the test image of shape {np.shape(test_image)} is not a {config.dim}D image "
                             f"for this {config.dim}D model")
    if not np.isfinite(image).all():
        raise CVBMInputError("the test image contains NaN/Inf values")
    sides = [_valid_side(s, w, *rule) for s, w, rule in zip(image.shape[1:], window, sizes)]
    pad = [(0, 0)] + [(0, max(0, t - s)) for s, t in zip(image.shape[1:], sides)]
    image = np.pad(image, pad, mode="edge")
    starts = [(s - t) // 2 for s, t in zip(image.shape[1:], sides)]
    crop = (slice(None),) + tuple(slice(a, a + t) for a, t in zip(starts, sides))
    return np.ascontiguousarray(image[crop])[None]


def _cover(test_input: np.ndarray, test_output: np.ndarray, path: Path) -> None:
    """A 2:1 PNG: the (middle slice of the) first input channel beside the foreground probability."""
    import imageio.v3 as iio

    def middle(a):
        while a.ndim > 2:
            a = a[a.shape[0] // 2]
        return a

    image = middle(test_input[0, 0]).astype(np.float64)
    span = np.ptp(image)
    image = (image - image.min()) / span if span > 0 else np.zeros_like(image)
    foreground = 1.0 - middle(test_output[0, 0]).astype(np.float64)
    grey = np.concatenate([image, foreground], axis=1)
    zoom = max(1, 128 // grey.shape[0])
    grey = np.kron(grey, np.ones((zoom, zoom)))
    rgb = np.stack([grey, grey, grey], axis=-1)
    rgb[:, grey.shape[1] // 2:, 1:] *= 0.6  # probabilities tinted red
    iio.imwrite(path, (255 * np.clip(rgb, 0, 1)).astype(np.uint8), extension=".png")


# --------------------------------------------------------------------------------------------
# documentation
# --------------------------------------------------------------------------------------------
def _card_markdown(card: dict, depth: int = 0) -> str:
    """A model card (nested dicts and lists) as a Markdown list."""
    lines = []
    for key, value in card.items():
        if value in (None, "", [], {}):
            continue
        title = str(key).replace("_", " ")
        title = f"**{title[0].upper() + title[1:]}**" if depth == 0 else title
        if isinstance(value, dict):
            lines += [f"{'  ' * depth}- {title}:", _card_markdown(value, depth + 1)]
        else:
            shown = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            lines.append(f"{'  ' * depth}- {title}: {shown}")
    return "\n".join(line for line in lines if line)


def _readme(name: str, description: str, config: TrainConfig, card: Optional[dict], licence: str,
            model: nn.Module) -> str:
    window, sizes = _window(config), _axis_sizes(config)
    network = "3D V-Net" if config.dim == 3 else "2D U-Net"
    axes = "(batch, channel, z, y, x)" if config.dim == 3 else "(batch, channel, y, x)"
    channels = ", ".join(f"{i}: {n}" for i, n in enumerate(_channel_names(config)))
    classes = ", ".join(f"{i}: {n}" for i, n in enumerate(_class_names(config)))
    if getattr(model, "background_branch", config.background_branch):
        heads = ("The background (bg) and mix views of the CVBM model are not in these weights: they are in the "
                 f"attached napari-cvbm checkpoint `{CHECKPOINT_FILE}` (all heads: fg, bg and mix)")
    else:
        heads = (f"This model has no background branch (the foreground-only ablation); the attached napari-cvbm "
                 f"checkpoint `{CHECKPOINT_FILE}` holds the same weights")
    spacing = (f"{' × '.join(f'{s:g}' for s in config.spacing)} mm (array order). napari-cvbm resamples every "
               "image to it before predicting (and the result back): resample your images to it first"
               if config.spacing else "none: the model was trained on each image at its own voxel size")
    if config.slice_size:
        size = (f"this 2D model was trained on whole slices resized to {window[0]} × {window[1]} (ACDC protocol); "
                f"the exported weights do that resizing themselves, so give whole 2D images (slices) of any size "
                f"from {sizes[0][0]} × {sizes[0][0]}: the probabilities come back at the input's size (bilinear)")
    else:
        axes_sizes = zip(("z", "y", "x")[-config.dim:], sizes)
        sides = ", ".join(f"{axis} = {low} + k × {step}" for axis, (low, step) in axes_sizes)
        size = (f"valid sides are {sides} voxels (k = 0, 1, ...). napari-cvbm segments with "
                f"sliding windows of {' × '.join(map(str, window))} voxels ({config.inference_overlap:g} overlap, "
                "Gaussian blending)")
        if config.norm == "instance":
            size += "; tiles of that size give the closest results (instance normalisation depends on the window)"
    inputs = [
        f"- Tensor `{INPUT_ID}`, axes {axes}, float32; {config.in_channels} channel(s): {channels}.",
        "- Preprocessing: zero mean, unit variance per image and channel (bioimage.io `zero_mean_unit_variance` "
        f"over the spatial axes, eps {ZSCORE_EPS:g}), as napari-cvbm's z-score (`core.intensity`, which divides "
        "by the standard deviation alone and maps a constant image to 0).",
        f"- Working spacing: {spacing}.",
        f"- Size: {size}.",
    ]
    if config.dim == 2:
        inputs.append("- Volumes: a 2D model segments them slice by slice (axis 0); napari-cvbm z-scores the whole "
                      "volume per channel first, a bioimage.io consumer each 2D input on its own.")
    outputs = [
        f"- Tensor `{OUTPUT_ID}`, axes {axes}, float32: softmax of the fg head, one channel per class ({classes}); "
        "the labels are the argmax over the channels.",
        "- napari-cvbm can keep the largest connected component of each class afterwards (this model: "
        f"{'yes' if config.largest_component else 'no'}).",
    ]
    sections = [
        f"# {name}",
        description,
        f"This is the **foreground (fg) network** of a CVBM model (Cross-view Bidirectional Modeling for "
        f"semi-supervised medical image segmentation), a {network} of width {config.width}, exported by "
        "napari-cvbm. Other bioimage.io consumers run its `torchscript` weights (PyTorch alone); its "
        "`pytorch_state_dict` weights need napari-cvbm installed (`napari_cvbm.core.bioimageio.FgProbabilities`). "
        f"{heads}, from which napari-cvbm re-imports the model losslessly (`cvbm predict PACKAGE.zip IMAGE "
        "--out OUT`, or Load model… in napari).",
        "## Input\n\n" + "\n".join(inputs),
        "## Output\n\n" + "\n".join(outputs),
    ]
    if card:
        sections.append("## Model card\n\n" + _card_markdown(card))
    sections += [
        "## Validation\n\nThe test tensors (`test_input.npy`, `test_output.npy`) were computed with the exported "
        "TorchScript weights; `bioimageio test` reproduces them. To validate the model on annotated images of "
        "your own, segment them (`cvbm predict`) and score the result against the reference labels with "
        "`cvbm evaluate` (Dice, Jaccard, 95HD, ASD).",
        f"## Licence\n\n{licence}",
        f"## Citation\n\n{CITATION['text']} https://doi.org/{CITATION['doi']}",
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
def _trace(fg: FgProbabilities, example: torch.Tensor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of shape checks, torch.jit deprecation notices
        return torch.jit.trace(fg, example, check_trace=False)


def export_package(model: nn.Module, config: TrainConfig, path, *, name: str, description: str = "",
                   authors=None, card: Optional[dict] = None, test_image=None, overwrite: bool = False) -> Path:
    """Write ``model`` as a bioimage.io model package (.zip) at ``path`` and return ``path``.

    ``authors``: names or dicts (name, affiliation, email, github_user, orcid); default napari-cvbm.
    ``card``: a model card (dict) written into the README; its ``licence`` (an SPDX id, else its text
    goes to LICENSE.txt) is the package's licence (default BSD-3-Clause). ``test_image`` (core.channels
    layout) gives the test tensors (default: a deterministic random image of the window size).
    An existing ``path`` is refused unless ``overwrite``; the package is validated (bioimageio.spec)
    before it is written, atomically.
    """
    path = Path(path)
    refuse_existing(path, overwrite)
    if path.suffix.lower() != ".zip":
        raise CVBMInputError(f"{path}: a bioimage.io package is a .zip file; name it e.g. {path.stem}.zip")
    name, authors = _check_name(name), _authors(authors)
    import pydantic
    from bioimageio.spec import ValidationContext, save_bioimageio_package_to_stream
    from bioimageio.spec.model import v0_5 as bio

    spdx, licence_text, licence_note = _licence(card)
    description = description or (f"CVBM {'3D V-Net' if config.dim == 3 else '2D U-Net'} segmentation into "
                                  f"{config.num_classes} classes ({', '.join(_class_names(config))}), made with "
                                  "napari-cvbm")
    with tempfile.TemporaryDirectory(prefix="cvbm-bioimageio-") as folder:
        files = _write_files(Path(folder), model, config, test_image, licence_text,
                             _readme(name, description, config, card, licence_note, model))
        try:
            with ValidationContext(root=Path(folder), perform_io_checks=True, log_warnings=False):
                descr = _description(bio, files, config, name=name, description=description, authors=authors,
                                     licence=spdx, tags=_tags(config, card))
        except pydantic.ValidationError as exc:
            error = exc.errors()[0]
            raise CVBMInputError(f"{path} was not written: {'.'.join(map(str, error['loc']))}: {error['msg']}") \
                from None
        package = Path(folder) / "package.zip"
        with open(package, "wb") as f:
            save_bioimageio_package_to_stream(descr, output_stream=f)
        summary = validate_package(package)
        if summary.status not in ("passed", "valid-format"):
            errors = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors)
            raise CVBMInputError(f"{path} was not written: the package failed bioimage.io validation ({errors[:300]})")
        with atomic_write(path) as f, open(package, "rb") as written:
            while chunk := written.read(1 << 20):
                f.write(chunk)
    return path


def _write_files(folder: Path, model: nn.Module, config: TrainConfig, test_image, licence_text: Optional[str],
                 readme: str) -> dict:
    """The package's files in ``folder``, by role: weights (TorchScript trace and state dict of
    :class:`FgProbabilities`), test and sample tensors, cover, README, the napari-cvbm checkpoint."""
    fg = FgProbabilities.of(model, config)
    test_input = _test_input(config, test_image)
    x = torch.from_numpy(_zscore(test_input))
    with torch.no_grad():
        traced = _trace(fg, x)
        test_output = traced(x).numpy()
        if not np.allclose(test_output, fg(x).numpy(), atol=1e-5):
            raise CVBMInputError("the model could not be exported: its TorchScript trace does not reproduce it")
    files = {role: folder / file for role, file in (
        ("torchscript", "weights_torchscript.pt"), ("state_dict", "weights_state_dict.pt"),
        ("test_input", "test_input.npy"), ("test_output", "test_output.npy"),
        ("sample_input", "sample_input.tif"), ("sample_output", "sample_output.tif"), ("cover", "cover.png"),
        ("readme", "README.md"), ("checkpoint", CHECKPOINT_FILE), ("licence", "LICENSE.txt"))}
    save_model(files["checkpoint"], model, config, phase="bioimageio")  # refuses NaN/Inf weights
    traced.save(str(files["torchscript"]))
    torch.save(fg.state_dict(), files["state_dict"])
    np.save(files["test_input"], test_input)
    np.save(files["test_output"], test_output)
    tifffile.imwrite(files["sample_input"], test_input[0])
    tifffile.imwrite(files["sample_output"], test_output[0])
    _cover(test_input, test_output, files["cover"])
    files["readme"].write_text(readme, encoding="utf-8")
    if licence_text is None:
        del files["licence"]
    else:
        files["licence"].write_text(licence_text + "\n", encoding="utf-8")
    return files


def _description(bio, files: dict, config: TrainConfig, *, name, description, authors, licence, tags):
    """The bioimage.io model description (v0.5) of the package's ``files``."""
    sizes = _axis_sizes(config)
    spatial = ("z", "y", "x")[-config.dim:]
    units = [{"unit": "millimeter", "scale": float(s)} for s in config.spacing] if config.spacing else \
        [{} for _ in spatial]
    image = bio.InputTensorDescr(
        id=bio.TensorId(INPUT_ID), description="image, z-scored per image and channel",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=_channel_names(config)),
              *[bio.SpaceInputAxis(id=bio.AxisId(a), size=bio.ParameterizedSize(min=low, step=step), **u)
                for a, (low, step), u in zip(spatial, sizes, units)]],
        test_tensor=bio.FileDescr(source=files["test_input"]),
        sample_tensor=bio.FileDescr(source=files["sample_input"]),
        preprocessing=[bio.ZeroMeanUnitVarianceDescr(kwargs=bio.ZeroMeanUnitVarianceKwargs(
            axes=[bio.AxisId(a) for a in spatial], eps=ZSCORE_EPS))])
    probabilities = bio.OutputTensorDescr(
        id=bio.TensorId(OUTPUT_ID), description="softmax of the fg head: one probability per class",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=_class_names(config)),
              *[bio.SpaceOutputAxis(id=bio.AxisId(a), size=bio.SizeReference(
                  tensor_id=bio.TensorId(INPUT_ID), axis_id=bio.AxisId(a)), **u) for a, u in zip(spatial, units)]],
        data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        test_tensor=bio.FileDescr(source=files["test_output"]),
        sample_tensor=bio.FileDescr(source=files["sample_output"]))
    version = bio.Version(torch.__version__.split("+")[0])
    weights = bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=files["state_dict"], pytorch_version=version, comment="needs napari-cvbm installed",
            architecture=bio.ArchitectureFromLibraryDescr(
                callable=bio.Identifier("FgProbabilities"), import_from=__name__, kwargs=_architecture_kwargs(config))),
        torchscript=bio.TorchscriptWeightsDescr(
            source=files["torchscript"], pytorch_version=version, parent="pytorch_state_dict",
            comment="traced with torch.jit.trace; runs with PyTorch alone"))
    return bio.ModelDescr(
        name=name, description=description, authors=[bio.Author(**a) for a in authors],
        cite=[bio.CiteEntry(text=CITATION["text"], doi=bio.Doi(CITATION["doi"]))],
        license=licence if licence is not None else bio.FileDescr(source=files["licence"]),
        documentation=bio.FileDescr(source=files["readme"]), covers=[bio.FileDescr(source=files["cover"])],
        attachments=[bio.FileDescr(source=files["checkpoint"])], tags=tags, inputs=[image], outputs=[probabilities],
        weights=weights, config=bio.Config(**{CONFIG_KEY: _package_config(config)}))


def _tags(config: TrainConfig, card: Optional[dict]) -> list:
    tags = ["napari-cvbm", "cvbm", "semi-supervised", "semantic-segmentation", "pytorch",
            f"{config.dim}d", "unet" if config.dim == 2 else "vnet", "medical-imaging"]
    extra = (card or {}).get("tags") or []
    extra = [extra] if isinstance(extra, str) else extra
    return list(dict.fromkeys(tags + [str(t) for t in extra]))


def _package_config(config: TrainConfig) -> dict:
    """config.napari_cvbm of the rdf.yaml: the attachment napari-cvbm re-imports and what it predicts with."""
    from .. import __version__
    from . import checkpoint

    def plain(value):
        return list(value) if isinstance(value, tuple) else value

    return {"checkpoint": CHECKPOINT_FILE, "checkpoint_format_version": checkpoint.FORMAT_VERSION,
            "napari_cvbm_version": __version__,
            "settings": {k: plain(getattr(config, k, None)) for k in (
                "dim", "in_channels", "channel_names", "num_classes", "class_names", "width", "norm",
                "patch_size", "slice_size", "spacing", "inference_overlap", "largest_component")}}


def validate_package(path):
    """The bioimageio.spec validation summary of the package at ``path``, with its file checks (hashes,
    test tensors against the axes); needs no network (the citation is a DOI, there are no URLs)."""
    from bioimageio.spec import ValidationContext, load_description

    with ValidationContext(log_warnings=False):
        return load_description(str(path), perform_io_checks=True).validation_summary


# --------------------------------------------------------------------------------------------
# import
# --------------------------------------------------------------------------------------------
def _yaml_name(names) -> Optional[str]:
    """The bioimage.io description among ``names`` (file names at the package's top level)."""
    for wanted in YAML_NAMES:
        for name in sorted(names):
            if "/" not in name and (name == wanted or name.endswith("." + wanted)):
                return name
    return None


def is_package(path) -> bool:
    """Whether ``path`` is (or claims to be) a bioimage.io package: a .zip file, a zip archive holding an
    rdf.yaml / bioimageio.yaml, a folder holding one, or such a yaml file. A .pt checkpoint is not."""
    path = Path(path)
    if path.is_dir():
        return _yaml_name(p.name for p in path.iterdir()) is not None
    if not path.is_file():
        return False
    if path.suffix.lower() == ".zip" or _yaml_name([path.name]) == path.name:
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            return _yaml_name(archive.namelist()) is not None
    except (zipfile.BadZipFile, OSError):
        return False


def _reader(path: Path):
    """(the package's description file name, a function reading one of its files as bytes)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()

        def read(name):
            with zipfile.ZipFile(path) as archive:
                return archive.read(name)
    elif path.is_dir() or _yaml_name([path.name]) is not None:
        root = path if path.is_dir() else path.parent
        names = [p.name for p in root.iterdir()] if path.is_dir() else [path.name]

        def read(name):
            return (root / name).read_bytes()
    else:
        raise CVBMInputError(f"{path} is not a readable bioimage.io package: it is not a zip archive (corrupt or "
                             f"incomplete?)")
    yaml_name = _yaml_name(names)
    if yaml_name is None:
        raise CVBMInputError(f"{path} holds no rdf.yaml or bioimageio.yaml: it is not a bioimage.io package")
    return yaml_name, read


def _checkpoint_bytes(path: Path) -> Tuple[str, bytes, dict]:
    """(name, content) of the napari-cvbm checkpoint attached to the package at ``path``, and its description."""
    from ruyaml import YAML

    yaml_name, read = _reader(path)
    try:
        description = YAML(typ="safe").load(read(yaml_name).decode("utf-8"))
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable description is one message
        raise CVBMInputError(f"{path}: its {yaml_name} is not readable ({type(exc).__name__})") from None
    config = description.get("config") if isinstance(description, dict) else None
    ours = config.get(CONFIG_KEY) if isinstance(config, dict) else None
    name = ours.get("checkpoint") if isinstance(ours, dict) else None
    if not isinstance(name, str):
        kind = description.get("type", "resource") if isinstance(description, dict) else "resource"
        raise CVBMInputError(f"{path} is a bioimage.io {kind} not made by napari-cvbm; napari-cvbm can import only "
                             f"its own packages (it has no CVBM attachment)")
    if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
        raise CVBMInputError(f"{path}: its napari-cvbm attachment {name!r} is not a file of the package")
    try:
        return name, read(name), description
    except (KeyError, FileNotFoundError):
        raise CVBMInputError(f"{path}: its napari-cvbm attachment {name} is missing") from None


def load_package(path) -> Tuple[CVBMNet, TrainConfig]:
    """The CVBM model (all heads, CPU, eval mode) and config of a package made by :func:`export_package`,
    from its attached napari-cvbm checkpoint, loaded safely (weights only). A bioimage.io package not made
    by napari-cvbm, or a corrupt one, raises one CVBMInputError line."""
    path = Path(path)
    if not path.exists():
        raise CVBMInputError(f"bioimage.io package {path} does not exist")
    try:
        name, data, description = _checkpoint_bytes(path)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise CVBMInputError(f"{path} is not a readable bioimage.io package: the zip archive is corrupt "
                             f"({str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__})") from None
    except OSError as exc:
        raise CVBMInputError(f"{path} could not be read ({exc.strerror or exc})") from None
    _check_sha256(path, description, name, data)
    with tempfile.TemporaryDirectory(prefix="cvbm-package-") as folder:
        checkpoint = Path(folder) / PurePosixPath(name).name
        checkpoint.write_bytes(data)
        try:
            payload = load_checkpoint(checkpoint)
        except CVBMInputError as exc:
            message = str(exc).replace(f"checkpoint {checkpoint}", f"the napari-cvbm checkpoint of {path}")
            raise CVBMInputError(message) from None
    model, config = model_from_payload(payload, source=f"bioimage.io package {path}")
    return model.eval(), config


def _check_sha256(path: Path, description: dict, member: str, data: bytes) -> None:
    """Refuse an attachment whose SHA-256 differs from the one the description records."""
    import hashlib

    for entry in description.get("attachments") or []:
        if isinstance(entry, dict) and entry.get("source") == member and entry.get("sha256"):
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise CVBMInputError(f"{path}: its napari-cvbm attachment {member} was changed or damaged "
                                     f"(SHA-256 does not match the package's description)")
