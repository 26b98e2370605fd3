"""Gray -> LAC calibration: apply, invert, estimate from reference regions."""

import numpy as np
import pytest

from sxtlab import Calibration, CalibrationError, estimate_calibration


def gray_image(scale=2.5e-5, offset=-0.3, seed=0):
    """A two-region image with known LAC: medium (0.111) and lipid (0.7), plus noise."""
    rng = np.random.default_rng(seed)
    lac = np.full((20, 20, 20), 0.111)
    ref = np.zeros(lac.shape, bool)
    ref[5:15, 5:15, 5:15] = True
    lac[ref] = 0.7
    lac = lac + rng.normal(0, 0.01, lac.shape)
    return (lac - offset) / scale, ~ref, ref


def test_apply_and_invert():
    cal = Calibration(1e-3, 0.05)
    g = np.array([0.0, 100.0, 250.0])
    np.testing.assert_allclose(cal.apply(g), [0.05, 0.15, 0.3])
    np.testing.assert_allclose(cal.invert(cal.apply(g)), g)
    assert Calibration.from_attrs(cal.to_attrs()) == cal
    assert Calibration.from_attrs({}) is None


@pytest.mark.parametrize("scale", [0.0, np.nan, np.inf])
def test_bad_scale(scale):
    with pytest.raises(CalibrationError, match="scale must be finite and non-zero"):
        Calibration(scale)


def test_two_region_estimate_recovers_truth_within_1_percent():
    gray, medium, ref = gray_image()
    cal = estimate_calibration(gray, medium, 0.111, reference=ref, reference_lac=0.7)
    assert cal.scale == pytest.approx(2.5e-5, rel=0.01)
    assert cal.offset == pytest.approx(-0.3, rel=0.01)
    assert cal.fit["method"] == "two regions"
    assert abs(cal.fit["medium_lac_residual_per_um"]) < 1e-3


def test_medium_only_with_known_scale():
    gray, medium, _ = gray_image()
    cal = estimate_calibration(gray, medium, 0.111, scale=2.5e-5)
    assert cal.offset == pytest.approx(-0.3, rel=0.01)
    assert cal.fit["method"] == "medium and given scale"


def test_estimate_errors():
    gray, medium, ref = gray_image()
    with pytest.raises(CalibrationError, match="either a reference region"):
        estimate_calibration(gray, medium)
    with pytest.raises(CalibrationError, match="medium region is empty"):
        estimate_calibration(gray, np.zeros_like(medium), scale=1.0)
    with pytest.raises(CalibrationError, match=r"shape \(2, 2\)"):
        estimate_calibration(gray, np.zeros((2, 2), bool), scale=1.0)
    with pytest.raises(CalibrationError, match="same median gray value"):
        estimate_calibration(np.ones((4, 4, 4)), medium[:4, :4, :4], reference=ref[:4, :4, :4] | True,
                             reference_lac=0.7)


# --- from the medium around the cells (sxtlab.calibrate_from_medium) ------------------
@pytest.fixture(scope="module")
def phantom_cell():
    from sxtlab import phantom

    return phantom.cell(seed=1, shape=(64, 64, 64), voxel_size=0.05, class_lac={"background": 0.105})


def test_medium_fit_recovers_scale_of_proportional_gray(phantom_cell):
    import sxtlab

    gray = sxtlab.volume(phantom_cell["lac"].values * 400.0, 0.05, units="gray")
    cal = sxtlab.calibrate_from_medium(gray, 0.105)
    assert cal.scale == pytest.approx(1 / 400, rel=1e-3) and cal.offset == 0.0
    assert cal.fit["method"] == "medium and given offset" and cal.fit["medium_voxels"] > 1000
    # the medium found is medium: no voxel of the cell (truth label > 0) in it
    from sxtlab.cells import medium_region

    assert not (medium_region(gray).values & (phantom_cell["labels"].values > 0)).any()
    # with the scale known, the offset of a shifted gray image is fitted instead
    shifted = sxtlab.volume(phantom_cell["lac"].values * 400.0 - 40.0, 0.05, units="gray")
    cal = sxtlab.calibrate_from_medium(shifted, 0.105, scale=1 / 400)
    assert cal.offset == pytest.approx(0.1, abs=1e-4)


def test_medium_fit_of_a_large_lazy_image_uses_a_block_mean(phantom_cell, monkeypatch):
    import dask.array as da

    import sxtlab
    import sxtlab.cells

    monkeypatch.setattr(sxtlab.cells, "MAX_CALIBRATION_VOXELS", 40**3)
    gray = sxtlab.volume(da.from_array(phantom_cell["lac"].values * 400.0, chunks=32), 0.05, units="gray")
    cal = sxtlab.calibrate_from_medium(gray, 0.105)
    assert cal.fit["downsampled_by"] == 2 and cal.scale == pytest.approx(1 / 400, rel=1e-3)


def test_medium_fit_refuses_too_little_medium():
    import sxtlab

    g = np.full((20, 20, 20), 250.0)
    g[:2] = 50.0  # cell fills the volume but for two planes of medium, all within the blur margin
    with pytest.raises(CalibrationError, match="voxels of medium around the cells, fewer than 200") as info:
        sxtlab.calibrate_from_medium(sxtlab.volume(g, 0.05, units="gray"), 0.105)
    assert "--lac where the values are LAC" in info.value.for_command_line()
