"""Tests for napari_cvbm.core.io: round trips, validation, corrupt files, pairing, sample data."""

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_cvbm import synthetic
from napari_cvbm.core.errors import CVBMInputError
from napari_cvbm.core.io import (
    IMAGE_EXTENSIONS,
    ImageData,
    list_images,
    pair_images_labels,
    read_image,
    read_labels,
    strip_extension,
    write_image,
)

SAMPLE = synthetic.SAMPLE_DATA
RNG = np.random.default_rng(0)
VOLUME = RNG.random((5, 6, 7)).astype(np.float32)  # (z, y, x), all sizes distinct
SPACING = (2.5, 0.5, 0.25)
VOLUME_EXTENSIONS = [ext for ext in IMAGE_EXTENSIONS if ext not in (".png", ".jpg", ".jpeg")]  # 3D, float


def assert_one_line_naming(error: pytest.ExceptionInfo, path: Path) -> None:
    message = str(error.value)
    assert path.name in message
    assert "\n" not in message


# ----------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", VOLUME_EXTENSIONS)
def test_round_trip_3d_keeps_array_axes_and_spacing(tmp_path, ext):
    path = write_image(tmp_path / "sub" / f"vol{ext}", VOLUME, spacing=SPACING)
    assert path.exists()
    image = read_image(path)
    assert isinstance(image, ImageData)
    assert image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array, VOLUME)
    assert image.spacing == pytest.approx(SPACING)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


@pytest.mark.parametrize("ext", VOLUME_EXTENSIONS)
def test_round_trip_2d(tmp_path, ext):
    image = VOLUME[0]
    read = read_image(write_image(tmp_path / f"slice{ext}", image, spacing=(0.5, 0.25)))
    np.testing.assert_array_equal(read.array, image)
    assert read.spacing == pytest.approx((0.5, 0.25))


def test_nifti_file_stores_xyz_order(tmp_path):
    path = write_image(tmp_path / "vol.nii.gz", VOLUME, spacing=SPACING)
    stored = nib.load(str(path))
    assert stored.shape == (7, 6, 5)
    assert stored.header.get_zooms() == pytest.approx((0.25, 0.5, 2.5))
    np.testing.assert_array_equal(stored.get_fdata()[3, 2, 1], VOLUME[1, 2, 3])


def test_tiff_file_stores_zyx_order_with_imagej_spacing(tmp_path):
    path = write_image(tmp_path / "vol.tif", VOLUME, spacing=SPACING)
    with tifffile.TiffFile(str(path)) as tif:
        assert tif.series[0].shape == (5, 6, 7)
        assert tif.imagej_metadata["spacing"] == pytest.approx(2.5)


def test_affine_is_kept_and_reused(tmp_path):
    affine = np.array([[0, 0, -2.5, 10], [0, 0.5, 0, -20], [0.25, 0, 0, 30], [0, 0, 0, 1.0]])
    first = write_image(tmp_path / "a.nii.gz", VOLUME, affine=affine)
    image = read_image(first)
    np.testing.assert_allclose(image.affine, affine, atol=1e-6)
    # writing a prediction "like" the input reproduces its geometry
    second = write_image(tmp_path / "b.nii", (image.array > 0.5).astype(np.uint8), image.spacing, image.affine)
    np.testing.assert_allclose(read_labels(second).affine, affine, atol=1e-6)
    assert read_labels(second).array.shape == VOLUME.shape


def test_default_spacing_is_one(tmp_path):
    image = read_image(write_image(tmp_path / "v.nii", VOLUME))
    assert image.spacing == (1.0, 1.0, 1.0)
    tifffile.imwrite(str(tmp_path / "plain.tif"), (VOLUME * 100).astype(np.uint8))
    assert read_image(tmp_path / "plain.tif").spacing == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "values, dtype",
    [([0, 1, 255], np.uint8), ([0, 3, 1000], np.uint16), ([-1000, 0, 3000], np.int16)],
)
def test_integer_storage_types(tmp_path, values, dtype):
    array = np.resize(np.array(values, dtype=np.int64), (4, 5, 6))
    path = write_image(tmp_path / "lab.nii.gz", array)
    assert nib.load(str(path)).get_data_dtype() == dtype
    np.testing.assert_array_equal(read_image(path).array, array)


