"""Reading and writing NIfTI and TIFF images on their own voxel grid.

In memory, arrays use the napari axis order: (z, y, x) for 3D and (y, x) for 2D, with ``spacing``
in the same order and in millimetres (in pixels for files that state no unit). NIfTI files store
(x, y, z), so axes are reversed on read and back on write. Each image carries its
:class:`~.geometry.Geometry`; a result written with it lands on the image's grid (see geometry.py).
Spatial axes and the others are never confused: a NIfTI's 4th and 5th axes and a TIFF's T (time)
and C (channel) axes are channels or frames, never z; singleton spatial axes are squeezed in memory
and restored on write. Every failure raises :class:`CVBMInputError` with a one-line message that
names the file.
"""

from __future__ import annotations

import gzip
import logging
import os
import threading
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CVBMInputError
from .geometry import Geometry, canonical_unit, check_aligned, mm_per_unit
from .outputs import atomic_write

__all__ = ["IMAGE_EXTENSIONS", "Geometry", "ImageData", "check_aligned", "list_images", "pair_images_labels",
           "read_image", "read_labels", "strip_extension", "write_image"]

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".tif", ".tiff")
_NIFTI = (".nii.gz", ".nii")
_TIFF_RESOLUTION_UNITS = {3: "cm"}  # ResolutionUnit 2 (inch, the default) is a display dpi, 1 has no unit


@dataclass
class ImageData:
    """An image or label array in (z, y, x) / (y, x) order (channels first when kept), its spacing
    in mm, and the :class:`Geometry` of the file it came from."""

    array: np.ndarray
    spacing: tuple[float, ...]
    geometry: Geometry | None = None

    @property
    def affine(self) -> np.ndarray | None:
        """The NIfTI voxel-to-world affine in the file's units (nibabel's ``img.affine``), or None."""
        return self.geometry.affine if self.geometry else None


def _extension(path: str | os.PathLike) -> str | None:
    name = Path(path).name.lower()
    return next((ext for ext in IMAGE_EXTENSIONS if name.endswith(ext)), None)


def strip_extension(path: str | os.PathLike) -> str:
    """Case name of ``path``: its file name without the image extension (handles ``.nii.gz``)."""
    name = Path(path).name
    ext = _extension(name)
    return name[: -len(ext)] if ext else Path(name).stem


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# ----------------------------------------------------------------------------------- reading
# Each format reader returns (data, kinds, spacing_mm, unit, nifti_header): ``kinds`` says per axis
# of ``data`` whether it is "spatial" or "channel" (channels, time frames, anything else).


