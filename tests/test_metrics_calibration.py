"""Reliability and expected calibration error against cases with a known answer."""

import numpy as np
import pytest

from sxtlab.metrics import expected_calibration_error, fit_temperature, reliability, temper


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


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(0))
    return e / e.sum(0)


def test_the_fitted_temperature_is_the_one_the_truth_was_drawn_with():
    # labels drawn from softmax(z / 2): a model reporting softmax(z) is over-confident by T = 2
    rng = np.random.default_rng(1)
    z = rng.normal(0, 4, (3, 200_000))
    truth = (rng.random(z.shape[1]) > np.cumsum(_softmax(z / 2), 0)[:, :]).sum(0)
    p = _softmax(z)[:, :, None, None].astype(np.float32)
    t = fit_temperature(p, truth[:, None, None])
    assert t == pytest.approx(2.0, rel=0.03)
    before = expected_calibration_error(p, truth[:, None, None])
    after = expected_calibration_error(temper(p, t), truth[:, None, None])
    assert after < 0.01 < 0.1 < before


def test_tempering_keeps_the_order_of_the_classes_and_sums_to_one():
    rng = np.random.default_rng(2)
    p = _softmax(rng.normal(0, 3, (5, 4, 6, 7))).astype(np.float32)
    p[1, 0, 0, 0], p[0, 0, 0, 0] = 0.0, p[0, 0, 0, 0] + p[1, 0, 0, 0]   # a zero stays finite
    for t in (0.5, 1.5, 8.0):
        q = temper(p, t)
        assert np.isfinite(q).all() and q.dtype == np.float32
        np.testing.assert_allclose(q.sum(0), 1, atol=1e-5)
        np.testing.assert_array_equal(q.argmax(0), p.argmax(0))
    assert temper(p, 1.0) is p
    with pytest.raises(ValueError, match="positive finite"):
        temper(p, -1.0)


def test_unannotated_voxels_do_not_move_the_temperature():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 3, (2, 50_000))
    truth = (rng.random(z.shape[1]) < _softmax(z / 1.5)[1]).astype(np.uint8)
    p = _softmax(z)[:, :, None, None]
    marked = truth.copy()
    marked[:25_000] = 255
    assert fit_temperature(p[:, 25_000:], truth[25_000:, None, None]) == pytest.approx(
        fit_temperature(p, marked[:, None, None]), rel=1e-6)
    with pytest.raises(ValueError, match="no annotated voxel"):
        fit_temperature(p, np.full((50_000, 1, 1), 255, np.uint8))
