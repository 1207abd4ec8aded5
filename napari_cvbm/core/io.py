"""Reading and writing images and label maps on their own voxel grid: NIfTI (.nii, .nii.gz), TIFF
and OME-TIFF (.tif, .tiff), PNG and JPEG (.png, .jpg, .jpeg; 2D only).

In memory, arrays use the napari axis order: (z, y, x) for 3D and (y, x) for 2D, with ``spacing``
in the same order and in millimetres (in pixels for files that state no unit; PNG and JPEG are
always read in pixels, as their dpi is a print size). NIfTI files store (x, y, z), so axes are
reversed on read and back on write. Each image carries its :class:`~.geometry.Geometry`; a result
written with it lands on the image's grid (see geometry.py).

Spatial axes and the others are never confused: a NIfTI's 4th and 5th axes and a TIFF's T (time),
C (channel) and non-RGB S (sample) axes are channels or frames, never z; they are kept (first) only
when asked for (``channel="all"``), or one is picked (``channel=K``). Colour is read without being
asked for: RGB(A) PNG/JPEG, colour-palette PNG and RGB TIFF are (3, y, x) / (3, z, y, x), alpha
dropped, ``channel_names`` ("red", "green", "blue"). Singleton spatial axes are squeezed in memory and
restored on write. Every failure raises :class:`CVBMInputError` with a one-line message that names
the file.
"""

from __future__ import annotations

import gzip
import logging
import os
import threading
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np

from .channels import RGB
from .errors import CVBMInputError
from .geometry import Geometry, canonical_unit, check_aligned, mm_per_unit
from .outputs import atomic_write

__all__ = ["IMAGE_EXTENSIONS", "Geometry", "ImageData", "check_aligned", "list_images",
           "pair_images_labels", "read_image", "read_labels", "read_mask", "strip_extension", "write_image"]

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".tif", ".tiff", ".png", ".jpg", ".jpeg")
_NIFTI = (".nii.gz", ".nii")
_TIFF = (".tif", ".tiff")
_JPEG = (".jpg", ".jpeg")
_TIFF_RESOLUTION_UNITS = {3: "cm"}  # ResolutionUnit 2 (inch, the default) is a display dpi, 1 has no unit


@dataclass
class ImageData:
    """An image or label array in (z, y, x) / (y, x) order (channels first when kept), its spacing
    in mm, and the :class:`Geometry` of the file it came from."""

    array: np.ndarray
    spacing: tuple[float, ...]
    geometry: Geometry | None = None
    channel_names: tuple[str, ...] = ()  # one per channel when the array has a channel axis

    @property
    def channels(self) -> int:
        """1 without a channel axis (``array.ndim == len(spacing)``), else ``array.shape[0]``."""
        return 1 if self.array.ndim == len(self.spacing) else int(self.array.shape[0])

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
# Each format reader returns (data, kinds, spacing_mm, unit, nifti_header, names): ``kinds`` says per
# axis of ``data`` whether it is "spatial", "colour" (red, green, blue: kept without being asked for)
# or "channel" (channels, time frames, anything else); ``names`` per axis: its channels' names or None.


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
    return data.T, kinds, spacing, canonical_unit(unit, path), header, [None] * data.ndim


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


def _tiff_kinds(axes: str, shape, colour: bool) -> list[str]:
    """Spatial, colour or channel, per TIFF axis letter. A generic page axis (Q, I) is z; so is a C
    axis longer than 4 when there is no z axis (tifffile's and ImageJ's default for a stack saved
    without axis metadata); S is colour in an RGB file; T (time) and every other letter are
    channels or frames, never z."""
    has_z = "Z" in axes
    kinds = []
    for axis, size in zip(axes, shape):
        if axis in "YX":
            kinds.append("spatial")
        elif axis == "Z" or not has_z and (axis in "QI" or axis == "C" and size > 4):
            kinds.append("spatial_z")
            has_z = True
        else:
            kinds.append("colour" if axis == "S" and colour else "channel")
    return kinds


