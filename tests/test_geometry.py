"""Every result lands where its image is: NIfTI headers, TIFF units, singleton and time axes.

World positions are checked with independent readers: SimpleITK (the ITK that ITK-SNAP and 3D Slicer
are built on) for NIfTI, tifffile's own tags for TIFF.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from napari_cvbm.cli import main as cli
from napari_cvbm.core.data import load_cases
from napari_cvbm.core.errors import CVBMInputError
from napari_cvbm.core.io import read_image, read_labels, write_image

STARTER = Path(__file__).parents[1] / "napari_cvbm" / "models" / "starter.pt"
ROTATION = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])  # 37 degrees about z


def _oblique(zooms=(0.7, 0.8, 2.5), origin=(-90.0, 120.5, -33.0)):
    affine = np.eye(4)
    affine[:3, :3] = ROTATION * np.array(zooms)
    affine[:3, 3] = origin
    return affine


def _header_variant(name: str) -> nib.Nifti1Image:
    """A (x, y, z) = (20, 18, 7) image whose header is one of the cases real labs have."""
    data = np.random.default_rng(0).normal(size=(20, 18, 7)).astype(np.float32)
    if name == "nifti2":
        img = nib.Nifti2Image(data, _oblique())
        img.set_qform(_oblique(), code=1)
        return img
    img = nib.Nifti1Image(data, None)
    header = img.header
    if name == "sform_and_different_qform":
        header.set_qform(_oblique(origin=(1.0, 2.0, 3.0)), code=1)
        header.set_sform(_oblique(), code=2)
    elif name == "qform_only":
        header.set_qform(_oblique(), code=1)
        header.set_sform(None, code=0)
    elif name == "no_orientation_codes":  # nibabel invents a centred, flipped affine for these
        header.set_zooms((0.7, 0.8, 2.5))
        header.set_qform(None, code=0)
        header.set_sform(None, code=0)
    elif name == "sheared_sform":
        sheared = _oblique()
        sheared[0, 1] += 0.3
        header.set_qform(_oblique(), code=1)
        header.set_sform(sheared, code=2)
    elif name in ("micron", "meter"):
        header.set_qform(_oblique(zooms=(0.7, 0.8, 2.5)), code=1)
        header.set_sform(_oblique(zooms=(0.7, 0.8, 2.5)), code=1)
        header.set_xyzt_units(name)
    return img


VARIANTS = ["sform_and_different_qform", "qform_only", "no_orientation_codes", "sheared_sform", "micron",
            "meter", "nifti2"]


def _world(path: Path, indices) -> np.ndarray:
    """World positions (ITK's LPS, mm or file units) of voxel ``indices`` (x, y, z) as SimpleITK reads them."""
    image = sitk.ReadImage(str(path))
    return np.array([image.TransformIndexToPhysicalPoint(tuple(int(i) for i in index)) for index in indices])


def _same_place(source: Path, result: Path) -> None:
    src, out = nib.load(str(source)), nib.load(str(result))
    assert type(out.header) is type(src.header)
    if int(src.header["sizeof_hdr"]) == 348:  # SimpleITK reads no NIfTI-2: those are compared through nibabel
        corners = [(0, 0, 0), (19, 0, 0), (0, 17, 0), (0, 0, 6), (19, 17, 6), (7, 5, 3)]
        np.testing.assert_allclose(_world(result, corners), _world(source, corners), atol=1e-4)
    for key in ("qform_code", "sform_code", "xyzt_units"):
        assert int(out.header[key]) == int(src.header[key]), key
    np.testing.assert_allclose(out.header.get_qform(), src.header.get_qform(), atol=1e-6)
    np.testing.assert_allclose(out.header.get_sform(), src.header.get_sform(), atol=1e-6)
    assert out.shape == src.shape


@pytest.mark.parametrize("variant", VARIANTS)
def test_nifti_result_keeps_the_source_header_in_world_coordinates(tmp_path, variant):
    source = tmp_path / "scan.nii.gz"
    nib.save(_header_variant(variant), str(source))
    image = read_image(source)
    result = write_image(tmp_path / "seg.nii.gz", (image.array > 0).astype(np.uint8), geometry=image.geometry)
    _same_place(source, result)
    assert read_labels(result).array.max() == 1  # labels are not rescaled by the source's slope


def test_spacing_is_converted_to_mm_from_the_file_unit(tmp_path):
    for unit, factor in (("micron", 1e-3), ("meter", 1e3), ("mm", 1.0), ("unknown", 1.0)):
        img = nib.Nifti1Image(np.zeros((6, 5, 4), np.float32), np.diag([0.5, 0.5, 2.0, 1.0]))
        img.header.set_xyzt_units(unit)
        nib.save(img, str(tmp_path / f"{unit}.nii"))
        assert read_image(tmp_path / f"{unit}.nii").spacing == pytest.approx((2.0 * factor, 0.5 * factor,
                                                                               0.5 * factor))


def test_cli_prediction_lands_on_an_oblique_scan_without_orientation_codes(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for variant in ("no_orientation_codes", "sform_and_different_qform"):
        img = _header_variant(variant)
        big = np.random.default_rng(1).normal(size=(40, 36, 34)).astype(np.float32)
        nib.save(type(img)(big, None, img.header), str(scans / f"{variant}.nii.gz"))
    assert cli(["predict", str(STARTER), str(scans), "--out", str(tmp_path / "pred"), "--probabilities"]) == 0
    for variant in ("no_orientation_codes", "sform_and_different_qform"):
        source = scans / f"{variant}.nii.gz"
        for result in (tmp_path / "pred" / source.name, tmp_path / "pred" / "maps" / f"{variant}_confidence_fg.nii.gz"):
            src_image, out_image = sitk.ReadImage(str(source)), sitk.ReadImage(str(result))
            assert out_image.GetSize() == src_image.GetSize()
            np.testing.assert_allclose(out_image.GetOrigin(), src_image.GetOrigin(), atol=1e-4)
            np.testing.assert_allclose(out_image.GetDirection(), src_image.GetDirection(), atol=1e-6)
            np.testing.assert_allclose(out_image.GetSpacing(), src_image.GetSpacing(), rtol=1e-6)


def test_singleton_axes_are_not_all_the_same(tmp_path):
    rng = np.random.default_rng(2)
    shapes = {"axial": (20, 18, 1), "coronal": (20, 1, 7)}
    arrays = {}
    for name, shape in shapes.items():
        nib.save(nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), _oblique()), str(tmp_path / f"{name}.nii"))
        image = read_image(tmp_path / f"{name}.nii")
        arrays[name] = image
        result = write_image(tmp_path / f"{name}_seg.nii", (image.array > 0).astype(np.uint8), geometry=image.geometry)
        assert nib.load(str(result)).shape == shape  # the squeezed axis is back where it was
        np.testing.assert_allclose(nib.load(str(result)).affine, _oblique(), atol=1e-6)
    assert arrays["axial"].array.shape == (18, 20) and arrays["axial"].spacing == pytest.approx((0.8, 0.7))
    assert arrays["coronal"].array.shape == (7, 20) and arrays["coronal"].spacing == pytest.approx((2.5, 0.7))


