"""napari reader and writers: formats, labels-vs-image decision, spacing/affine, corrupt files."""

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_cvbm._reader import napari_get_reader
from napari_cvbm._writer import write_image, write_labels
from napari_cvbm.core.classes import MAX_INFERRED_CLASSES
from napari_cvbm.core.errors import CVBMInputError
from napari_cvbm.core.io import read_image, read_labels
from napari_cvbm.core.io import write_image as io_write
from napari_cvbm.synthetic import SAMPLE_DATA

SAMPLE = SAMPLE_DATA
SPACING = (2.5, 0.5, 0.25)
RNG = np.random.default_rng(0)
IMAGE = RNG.normal(100, 20, (5, 6, 7)).astype(np.float32)  # (z, y, x), sizes distinct
LABELS = RNG.integers(0, 3, (5, 6, 7)).astype(np.uint8)
EXTENSIONS = [".nii.gz", ".nii", ".tif", ".tiff", ".NII.GZ", ".TIF"]


def read(path):
    """What napari gets: the reader napari_get_reader returns, called on ``path``."""
    reader = napari_get_reader(path)
    assert callable(reader), f"no reader for {path}"
    return reader(path)


def put(path: Path, array, spacing=SPACING, affine=None) -> Path:
    return io_write(path, array, spacing=spacing, affine=affine)


# ----------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_reader_opens_every_format_with_name_and_spacing(tmp_path, ext):
    [(data, kwargs, layer_type)] = read(str(put(tmp_path / f"scan_01{ext}", IMAGE)))
    assert layer_type == "image" and data.dtype == np.float32
    np.testing.assert_allclose(data, IMAGE, rtol=1e-6)
    assert kwargs["name"] == "scan_01"
    assert kwargs["scale"] == pytest.approx(SPACING)
    assert kwargs["metadata"]["spacing"] == pytest.approx(SPACING)
    assert ("affine" in kwargs["metadata"]) == (".nii" in ext.lower())


@pytest.mark.parametrize(
    ("relative", "values", "expected"),
    [
        ("labels/case_1.nii.gz", LABELS, "labels"),
        ("labelsTr/case_1.nii.gz", LABELS, "labels"),
        ("Masks/case_1.tif", LABELS, "labels"),
        ("segmentations/case_1.nii", LABELS, "labels"),
        ("images/case_1_seg.nii.gz", LABELS, "labels"),
        ("images/case_1_gt.tif", LABELS, "labels"),
        ("images/Label_case_1.nii.gz", LABELS, "labels"),
        ("labels/case_1.nii.gz", LABELS.astype(np.float32), "labels"),  # whole-valued floats
        ("images/case_1.nii.gz", LABELS, "image"),  # nothing says "labels"
        ("images/length_1.nii.gz", LABELS, "image"),  # "gt" inside a word
        ("labels/case_1.nii.gz", IMAGE, "image"),  # fractional values
        ("labels/case_1.nii.gz", np.arange(5 * 6 * 7).reshape(5, 6, 7), "image"),  # too many values
        ("masks/case_1.nii.gz", LABELS.astype(np.int16) - 1, "image"),  # negative values
    ],
)
def test_labels_or_image_decision(tmp_path, relative, values, expected):
    [(data, kwargs, layer_type)] = read(str(put(tmp_path / relative, values)))
    assert layer_type == expected
    assert data.dtype == (np.uint8 if expected == "labels" else np.float32)
    np.testing.assert_array_equal(data, values.astype(data.dtype))
    assert (kwargs["metadata"].get("cvbm_role") == "label") == (expected == "labels")


def test_label_value_limit_is_inclusive(tmp_path):
    values = np.arange(5 * 6 * 7).reshape(5, 6, 7) % MAX_INFERRED_CLASSES
    [(_, _, layer_type)] = read(str(put(tmp_path / "labels" / "c.nii.gz", values)))
    assert layer_type == "labels"


def test_folder_gives_one_sorted_layer_per_supported_file(tmp_path):
    for name in ("b.nii.gz", "a.tif", "c.NII"):
        put(tmp_path / name, IMAGE)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "preview.bmp").write_bytes(b"ignored")
    put(tmp_path / ".hidden.nii.gz", IMAGE)
    layers = read(str(tmp_path))
    assert [kwargs["name"] for _, kwargs, _ in layers] == ["a", "b", "c"]
    assert all(kwargs["scale"] == pytest.approx(SPACING) for _, kwargs, _ in layers)


