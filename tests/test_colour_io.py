"""Colour and multi-channel images in core.io and the napari reader/writers: PNG, JPEG, RGB TIFF,
OME-TIFF channels, 4D NIfTI modalities; label PNGs; PNG writing; corrupt PNG/JPEG."""

import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_cvbm._reader import napari_get_reader
from napari_cvbm._writer import write_image as napari_write_image
from napari_cvbm._writer import write_labels as napari_write_labels
from napari_cvbm.core.channels import RGB
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

RNG = np.random.default_rng(7)
PHOTO = RNG.integers(0, 256, (12, 17, 3), dtype=np.uint8)  # (y, x, colour), sizes distinct
FLAT = np.zeros((16, 24, 3), np.uint8) + np.array([200, 100, 30], np.uint8)  # survives JPEG nearly exactly
MASK = (RNG.random((12, 17)) > 0.5).astype(np.uint8) * 255


def save(path: Path, array, mode=None, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, **options)
    return path


def one_line_naming(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert path.name in message and "\n" not in message
    return message


def png_16bit_rgb(path: Path, rgb: np.ndarray) -> Path:
    """A 16-bit RGB PNG (Pillow cannot write one)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    height, width, _ = rgb.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


# ----------------------------------------------------------------------------------- names, folders


def test_extensions_and_case_names():
    assert {".png", ".jpg", ".jpeg"} <= set(IMAGE_EXTENSIONS)
    assert [strip_extension(n) for n in ("01_dr.JPG", "a.b.jpeg", "x.Png")] == ["01_dr", "a.b", "x"]


def test_pair_jpg_images_with_png_labels(tmp_path):
    for case in ("02", "01"):
        save(tmp_path / "images" / f"{case}.jpg", FLAT)
        save(tmp_path / "labels" / f"{case}.png", MASK)
    (tmp_path / "labels" / "03.PNG").write_bytes(b"")
    assert [p.name for p in list_images(tmp_path / "labels")] == ["01.png", "02.png", "03.PNG"]
    pairs = pair_images_labels(tmp_path / "images", tmp_path / "labels")
    assert [(i.name, label.name) for i, label in pairs] == [("01.jpg", "01.png"), ("02.jpg", "02.png")]


def test_channels_property():
    assert ImageData(np.zeros((4, 5)), (1.0, 1.0)).channels == 1
    assert ImageData(np.zeros((4, 5, 6)), (1.0, 1.0, 1.0)).channels == 1
    assert ImageData(np.zeros((3, 5, 6)), (1.0, 1.0), channel_names=RGB).channels == 3
    assert ImageData(np.zeros((2, 4, 5, 6)), (1.0, 1.0, 1.0)).channel_names == ()


# ----------------------------------------------------------------------------------- colour images


def test_rgb_png_is_read_exactly_channels_first(tmp_path):
    image = read_image(save(tmp_path / "photo.png", PHOTO))
    assert image.array.shape == (3, 12, 17) and image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array, np.moveaxis(PHOTO, -1, 0))
    assert image.channel_names == RGB and image.channels == 3
    assert image.spacing == (1.0, 1.0)
    assert image.geometry.shape == (12, 17) and image.geometry.unit is None and image.affine is None


@pytest.mark.parametrize("name", ["photo.jpg", "PHOTO.JPEG"])
def test_rgb_jpeg_is_read_channels_first(tmp_path, name):
    image = read_image(save(tmp_path / name, FLAT, quality=95))
    assert image.array.shape == (3, 16, 24) and image.channel_names == RGB
    np.testing.assert_allclose(image.array.mean(axis=(1, 2)), [200, 100, 30], atol=3)
    assert image.spacing == (1.0, 1.0)


def test_rgba_png_drops_alpha(tmp_path):
    rgba = np.concatenate([PHOTO, RNG.integers(0, 256, (12, 17, 1), dtype=np.uint8)], axis=-1)
    image = read_image(save(tmp_path / "rgba.png", rgba))
    assert image.array.shape == (3, 12, 17) and image.channel_names == RGB
    np.testing.assert_array_equal(image.array, np.moveaxis(PHOTO, -1, 0))  # colours as stored, not blended


def test_grey_pngs_and_jpegs_have_no_channel_axis(tmp_path):
    grey = PHOTO[..., 0]
    for path in (save(tmp_path / "grey.png", grey), save(tmp_path / "grey.jpg", grey),
                 save(tmp_path / "grey_alpha.png", np.stack([grey, grey[::-1]], -1), mode="LA")):
        image = read_image(path)
        assert image.array.shape == (12, 17) and image.channel_names == () and image.channels == 1, path.name
    np.testing.assert_array_equal(read_image(tmp_path / "grey_alpha.png").array, grey)
    sixteen = (np.arange(12 * 17).reshape(12, 17) * 300).astype(np.uint16)
    np.testing.assert_array_equal(read_image(save(tmp_path / "deep.png", sixteen)).array, sixteen)


def test_palette_png_reads_its_colours_and_its_indices_as_labels(tmp_path):
    indices = (np.arange(12 * 17).reshape(12, 17) % 3).astype(np.uint8)
    palette = Image.fromarray(indices, mode="L").convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    palette.save(tmp_path / "voc.png")
    image = read_image(tmp_path / "voc.png")
    assert image.channel_names == RGB
    np.testing.assert_array_equal(image.array[0], np.where(indices == 1, 255, 0))
    np.testing.assert_array_equal(image.array[2], np.where(indices == 2, 255, 0))
    np.testing.assert_array_equal(read_labels(tmp_path / "voc.png").array, indices)
    palette.putpalette([0, 0, 0, 128, 128, 128, 255, 255, 255])  # a grey palette: a grey image
    palette.save(tmp_path / "grey_palette.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey_palette.png").array, np.array([0, 128, 255])[indices])


def test_a_channel_of_a_colour_image_is_a_grey_image(tmp_path):
    path = save(tmp_path / "photo.png", PHOTO)
    green = read_image(path, channel=1)
    assert green.array.shape == (12, 17) and green.channel_names == () and green.channels == 1
    np.testing.assert_array_equal(green.array, PHOTO[..., 1])
    everything = read_image(path, channel="all")
    assert everything.channel_names == RGB
    np.testing.assert_array_equal(everything.array, read_image(path).array)
    with pytest.raises(CVBMInputError, match=r"channel 3 does not exist \(0..2\)"):
        read_image(path, channel=3)


def test_png_dpi_is_no_pixel_size(tmp_path):
    image = read_image(save(tmp_path / "printed.png", PHOTO, dpi=(300, 300)))
    assert image.spacing == (1.0, 1.0) and image.geometry.unit is None


def test_16_bit_colour_png_is_refused_not_cut_to_8_bits(tmp_path):
    path = png_16bit_rgb(tmp_path / "deep_rgb.png", PHOTO.astype(np.uint16) * 257)
    with pytest.raises(CVBMInputError, match="16-bit colour PNG") as err:
        read_image(path)
    one_line_naming(err, path)


# ----------------------------------------------------------------------------------- TIFF, NIfTI channels


def test_rgb_tiff_is_colour(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", PHOTO, photometric="rgb")
    image = read_image(tmp_path / "rgb.tif")
    assert image.array.shape == (3, 12, 17) and image.channel_names == RGB
    np.testing.assert_array_equal(image.array, np.moveaxis(PHOTO, -1, 0))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif", channel=2).array, PHOTO[..., 2])


def test_rgb_tiff_stack_and_rgba_tiff(tmp_path):
    stack = RNG.integers(0, 256, (4, 12, 17, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="rgb", imagej=True, metadata={"axes": "ZYXS"})
    image = read_image(tmp_path / "stack.tif")
    assert image.array.shape == (3, 4, 12, 17) and image.channel_names == RGB and len(image.spacing) == 3
    np.testing.assert_array_equal(image.array, np.moveaxis(stack, -1, 0))
    rgba = np.concatenate([PHOTO, PHOTO[..., :1]], axis=-1)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert read_image(tmp_path / "rgba.tif").array.shape == (3, 12, 17)


def test_three_grey_samples_are_channels_not_colour(tmp_path):
    tifffile.imwrite(tmp_path / "samples.tif", PHOTO, photometric="minisblack", planarconfig="contig")
    with pytest.raises(CVBMInputError, match="holds 3 channels"):
        read_image(tmp_path / "samples.tif")
    assert read_image(tmp_path / "samples.tif", channel="all").channel_names == ("0", "1", "2")


def test_ome_tiff_channel_names(tmp_path):
    channels = RNG.integers(0, 4000, (2, 12, 17)).astype(np.uint16)
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, channels, ome=True, metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP"]},
                                                         "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    with pytest.raises(CVBMInputError, match="--channel all") as err:
        read_image(path)
    one_line_naming(err, path)
    image = read_image(path, channel="all")
    assert image.array.shape == (2, 12, 17) and image.channel_names == ("DAPI", "GFP") and image.channels == 2
    np.testing.assert_array_equal(image.array, channels)
    assert image.spacing == pytest.approx((0.5e-3, 0.5e-3))  # µm in mm
    picked = read_image(path, channel=1)
    assert picked.channel_names == () and picked.array.shape == (12, 17)
    assert strip_extension(path) == "cells.ome"


def test_4d_nifti_modalities_with_all_channels(tmp_path):
    modalities = np.stack([np.full((6, 7, 5), k, np.float32) for k in range(4)], axis=-1)  # (x, y, z, modality)
    nib.save(nib.Nifti1Image(modalities, np.diag([1.0, 1.0, 2.0, 1.0])), str(tmp_path / "brats.nii.gz"))
    image = read_image(tmp_path / "brats.nii.gz", channel="all")
    assert image.array.shape == (4, 5, 7, 6) and image.channels == 4
    assert image.channel_names == ("0", "1", "2", "3")
    assert [float(image.array[k].mean()) for k in range(4)] == [0.0, 1.0, 2.0, 3.0]
    assert image.spacing == pytest.approx((2.0, 1.0, 1.0)) and image.geometry.shape == (5, 7, 6)


# ----------------------------------------------------------------------------------- labels


def test_mask_pngs_read_as_labels(tmp_path):
    labels = read_labels(save(tmp_path / "fov.png", MASK))
    assert labels.array.dtype == np.uint8 and labels.array.shape == (12, 17)
    assert set(np.unique(labels.array)) == {0, 255} and labels.channel_names == ()
    sixteen = (MASK.astype(np.uint16) // 255) * 65535
    assert set(np.unique(read_labels(save(tmp_path / "deep.png", sixteen)).array)) == {0, 65535}
    grey_rgb = np.repeat(MASK[..., None], 3, axis=-1)
    labels = read_labels(save(tmp_path / "grey_rgb.png", grey_rgb))
    assert labels.array.shape == (12, 17) and labels.channels == 1
    np.testing.assert_array_equal(labels.array, MASK)


def test_colour_coded_label_png_is_refused(tmp_path):
    coded = np.zeros((12, 17, 3), np.uint8)
    coded[:5, :, 0] = 255  # red class
    coded[6:, :, 2] = 255  # blue class
    path = save(tmp_path / "coded.png", coded)
    with pytest.raises(CVBMInputError, match="colour-coded label maps are not supported") as err:
        read_labels(path)
    one_line_naming(err, path)
    assert read_image(path).channel_names == RGB  # still an image


def test_jpeg_labels_are_refused(tmp_path):
    for path in (save(tmp_path / "mask.jpg", MASK), save(tmp_path / "mask.JPEG", MASK)):
        with pytest.raises(CVBMInputError, match="lossy") as err:
            read_labels(path)
        one_line_naming(err, path)
    disguised = tmp_path / "disguised.png"
    disguised.write_bytes((tmp_path / "mask.jpg").read_bytes())
    with pytest.raises(CVBMInputError, match="JPEG"):
        read_labels(disguised)


# ----------------------------------------------------------------------------------- writing


@pytest.mark.parametrize("values", [np.array([0, 1, 2, 255]), np.array([0, 3, 1000, 65535])])
def test_png_label_round_trip(tmp_path, values):
    labels = np.resize(values, (12, 17)).astype(np.int64)
    path = write_image(tmp_path / "out" / "seg.png", labels)
    with Image.open(path) as stored:
        assert stored.format == "PNG" and stored.mode == ("L" if values.max() <= 255 else "I;16")
    np.testing.assert_array_equal(read_labels(path).array, labels)
    assert [p.name for p in path.parent.iterdir()] == ["seg.png"]  # atomic: no temp file left


@pytest.mark.parametrize(
    ("name", "array", "spacing", "message"),
    [
        ("prob.png", RNG.random((12, 17)), None, "integers 0..65535 only"),
        ("vol.png", np.zeros((4, 12, 17), np.uint8), None, "one 2D image"),
        ("big.png", np.array([[0, 70000]]), None, "0..70000"),
        ("neg.png", np.array([[0, -1]]), None, "-1..0"),
        ("sized.png", np.zeros((12, 17), np.uint8), (0.5, 0.5), "pixel size"),
        ("seg.jpg", np.zeros((12, 17), np.uint8), None, "JPEG is lossy"),
        ("seg.JPEG", np.zeros((12, 17), np.uint8), None, "JPEG is lossy"),
    ],
)
def test_png_and_jpeg_writes_that_are_refused(tmp_path, name, array, spacing, message):
    with pytest.raises(CVBMInputError, match=message) as err:
        write_image(tmp_path / name, array, spacing=spacing)
    text = one_line_naming(err, tmp_path / name)
    assert ".tif" in text
    assert not (tmp_path / name).exists()


def test_png_refuses_a_physical_grid(tmp_path):
    nifti = read_image(write_image(tmp_path / "slice.nii.gz", np.zeros((12, 17), np.float32)))
    with pytest.raises(CVBMInputError, match="pixel size"):
        write_image(tmp_path / "seg.png", np.zeros((12, 17), np.uint8), geometry=nifti.geometry)
    photo = read_image(save(tmp_path / "photo.jpg", FLAT))
    write_image(tmp_path / "photo_seg.png", np.ones((16, 24), np.uint8), geometry=photo.geometry)
    assert read_labels(tmp_path / "photo_seg.png").array.shape == (16, 24)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_rgb_write_round_trip(tmp_path, ext):
    channels_first = np.moveaxis(PHOTO, -1, 0).astype(np.float32)  # as read_image gives it
    path = write_image(tmp_path / f"copy{ext}", channels_first, rgb=True)
    image = read_image(path)
    assert image.channel_names == RGB
    np.testing.assert_array_equal(image.array, channels_first)
    with pytest.raises(CVBMInputError, match="8-bit RGB"):
        write_image(tmp_path / f"fraction{ext}", channels_first / 255, rgb=True)
    with pytest.raises(CVBMInputError, match="NIfTI cannot hold an RGB"):
        write_image(tmp_path / "copy.nii.gz", channels_first, rgb=True)


def test_rgb_tiff_stack_keeps_spacing(tmp_path):
    stack = RNG.integers(0, 256, (3, 4, 12, 17), dtype=np.uint8)
    path = write_image(tmp_path / "stack.tif", stack, spacing=(2.0, 0.5, 0.25), rgb=True)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
    image = read_image(path)
    assert image.array.shape == (3, 4, 12, 17) and image.spacing == pytest.approx((2.0, 0.5, 0.25))
    np.testing.assert_array_equal(image.array, stack)


# ----------------------------------------------------------------------------------- corrupt files


def test_corrupt_pngs_and_jpegs_raise_input_error_naming_the_file(tmp_path):
    jpeg = save(tmp_path / "src" / "photo.jpg", PHOTO, quality=90).read_bytes()
    png = save(tmp_path / "src" / "photo.png", PHOTO).read_bytes()
    flipped = bytearray(png)
    flipped[len(png) // 2] ^= 0x10
    files = {"truncated.jpg": jpeg[: len(jpeg) // 2], "truncated_header.jpg": jpeg[:40],
             "truncated.png": png[: len(png) // 2], "flipped.png": bytes(flipped), "text.png": b"not a picture\n",
             "empty.jpeg": b"", "text.JPG": b"hello"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        for reader in (read_image, read_labels):
            with pytest.raises(CVBMInputError) as err:
                reader(tmp_path / name)
            one_line_naming(err, tmp_path / name)
    with pytest.raises(CVBMInputError, match="Cannot read JPEG file .*truncated"):
        read_image(tmp_path / "truncated.jpg")


# ----------------------------------------------------------------------------------- napari


def read(path):
    reader = napari_get_reader(str(path))
    assert callable(reader), f"no reader for {path}"
    return reader(str(path))


def test_napari_reader_opens_a_jpeg_as_one_rgb_layer(tmp_path):
    path = save(tmp_path / "images" / "01_dr.JPG", FLAT, quality=95)
    [(data, kwargs, layer_type)] = read(path)
    assert layer_type == "image" and kwargs["rgb"] is True and "channel_axis" not in kwargs
    assert data.shape == (16, 24, 3) and data.dtype == np.uint8
    np.testing.assert_allclose(data.mean(axis=(0, 1)), [200, 100, 30], atol=3)
    assert kwargs["name"] == "01_dr" and tuple(kwargs["scale"]) == (1.0, 1.0)
    assert kwargs["metadata"]["cvbm_geometry"].shape == (16, 24)


def test_napari_reader_keeps_an_rgb_png_exact(tmp_path):
    [(data, kwargs, _)] = read(save(tmp_path / "photo.png", PHOTO))
    assert kwargs["rgb"] is True and data.dtype == np.uint8
    np.testing.assert_array_equal(data, PHOTO)


@pytest.mark.parametrize("folder", ["labels", "masks", "fov", "ROI"])
def test_napari_reader_opens_mask_pngs_as_labels(tmp_path, folder):
    [(data, kwargs, layer_type)] = read(save(tmp_path / folder / "01_dr.png", MASK))
    assert layer_type == "labels" and "rgb" not in kwargs
    np.testing.assert_array_equal(data, MASK)
    [(_, _, layer_type)] = read(save(tmp_path / "images" / "01_dr.png", MASK))
    assert layer_type == "image"  # nothing says "labels"


def test_napari_reader_names_channel_layers(tmp_path):
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, RNG.integers(0, 9, (2, 3, 12, 17)).astype(np.uint16), ome=True,
                     metadata={"axes": "CZYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    [(data, kwargs, layer_type)] = read(path)
    assert layer_type == "image" and data.shape == (2, 3, 12, 17) and kwargs["channel_axis"] == 0
    assert kwargs["name"] == ["cells.ome DAPI", "cells.ome GFP"] and len(kwargs["scale"]) == 3
    path2d = tmp_path / "two.tif"
    tifffile.imwrite(path2d, RNG.random((2, 12, 17)).astype(np.float32), imagej=True, metadata={"axes": "CYX"})
    [(data, kwargs, _)] = read(path2d)  # a 2D image with channels is split too
    assert data.shape == (2, 12, 17) and kwargs["channel_axis"] == 0 and kwargs["name"] == ["two 0", "two 1"]


def test_napari_writers_save_rgb_layers_and_png_labels(tmp_path):
    [(data, kwargs, _)] = read(save(tmp_path / "photo.png", PHOTO))
    meta = {**kwargs, "rgb": True}
    for name in ("copy.tif", "copy.png"):
        assert napari_write_image(str(tmp_path / name), data, meta) == [str(tmp_path / name)]
        np.testing.assert_array_equal(read_image(tmp_path / name).array, np.moveaxis(PHOTO, -1, 0))
    labels = (PHOTO[..., 0] > 128).astype(np.int32)
    out = tmp_path / "labels" / "photo.png"
    assert napari_write_labels(str(out), labels, {"scale": (1.0, 1.0), "metadata": kwargs["metadata"]}) == [str(out)]
    np.testing.assert_array_equal(read_labels(out).array, labels)
    assert read(out)[0][2] == "labels"


def test_viewer_shows_a_photo_as_one_rgb_layer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(save(tmp_path / "photo.jpg", FLAT)), plugin="napari-cvbm")
    assert type(layer).__name__ == "Image" and layer.rgb and layer.data.shape == (16, 24, 3)
    np.testing.assert_allclose(layer.scale, (1.0, 1.0))