def _read_nifti(path: Path):
    import nibabel as nib

    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # decompress it all so gzip's CRC catches flipped bits
            raw = gzip.decompress(raw)
        nifti2 = 540 in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big"))  # sizeof_hdr
        img = (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_bytes(raw)
        data = np.asarray(np.asanyarray(img.dataobj))  # applies scl_slope / scl_inter when set
        header = img.header.copy()
        zooms = [float(z) for z in header.get_zooms()]
        file_unit = header.get_xyzt_units()[0]
    except MemoryError:
        raise
    except Exception as error:  # nibabel, gzip, zlib, EOF, struct... all mean "unreadable"
        raise CVBMInputError(
            f"Cannot read NIfTI file {path}: {_one_line(error)} (corrupt, truncated or not a NIfTI file?)"
        ) from error
    unit = "mm" if file_unit == "unknown" else file_unit  # NIfTI readers all take unknown as mm
    factor = mm_per_unit(unit, path)
    spatial = min(3, data.ndim)
    kinds = ["channel"] * (data.ndim - spatial) + ["spatial"] * spatial  # (..., t, z, y, x) once reversed
    spacing = [z * factor for z in (zooms + [1.0] * data.ndim)[: data.ndim]][::-1]
    return data.T, kinds, spacing, canonical_unit(unit, path), header


class _TiffErrors(logging.Handler):
    """Collects tifffile's logged errors: it logs (not raises) e.g. truncated pages, then returns
    whatever it could read, which could silently be one slice of a volume."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


def _tiff_spacing(tif, path) -> tuple[dict[str, float], str | None]:
    """Voxel size per axis letter (X, Y, Z) in mm, and the file's unit (None: pixels).

    OME-XML ``PhysicalSize*`` (default unit µm) first, then ImageJ metadata (``unit``, ``spacing``
    and the resolution tags), then the TIFF resolution tags in cm; an inch resolution without
    ImageJ metadata is a display dpi, not a voxel size.
    """
    tags = tif.pages[0].tags
    per_unit = {}
    for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
        if tag in tags:
            num, den = tags[tag].value
            if num > 0 and den > 0:
                per_unit[axis] = den / num  # resolution is pixels per unit
    if tif.is_ome:
        pixels = ElementTree.fromstring(tif.ome_metadata).find(".//{*}Pixels")
        sizes, units = {}, []
        for axis in "XYZ":
            value = pixels.get(f"PhysicalSize{axis}") if pixels is not None else None
            if value is not None:
                unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
                sizes[axis] = float(value) * mm_per_unit(unit, path)
                units.append(canonical_unit(unit, path))
        return sizes, (units[0] if units else None)
    if tif.is_imagej:
        ij = tif.imagej_metadata or {}
        unit = canonical_unit(ij.get("unit"), path)
        factor = mm_per_unit(unit, path)
        sizes = {axis: size * factor for axis, size in per_unit.items()}
        if float(ij.get("spacing", 0) or 0) > 0:
            sizes["Z"] = float(ij["spacing"]) * factor
        return sizes, unit
    code = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    unit = _TIFF_RESOLUTION_UNITS.get(code)
    if unit is None:
        return {}, None
    return {axis: size * mm_per_unit(unit, path) for axis, size in per_unit.items()}, unit


def _tiff_kinds(axes: str, shape) -> list[str]:
    """Spatial or channel, per TIFF axis letter. A generic page axis (Q, I) is z; so is a C axis
    longer than 4 when there is no z axis (tifffile's and ImageJ's default for a stack saved without
    axis metadata); T (time) and every other letter are channels or frames, never z."""
    has_z = "Z" in axes
    kinds = []
    for axis, size in zip(axes, shape):
        if axis in "YX":
            kinds.append("spatial")
        elif axis == "Z" or not has_z and (axis in "QI" or axis == "C" and size > 4):
            kinds.append("spatial_z")
            has_z = True
        else:
            kinds.append("channel")
    return kinds


def _read_tiff(path: Path):
    import tifffile

    errors = _TiffErrors()
    tiff_logger = logging.getLogger("tifffile")
    tiff_logger.addHandler(errors)
    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            data = series.asarray()
            axes = series.axes
            sizes, unit = _tiff_spacing(tif, path)
        if errors.messages:
            raise ValueError(errors.messages[0].replace(repr(tif), "").strip())
    except (MemoryError, CVBMInputError):
        raise
    except Exception as error:
        raise CVBMInputError(
            f"Cannot read TIFF file {path}: {_one_line(error)} (corrupt, truncated or not a TIFF file?)"
        ) from error
    finally:
        tiff_logger.removeHandler(errors)
    if "S" in axes and data.shape[axes.index("S")] > 1:
        raise CVBMInputError(f"{path} has {data.shape[axes.index('S')]} colour channels (shape {data.shape}, "
                             f"axes {axes}); expected a grey-level image")
    kinds = _tiff_kinds(axes, data.shape)
    fallback = mm_per_unit(unit, path)  # an axis the file gives no size for: one unit
    spacing = [sizes.get("Z" if kind == "spatial_z" else axis, fallback) for axis, kind in zip(axes, kinds)]
    return data, [k.replace("spatial_z", "spatial") for k in kinds], spacing, unit, None


def _arrange(path: Path, data: np.ndarray, kinds, spacing, unit, header, channels: bool) -> ImageData:
    """Channels first, singleton spatial axes squeezed (and remembered in the geometry)."""
    spatial = [i for i, kind in enumerate(kinds) if kind == "spatial"]
    extra = [i for i, kind in enumerate(kinds) if kind != "spatial" and data.shape[i] > 1]
    kept = [i for i in spatial if data.shape[i] > 1]
    if len(extra) > 1:
        raise CVBMInputError(f"{path} has shape {data.shape} with {len(extra)} non-spatial axes (channels, "
                             "time frames...); expected one image with at most one such axis")
    if len(kept) not in (2, 3):
        raise CVBMInputError(f"{path} has shape {data.shape}; expected a 2D or 3D image")
    if extra and not channels:
        count = data.shape[extra[0]]
        raise CVBMInputError(f"{path} holds {count} channels or time frames (shape {data.shape}); "
                             f"choose one (cvbm: --channel K, K = 0..{count - 1})")
    order = extra + spatial + [i for i in range(data.ndim) if i not in extra + spatial]
    array = data.transpose(order).reshape([data.shape[i] for i in extra + kept])
    # a broken header's zero or NaN spacing reads as 1.0
    kept_spacing = tuple(float(s) if np.isfinite(s) and s > 0 else 1.0 for s in (spacing[i] for i in kept))
    geometry = Geometry(tuple(data.shape[i] for i in spatial), kept_spacing, unit, header)
    return ImageData(array, kept_spacing, geometry)


def _read(path: str | os.PathLike, channels: bool = False) -> ImageData:
    """Read a file; with ``channels`` a channel/frame axis is kept (first), else it is refused."""
    path = Path(path)
    if not path.exists():
        raise CVBMInputError(f"File not found: {path}")
    if not path.is_file():
        raise CVBMInputError(f"{path} is not a file")
    ext = _extension(path)
    if ext is None:
        raise CVBMInputError(
            f"Unsupported file type: {path} (supported: {', '.join(IMAGE_EXTENSIONS)})"
        )
    data, kinds, spacing, unit, header = (_read_nifti if ext in _NIFTI else _read_tiff)(path)
    if data.size == 0:
        raise CVBMInputError(f"{path} is empty (shape {data.shape})")
    if data.dtype.kind not in "biuf":
        raise CVBMInputError(f"{path} has unsupported data type {data.dtype}; expected numbers")
    return _arrange(path, data, kinds, spacing, unit, header, channels)


def read_image(path: str | os.PathLike, channel: int | str | None = None) -> ImageData:
    """Read a .nii/.nii.gz/.tif/.tiff image as float32 in (z, y, x) / (y, x) order.

    NIfTI intensity scaling (scl_slope/scl_inter) is applied. Singleton spatial axes are squeezed.
    An image with channels or time frames (a NIfTI's 4th axis, a TIFF's C or T axis) needs
    ``channel``: an index picks one, ``"all"`` keeps them as the first axis.
    """
    image = _read(path, channels=channel is not None)
    if image.array.ndim > len(image.spacing) and channel != "all":
        count = image.array.shape[0]
        if not isinstance(channel, int) or not 0 <= channel < count:
            raise CVBMInputError(f"{path}: channel {channel} does not exist (0..{count - 1})")
        image.array = image.array[channel]
    image.array = np.ascontiguousarray(image.array, dtype=np.float32)
    return image


def read_labels(path: str | os.PathLike) -> ImageData:
    """Read a label map as integers: uint8 when all values fit, else int64.

    Raises :class:`CVBMInputError` for NaN, fractional or negative values.
    """
    labels = _read(path)
    array = labels.array
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise CVBMInputError(
                f"Label file {path} contains NaN/Inf values; labels must be integers"
            )
        fractional = array != np.round(array)
        if fractional.any():
            raise CVBMInputError(
                f"Label file {path} contains non-integer values (e.g. {array[fractional].flat[0]:g}); "
                "is this an image rather than a label map?"
            )
    if array.min() < 0:
        raise CVBMInputError(
            f"Label file {path} contains negative values (min {array.min():g}); labels must be >= 0"
        )
    dtype = np.uint8 if array.max() <= 255 else np.int64
    labels.array = np.ascontiguousarray(array, dtype=dtype)
    return labels


# ----------------------------------------------------------------------------------- writing


def _storage_dtype(array: np.ndarray, path: Path) -> np.dtype:
    if array.dtype.kind == "f":
        return np.dtype(np.float32)
    if array.dtype.kind not in "biu":
        raise CVBMInputError(f"Cannot write {path}: unsupported data type {array.dtype}")
    low, high = int(array.min()), int(array.max())
    for dtype in (np.uint8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _nifti_bytes(array: np.ndarray, spacing, affine, geometry: Geometry | None, gz: bool) -> bytes:
    """A NIfTI file of ``array``: the source image's own header when its geometry has one (only the
    data type, scaling, display range and intent reset), else an affine from ``affine`` or ``spacing``."""
    import nibabel as nib

    if geometry is not None and geometry.nifti_header is not None:
        header = geometry.nifti_header.copy()
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        img = image_class(geometry.unsqueeze(array).T, None, header)
        img.header.set_data_dtype(array.dtype)
        img.header.set_slope_inter(None, None)
        img.header.set_intent("none")
        img.header["cal_min"] = img.header["cal_max"] = 0
        img.header["descrip"] = b"napari-cvbm"
    else:
        unit = geometry.unit if geometry is not None and geometry.unit in ("micron", "meter") else "mm"  # NIfTI's
        if affine is None:
            voxel = [s / mm_per_unit(unit, "") for s in reversed(spacing)]
            affine = np.diag([*voxel, *[1.0] * (4 - len(spacing))])
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise CVBMInputError(f"affine must be a 4x4 matrix, got shape {affine.shape}")
        img = nib.Nifti1Image(np.asarray(array).T, affine)  # (z, y, x) -> (x, y, z)
        img.header.set_xyzt_units(unit)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    data = img.to_bytes()
    # Our own gzip (mtime 0, no file name): identical input gives byte-identical files.
    return gzip.compress(data, compresslevel=6, mtime=0) if gz else data


def _check_tiff_can_hold(geometry: Geometry | None, path: Path) -> None:
    """Refuse a NIfTI grid that is rotated, flipped or away from the origin: TIFF cannot say where
    such a grid lies, so the result would be misplaced."""
    if geometry is None or geometry.nifti_header is None:
        return
    affine = geometry.affine_mm
    rotation = affine[:3, :3]
    if not (np.allclose(rotation, np.diag(np.diag(rotation))) and (np.diag(rotation) > 0).all()
            and np.allclose(affine[:3, 3], 0)):
        raise CVBMInputError(f"Cannot write {path}: TIFF cannot hold the orientation and origin of its "
                             "NIfTI image (the result would be misplaced); write .nii.gz instead")


def _write_tiff(file, array: np.ndarray, spacing, geometry: Geometry | None) -> None:
    """An ImageJ TIFF of ``array`` in the source's unit (mm without a geometry)."""
    import tifffile

    unit = geometry.unit if geometry is not None else "mm"  # canonical (core.geometry), None: pixels
    spacing = [s / mm_per_unit(unit, "") for s in spacing]
    if array.dtype not in (np.uint8, np.uint16, np.float32):  # what ImageJ TIFF can hold
        array = array.astype(np.float32)  # exact: write_image checked |values| <= 2**24
    metadata = {"axes": "ZYX" if array.ndim == 3 else "YX", "unit": unit or "pixel"}
    if array.ndim == 3:
        metadata["spacing"] = float(spacing[0])
    tifffile.imwrite(
        file, array, imagej=True, metadata=metadata,
        resolution=(1.0 / float(spacing[-1]), 1.0 / float(spacing[-2])),
    )