def test_list_of_paths_gives_one_layer_each(tmp_path):
    paths = [str(put(tmp_path / "images" / "c.nii.gz", IMAGE)), str(put(tmp_path / "labels" / "c.tif", LABELS))]
    assert [layer_type for _, _, layer_type in read(paths)] == ["image", "labels"]


def test_real_sample_folder_opens_as_labels():
    layers = read(str(SAMPLE / "labeled" / "labels"))
    assert [k["name"] for _, k, _ in layers] == ["case_001", "case_002", "case_003"]
    assert {t for _, _, t in layers} == {"labels"}
    assert layers[0][1]["scale"] == pytest.approx((1.5, 1.0, 1.0))


@pytest.mark.parametrize(
    "names",
    [
        "missing.nii.gz",
        "picture.bmp",
        "archive.gz",
        "empty",  # a folder without images
        "bmps",  # a folder with unsupported files only
        ["missing.tif"],
        ["ok.nii.gz", "picture.bmp"],  # one unsupported file spoils a list
        [],
    ],
)
def test_no_reader_for_unsupported_paths(tmp_path, names):
    put(tmp_path / "ok.nii.gz", IMAGE)
    (tmp_path / "picture.bmp").write_bytes(b"BM")
    (tmp_path / "archive.gz").write_bytes(gzip.compress(b"x"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "bmps").mkdir()
    (tmp_path / "bmps" / "a.bmp").write_bytes(b"BM")
    path = [str(tmp_path / n) for n in names] if isinstance(names, list) else str(tmp_path / names)
    assert napari_get_reader(path) is None


def test_odd_path_objects_get_no_reader():
    assert napari_get_reader(None) is None and napari_get_reader(42) is None


def test_2d_tiff_opens_with_2d_scale(tmp_path):
    [(data, kwargs, layer_type)] = read(str(put(tmp_path / "slice.tif", IMAGE[0], spacing=SPACING[1:])))
    assert data.shape == IMAGE.shape[1:] and kwargs["scale"] == pytest.approx(SPACING[1:])


def test_files_vanishing_before_reading_are_notified(tmp_path, notes):
    path = put(tmp_path / "gone.nii.gz", IMAGE)
    reader = napari_get_reader(str(path))
    path.unlink()
    assert reader(str(path)) == [(None,)] and "No .nii.gz" in notes[0]


def test_unreadable_file_is_notified_and_opens_nothing(tmp_path, notes):
    path = tmp_path / "scan.nii.gz"
    path.write_text("this is not a NIfTI file\n")
    assert read(str(path)) == [(None,)]  # napari's "opened, no layers": no second error
    assert len(notes) == 1 and "Cannot read NIfTI file" in notes[0] and str(path) in notes[0]


def test_one_bad_file_does_not_stop_the_others(tmp_path, notes):
    put(tmp_path / "a.nii.gz", IMAGE)
    (tmp_path / "b.tif").write_bytes(b"II*\x00garbage")
    put(tmp_path / "c.tif", IMAGE)
    assert [k["name"] for _, k, _ in read(str(tmp_path))] == ["a", "c"]
    assert len(notes) == 1 and "b.tif" in notes[0]


def _corrupt(data: bytes, how: str, rng) -> bytes:
    if how == "truncate":
        return data[: rng.integers(0, len(data))]
    if how == "flip":
        out = bytearray(data)
        for i in rng.integers(0, len(out), rng.integers(1, 20)):
            out[i] ^= int(rng.integers(1, 256))
        return bytes(out)
    garbage = rng.integers(0, 256, rng.integers(1, 2000), dtype=np.uint8).tobytes()
    if how == "prepend":
        return garbage + data
    if how == "append":
        return data + garbage
    return "patient,age\n1,42\n".encode() * int(rng.integers(1, 50))  # a text file


def test_fuzzed_corrupt_files_never_raise(tmp_path, notes):
    """50 seeded corruptions of real files: the reader opens them or notifies, never raises."""
    originals = {
        "image.nii.gz": (SAMPLE / "labeled/images/case_001.nii.gz").read_bytes(),
        "seg.nii.gz": (SAMPLE / "labeled/labels/case_001.nii.gz").read_bytes(),
        "image.nii": gzip.decompress((SAMPLE / "labeled/images/case_002.nii.gz").read_bytes()),
    }
    for name, source in (("image.tif", "images"), ("seg.tif", "labels")):
        put(tmp_path / name, read_image(SAMPLE / "labeled" / source / "case_003.nii.gz").array, (1.5, 1, 1))
        originals[name] = (tmp_path / name).read_bytes()
    rng = np.random.default_rng(1234)
    hows = ["truncate", "flip", "prepend", "append", "text"]
    opened = failed = 0
    for case in range(50):
        name = list(originals)[case % len(originals)]
        path = tmp_path / f"fuzz{case:02d}_{name}"
        path.write_bytes(_corrupt(originals[name], hows[case // len(originals) % len(hows)], rng))
        notes.clear()
        layers = read(str(path))
        if layers[0][0] is None:  # napari's [(None,)]: opened, no layers
            failed += 1
            assert len(notes) == 1 and str(path) in notes[0] and "\n" not in notes[0]
            with pytest.raises(CVBMInputError):  # core.io reports it as bad input, not a crash
                read_image(path)
        else:
            opened += 1
            [(data, kwargs, layer_type)] = layers
            assert layer_type in ("image", "labels") and data.ndim in (2, 3) and not notes
    assert failed >= 25 and opened >= 1  # both outcomes were exercised


# ----------------------------------------------------------------------------------- writing


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".tif", ".tiff"])
def test_writers_round_trip_through_reader(tmp_path, ext):
    meta = {"scale": SPACING, "metadata": {}}
    image_path, labels_path = tmp_path / f"images/c1{ext}", tmp_path / f"labels/c1{ext}"
    assert write_image(str(image_path), IMAGE, meta) == [str(image_path)]
    assert write_labels(str(labels_path), LABELS.astype(np.int32), meta) == [str(labels_path)]
    for path, array, expected in ((image_path, IMAGE, "image"), (labels_path, LABELS, "labels")):
        [(data, kwargs, layer_type)] = read(str(path))
        assert layer_type == expected
        np.testing.assert_array_equal(data, array)
        assert kwargs["scale"] == pytest.approx(SPACING)
    assert read_labels(labels_path).array.dtype == np.uint8


def _oblique_affine(spacing):
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array(spacing[::-1])  # columns = x, y, z voxel steps
    affine[:3, 3] = (-12.0, 30.5, 7.0)
    return affine


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_writer_reproduces_the_nifti_header(tmp_path, ext):
    affine = _oblique_affine(SPACING)
    [(data, kwargs, _)] = read(str(put(tmp_path / f"labels/in{ext}", LABELS, affine=affine)))
    out = tmp_path / f"saved/out{ext}"
    assert write_labels(str(out), data, kwargs) == [str(out)]
    np.testing.assert_allclose(nib.load(str(out)).affine, affine, atol=1e-6)


def test_writer_drops_an_affine_that_no_longer_fits(tmp_path):
    [(data, kwargs, _)] = read(str(put(tmp_path / "in.nii.gz", IMAGE, affine=_oblique_affine(SPACING))))
    rescaled = {**kwargs, "scale": (3.0, 1.0, 1.0)}  # the user changed the layer scale
    write_image(str(tmp_path / "a.nii.gz"), data, rescaled)
    np.testing.assert_allclose(nib.load(str(tmp_path / "a.nii.gz")).affine, np.diag([1.0, 1.0, 3.0, 1.0]))
    write_image(str(tmp_path / "b.nii.gz"), data[0], {**kwargs, "scale": SPACING[1:]})  # 2D now
    assert read_image(tmp_path / "b.nii.gz").spacing == pytest.approx(SPACING[1:])
    nonsense = {**kwargs, "metadata": {"affine": "not a matrix"}}
    assert write_image(str(tmp_path / "c.nii.gz"), data, nonsense) == [str(tmp_path / "c.nii.gz")]


@pytest.mark.parametrize(
    ("name", "data", "meta", "message"),
    [
        ("out.bmp", IMAGE, {}, "unsupported extension"),
        ("out.png", IMAGE, {}, "PNG holds one 2D image"),
        ("out.jpg", IMAGE[0], {}, "JPEG is lossy"),
        ("out.nii.gz", np.zeros((2, 3, 4, 5)), {}, "expected 2D or 3D"),
        ("out.nii.gz", np.zeros((8, 8, 3), np.uint8), {"rgb": True}, "RGB"),  # RGB: .tif or .png only
        ("out.nii.gz", IMAGE, {"scale": (1.0, 1.0)}, "spacing"),
        ("out.nii.gz", IMAGE, {"scale": (0.0, 1.0, 1.0)}, "spacing"),
        ("file.txt/out.nii.gz", IMAGE, {}, "Cannot write"),  # parent is a file
    ],
)
def test_writer_failures_notify_and_return_nothing(tmp_path, notes, name, data, meta, message):
    (tmp_path / "file.txt").write_text("x")
    assert write_image(str(tmp_path / name), data, meta) == []
    assert len(notes) == 1 and message in notes[0]


def test_labels_writer_refuses_fractional_data(tmp_path, notes):
    assert write_labels(str(tmp_path / "l.nii.gz"), IMAGE, {}) == []
    assert "not integer" in notes[0]


# ----------------------------------------------------------------------------------- in napari


def test_viewer_opens_files_and_folders_with_scale(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    put(tmp_path / "labels" / "c1.nii.gz", LABELS)
    put(tmp_path / "labels" / "c2.tif", LABELS)
    image_file = put(tmp_path / "images" / "c1.nii.gz", IMAGE)
    [image] = viewer.open(str(image_file), plugin="napari-cvbm")
    labels = viewer.open(str(tmp_path / "labels"), plugin="napari-cvbm")
    assert type(image).__name__ == "Image" and [type(x).__name__ for x in labels] == ["Labels"] * 2
    for layer in (image, *labels):
        np.testing.assert_allclose(layer.scale, SPACING)
    np.testing.assert_array_equal(labels[1].data, LABELS)


def test_viewer_survives_a_corrupt_file(make_napari_viewer, tmp_path, notes):
    viewer = make_napari_viewer()
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes((SAMPLE / "labeled/images/case_001.nii.gz").read_bytes()[:5000])
    assert viewer.open(str(bad), plugin="napari-cvbm") == []
    assert len(viewer.layers) == 0 and len(notes) == 1 and "truncated" in notes[0]


def test_viewer_saves_selected_layer_with_our_writer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    source = tmp_path / "labels" / "case_002.nii.gz"
    source.parent.mkdir()
    shutil.copy(SAMPLE / "labeled/labels/case_002.nii.gz", source)
    [labels] = viewer.open(str(source), plugin="napari-cvbm")
    image = viewer.add_image(IMAGE, scale=SPACING, name="scan")
    for layer, name in ((labels, "saved_seg.nii.gz"), (image, "saved.tif")):
        viewer.layers.selection = {layer}
        out = tmp_path / name
        assert viewer.layers.save(str(out), selected=True, plugin="napari-cvbm") == [str(out)]
        saved = read_image(out)
        np.testing.assert_array_equal(saved.array, np.asarray(layer.data, np.float32))
        assert saved.spacing == pytest.approx(tuple(layer.scale))
    assert read(str(tmp_path / "saved_seg.nii.gz"))[0][2] == "labels"


def test_4d_nifti_opens_as_one_layer_per_frame(make_napari_viewer, tmp_path):
    import nibabel as nib

    frames = np.stack([np.full((8, 9, 10), k, np.float32) for k in range(3)], axis=-1)
    nib.save(nib.Nifti1Image(frames, np.diag([1.0, 1.0, 2.0, 1.0])), str(tmp_path / "cine.nii.gz"))
    viewer = make_napari_viewer()
    layers = viewer.open(tmp_path / "cine.nii.gz", plugin="napari-cvbm")
    assert len(layers) == 3 and all(layer.data.shape == (10, 9, 8) for layer in layers)
    assert [float(layer.data.max()) for layer in layers] == [0.0, 1.0, 2.0]
    np.testing.assert_allclose(layers[0].scale, (2.0, 1.0, 1.0))
