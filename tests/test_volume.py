"""Volumes keep their physics through every verb."""

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import sxtlab
from sxtlab import Calibration, FormatError, VoxelSizeUnknownError
from sxtlab.volume import check_same_grid

VS = (0.05, 0.03, 0.03)


def make(shape=(8, 12, 16), vs=VS, **kw):
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    return sxtlab.volume(data, voxel_size=vs, **kw)


def test_coords_are_voxel_centres_in_um():
    v = make(origin_um=(1.0, 2.0, 3.0))
    assert v.dims == ("z", "y", "x")
    np.testing.assert_allclose(v.z.values, 1.0 + 0.05 * np.arange(8))
    np.testing.assert_allclose(v.x.values, 3.0 + 0.03 * np.arange(16))
    assert v.x.attrs["units"] == "um"
    assert v.sxt.voxel_size == VS
    assert v.sxt.voxel_volume_um3 == pytest.approx(0.05 * 0.03 * 0.03)
    assert v.attrs["units"] == "1/um"


def test_scalar_voxel_size_is_isotropic():
    assert make(vs=0.04).sxt.voxel_size == (0.04, 0.04, 0.04)


@pytest.mark.parametrize("vs", [0, -0.03, (0.03, 0.0, 0.03), float("nan"), (0.03, 0.03)])
def test_bad_voxel_size(vs):
    with pytest.raises(FormatError, match="voxel size"):
        make(vs=vs)


@pytest.mark.parametrize("shape", [(4, 4), (2, 3, 4, 5)])
def test_not_3d(shape):
    with pytest.raises(FormatError, match=r"3-D \(z, y, x\).*got %d-D" % len(shape)):
        sxtlab.volume(np.zeros(shape, np.float32), voxel_size=0.03)


def test_nan_and_inf_reported_with_count_and_place():
    data = np.ones((4, 5, 6), np.float32)
    data[1, 2, 3] = np.nan
    data[3, 0, 0] = np.inf
    with pytest.raises(FormatError, match=r"2 non-finite values \(1 NaN, 1 inf\).*\(1, 2, 3\)"):
        sxtlab.volume(data, voxel_size=0.03, source="cell.mrc")


def test_unknown_voxel_size_is_recorded_and_refuses_physics():
    v = sxtlab.volume(np.zeros((3, 4, 5), np.float32), voxel_size=None, source="a.am")
    assert v.attrs["voxel_size_um"] is None
    assert v.x.attrs["units"] == "voxel"
    with pytest.raises(VoxelSizeUnknownError, match="voxel size of a.am is unknown"):
        v.sxt.voxel_size
    w = v.sxt.with_voxel_size((0.05, 0.03, 0.03))
    assert w.sxt.voxel_size == VS
    np.testing.assert_allclose(w.y.values, 0.03 * np.arange(4))


def test_to_lac_applies_calibration_and_keeps_attrs():
    cal = Calibration(scale=2e-4, offset=0.01)
    v = make(calibration=cal, source="s.rec", cell_id="c1")
    assert v.attrs["units"] == "gray"
    lac = v.sxt.to_lac()
    np.testing.assert_allclose(lac.values, v.values * 2e-4 + 0.01, rtol=1e-6)
    assert lac.attrs["units"] == "1/um"
    assert lac.attrs["source"] == "s.rec" and lac.attrs["cell_id"] == "c1"
    assert lac.sxt.voxel_size == VS
    # converting twice does nothing more
    assert lac.sxt.to_lac() is lac


def test_to_lac_without_calibration_is_refused():
    v = make(units="gray")
    with pytest.raises(sxtlab.CalibrationError, match="gray values and has no calibration"):
        v.sxt.to_lac()


def test_crop_keeps_true_coords():
    v = make()
    c = v.sxt.crop(z=(0.1, 0.2), x=(0.06, None))
    np.testing.assert_allclose(c.z.values, [0.1, 0.15, 0.2])
    assert c.x.values[0] == pytest.approx(0.06)
    assert c.attrs == v.attrs
    np.testing.assert_array_equal(c.values, v.values[2:5, :, 2:])
    with pytest.raises(ValueError, match="selects no voxel"):
        v.sxt.crop(z=(5.0, 6.0))


