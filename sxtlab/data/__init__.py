"""Sample data shipped with sxtlab (like :mod:`skimage.data`).

Only one real file set ships: the NCXT ``sample_12`` Amira project (about 1 MB; see
``sxtlab/data/ncxt_sample_12/NOTICE.md`` for its source and MIT licence). Synthetic
cells come from :mod:`sxtlab.phantom`, which generates them.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import xarray as xr

__all__ = ["ncxt_sample_12_path", "ncxt_sample_12"]


def ncxt_sample_12_path() -> Path:
    """Path of the shipped ``sample_12.hx`` Amira project."""
    return Path(str(files(__name__) / "ncxt_sample_12" / "sample_12.hx"))


def ncxt_sample_12(voxel_size=None) -> xr.Dataset:
    """A real SXT reconstruction with a sparse annotation of one cell.

    Cells in a glass capillary, downsampled to 58 × 61 × 58 voxels (z, y, x). The
    annotator marked one cell as ``cell`` and its neighbours as background
    (``void``) on a grid of planes; every other voxel is unannotated (255).

    Parameters
    ----------
    voxel_size : float or (dz, dy, dx), optional
        Voxel size in µm. The file records none (its bounding box counts voxels),
        so without it the volume's voxel size is unknown and a warning says so.

    Returns
    -------
    xarray.Dataset
        ``lac`` (float32 gray values, uncalibrated: ``units == "gray"``) and
        ``labels`` (uint8: 0 background, 1 cell, 255 unannotated).

    Examples
    --------
    >>> ds = ncxt_sample_12(voxel_size=0.1)  # doctest: +SKIP
    >>> ds.labels.sxt.classes  # doctest: +SKIP
    {1: 'cell'}
    """
    from ..io import read_project

    return read_project(ncxt_sample_12_path(), voxel_size=voxel_size)
