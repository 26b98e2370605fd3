"""Whole cells without a model: cell material by threshold, touching cells split apart.

A per-cell table needs one instance per cell, but cells in SXT samples often touch:
yeast packed in a glass capillary, a pellet of algae. Connected components then
merge neighbours into one "cell". This module finds every cell in a volume with
classical image analysis, so that it works on any reconstruction, calibrated or not,
without training:

1. :func:`cell_material`: cell material is brighter (absorbs more) than the medium
   or ice around it: a global Otsu threshold (:func:`skimage.filters.threshold_otsu`).
   A capillary's glass wall absorbs more still but is thin: bright voxels that a
   binary opening removes (structures at most two voxels thick) are not cell
   material, where they make up most of the bright voxels (lipid bodies, bright but
   thick, are kept); where the wall is most of what lies above the threshold, the threshold is taken
   again without it.
2. :func:`split_cells`: the classic distance-transform watershed (as in the
   scikit-image gallery "Watershed segmentation"): one marker per maximum of the
   smoothed Euclidean distance to the background at least ``min_distance_voxels``
   apart (:func:`skimage.feature.peak_local_max`), flooded over the material
   (:func:`skimage.segmentation.watershed`); instances smaller than
   ``min_voxels`` (fragments at the volume's edge, specks) are dropped.

:func:`find_cells` runs both and returns a segmentation Dataset whose
``instances`` variable :func:`sxtlab.measure.instances` uses to give each cell its
own row. Cells that touch over a wide face with no neck between them can still be
merged, and one strongly elongated cell can be split: check the result in the
viewer and adjust ``min_distance_voxels``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.morphology import ball, opening
from skimage.segmentation import relabel_sequential, watershed

from .volume import DIMS, label_volume, segmentation

__all__ = ["cell_material", "split_cells", "find_cells"]

#: Share of the bright voxels that must be thin for them to be taken as a wall.
THIN_FRACTION = 0.8


def _check(volume: xr.DataArray, what: str) -> None:
    if not isinstance(volume, xr.DataArray) or tuple(volume.dims) != DIMS:
        raise ValueError(f"{what} must be an xarray.DataArray with dims {DIMS}, got "
                         f"{getattr(volume, 'dims', type(volume).__name__)}")


def cell_material(image: xr.DataArray, *, threshold: float | None = None,
                  remove_thin_bright: bool = True) -> xr.DataArray:
    """Voxels of cell material: above a threshold, without a thin bright wall.

    Parameters
    ----------
    image : xarray.DataArray, dims (z, y, x)
        LAC (µm⁻¹) or gray values; cell material absorbs more than its surroundings.
    threshold : float, optional
        In the image's units; default Otsu's threshold of the whole image.
    remove_thin_bright : bool
        Drop a thin bright shell such as a capillary's glass wall (see the module
        notes), with a one-voxel margin for its partial-volume blur.

    Returns
    -------
    xarray.DataArray of bool, dims (z, y, x)
        On the image's grid; attrs ``threshold`` and ``wall_voxels`` (voxels
        removed as a thin bright structure).

    Raises
    ------
    ValueError
        If ``image`` is not a (z, y, x) DataArray or is constant.

    Examples
    --------
    >>> import sxtlab
    >>> ds = sxtlab.data.ncxt_sample_12()  # doctest: +SKIP
    >>> int(cell_material(ds["lac"]).attrs["wall_voxels"]) > 0  # the capillary  # doctest: +SKIP
    True
    """
    _check(image, "image")
    values = np.asarray(image.values, np.float64)
    if values.min() == values.max():
        raise ValueError("the image is constant: there is no cell material to tell from the background")
    t = float(threshold_otsu(values)) if threshold is None else float(threshold)
    fg = values > t
    wall = np.zeros_like(fg)
    if remove_thin_bright and fg.any() and values[fg].min() < values[fg].max():
        bright = fg & (values > threshold_otsu(values[fg]))
        thin = bright & ~opening(bright, ball(1))
        if thin.sum() >= THIN_FRACTION * bright.sum():
            wall = ndimage.binary_dilation(thin, ndimage.generate_binary_structure(3, 1))
            if threshold is None and (wall & fg).sum() >= 0.5 * fg.sum():
                # The wall took the first threshold for itself (it is most of what lies
                # above it) and left the cells below: threshold again without the wall.
                t = float(threshold_otsu(values[~wall]))
                fg = values > t
    material = ndimage.binary_fill_holes(opening(fg & ~wall, ball(1)))
    return xr.DataArray(material, dims=DIMS, coords={d: image[d] for d in DIMS}, name="cell_material",
                        attrs={"threshold": t, "wall_voxels": int(wall.sum()),
                               "voxel_size_um": image.attrs.get("voxel_size_um")})


def split_cells(material: xr.DataArray, *, min_distance_voxels: int = 8, min_voxels: int = 1000,
                smoothing_sigma: float = 1.0) -> xr.DataArray:
    """Split cell material into cells by a distance-transform watershed.

    Parameters
    ----------
    material : xarray.DataArray of bool, dims (z, y, x)
        E.g. from :func:`cell_material`.
    min_distance_voxels : int
        Least distance between two cells' centres (markers), in voxels; about the
        radius of the smallest cell.
    min_voxels : int
        Instances with fewer voxels are dropped (set to 0).
    smoothing_sigma : float
        Gaussian σ (voxels) of the distance map, so that a rough surface does not
        make spurious maxima.

    Returns
    -------
    xarray.DataArray of uint16, dims (z, y, x)
        Cell ids 1..n (0 outside every cell), numbered in the order of their
        markers; attrs ``min_distance_voxels``, ``min_voxels``, ``dropped``
        (instances below ``min_voxels``).

    Raises
    ------
    ValueError
        If ``material`` is not a (z, y, x) DataArray or a parameter is not positive.

    Notes
    -----
    The distance transform uses the voxel size where it is known
    (``voxel_size_um`` attr), so anisotropic voxels do not favour one axis.
    """
    _check(material, "material")
    if min_distance_voxels < 1 or min_voxels < 1 or smoothing_sigma < 0:
        raise ValueError(f"min_distance_voxels and min_voxels must be >= 1 and smoothing_sigma >= 0, got "
                         f"{min_distance_voxels}, {min_voxels}, {smoothing_sigma}")
    mask = np.asarray(material.values, bool)
    vs = material.attrs.get("voxel_size_um")
    distance = ndimage.distance_transform_edt(mask, sampling=vs)
    if smoothing_sigma:
        distance = ndimage.gaussian_filter(distance, smoothing_sigma)
    components, _ = ndimage.label(mask)
    peaks = peak_local_max(distance, min_distance=int(min_distance_voxels), labels=components,
                           exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    ids = watershed(-distance, markers, mask=mask)
    sizes = np.bincount(ids.ravel(), minlength=len(peaks) + 1)
    small = np.flatnonzero(sizes < min_voxels)
    small = small[small > 0]
    ids[np.isin(ids, small)] = 0
    ids, _, _ = relabel_sequential(ids)
    return xr.DataArray(ids.astype(np.uint16), dims=DIMS, coords={d: material[d] for d in DIMS},
                        name="instances", attrs={"min_distance_voxels": int(min_distance_voxels),
                                                 "min_voxels": int(min_voxels), "dropped": int(small.size),
                                                 "voxel_size_um": vs})


def find_cells(image: xr.DataArray, *, threshold: float | None = None, remove_thin_bright: bool = True,
               min_distance_voxels: int = 8, min_voxels: int = 1000) -> xr.Dataset:
    """Every cell of a volume, each its own instance, without a model.

    :func:`cell_material` then :func:`split_cells` (parameters as there).

    Returns
    -------
    xarray.Dataset
        A segmentation: ``lac`` (the image), ``labels`` (uint8, 1 = ``cell``) and
        ``instances`` (uint16 cell ids), which :func:`sxtlab.measure.instances`
        measures one row per cell.

    Examples
    --------
    >>> import sxtlab
    >>> ds = sxtlab.data.ncxt_sample_12(voxel_size=0.1)  # doctest: +SKIP
    >>> table = sxtlab.measure.instances(find_cells(ds["lac"]))  # doctest: +SKIP
    """
    material = cell_material(image, threshold=threshold, remove_thin_bright=remove_thin_bright)
    ids = split_cells(material, min_distance_voxels=min_distance_voxels, min_voxels=min_voxels)
    labels = label_volume((ids.values > 0).astype(np.uint8), image, {1: "cell"})
    seg = segmentation(image, labels, method="sxtlab.cells.find_cells",
                       threshold=material.attrs["threshold"], wall_voxels=material.attrs["wall_voxels"])
    seg["instances"] = ids.assign_coords({d: image[d] for d in DIMS})
    return seg