def test_downsample_anisotropic_block_mean():
    v = make()
    d = v.sxt.downsample((2, 3, 4))
    assert d.shape == (4, 4, 4)
    assert d.sxt.voxel_size == pytest.approx((0.1, 0.09, 0.12))
    # block centres: mean of the two first z centres
    assert d.z.values[0] == pytest.approx(0.025)
    assert float(d[0, 0, 0]) == pytest.approx(v.values[:2, :3, :4].mean())
    assert d.attrs["units"] == "1/um"
    # coords stay consistent with the new voxel size
    np.testing.assert_allclose(np.diff(d.x.values), 0.12)


def test_downsample_labels_takes_block_mode():
    v = make(shape=(4, 4, 4))
    lab = np.zeros((4, 4, 4), np.uint8)
    lab[:2, :2, :2] = 2
    lab[0, 0, 0] = 1
    labels = sxtlab.label_volume(lab, v, {1: "cell", 2: "nucleus"})
    d = labels.sxt.downsample(2)
    assert d.dtype == np.uint8
    assert d.values[0, 0, 0] == 2 and d.values[1, 1, 1] == 0
    assert d.attrs["classes"] == {"1": "cell", "2": "nucleus"}


def test_downsample_dask_stays_lazy():
    v = sxtlab.volume(da.ones((8, 8, 8), chunks=4, dtype=np.float32), voxel_size=0.03)
    d = v.sxt.downsample(2)
    assert isinstance(d.data, da.Array)
    assert d.sxt.voxel_size == pytest.approx((0.06,) * 3)


def test_resample_keeps_extent():
    v = make(shape=(4, 6, 8), vs=0.04)
    r = v.sxt.resample(0.02)
    assert r.shape == (8, 12, 16)
    # lower edge of the first voxel is preserved
    assert r.z.values[0] - 0.01 == pytest.approx(v.z.values[0] - 0.02)
    assert r.sxt.voxel_size == (0.02, 0.02, 0.02)


def test_label_volume_checks():
    v = make(shape=(2, 3, 4))
    with pytest.raises(FormatError, match=r"labels have shape \(2, 3, 5\), their image has \(2, 3, 4\)"):
        sxtlab.label_volume(np.zeros((2, 3, 5), np.uint8), v, {1: "cell"})
    with pytest.raises(FormatError, match="must be integers"):
        sxtlab.label_volume(np.zeros((2, 3, 4), np.float32), v, {1: "cell"})
    with pytest.raises(sxtlab.classes.UnknownClassError, match="'golgi'"):
        sxtlab.label_volume(np.zeros((2, 3, 4), np.uint8), v, {1: "golgi"})


def test_segmentation_checks_the_grid():
    v = make(shape=(2, 3, 4))
    other = make(shape=(2, 3, 4), vs=0.04)
    labels = sxtlab.label_volume(np.zeros((2, 3, 4), np.uint8), other, {1: "cell"})
    with pytest.raises(FormatError, match="voxel size"):
        sxtlab.segmentation(v, labels)
    ok = sxtlab.segmentation(v, sxtlab.label_volume(np.zeros((2, 3, 4), np.uint8), v, {1: "cell"}))
    assert set(ok.data_vars) == {"lac", "labels"}
    assert ok["lac"].sxt.voxel_size == VS


def test_check_same_grid_shape():
    a, b = make(shape=(2, 3, 4)), make(shape=(2, 3, 5))
    with pytest.raises(FormatError, match="shape"):
        check_same_grid(a, b)


def test_attrs_survive_arithmetic():
    # sxtlab relies on xarray keeping attrs by default (xarray >= 2025.11)
    v = make()
    assert (v * 2).attrs.get("voxel_size_um") == list(VS)
    assert isinstance(v, xr.DataArray)