def test_a_cine_series_is_never_read_as_a_volume(tmp_path):
    cine = np.stack([np.full((20, 18, 1), t, np.float32) for t in range(12)], axis=-1)  # (x, y, 1, t)
    nib.save(nib.Nifti1Image(cine, _oblique()), str(tmp_path / "cine.nii.gz"))
    with pytest.raises(CVBMInputError, match="12 channels or time frames"):
        read_image(tmp_path / "cine.nii.gz")
    frame = read_image(tmp_path / "cine.nii.gz", channel=5)
    assert frame.array.shape == (18, 20) and (frame.array == 5).all()
    result = write_image(tmp_path / "frame5_seg.nii.gz", np.ones((18, 20), np.uint8), geometry=frame.geometry)
    assert nib.load(str(result)).shape == (20, 18, 1)
    assert read_image(tmp_path / "cine.nii.gz", channel="all").array.shape == (12, 18, 20)
    # a TIFF time series (ImageJ axes TYX) is not a z stack either
    tifffile.imwrite(str(tmp_path / "movie.tif"), np.zeros((9, 8, 7), np.float32), imagej=True,
                     metadata={"axes": "TYX"})
    with pytest.raises(CVBMInputError, match="9 channels or time frames"):
        read_image(tmp_path / "movie.tif")


def _tiff_physical(path: Path) -> tuple[str, float, float]:
    """(unit, x pixel size, z spacing) from the file's own tags, read by tifffile."""
    with tifffile.TiffFile(str(path)) as tif:
        num, den = tif.pages[0].tags["XResolution"].value
        ij = tif.imagej_metadata
        return ij["unit"], den / num, float(ij.get("spacing", 1.0))


TIFF_SOURCES = {
    "imagej_micron": (dict(imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                           metadata={"axes": "ZYX", "unit": "micron", "spacing": 1.5}), (1.5e-3, 0.25e-3, 0.25e-3)),
    "imagej_mm": (dict(imagej=True, resolution=(2.0, 2.0), metadata={"axes": "ZYX", "unit": "mm", "spacing": 3.0}),
                  (3.0, 0.5, 0.5)),
    "ome_nm": (dict(ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 80.0, "PhysicalSizeXUnit": "nm",
                                        "PhysicalSizeY": 80.0, "PhysicalSizeYUnit": "nm",
                                        "PhysicalSizeZ": 0.3, "PhysicalSizeZUnit": "µm"}), (0.3e-3, 80e-6, 80e-6)),
    "ome_default_micron": (dict(ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                                                    "PhysicalSizeZ": 2.0}), (2e-3, 0.5e-3, 0.5e-3)),
    "resolution_cm": (dict(resolution=(40.0, 40.0), resolutionunit="CENTIMETER"), (10.0, 0.25, 0.25)),
    "resolution_inch_dpi": (dict(resolution=(300.0, 300.0), resolutionunit="INCH"), (1.0, 1.0, 1.0)),
}