def write_image(path: str | os.PathLike, array, spacing=None, affine=None, geometry: Geometry | None = None) -> Path:
    """Write ``array`` ((z, y, x) or (y, x)) to .nii/.nii.gz/.tif/.tiff, chosen by extension.

    ``geometry``: that of the image ``array`` was computed from; the file then lies on the image's
    grid (NIfTI: the image's header and singleton axes; TIFF: its unit), and a geometry the format
    cannot hold is refused. Without it, ``spacing`` (mm, array order, default 1.0) and for NIfTI an
    optional ``affine`` define the header. Integer/bool arrays are stored in the smallest fitting
    type (uint8, uint16, then signed), float arrays as float32. Parent folders are created, and the
    file is written atomically (a failed write leaves any previous file as it was). Returns the path.
    """
    path = Path(path)
    ext = _extension(path)
    if ext is None:
        raise CVBMInputError(
            f"Cannot write {path}: unsupported extension (use one of {', '.join(IMAGE_EXTENSIONS)})"
        )
    array = np.asarray(array)
    if array.size == 0 or array.ndim not in (2, 3):
        raise CVBMInputError(f"Cannot write {path}: array has shape {array.shape}; expected 2D or 3D")
    if geometry is not None:
        if not geometry.fits(array):
            raise CVBMInputError(f"Cannot write {path}: array shape {array.shape} is not its image's grid "
                                 f"{geometry.shape}")
        spacing = geometry.spacing
    spacing = tuple(float(s) for s in (spacing if spacing is not None else [1.0] * array.ndim))
    if len(spacing) != array.ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise CVBMInputError(f"Cannot write {path}: spacing {spacing} does not fit shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=_storage_dtype(array, path))
    if ext not in _NIFTI and array.dtype.kind in "iu" and np.abs(array).max() > 2**24:
        raise CVBMInputError(f"Cannot write {path}: integers beyond 2**24 do not fit an ImageJ TIFF")

    try:
        if ext in _NIFTI:
            data = _nifti_bytes(array, spacing, affine, geometry, gz=ext == ".nii.gz")
            with atomic_write(path) as f:
                f.write(data)
        else:
            _check_tiff_can_hold(geometry, path)
            with atomic_write(path) as f:
                _write_tiff(f, array, spacing, geometry)
    except (CVBMInputError, MemoryError):
        raise
    except Exception as error:  # nibabel / tifffile refusing the data
        raise CVBMInputError(f"Cannot write {path}: {_one_line(error)}") from error
    return path


# ----------------------------------------------------------------------------------- folders


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (supported extensions, not hidden) in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CVBMInputError(f"Folder not found: {folder}")
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and _extension(p) is not None
    )


def _by_case(folder: Path, what: str) -> dict[str, Path]:
    files = list_images(folder)
    if not files:
        raise CVBMInputError(f"No {what} files ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
    cases: dict[str, Path] = {}
    for file in files:
        case = strip_extension(file)
        if case in cases:
            raise CVBMInputError(
                f"Two {what} files for case '{case}' in {folder}: {cases[case].name}, {file.name}"
            )
        cases[case] = file
    return cases


def pair_images_labels(images_dir, labels_dir) -> list[tuple[Path, Path]]:
    """(image, label) pairs matched by case name, sorted by case; every image needs a label."""
    images = _by_case(Path(images_dir), "image")
    labels = _by_case(Path(labels_dir), "label")
    missing = [case for case in images if case not in labels]
    if missing:
        shown = ", ".join(f"'{case}'" for case in missing[:5])
        shown += f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CVBMInputError(f"No label in {labels_dir} for {len(missing)} image(s): {shown}")
    return [(images[case], labels[case]) for case in sorted(images)]
