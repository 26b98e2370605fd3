"""The confusion matrix matched by class name, against counts worked out by hand."""

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from sxtlab import phantom
from sxtlab.classes import UNANNOTATED
from sxtlab.metrics import confusion, evaluate

CLASSES = {1: "cell", 2: "nucleus", 3: "vacuole"}


def _volume(values, classes=CLASSES) -> xr.DataArray:
    return xr.DataArray(np.asarray(values, np.uint8), dims=("x",), attrs={"classes": classes})


def test_counts_match_names_not_values():
    truth = _volume([0, 1, 1, 2, 2, 2, 3])
    # the prediction numbers its classes otherwise: 1 vacuole, 2 nucleus, 3 cell
    pred = _volume([0, 3, 1, 2, 1, 1, 1], {1: "vacuole", 2: "nucleus", 3: "cell"})
    table = confusion(pred, truth)
    assert list(table.index) == ["background", "cell", "nucleus", "vacuole"]
    assert list(table.columns) == ["background", "vacuole", "nucleus", "cell", "other"]
    assert table.loc["nucleus"].tolist() == [0, 2, 1, 0, 0]  # two of three nucleus voxels called vacuole
    assert table.loc["cell", "cell"] == 1 and table.loc["cell", "vacuole"] == 1
    assert table.values.sum() == 7


def test_unannotated_and_unnamed_values_are_left_out_or_other():
    truth = _volume([UNANNOTATED, 2, 2, 9])  # 9: a value the truth's classes do not name
    pred = _volume([2, 2, 7, 2])  # 7: a value the prediction's classes do not name
    table = confusion(pred, truth)
    assert table.values.sum() == 2
    assert table.loc["nucleus", "nucleus"] == 1 and table.loc["nucleus", "other"] == 1


def test_shares_sum_to_one_per_present_class():
    truth = _volume([1, 1, 1, 2])
    pred = _volume([1, 2, 2, 2])
    shares = confusion(pred, truth, normalize=True)
    assert shares.loc["cell", "nucleus"] == pytest.approx(2 / 3)
    assert shares.loc["nucleus"].sum() == pytest.approx(1.0)
    assert shares.loc["vacuole"].isna().all()  # absent from the truth


def test_any_integer_label_values_are_matched():
    # values beyond uint8 and negative ones, named by the classes attr
    for dtype, cell in ((np.uint16, 300), (np.int16, -1), (np.uint64, 2 ** 63 + 1)):
        v = xr.DataArray(np.array([0, cell, cell, 2], dtype), dims=("x",), attrs={"classes": {cell: "cell", 2: "nucleus"}})
        table = confusion(v, v)
        assert table.index[0] == "background" and set(table.index) == {"background", "cell", "nucleus"}
        assert table.loc["cell", "cell"] == 2 and table.values.sum() == 4


def test_segmentation_datasets_are_taken_on_either_side():
    ds = phantom.cell(0, (32, 32, 32), 0.1)
    table = confusion(ds, ds)
    assert table.values.sum() == ds.labels.size
    assert sum(table.loc[name, name] for name in table.index) == ds.labels.size


def test_volumes_on_other_grids_are_refused():
    labels = phantom.cell(0, (32, 32, 32), 0.1).labels
    with pytest.raises(ValueError, match="dims"):
        confusion(labels.transpose("x", "y", "z"), labels)
    with pytest.raises(ValueError, match="different grids along 'z'"):
        confusion(labels.assign_coords(z=labels.z + 1.0), labels)
    with pytest.raises(ValueError, match="different grids"):
        evaluate(labels.assign_coords(z=labels.z + 1.0), labels)


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="no 'classes' attr"):
        confusion(_volume([1]), xr.DataArray(np.array([1], np.uint8), dims=("x",)))
    with pytest.raises(ValueError, match="shape"):
        confusion(_volume([1, 1]), _volume([1]))
    with pytest.raises(ValueError, match="integers"):
        confusion(xr.DataArray(np.array([1.0]), dims=("x",), attrs={"classes": CLASSES}), _volume([1]))
    with pytest.raises(TypeError, match="xarray.DataArray"):
        confusion(np.array([1], np.uint8), _volume([1]))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=60))
def test_the_diagonal_gives_evaluate_s_dice(pairs):
    truth, pred = (_volume([p[i] for p in pairs]) for i in (0, 1))
    table = confusion(pred, truth)
    scores = evaluate(pred, truth)
    for name in CLASSES.values():
        n_true, n_pred = table.loc[name].sum(), table[name].sum()
        expected = 2 * table.loc[name, name] / (n_true + n_pred) if n_true + n_pred else np.nan
        np.testing.assert_allclose(scores.loc[name, "dice"], expected)