@pytest.mark.parametrize("name", TIFF_SOURCES)
def test_tiff_spacing_and_unit_round_trip(tmp_path, name):
    options, expected_mm = TIFF_SOURCES[name]
    source = tmp_path / f"{name}.tif"
    tifffile.imwrite(str(source), np.random.default_rng(3).random((5, 12, 10)).astype(np.float32), **options)
    image = read_image(source)
    assert image.spacing == pytest.approx(expected_mm, rel=1e-6)
    result = write_image(tmp_path / f"{name}_seg.tif", (image.array > 0.5).astype(np.uint8), geometry=image.geometry)
    assert read_labels(result).spacing == pytest.approx(expected_mm, rel=1e-6)
    unit, x_size, z_size = _tiff_physical(result)
    to_mm = {"micron": 1e-3, "mm": 1.0, "nm": 1e-6, "cm": 10.0, "pixel": 1.0}[unit]
    assert (z_size * to_mm, x_size * to_mm) == pytest.approx((expected_mm[0], expected_mm[2]), rel=1e-6)


def test_unknown_tiff_unit_is_refused(tmp_path):
    tifffile.imwrite(str(tmp_path / "odd.tif"), np.zeros((4, 8, 8), np.float32), imagej=True,
                     resolution=(1.0, 1.0), metadata={"axes": "ZYX", "unit": "furlong"})
    with pytest.raises(CVBMInputError, match="unknown spatial unit 'furlong'"):
        read_image(tmp_path / "odd.tif")


def test_tiff_cannot_hold_an_oblique_nifti_grid_so_it_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((20, 18, 7), np.float32), _oblique()), str(tmp_path / "oblique.nii.gz"))
    image = read_image(tmp_path / "oblique.nii.gz")
    with pytest.raises(CVBMInputError, match="TIFF cannot hold the orientation and origin"):
        write_image(tmp_path / "seg.tif", np.zeros(image.array.shape, np.uint8), geometry=image.geometry)
    assert not (tmp_path / "seg.tif").exists()
    nib.save(nib.Nifti1Image(np.zeros((20, 18, 7), np.float32), np.diag([0.5, 0.5, 2.0, 1.0])),
             str(tmp_path / "plain.nii.gz"))
    plain = read_image(tmp_path / "plain.nii.gz")
    written = write_image(tmp_path / "plain.tif", np.ones(plain.array.shape, np.uint8), geometry=plain.geometry)
    assert read_labels(written).spacing == pytest.approx((2.0, 0.5, 0.5))


def test_a_result_that_no_longer_fits_its_grid_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((20, 18, 7), np.float32), _oblique()), str(tmp_path / "scan.nii"))
    image = read_image(tmp_path / "scan.nii")
    with pytest.raises(CVBMInputError, match="is not its image's grid"):
        write_image(tmp_path / "seg.nii", np.zeros((7, 18, 19), np.uint8), geometry=image.geometry)


@pytest.mark.parametrize("change, message", [
    ("origin", "origin differs by 66 mm"),
    ("orientation", "orientation differs"),
])
def test_labels_must_share_the_whole_affine_of_their_image(tmp_path, change, message):
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    rng = np.random.default_rng(4)
    nib.save(nib.Nifti1Image(rng.normal(size=(20, 18, 7)).astype(np.float32), _oblique()),
             str(tmp_path / "images" / "c.nii.gz"))
    moved = _oblique()
    if change == "origin":
        moved[:3, 3] += (66.0, 0.0, 0.0)
    else:
        moved[:3, 0] *= -1  # x flipped: same spacing, other side of the patient
    label = (rng.random((20, 18, 7)) > 0.5).astype(np.uint8)
    nib.save(nib.Nifti1Image(label, moved), str(tmp_path / "labels" / "c.nii.gz"))
    with pytest.raises(CVBMInputError, match=message):
        load_cases(tmp_path / "images", tmp_path / "labels")
    nib.save(nib.Nifti1Image(label, _oblique()), str(tmp_path / "labels" / "c.nii.gz"))
    assert load_cases(tmp_path / "images", tmp_path / "labels")[0].label.shape == (7, 18, 20)


def test_napari_writer_puts_a_labels_layer_back_on_its_file_grid(tmp_path):
    from napari_cvbm._reader import read
    from napari_cvbm._writer import write_labels

    source = tmp_path / "scan.nii.gz"
    nib.save(_header_variant("no_orientation_codes"), str(source))
    [(data, kwargs, _)] = read(str(source))
    meta = {"scale": kwargs["scale"], "metadata": kwargs["metadata"]}
    [written] = write_labels(str(tmp_path / "seg.nii.gz"), (data > 0).astype(np.uint8), meta)
    _same_place(source, Path(written))
    rescaled = {**meta, "scale": tuple(2 * s for s in kwargs["scale"])}  # no longer that file's grid
    [written] = write_labels(str(tmp_path / "rescaled.nii.gz"), (data > 0).astype(np.uint8), rescaled)
    assert nib.load(written).header.get_zooms() == pytest.approx((1.4, 1.6, 5.0))