def test_bool_and_float64_are_stored_compactly(tmp_path):
    path = write_image(tmp_path / "mask.nii.gz", VOLUME > 0.5)
    assert nib.load(str(path)).get_data_dtype() == np.uint8
    path = write_image(tmp_path / "prob.nii.gz", VOLUME.astype(np.float64))
    assert nib.load(str(path)).get_data_dtype() == np.float32


def test_nifti_scaling_is_applied(tmp_path):
    raw = np.arange(24, dtype=np.int16).reshape(2, 3, 4)  # (x, y, z)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(0.5, 10)
    nib.save(img, str(tmp_path / "scaled.nii"))
    image = read_image(tmp_path / "scaled.nii")
    np.testing.assert_allclose(image.array, raw.T * 0.5 + 10)
    assert image.array[0, 0, 1] == pytest.approx(12 * 0.5 + 10)  # (z=0, y=0, x=1) is raw[1, 0, 0]


def test_singleton_axes_are_squeezed(tmp_path):
    nib.save(nib.Nifti1Image(VOLUME[0].T[..., None], np.eye(4)), str(tmp_path / "flat.nii.gz"))
    image = read_image(tmp_path / "flat.nii.gz")
    assert image.array.shape == (6, 7)
    assert len(image.spacing) == 2


def test_4d_needs_a_channel_and_1d_5d_are_rejected(tmp_path):
    frames = np.stack([np.full((4, 5, 6), k, np.float32) for k in range(2)], axis=-1)  # (x, y, z, t)
    nib.save(nib.Nifti1Image(frames, np.diag([2.0, 1.0, 0.5, 1.0])), str(tmp_path / "t.nii.gz"))
    with pytest.raises(CVBMInputError, match=r"holds 2 channels or time frames .*--channel K, K = 0..1") as err:
        read_image(tmp_path / "t.nii.gz")
    assert_one_line_naming(err, tmp_path / "t.nii.gz")
    second = read_image(tmp_path / "t.nii.gz", channel=1)
    assert second.array.shape == (6, 5, 4) and (second.array == 1).all()
    assert second.spacing == pytest.approx((0.5, 1.0, 2.0))
    both = read_image(tmp_path / "t.nii.gz", channel="all")
    assert both.array.shape == (2, 6, 5, 4) and both.spacing == pytest.approx((0.5, 1.0, 2.0))
    with pytest.raises(CVBMInputError, match="channel 2 does not exist"):
        read_image(tmp_path / "t.nii.gz", channel=2)
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 2, 3), np.float32), np.eye(4)), str(tmp_path / "five.nii.gz"))
    with pytest.raises(CVBMInputError, match="2 non-spatial axes"):
        read_image(tmp_path / "five.nii.gz", channel=0)
    nib.save(nib.Nifti1Image(np.zeros((5, 1, 1), np.float32), np.eye(4)), str(tmp_path / "line.nii"))
    with pytest.raises(CVBMInputError, match="expected a 2D or 3D"):
        read_image(tmp_path / "line.nii")


def test_cmyk_tiff_is_rejected(tmp_path):  # an RGB TIFF is read (tests/test_colour_io.py); CMYK is not
    tifffile.imwrite(str(tmp_path / "cmyk.tif"), np.zeros((8, 9, 4), np.uint8), photometric="separated")
    with pytest.raises(CVBMInputError, match="CMYK") as err:
        read_image(tmp_path / "cmyk.tif")
    assert_one_line_naming(err, tmp_path / "cmyk.tif")


@pytest.mark.parametrize("array", [np.zeros((0, 4, 4)), np.zeros(5), np.zeros((2, 2, 2, 2))])
def test_write_rejects_bad_shapes(tmp_path, array):
    with pytest.raises(CVBMInputError, match="expected 2D or 3D"):
        write_image(tmp_path / "bad.nii.gz", array)
    assert not (tmp_path / "bad.nii.gz").exists()


def test_write_rejects_bad_extension_and_spacing(tmp_path):
    with pytest.raises(CVBMInputError, match="unsupported extension"):
        write_image(tmp_path / "out.bmp", VOLUME)
    with pytest.raises(CVBMInputError, match="spacing"):
        write_image(tmp_path / "out.nii", VOLUME, spacing=(1.0, 1.0))
    with pytest.raises(CVBMInputError, match="spacing"):
        write_image(tmp_path / "out.nii", VOLUME, spacing=(1.0, 0.0, 1.0))