def _ome_channel_names(tif) -> list[str] | None:
    """The OME-XML ``Channel Name`` of each channel of the first image, None unless all have one."""
    if not tif.is_ome:
        return None
    pixels = ElementTree.fromstring(tif.ome_metadata).find(".//{*}Pixels")
    names = [channel.get("Name") for channel in (pixels.findall("{*}Channel") if pixels is not None else [])]
    return names if names and all(names) else None


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
            photometric = int(tif.pages[0].photometric)
            sizes, unit = _tiff_spacing(tif, path)
            ome_names = _ome_channel_names(tif)
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
    samples = data.shape[axes.index("S")] if "S" in axes else 1
    colour = samples >= 3 and photometric in (2, 6)  # RGB, YCbCr (decoded to RGB)
    if samples > 1 and photometric == 5:
        raise CVBMInputError(f"{path} is a CMYK (separated) TIFF; convert it to RGB or grey first")
    if colour:  # red, green, blue; alpha and other extra samples dropped
        data = np.take(data, [0, 1, 2], axis=axes.index("S"))
    kinds = _tiff_kinds(axes, data.shape, colour)
    fallback = mm_per_unit(unit, path)  # an axis the file gives no size for: one unit
    spacing = [sizes.get("Z" if kind == "spatial_z" else axis, fallback) for axis, kind in zip(axes, kinds)]
    names = [ome_names if axis == "C" else None for axis in axes]
    return data, [k.replace("spatial_z", "spatial") for k in kinds], spacing, unit, None, names


def _png_bit_depth(raw: bytes, path: Path) -> None:
    """Refuse a 16-bit colour or grey+alpha PNG: Pillow reads those at 8 bits only."""
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR" and len(raw) >= 26:
        depth, colour_type = raw[24], raw[25]
        if depth == 16 and colour_type in (2, 4, 6):
            what = "grey+alpha" if colour_type == 4 else "colour"
            raise CVBMInputError(f"{path} is a 16-bit {what} PNG, which can only be read at 8 bits here; "
                                 "save it as a 16-bit TIFF (or as an 8-bit or a greyscale PNG)")


def _photo_array(image, labels: bool) -> tuple[np.ndarray, bool]:
    """A Pillow image as an array, and whether it is colour ((y, x, 3), alpha dropped). Palette
    images: their colours (grey when the palette is), or for ``labels`` their indices."""
    mode = image.mode
    if mode in ("P", "PA"):
        if labels:
            return np.array(image.getchannel(0)), False
        rgb = np.array(image.convert("RGB"))
        grey = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
        return (rgb[..., 0], False) if grey else (rgb, True)
    if mode in ("LA", "La"):
        image = image.convert("L")
    if image.mode in ("1", "L", "I", "F") or image.mode.startswith("I;16"):
        return np.array(image), False
    if image.mode != "RGBA":  # RGBA: its colour stays as stored; others (CMYK, YCbCr, RGBa...) converted
        image = image.convert("RGB")
    return np.array(image)[..., :3], True


def _read_photo(path: Path, labels: bool = False):
    from PIL import Image

    kind = "PNG" if path.name.lower().endswith(".png") else "JPEG"
    try:
        raw = path.read_bytes()
        _png_bit_depth(raw, path)
        if kind == "PNG":
            with Image.open(BytesIO(raw)) as image:
                image.verify()  # chunk checksums: a flipped bit is refused, not read
        with Image.open(BytesIO(raw)) as image:
            if labels and image.format in ("JPEG", "MPO"):
                raise CVBMInputError(_JPEG_LABELS.format(path=path))
            image.load()  # raises on a truncated file (Pillow's LOAD_TRUNCATED_IMAGES is off by default)
            data, colour = _photo_array(image, labels)
    except (MemoryError, CVBMInputError):
        raise
    except Exception as error:  # Pillow's OSError, SyntaxError, ValueError, zlib... all mean "unreadable"
        raise CVBMInputError(
            f"Cannot read {kind} file {path}: {_one_line(error)} (corrupt, truncated or not a {kind} file?)"
        ) from error
    kinds = ["spatial", "spatial"] + ["colour"] * colour
    return data, kinds, [1.0] * data.ndim, None, None, [None] * data.ndim


_JPEG_LABELS = ("Label file {path} is a JPEG: its lossy compression changes label values; "
                "store label maps as PNG or TIFF")


