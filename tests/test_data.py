"""The shipped sample data reads without ../shared."""

import numpy as np
import pytest

import sxtlab
from sxtlab import SxtlabWarning


def test_ncxt_sample_12_ships_and_reads():
    with pytest.warns(SxtlabWarning, match="voxel size unknown"):
        ds = sxtlab.data.ncxt_sample_12()
    assert ds["lac"].shape == (58, 61, 58)
    assert ds["lac"].attrs["units"] == "gray"
    assert ds["labels"].sxt.classes == {1: "cell"}
    values, counts = np.unique(ds["labels"].values, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {0: 51364, 1: 5120, 255: 148720}
    assert not ds["lac"].sxt.has_voxel_size


def test_ncxt_sample_12_with_voxel_size():
    ds = sxtlab.data.ncxt_sample_12(voxel_size=0.1)
    assert ds["lac"].sxt.voxel_size == (0.1, 0.1, 0.1)
    assert ds["labels"].sxt.voxel_size == (0.1, 0.1, 0.1)
