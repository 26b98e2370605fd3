"""TIFF stacks: ImageJ, OME and Amira calibrations, missing z spacing, bad layouts,
and exact round trips of sxtlab's ImageJ hyperstacks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile

import sxtlab
from sxtlab import FormatError, OutputExistsError, VoxelSizeUnknownError
from sxtlab.io import read_segmentation, read_volume, write_volume
from volumes import image


def stack(shape=(5, 6, 7), dtype=np.uint16) -> np.ndarray:
    return np.arange(np.prod(shape)).reshape(shape).astype(dtype)


# -- round trips ---------------------------------------------------------------------
def test_round_trip_is_exact(tmp_path, no_warnings):
    vol = image(voxel_size=(0.0123456789, 0.032, 0.0251))
    path = write_volume(vol, tmp_path / "cell.tif")
    back = read_volume(path)
    np.testing.assert_array_equal(back.values, vol.values)
    assert back.dtype == np.float32
    assert back.attrs["voxel_size_um"] == [0.0123456789, 0.032, 0.0251]
    assert back.sxt.origin_um == vol.sxt.origin_um
    for d in "zyx":
        np.testing.assert_array_equal(back[d].values, vol[d].values)
    assert back.sxt.calibration.scale == 1.234567e-3 and back.sxt.calibration.offset == -0.0987654321
    assert back.attrs["cell_id"] == "cell 7" and back.attrs["units"] == "gray"
    assert back.name == "raw" and back.attrs["source"] == str(path)


def test_written_file_is_a_calibrated_imagej_hyperstack(tmp_path):
    vol = image(voxel_size=(0.05, 0.032, 0.025), origin=(0.1, 0.064, 0.0))
    path = write_volume(vol, tmp_path / "cell.tif")
    with tifffile.TiffFile(path) as tif:
        md = tif.imagej_metadata
        assert tif.is_imagej and tif.series[0].axes == "ZYX" and tif.series[0].shape == (6, 7, 8)
        assert md["unit"] == "micron" and md["spacing"] == 0.05
        assert md["zorigin"] == pytest.approx(-2.0) and md["yorigin"] == pytest.approx(-2.0)
        assert "xorigin" not in md
        num, den = tif.pages.first.tags["XResolution"].value
        assert den / num == pytest.approx(0.025, rel=1e-9)
        assert '"lac_scale": 0.001234567' in md["Info"]
    # a reader that knows only ImageJ (not sxtlab's Info) gets the same grid
    without_info = tmp_path / "plain.tif"
    tifffile.imwrite(without_info, vol.values, imagej=True, resolution=(1 / 0.025, 1 / 0.032),
                     metadata={k: v for k, v in md.items() if k in ("spacing", "unit", "zorigin", "yorigin")}
                     | {"axes": "ZYX"})
    back = read_volume(without_info)
    np.testing.assert_allclose(back.sxt.voxel_size, (0.05, 0.032, 0.025), rtol=1e-7)
    np.testing.assert_allclose(back.sxt.origin_um, (0.1, 0.064, 0.0), atol=1e-12)
    assert back.attrs["units"] == "gray" and "lac_scale" not in back.attrs


@pytest.mark.parametrize("dtype, values, stored", [
    (np.uint8, [0, 1, 255], np.uint8),
    (np.uint16, [0, 65535], np.uint16),
    (np.int16, [-300, 0, 3000], np.int16),
    (np.int8, [-128, 0, 127], np.int16),
    (np.int32, [0, 7, 255], np.uint8),
    (np.int64, [-5, 0, 30000], np.int16),
    (np.int32, [-1, 100000], np.float32),
    (np.float16, [0.5, -2.0, 1000.0], np.float32),
])
def test_round_trip_keeps_dtype_and_values(tmp_path, no_warnings, dtype, values, stored):
    data = np.resize(np.array(values, dtype=dtype), (3, 4, 5))
    path = write_volume(sxtlab.volume(data, (0.04, 0.03, 0.03)), tmp_path / "v.tif")
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].dtype == np.dtype(stored)
    back = read_volume(path)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.values, data)


def test_unstorable_values_are_refused(tmp_path):
    big = sxtlab.volume(np.array([0, 2**25], np.int64).reshape(1, 1, 2), 0.03)
    with pytest.raises(FormatError, match=r"cannot store int64 values 0\.\.33554432 exactly"):
        write_volume(big, tmp_path / "big.tif")
    vol = image()
    with pytest.raises(FormatError, match="non-finite"):
        write_volume(vol.where(vol > 300), tmp_path / "nan.tif")
    with pytest.raises(FormatError, match=r"dims \(z, y, x\)"):
        write_volume(vol.isel(x=0), tmp_path / "2d.tif")
    assert not list(tmp_path.iterdir())


def test_label_volume_round_trip(tmp_path, no_warnings):
    img = image()
    lab = np.zeros(img.shape, np.uint8)
    lab[2:4, 2:5, 2:6] = 1
    lab[-1] = sxtlab.UNANNOTATED
    path = write_volume(sxtlab.label_volume(lab, img, {1: "mitochondrion"}), tmp_path / "labels.tif")
    back = read_volume(path)
    np.testing.assert_array_equal(back.values, lab)
    assert back.sxt.classes == {1: "mitochondria"} and back.attrs["unannotated_value"] == 255
    assert back.attrs["voxel_size_um"] == img.attrs["voxel_size_um"]


def test_unknown_voxel_size_round_trips_as_unknown(tmp_path):
    path = write_volume(sxtlab.volume(np.ones((2, 3, 4), np.float32), None), tmp_path / "v.tif")
    with pytest.warns(UserWarning, match=r"no z spacing.*'spacing'"):
        back = read_volume(path)
    assert back.attrs["voxel_size_um"] is None and back.attrs["units"] == "1/um"





# -- calibrations written by other tools ----------------------------------------------
@pytest.mark.parametrize("unit, factor", [("nm", 1e-3), ("\\u00B5m", 1.0), ("micron", 1.0), ("mm", 1e3)])
def test_imagej_units(tmp_path, no_warnings, unit, factor):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, stack(), imagej=True, resolution=(1 / 32.0, 1 / 30.0),
                     metadata={"axes": "ZYX", "spacing": 50.0, "unit": unit})
    vol = read_volume(path)
    np.testing.assert_allclose(vol.sxt.voxel_size, np.array([50.0, 30.0, 32.0]) * factor, rtol=1e-7)


def test_imagej_unknown_unit_is_not_guessed(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, stack(), imagej=True, resolution=(1.0, 1.0),
                     metadata={"axes": "ZYX", "spacing": 2.0, "unit": "furlong"})
    with pytest.warns(UserWarning, match=r"unknown length unit 'furlong' in ImageJ 'unit'"):
        vol = read_volume(path, voxel_size=0.03)
    assert vol.sxt.voxel_size == (0.03, 0.03, 0.03)


def test_ome_tiff_physical_sizes_with_units(tmp_path, no_warnings):
    path = tmp_path / "v.ome.tif"
    tifffile.imwrite(path, stack(), ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 32.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 0.031,
        "PhysicalSizeZ": 50, "PhysicalSizeZUnit": "nm"})
    vol = read_volume(path)
    np.testing.assert_allclose(vol.sxt.voxel_size, (0.05, 0.031, 0.032), rtol=1e-12)


def test_ome_tiff_without_z_size(tmp_path):
    path = tmp_path / "v.ome.tif"
    tifffile.imwrite(path, stack(), ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.03, "PhysicalSizeY": 0.03})
    with pytest.warns(UserWarning, match=r"v\.ome\.tif: OME-XML Pixels has no usable PhysicalSizeZ"):
        vol = read_volume(path)
    assert vol.attrs["voxel_size_um"] is None
    assert read_volume(path, voxel_size=(0.05, None, None)).sxt.voxel_size == (0.05, 0.03, 0.03)


def test_plain_tiff_resolution_in_cm_has_no_z(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, stack(), photometric="minisblack", resolution=(1e4 / 0.04, 1e4 / 0.04),
                     resolutionunit="CENTIMETER")
    with pytest.warns(UserWarning, match=r"plain\.tif: no z spacing.*dy = 0\.04 µm, dx = 0\.04 µm"):
        vol = read_volume(path)
    assert vol.attrs["voxel_size_um"] is None
    np.testing.assert_allclose(read_volume(path, voxel_size=(0.05, None, None)).sxt.voxel_size,
                               (0.05, 0.04, 0.04), rtol=1e-9)


def test_imagej_info_from_other_tools_is_ignored(tmp_path, no_warnings):
    path = tmp_path / "fiji.tif"
    tifffile.imwrite(path, stack(), imagej=True, resolution=(1 / 0.03, 1 / 0.03),
                     metadata={"axes": "ZYX", "spacing": 0.05, "unit": "micron", "Info": "Acquired {today}"})
    assert read_volume(path).attrs["units"] == "gray"


def test_damaged_sxtlab_info_warns(tmp_path):
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, stack(), imagej=True, resolution=(1 / 0.03, 1 / 0.03),
                     metadata={"axes": "ZYX", "spacing": 0.05, "unit": "micron", "Info": '{"sxtlab": {'})
    with pytest.warns(UserWarning, match=r"bad\.tif \(ImageJ Info\): sxtlab metadata is not valid JSON"):
        vol = read_volume(path)
    assert vol.sxt.voxel_size == (0.05, 0.03, 0.03)


# -- bad layouts and files --------------------------------------------------------------
@pytest.mark.parametrize("shape, kwargs, match", [
    ((6, 7), {}, r"single 2-D image"),
    ((4, 6, 7, 3), {"photometric": "rgb"}, r"samples \(RGB/RGBA\)"),
    ((2, 3, 6, 7), {"imagej": True, "metadata": {"axes": "TZYX"}}, r"time points \(T\)"),
    ((2, 3, 6, 7), {"imagej": True, "metadata": {"axes": "ZCYX"}}, r"channels \(C\)"),
])
def test_not_a_z_stack(tmp_path, shape, kwargs, match):
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, stack(shape, np.uint8), **kwargs)
    with pytest.raises(FormatError, match=rf"^{path}: .*{match}") as info:
        read_volume(path)
    assert "not a readable" not in str(info.value)


def test_singleton_hyperstack_axes_are_squeezed(tmp_path):
    path = tmp_path / "h.tif"
    data = stack((1, 5, 1, 6, 7))
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.03, 1 / 0.03),
                     metadata={"axes": "TZCYX", "spacing": 0.05, "unit": "um"})
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.values, data[0, :, 0])
    assert vol.sxt.voxel_size == pytest.approx((0.05, 0.03, 0.03))


def test_corrupt_files(tmp_path):
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"this is not a TIFF file at all")
    with pytest.raises(FormatError, match=r"junk\.tif: not a readable TIFF stack"):
        read_volume(junk)
    path = write_volume(image(), tmp_path / "cut.tif")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(FormatError, match=r"cut\.tif: not a readable TIFF stack"):
        read_volume(path)


def test_nan_values_are_counted_and_located(tmp_path):
    data = np.zeros((3, 4, 5), np.float32)
    data[2, 1, 0] = np.nan
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(FormatError, match=r"nan\.tif.*1 non-finite values \(1 NaN, 0 inf\).*\(2, 1, 0\)"):
        read_volume(path, voxel_size=0.03)
    lazy = read_volume(path, voxel_size=0.03, chunks=(1, 4, 5))
    with pytest.raises(FormatError, match=r"the first at \(2, 1, 0\)"):
        lazy.values


def test_dispatcher_errors(tmp_path):
    vol = image()
    path = write_volume(vol, tmp_path / "v.tiff")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write_volume(vol, path)
    write_volume(vol + 1, path, overwrite=True)
    np.testing.assert_array_equal(read_volume(path).values, (vol + 1).values)
    with pytest.raises(FormatError, match=r"unknown extension '\.png'"):
        read_volume(path.rename(tmp_path / "v.png"))
    with pytest.raises(FormatError, match="holds one volume"):
        read_segmentation(write_volume(vol, tmp_path / "w.tif"))


# -- real files and field cases --------------------------------------------------------
def test_tardis_amira_tiff(shared):
    path = shared / "data/readers/tiff/tardis_tif3D.tif"
    with pytest.warns(UserWarning, match=r"tardis_tif3D\.tif: the Amira ImageDescription 'BoundingBox.*"
                                         r"\(23\.2, 23\.2, 23\.1999\) in file units.*voxel_size=.*box_units="):
        vol = read_volume(path)
    assert vol.shape == (78, 64, 32) and vol.dtype == np.uint8
    assert vol.attrs["voxel_size_um"] is None
    with pytest.raises(VoxelSizeUnknownError, match="voxel size"):
        vol.sxt.voxel_size
    # the user says the file unit is Å: the box then places the first voxel too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixed = read_volume(path, voxel_size=0.00232)
    assert fixed.sxt.voxel_size == (0.00232, 0.00232, 0.00232)
    assert fixed.sxt.origin_um[0] == pytest.approx(0.464, rel=1e-4)
    np.testing.assert_array_equal(fixed.values, vol.values)
    # or the unit of the box, as for AmiraMesh files
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        in_angstrom = read_volume(path, box_units="A")
    np.testing.assert_allclose(in_angstrom.sxt.voxel_size, (0.00232, 0.00232, 719.198e-4 / 31), rtol=1e-9)
    np.testing.assert_allclose(in_angstrom.sxt.origin_um, (0.464, 0.0, 0.0), atol=1e-12)
    assert in_angstrom.attrs["amira_bounding_box"] == [0, 719.198, 0, 1461.6, 4640, 6426.4]
    assert in_angstrom.attrs["amira_box_spacing_zyx"][0] == pytest.approx(23.2)
    with pytest.raises(FormatError, match=r"box_units='parsec' is not a length unit"):
        read_volume(path, box_units="parsec")


def test_box_units_needs_an_amira_box(tmp_path):
    path = write_volume(image(), tmp_path / "v.tif")
    with pytest.raises(FormatError, match=r"box_units='nm' applies to TIFFs with an Amira 'BoundingBox'"):
        read_volume(path, box_units="nm")


def test_case_09_missing_z_spacing(field_case):
    folder, exp = field_case("09")
    path = folder / exp["input"]
    with pytest.warns(UserWarning, match=rf"{path.name}: no z spacing.*'spacing'.*dy = 0\.0325 µm"):
        vol = read_volume(path)
    assert list(vol.shape) == exp["shape_zyx"]
    assert vol.attrs["voxel_size_um"] is None  # never z = 1 or z = x/y
    with pytest.raises(VoxelSizeUnknownError, match="voxel size"):
        vol.sxt.voxel_volume_um3
    expected = exp["with_override_voxel_size_um_zyx"]
    for override in [(exp["override_z_um"], None, None), expected]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fixed = read_volume(path, voxel_size=override)
        np.testing.assert_allclose(fixed.sxt.voxel_size, expected, rtol=exp["rtol"])
        volume_um3 = float((fixed > 0).sum()) * fixed.sxt.voxel_volume_um3
        assert volume_um3 == pytest.approx(exp["with_override_foreground_volume_um3"], rel=exp["rtol"])