def _arrange(path: Path, data: np.ndarray, kinds, spacing, unit, header, names, channels: bool) -> ImageData:
    """Channels first, singleton spatial axes squeezed (and remembered in the geometry)."""
    spatial = [i for i, kind in enumerate(kinds) if kind == "spatial"]
    extra = [i for i, kind in enumerate(kinds) if kind != "spatial" and data.shape[i] > 1]
    kept = [i for i in spatial if data.shape[i] > 1]
    if len(extra) > 1:
        raise CVBMInputError(f"{path} has shape {data.shape} with {len(extra)} non-spatial axes (colour, "
                             "channels, time frames...); expected one image with at most one such axis")
    if len(kept) not in (2, 3):
        raise CVBMInputError(f"{path} has shape {data.shape}; expected a 2D or 3D image")
    channel_names: tuple[str, ...] = ()
    if extra:
        count = data.shape[extra[0]]
        if kinds[extra[0]] == "colour":
            channel_names = RGB
        elif not channels:
            raise CVBMInputError(f"{path} holds {count} channels or time frames (shape {data.shape}); "
                                 f"choose one (cvbm: --channel K, K = 0..{count - 1}) or use every channel "
                                 "(--channel all)")
        else:
            given = names[extra[0]]
            channel_names = tuple(given) if given and len(given) == count else tuple(map(str, range(count)))
    order = extra + spatial + [i for i in range(data.ndim) if i not in extra + spatial]
    array = data.transpose(order).reshape([data.shape[i] for i in extra + kept])
    # a broken header's zero or NaN spacing reads as 1.0
    kept_spacing = tuple(float(s) if np.isfinite(s) and s > 0 else 1.0 for s in (spacing[i] for i in kept))
    geometry = Geometry(tuple(data.shape[i] for i in spatial), kept_spacing, unit, header)
    return ImageData(array, kept_spacing, geometry, channel_names)


def _checked_path(path: str | os.PathLike) -> tuple[Path, str]:
    """``path`` and its image extension; CVBMInputError unless it is an existing file of a supported type."""
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
    return path, ext


def _read(path: str | os.PathLike, channels: bool = False, labels: bool = False) -> ImageData:
    """Read a file; with ``channels`` a channel/frame axis is kept (first), else it is refused.
    Colour is always kept; ``labels`` reads a palette PNG's indices rather than its colours."""
    path, ext = _checked_path(path)
    if ext in _NIFTI:
        read = _read_nifti(path)
    elif ext in _TIFF:
        read = _read_tiff(path)
    else:
        read = _read_photo(path, labels)
    data = read[0]
    if data.size == 0:
        raise CVBMInputError(f"{path} is empty (shape {data.shape})")
    if data.dtype.kind not in "biuf":
        raise CVBMInputError(f"{path} has unsupported data type {data.dtype}; expected numbers")
    return _arrange(path, *read, channels)


def read_image(path: str | os.PathLike, channel: int | str | None = None) -> ImageData:
    """Read an image (any of :data:`IMAGE_EXTENSIONS`) as float32 in (z, y, x) / (y, x) order.

    NIfTI intensity scaling (scl_slope/scl_inter) is applied. Singleton spatial axes are squeezed.
    A colour image is (3, y, x) / (3, z, y, x) (red, green, blue; alpha dropped) unless ``channel``
    picks one. Channels or time frames (a NIfTI's 4th axis, a TIFF's C or T axis) need
    ``channel``: an index picks one, ``"all"`` keeps them as the first axis (``channel_names``: the
    OME-TIFF channel names, else "0", "1"...). A picked channel is a single-channel image.
    """
    image = _read(path, channels=channel is not None)
    if image.channels > 1 and channel not in (None, "all"):
        count = image.array.shape[0]
        if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < count:
            raise CVBMInputError(f"{path}: channel {channel} does not exist (0..{count - 1})")
        image.array, image.channel_names = image.array[channel], ()
    image.array = np.ascontiguousarray(image.array, dtype=np.float32)
    return image


