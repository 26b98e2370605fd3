"""Test volumes shared by the reader and writer tests of every format."""

from __future__ import annotations

import numpy as np
import xarray as xr

import sxtlab
from sxtlab import Calibration


def image(shape=(6, 7, 8), voxel_size=(0.05, 0.032, 0.0251), origin=(0.3, -0.2, 1.23456789),
          dtype=np.float32, seed=0) -> xr.DataArray:
    """A calibrated gray volume with anisotropic voxels and an origin off zero."""
    rng = np.random.default_rng(seed)
    data = rng.normal(300, 40, size=shape).astype(dtype)
    return sxtlab.volume(data, voxel_size, calibration=Calibration(1.234567e-3, -0.0987654321),
                         origin_um=origin, cell_id="cell 7", name="raw")