def test_write_replaces_existing_file(tmp_path):
    path = write_image(tmp_path / "v.nii.gz", VOLUME)
    write_image(path, VOLUME * 2)
    np.testing.assert_array_equal(read_image(path).array, VOLUME * 2)


def test_nifti_gz_output_is_deterministic(tmp_path):
    a = write_image(tmp_path / "a" / "v.nii.gz", VOLUME, spacing=SPACING).read_bytes()
    b = write_image(tmp_path / "b" / "v.nii.gz", VOLUME, spacing=SPACING).read_bytes()
    assert a == b


# ----------------------------------------------------------------------------------- labels


@pytest.mark.parametrize("ext", [".nii.gz", ".tif"])
def test_read_labels_returns_integers(tmp_path, ext):
    labels = RNG.integers(0, 3, size=(4, 5, 6))
    read = read_labels(write_image(tmp_path / f"lab{ext}", labels))
    assert read.array.dtype == np.uint8
    np.testing.assert_array_equal(read.array, labels)


def test_read_labels_accepts_integral_floats_and_large_labels(tmp_path):
    read = read_labels(write_image(tmp_path / "f.nii", np.array([[0.0, 1.0], [2.0, 1.0]], np.float32)))
    assert read.array.dtype == np.uint8 and read.array.max() == 2
    read = read_labels(write_image(tmp_path / "big.nii", np.array([[0, 300], [2, 1]])))
    assert read.array.dtype == np.int64 and read.array.max() == 300


def test_read_labels_rejects_fractions_and_negatives(tmp_path):
    path = write_image(tmp_path / "prob.nii.gz", VOLUME)
    with pytest.raises(CVBMInputError, match="non-integer") as err:
        read_labels(path)
    assert_one_line_naming(err, path)
    path = write_image(tmp_path / "neg.nii.gz", np.array([[0, -1], [1, 1]]))
    with pytest.raises(CVBMInputError, match="negative") as err:
        read_labels(path)
    assert_one_line_naming(err, path)
    path = write_image(tmp_path / "nan.nii", np.array([[0, np.nan], [1, 1]]))
    with pytest.raises(CVBMInputError, match="NaN"):
        read_labels(path)


# ----------------------------------------------------------------------------------- bad files