def read_labels(path: str | os.PathLike) -> ImageData:
    """Read a label map as integers: uint8 when all values fit, else int64.

    Raises :class:`CVBMInputError` for NaN, fractional or negative values, for JPEG files (lossy) and
    for colour label maps (an RGB file reads as grey only when its three channels are equal).
    """
    path = Path(path)
    if _checked_path(path)[1] in _JPEG:
        raise CVBMInputError(_JPEG_LABELS.format(path=path))
    labels = _read(path, labels=True)
    array = labels.array
    if labels.channels > 1:  # colour: grey when red == green == blue
        if not all(np.array_equal(array[0], channel) for channel in array[1:]):
            raise CVBMInputError(f"Label file {path} is a colour image with differing red, green and blue "
                                 "values; colour-coded label maps are not supported: store class indices "
                                 "(0, 1, 2...) in a greyscale PNG or TIFF")
        array, labels.channel_names = array[0], ()
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


def read_mask(path: str | os.PathLike | None, image: ImageData, image_path) -> np.ndarray | None:
    """The mask in ``path`` (non-zero = inside, e.g. a field of view) as booleans on the grid of
    ``image``, read from ``image_path`` (CVBMInputError when it lies elsewhere); None without a path."""
    if path is None:
        return None
    mask = read_labels(path)
    check_aligned(image, mask, image_path, path)
    return mask.array > 0


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


def _write_tiff(file, array: np.ndarray, spacing, geometry: Geometry | None, rgb: bool = False) -> None:
    """An ImageJ TIFF of ``array`` in the source's unit (mm without a geometry); with ``rgb``,
    ``array`` is uint8 (3 or 4, *spatial), stored as an RGB(A) TIFF (photometric rgb)."""
    import tifffile

    unit = geometry.unit if geometry is not None else "mm"  # canonical (core.geometry), None: pixels
    spacing = [s / mm_per_unit(unit, "") for s in spacing]
    if rgb:
        array = np.ascontiguousarray(np.moveaxis(array, 0, -1))  # samples last
    elif array.dtype not in (np.uint8, np.uint16, np.float32):  # what ImageJ TIFF can hold
        array = array.astype(np.float32)  # exact: write_image checked |values| <= 2**24
    metadata = {"axes": ("ZYX" if len(spacing) == 3 else "YX") + "S" * rgb, "unit": unit or "pixel"}
    if len(spacing) == 3:
        metadata["spacing"] = float(spacing[0])
    tifffile.imwrite(
        file, array, imagej=True, metadata=metadata, photometric="rgb" if rgb else "minisblack",
        resolution=(1.0 / float(spacing[-1]), 1.0 / float(spacing[-2])),
    )


