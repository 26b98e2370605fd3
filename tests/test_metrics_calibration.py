"""Reliability and expected calibration error against cases with a known answer."""

import numpy as np
import pytest

from sxtlab.metrics import expected_calibration_error, reliability


def _two_class(p1: np.ndarray) -> np.ndarray:
    """(2, n, 1, 1) probabilities with class 1 at ``p1``."""
    return np.stack([1 - p1, p1])[:, :, None, None]


def test_a_calibrated_model_has_an_ece_near_zero():
    rng = np.random.default_rng(0)
    p1 = rng.uniform(0, 1, 200_000)
    truth = (rng.uniform(0, 1, p1.size) < p1).astype(np.uint8)  # class 1 as often as its probability says
    assert expected_calibration_error(_two_class(p1), truth[:, None, None]) < 0.01
    table = reliability(_two_class(p1), truth[:, None, None], n_bins=10)
    np.testing.assert_allclose(table["accuracy"], table["confidence"], atol=0.02)


def test_an_overconfident_model_has_the_ece_of_its_gap():
    # always 90 % sure, right 60 % of the time: ECE = |0.6 - 0.9| = 0.3
    truth = np.array([1] * 6 + [0] * 4, np.uint8)[:, None, None]
    p1 = np.full(10, 0.9)
    assert expected_calibration_error(_two_class(p1), truth) == pytest.approx(0.3)
    table = reliability(_two_class(p1), truth)
    assert table[["confidence", "accuracy", "voxels"]].values.tolist() == [[pytest.approx(0.9), 0.6, 10]]


def test_unannotated_voxels_are_left_out_and_bad_shapes_refused():
    truth = np.array([1, 255, 255], np.uint8)[:, None, None]
    p = _two_class(np.array([0.8, 0.1, 0.1]))
    assert expected_calibration_error(p, truth) == pytest.approx(0.2)
    assert np.isnan(expected_calibration_error(p, np.full((3, 1, 1), 255, np.uint8)))
    with pytest.raises(ValueError, match=r"expected \(K, \*\(2, 1, 1\)\)"):
        reliability(p, truth[:2])
    with pytest.raises(ValueError, match="n_bins"):
        reliability(p, truth, n_bins=0)