def _corrupt_files(folder: Path) -> list[Path]:
    big = RNG.random((16, 32, 32)).astype(np.float32)
    nii_gz = write_image(folder / "src" / "big.nii.gz", big).read_bytes()
    nii = write_image(folder / "src" / "big.nii", big).read_bytes()
    tif = write_image(folder / "src" / "big.tif", big).read_bytes()
    files = {
        "truncated.nii.gz": nii_gz[: len(nii_gz) // 2],
        "truncated_header.nii.gz": nii_gz[:100],
        "truncated.nii": nii[: len(nii) // 2],
        "truncated.tif": tif[: len(tif) // 2],
        "truncated_header.tif": tif[:60],
        "text.nii.gz": b"patient_id,age\n1,42\n",
        "text.nii": b"just some text, definitely not a NIfTI header\n" * 10,
        "text.tif": b"just some text\n",
        "gzipped_text.nii.gz": gzip.compress(b"not an image " * 50),
        "empty.nii.gz": b"",
        "empty.tiff": b"",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


def test_corrupt_files_raise_input_error_naming_the_file(tmp_path):
    for path in _corrupt_files(tmp_path):
        for reader in (read_image, read_labels):
            with pytest.raises(CVBMInputError) as err:
                reader(path)
            assert_one_line_naming(err, path)


def test_missing_file_directory_and_unsupported_extension(tmp_path):
    with pytest.raises(CVBMInputError, match="not found") as err:
        read_image(tmp_path / "missing.nii.gz")
    assert_one_line_naming(err, tmp_path / "missing.nii.gz")
    (tmp_path / "folder.nii").mkdir()
    with pytest.raises(CVBMInputError, match="not a file"):
        read_image(tmp_path / "folder.nii")
    (tmp_path / "image.bmp").write_bytes(b"BM")
    with pytest.raises(CVBMInputError, match="Unsupported file type") as err:
        read_image(tmp_path / "image.bmp")
    assert_one_line_naming(err, tmp_path / "image.bmp")


# ----------------------------------------------------------------------------------- folders


@pytest.mark.parametrize(
    "name, case",
    [("case_001.nii.gz", "case_001"), ("a.b.NII.GZ", "a.b"), ("x.nii", "x"), ("y.TIFF", "y"),
     ("/some/dir/z.tif", "z"), ("other.mha", "other")],
)
def test_strip_extension(name, case):
    assert strip_extension(name) == case


def test_list_images_sorted_supported_only(tmp_path):
    for name in ["b.nii.gz", "a.tif", "c.nii", "d.TIFF", "notes.txt", ".hidden.nii.gz", "e.bmp", "f.PNG", "g.jpeg"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.nii").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.tif", "b.nii.gz", "c.nii", "d.TIFF", "f.PNG", "g.jpeg"]
    with pytest.raises(CVBMInputError, match="Folder not found"):
        list_images(tmp_path / "nope")


def _touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_pair_images_labels_matches_by_case(tmp_path):
    images = _touch(tmp_path / "images", "c2.nii.gz", "c1.nii.gz", "c3.tif")
    labels = _touch(tmp_path / "labels", "c1.nii", "c2.nii.gz", "c3.nii.gz", "extra.nii.gz")
    pairs = pair_images_labels(images, labels)
    assert [(image.name, label.name) for image, label in pairs] == [
        ("c1.nii.gz", "c1.nii"), ("c2.nii.gz", "c2.nii.gz"), ("c3.tif", "c3.nii.gz")
    ]


def test_pair_images_labels_errors(tmp_path):
    images = _touch(tmp_path / "images", "c1.nii.gz", "c2.nii.gz")
    labels = _touch(tmp_path / "labels", "c1.nii.gz")
    with pytest.raises(CVBMInputError, match="'c2'") as err:
        pair_images_labels(images, labels)
    assert "\n" not in str(err.value)
    with pytest.raises(CVBMInputError, match="Folder not found"):
        pair_images_labels(images, tmp_path / "missing")
    with pytest.raises(CVBMInputError, match="No label files"):
        pair_images_labels(images, _touch(tmp_path / "empty"))
    with pytest.raises(CVBMInputError, match="No image files"):
        pair_images_labels(_touch(tmp_path / "empty2", "readme.txt"), labels)
    _touch(images, "c1.tif")
    with pytest.raises(CVBMInputError, match="Two image files for case 'c1'"):
        pair_images_labels(images, labels)


# ----------------------------------------------------------------------------------- sample data


def test_sample_data_layout_and_shapes():
    counts = {}
    for split in ("labeled", "test"):
        pairs = pair_images_labels(SAMPLE / split / "images", SAMPLE / split / "labels")
        counts[split] = len(pairs)
        for image_path, label_path in pairs:
            image, label = read_image(image_path), read_labels(label_path)
            assert image.array.shape == label.array.shape == (48, 64, 64)
            assert image.spacing == label.spacing == pytest.approx((1.5, 1.0, 1.0))
            assert set(np.unique(label.array)) == {0, 1}
            assert image.array[label.array == 1].mean() > image.array[label.array == 0].mean()
    counts["unlabeled"] = len(list_images(SAMPLE / "unlabeled" / "images"))
    assert counts == {"labeled": 3, "test": 2, "unlabeled": 8}
    size = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert size < 6 * 2**20


def test_sample_data_generator_reproduces_files():
    image, label = synthetic.generate_case(1)
    np.testing.assert_array_equal(read_labels(SAMPLE / "labeled/labels/case_001.nii.gz").array, label)
    np.testing.assert_array_equal(read_image(SAMPLE / "labeled/images/case_001.nii.gz").array, image)


def test_flipped_bit_in_nifti_gz_is_detected(tmp_path):
    """gzip's CRC is checked: a silently corrupted volume is refused, not read with wrong values."""
    import random

    source = SAMPLE / "labeled" / "images" / "case_001.nii.gz"
    raw = source.read_bytes()
    rng = random.Random(1)
    for trial in range(10):
        damaged = bytearray(raw)
        damaged[rng.randrange(100, len(raw))] ^= 1 << rng.randrange(8)
        path = tmp_path / f"flip{trial}.nii.gz"
        path.write_bytes(bytes(damaged))
        with pytest.raises(CVBMInputError):
            read_image(path)
