"""Reading and writing NIfTI and TIFF images while keeping voxel spacing (and the NIfTI affine).

In memory, arrays use the napari axis order: (z, y, x) for 3D and (y, x) for 2D, with ``spacing``
in the same order. NIfTI files store (x, y, z), so axes are reversed on read and back on write.
Every failure raises :class:`CVBMInputError` with a one-line message that names the file.
"""

from __future__ import annotations

import gzip
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CVBMInputError

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".tif", ".tiff")
_NIFTI = (".nii.gz", ".nii")
_TIFF_INCH = 2  # TIFF ResolutionUnit: a dpi value is a display setting, not a voxel size


@dataclass
class ImageData:
    """An image or label array in (z, y, x) / (y, x) order, its spacing, and the NIfTI affine."""

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray | None = None


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


def _read_nifti(path: Path) -> tuple[np.ndarray, list[float], np.ndarray]:
    import nibabel as nib

    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # decompress it all so gzip's CRC catches flipped bits
            raw = gzip.decompress(raw)
        nifti2 = 540 in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big"))  # sizeof_hdr
        img = (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_bytes(raw)
        data = np.asanyarray(img.dataobj)  # applies scl_slope / scl_inter when set
        zooms = [float(z) for z in img.header.get_zooms()]
        affine = np.array(img.affine, dtype=np.float64)
    except MemoryError:
        raise
    except Exception as error:  # nibabel, gzip, zlib, EOF, struct... all mean "unreadable"
        raise CVBMInputError(
            f"Cannot read NIfTI file {path}: {_one_line(error)} (corrupt, truncated or not a NIfTI file?)"
        ) from error
    data = np.asarray(data)
    zooms = (zooms + [1.0] * data.ndim)[: data.ndim]
    return data.T, zooms[::-1], affine  # (x, y, z) -> (z, y, x)


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


def _read_tiff(path: Path) -> tuple[np.ndarray, list[float]]:
    import tifffile

    errors = _TiffErrors()
    tiff_logger = logging.getLogger("tifffile")
    tiff_logger.addHandler(errors)
    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            data = series.asarray()
            axes = series.axes
            page = tif.pages[0]
            ij = tif.imagej_metadata or {}
            tags = page.tags
            unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else _TIFF_INCH
            res = {}
            for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
                if tag in tags and (ij or unit != _TIFF_INCH):
                    num, den = tags[tag].value
                    if num > 0 and den > 0:
                        res[axis] = den / num  # resolution is pixels per unit
            if float(ij.get("spacing", 0) or 0) > 0:
                res["Z"] = float(ij["spacing"])
        if errors.messages:
            raise ValueError(errors.messages[0].replace(repr(tif), "").strip())
    except MemoryError:
        raise
    except Exception as error:
        raise CVBMInputError(
            f"Cannot read TIFF file {path}: {_one_line(error)} (corrupt, truncated or not a TIFF file?)"
        ) from error
    finally:
        tiff_logger.removeHandler(errors)
    for axis, size in zip(axes, data.shape):
        # RGB samples are never a volume; a "channel" axis longer than 4 is most likely a stack
        # saved without axis metadata (tifffile's imagej=True default), so it is kept as z.
        if (axis == "S" and size > 1) or (axis == "C" and 1 < size <= 4):
            raise CVBMInputError(
                f"{path} has {size} colour channels/samples (shape {data.shape}, axes {axes}); "
                "expected a 2D or 3D scalar image"
            )
    return data, [res.get(axis, 1.0) for axis in axes]


def _read(path: str | os.PathLike, channels: bool = False) -> ImageData:
    """Read and squeeze; with ``channels`` a 4D array (channels or time frames first) is kept."""
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
    affine = None
    if ext in _NIFTI:
        data, spacing, affine = _read_nifti(path)
    else:
        data, spacing = _read_tiff(path)
    if data.size == 0:
        raise CVBMInputError(f"{path} is empty (shape {data.shape})")
    keep = [i for i, size in enumerate(data.shape) if size > 1]
    if len(keep) == 4 and not channels:
        raise CVBMInputError(f"{path} holds {data.shape[keep[0]]} channels or time frames (shape {data.shape}); "
                             f"choose one (cvbm: --channel K, K = 0..{data.shape[keep[0]] - 1})")
    if len(keep) not in ((2, 3, 4) if channels else (2, 3)):
        raise CVBMInputError(f"{path} has shape {data.shape}; expected a 2D or 3D scalar image")
    if data.dtype.kind not in "biuf":
        raise CVBMInputError(f"{path} has unsupported data type {data.dtype}; expected numbers")
    data = data.reshape([data.shape[i] for i in keep])
    # a broken header's zero or NaN spacing reads as 1.0
    spacing = tuple(float(s) if np.isfinite(s) and s > 0 else 1.0 for s in (spacing[i] for i in keep))
    return ImageData(data, spacing, affine)


def read_image(path: str | os.PathLike, channel: int | str | None = None) -> ImageData:
    """Read a .nii/.nii.gz/.tif/.tiff image as float32 in (z, y, x) / (y, x) order.

    NIfTI intensity scaling (scl_slope/scl_inter) is applied. Singleton axes are squeezed. A 4D
    image (channels or time frames, e.g. a NIfTI's 4th axis) needs ``channel``: an index picks
    one volume, ``"all"`` keeps the 4D array (channels first) with the spacing of one volume.
    """
    image = _read(path, channels=channel is not None)
    if image.array.ndim == 4:
        image.spacing = image.spacing[1:]
        if channel != "all":
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


def _nifti_bytes(array: np.ndarray, spacing, affine, gz: bool) -> bytes:
    import nibabel as nib

    if affine is None:
        affine = np.diag([*reversed(spacing), *[1.0] * (4 - len(spacing))])
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise CVBMInputError(f"affine must be a 4x4 matrix, got shape {affine.shape}")
    img = nib.Nifti1Image(np.asarray(array).T, affine)  # (z, y, x) -> (x, y, z)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    data = img.to_bytes()
    # Our own gzip (mtime 0, no file name): identical input gives byte-identical files.
    return gzip.compress(data, compresslevel=6, mtime=0) if gz else data


def _write_tiff(tmp: Path, array: np.ndarray, spacing) -> None:
    import tifffile

    if array.dtype not in (np.uint8, np.uint16, np.float32):  # what ImageJ TIFF can hold
        array = array.astype(np.float32)  # exact: write_image checked |values| <= 2**24
    metadata = {"axes": "ZYX" if array.ndim == 3 else "YX", "unit": "mm"}
    if array.ndim == 3:
        metadata["spacing"] = float(spacing[0])
    tifffile.imwrite(
        str(tmp), array, imagej=True, metadata=metadata,
        resolution=(1.0 / float(spacing[-1]), 1.0 / float(spacing[-2])),
    )


def write_image(path: str | os.PathLike, array, spacing=None, affine=None) -> Path:
    """Write ``array`` ((z, y, x) or (y, x)) to .nii/.nii.gz/.tif/.tiff, chosen by extension.

    Integer/bool arrays are stored in the smallest fitting type (uint8, uint16, then signed), float
    arrays as float32. ``spacing`` (same axis order, default 1.0) is stored in the header; for
    NIfTI, a given ``affine`` (e.g. from the input image) takes precedence over ``spacing``.
    Parent folders are created, and the file is written atomically. Returns the path.
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
    spacing = tuple(float(s) for s in (spacing if spacing is not None else [1.0] * array.ndim))
    if len(spacing) != array.ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise CVBMInputError(f"Cannot write {path}: spacing {spacing} does not fit shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=_storage_dtype(array, path))
    if ext not in _NIFTI and array.dtype.kind in "iu" and np.abs(array).max() > 2**24:
        raise CVBMInputError(f"Cannot write {path}: integers beyond 2**24 do not fit an ImageJ TIFF")

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        if ext in _NIFTI:
            data = _nifti_bytes(array, spacing, affine, gz=ext == ".nii.gz")
            with open(tmp, "xb") as f:
                f.write(data)
        else:
            _write_tiff(tmp, array, spacing)
        os.replace(tmp, path)
    except (CVBMInputError, MemoryError):
        raise
    except Exception as error:
        raise CVBMInputError(f"Cannot write {path}: {_one_line(error)}") from error
    finally:
        tmp.unlink(missing_ok=True)
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
