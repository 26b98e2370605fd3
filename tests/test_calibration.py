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