def _write_png(file, array: np.ndarray, rgb: bool) -> None:
    """A PNG of a 2D uint8/uint16 ``array`` (grey), or with ``rgb`` of uint8 (3 or 4, y, x)."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(np.moveaxis(array, 0, -1) if rgb else array))
    image.save(file, format="PNG")


def _check_png_can_hold(array: np.ndarray, spacing, geometry: Geometry | None, rgb: bool, path: Path) -> None:
    """Refuse what a PNG would change or lose: 3D, non-integer or out-of-range values, a voxel size."""
    grid_ndim = array.ndim - rgb
    if grid_ndim != 2:
        raise CVBMInputError(f"Cannot write {path}: PNG holds one 2D image, this one has shape {array.shape}; "
                             "write .tif instead")
    physical = geometry is not None and (geometry.unit is not None or geometry.nifti_header is not None)
    if physical or not np.allclose(spacing, 1.0):
        unit = (geometry.unit or "pixels") if geometry is not None else "mm"
        raise CVBMInputError(f"Cannot write {path}: PNG cannot hold a pixel size ({', '.join(map(str, spacing))} "
                             f"{unit}); write .tif instead")
    if rgb:
        return
    if array.dtype.kind == "f":
        raise CVBMInputError(f"Cannot write {path}: PNG holds integers 0..65535 only, this array is "
                             f"{array.dtype}; write .tif instead")
    if array.dtype.kind in "iu" and (int(array.min()) < 0 or int(array.max()) > 65535):
        raise CVBMInputError(f"Cannot write {path}: PNG holds integers 0..65535 only, this array holds "
                             f"{int(array.min())}..{int(array.max())}; write .tif instead")


def _colour_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    """``array`` (a colour image) as uint8; refused unless its values are whole numbers 0..255."""
    if array.dtype.kind not in "biuf":
        raise CVBMInputError(f"Cannot write {path}: unsupported data type {array.dtype}")
    if array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        if not (np.isfinite(low) and np.isfinite(high) and 0 <= low and high <= 255) \
                or (array.dtype.kind == "f" and (array != np.round(array)).any()):
            raise CVBMInputError(f"Cannot write {path}: colour images are stored as 8-bit RGB, so values "
                                 f"must be whole numbers 0..255 (this {array.dtype} image holds {low:g}..{high:g})")
    return np.ascontiguousarray(array, dtype=np.uint8)


def write_image(path: str | os.PathLike, array, spacing=None, affine=None, geometry: Geometry | None = None,
                rgb: bool = False) -> Path:
    """Write ``array`` ((z, y, x) or (y, x)) to .nii/.nii.gz/.tif/.tiff/.png, chosen by extension.

    ``geometry``: that of the image ``array`` was computed from; the file then lies on the image's
    grid (NIfTI: the image's header and singleton axes; TIFF: its unit), and a geometry the format
    cannot hold is refused. Without it, ``spacing`` (mm, array order, default 1.0) and for NIfTI an
    optional ``affine`` define the header. Integer/bool arrays are stored in the smallest fitting
    type (uint8, uint16, then signed), float arrays as float32. PNG holds 2D uint8/uint16 data
    without a pixel size only; JPEG (lossy) is refused. ``rgb``: ``array`` is a colour image,
    channels first ((3 or 4, y, x) or, for TIFF, (3 or 4, z, y, x); whole values 0..255), written
    as an 8-bit RGB(A) TIFF or PNG. Parent folders are created, and the file is written atomically
    (a failed write leaves any previous file as it was). Returns the path.
    """
    path = Path(path)
    ext = _extension(path)
    if ext is None:
        raise CVBMInputError(
            f"Cannot write {path}: unsupported extension (use one of {', '.join(IMAGE_EXTENSIONS)})"
        )
    if ext in _JPEG:
        raise CVBMInputError(f"Cannot write {path}: JPEG is lossy (the values, labels included, would change); "
                             "write .png or .tif instead")
    array = np.asarray(array)
    if rgb:
        if ext in _NIFTI:
            raise CVBMInputError(f"Cannot write {path}: NIfTI cannot hold an RGB colour image; write .tif or .png")
        if array.size == 0 or array.ndim not in (3, 4) or array.shape[0] not in (3, 4):
            raise CVBMInputError(f"Cannot write {path}: colour array has shape {array.shape}; expected "
                                 "(3 or 4, y, x) or (3 or 4, z, y, x), channels first")
    elif array.size == 0 or array.ndim not in (2, 3):
        raise CVBMInputError(f"Cannot write {path}: array has shape {array.shape}; expected 2D or 3D")
    grid = array[0] if rgb else array
    if geometry is not None:
        if not geometry.fits(grid):
            raise CVBMInputError(f"Cannot write {path}: array shape {grid.shape} is not its image's grid "
                                 f"{geometry.shape}")
        spacing = geometry.spacing
    spacing = tuple(float(s) for s in (spacing if spacing is not None else [1.0] * grid.ndim))
    if len(spacing) != grid.ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise CVBMInputError(f"Cannot write {path}: spacing {spacing} does not fit shape {grid.shape}")
    if ext == ".png":
        _check_png_can_hold(array, spacing, geometry, rgb, path)
    array = _colour_uint8(array, path) if rgb else np.ascontiguousarray(array, dtype=_storage_dtype(array, path))
    if ext in _TIFF and array.dtype.kind in "iu" and np.abs(array).max() > 2**24:
        raise CVBMInputError(f"Cannot write {path}: integers beyond 2**24 do not fit an ImageJ TIFF")

    try:
        if ext in _NIFTI:
            data = _nifti_bytes(array, spacing, affine, geometry, gz=ext == ".nii.gz")
            with atomic_write(path) as f:
                f.write(data)
        elif ext == ".png":
            with atomic_write(path) as f:
                _write_png(f, array, rgb)
        else:
            _check_tiff_can_hold(geometry, path)
            with atomic_write(path) as f:
                _write_tiff(f, array, spacing, geometry, rgb)
    except (CVBMInputError, MemoryError):
        raise
    except Exception as error:  # nibabel / tifffile / Pillow refusing the data
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
