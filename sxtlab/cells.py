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

:func:`medium_region` and :func:`calibrate_from_medium` use the same threshold the
other way round: the medium is what lies a few voxels away from every bright voxel
and near the cells, which gives a gray → LAC calibration from the medium's known LAC.

:func:`find_cells` runs both and returns a segmentation Dataset whose
``instances`` variable :func:`sxtlab.measure.instances` uses to give each cell its
own row. Cells that touch over a wide face with no neck between them can still be
merged, and one strongly elongated cell can be split: check the result in the
viewer and adjust ``min_distance_voxels``.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.morphology import ball, opening
from skimage.segmentation import relabel_sequential, watershed

from .calibration import LAC_WATER_PER_UM, Calibration, CalibrationError, estimate_calibration
from .errors import GIVE_CALIBRATION, GIVE_CALIBRATION_SCALE
from .volume import DIMS, label_volume, segmentation

__all__ = ["cell_material", "split_cells", "find_cells", "medium_region", "calibrate_from_medium",
           "describe_fit"]

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


#: Least number of medium voxels a calibration is estimated from.
MIN_MEDIUM_VOXELS = 200
#: Median LAC of cell material that a calibration from the medium may give: above
#: the medium's (times this factor), below 1.0 µm⁻¹, the top of the densest organelles' range
#: (lipid bodies, DESIGN notes): a median of cell material lies far below it.
CELL_LAC_PLAUSIBLE = (1.05, 1.0)
#: Larger images are calibrated on a block-mean downsampled copy (256³ voxels).
MAX_CALIBRATION_VOXELS = 256**3


def medium_region(image: xr.DataArray, *, margin_voxels: int = 2, width_voxels: int = 8,
                  threshold: float | None = None) -> xr.DataArray:
    """Voxels of the medium around the cells: near cell material, away from anything bright.

    Medium voxels lie at least ``margin_voxels`` from every voxel above the
    threshold (cell material, a capillary's wall: their partial-volume blur stays
    out) and at most ``margin_voxels + width_voxels`` from the cell material of
    :func:`cell_material` (so that air outside a capillary, or the far side of an
    ice layer, stays out too).

    Parameters
    ----------
    image : xarray.DataArray, dims (z, y, x)
        LAC or gray values (more absorbing is brighter).
    margin_voxels, width_voxels : int
        The shell around the cells, in voxels.
    threshold : float, optional
        As for :func:`cell_material` (default: Otsu's).

    Returns
    -------
    xarray.DataArray of bool, dims (z, y, x)
        attrs ``threshold``, ``margin_voxels``, ``width_voxels``, ``cell_voxels``.

    Raises
    ------
    ValueError
        If ``image`` is not a (z, y, x) DataArray or is constant, or the shell is
        not ``margin_voxels >= 0``, ``width_voxels >= 1``.

    Examples
    --------
    >>> import numpy as np, sxtlab
    >>> g = np.full((24, 24, 24), 100.0); g[8:16, 8:16, 8:16] = 250.0
    >>> m = medium_region(sxtlab.volume(g, 0.05))
    >>> bool(m.values[8:16, 8:16, 8:16].any()), float(np.median(g[m.values]))
    (False, 100.0)
    """
    _check(image, "image")
    if margin_voxels < 0 or width_voxels < 1:
        raise ValueError(f"margin_voxels must be >= 0 and width_voxels >= 1, got {margin_voxels}, {width_voxels}")
    material = cell_material(image, threshold=threshold)
    t = float(material.attrs["threshold"])
    values = np.asarray(image.values, np.float64)
    cells = np.asarray(material.values, bool)
    away = ndimage.distance_transform_edt(values <= t) > margin_voxels if margin_voxels else values <= t
    near = ndimage.distance_transform_edt(~cells) <= margin_voxels + width_voxels if cells.any() else np.ones_like(cells)
    return xr.DataArray(away & near & ~cells, dims=DIMS, coords={d: image[d] for d in DIMS}, name="medium",
                        attrs={"threshold": t, "margin_voxels": int(margin_voxels),
                               "width_voxels": int(width_voxels), "cell_voxels": int(cells.sum()),
                               "voxel_size_um": image.attrs.get("voxel_size_um")})


def calibrate_from_medium(image: xr.DataArray, medium_lac: float = LAC_WATER_PER_UM, *,
                          scale: float | None = None, offset: float | None = None,
                          medium: xr.DataArray | None = None, **region: int) -> Calibration:
    """A gray → LAC calibration from the medium around the cells, whose LAC is known.

    One region fixes one of the two numbers of ``LAC = scale · gray + offset``:
    by default the offset is 0 and the scale is fitted, which is right for a
    reconstruction of ``-ln(I/I0)`` whose values are LAC in other units (per voxel,
    per nm) or LAC already; with ``scale`` given, the offset is fitted instead (a
    gray image rescaled from LAC with a known factor). With two regions of known LAC,
    use :func:`sxtlab.estimate_calibration`.

    Parameters
    ----------
    image : xarray.DataArray, dims (z, y, x)
        Gray values, as read (``units`` ``"gray"``).
    medium_lac : float
        LAC of the medium, µm⁻¹: water at 517 eV, 0.111, by default; vitreous ice
        is 0.105 (:data:`sxtlab.calibration.LAC_ICE_PER_UM`).
    scale, offset : float, optional
        The known one of the two (default ``offset=0``); not both.
    medium : xarray.DataArray of bool, optional
        The medium's voxels; default :func:`medium_region` of the image (of a
        block-mean downsampled copy where it has more than
        :data:`MAX_CALIBRATION_VOXELS`).
    **region
        ``margin_voxels``, ``width_voxels``, ``threshold`` of :func:`medium_region`.

    Returns
    -------
    Calibration
        ``fit`` holds the method, the medium's voxel count, median gray and MAD,
        the shell used, and ``cell_lac_median_per_um``: the median LAC the
        calibration gives the cell material, a check on the result (cytoplasm is
        about 0.2–0.3 µm⁻¹).

    Raises
    ------
    CalibrationError
        If fewer than :data:`MIN_MEDIUM_VOXELS` medium voxels are found (no medium
        around the cells in the volume), if the medium's median gray value is 0 with
        ``offset`` known, or if with ``offset`` known the cell material's median
        LAC comes out implausible (:data:`CELL_LAC_PLAUSIBLE`): the gray values are
        then not proportional to LAC, and the scale must be given.

    Examples
    --------
    >>> import numpy as np, sxtlab
    >>> g = np.full((24, 24, 24), 50.0); g[8:16, 8:16, 8:16] = 125.0  # LAC × 450
    >>> cal = calibrate_from_medium(sxtlab.volume(g, 0.05), 0.111)
    >>> round(cal.scale * 450, 3), round(cal.fit["cell_lac_median_per_um"], 4)
    (0.999, 0.2775)
    """
    _check(image, "image")
    if scale is not None and offset is not None:
        raise CalibrationError("calibrate_from_medium: give scale or offset, not both (both known: "
                               "sxtlab.Calibration(scale, offset) needs no estimate)")
    if scale is None and offset is None:
        offset = 0.0
    if medium is None and image.size > MAX_CALIBRATION_VOXELS:
        # Medians of large regions barely change with a block mean, while the distance
        # transforms of medium_region on a whole 1000³ volume would need gigabytes.
        factor = math.ceil((image.size / MAX_CALIBRATION_VOXELS) ** (1 / 3))
        image = image.sxt.downsample(factor).load()
    else:
        factor = 1
    mask = medium_region(image, **region) if medium is None else medium
    found = int(np.asarray(mask.values if isinstance(mask, xr.DataArray) else mask, bool).sum())
    src = image.attrs.get("source") or image.name or "the image"
    if found < MIN_MEDIUM_VOXELS:
        raise CalibrationError(
            f"{src}: found {found} voxels of medium around the cells, fewer than {MIN_MEDIUM_VOXELS}; "
            f"the volume shows too little medium to calibrate on: give the calibration ({GIVE_CALIBRATION[0]})",
            remedies=[GIVE_CALIBRATION])
    values = np.asarray(image.values, np.float64)
    cal = estimate_calibration(values, np.asarray(mask.values if isinstance(mask, xr.DataArray) else mask, bool),
                               medium_lac, scale=scale, offset=offset)
    fit = dict(cal.fit, downsampled_by=factor)
    if isinstance(mask, xr.DataArray):
        fit.update({k: mask.attrs[k] for k in ("threshold", "margin_voxels", "width_voxels") if k in mask.attrs})
    cells = values > fit.get("threshold", np.inf)
    if cells.any():
        cell_lac = float(cal.apply(np.median(values[cells])))
        fit["cell_lac_median_per_um"] = cell_lac
        lo, hi = CELL_LAC_PLAUSIBLE
        if offset is not None and not lo * medium_lac < cell_lac < hi:
            # One region cannot tell a wrong offset from a wrong scale; the cells can.
            raise CalibrationError(
                f"{src}: with offset {offset:g} the medium (median gray {fit['medium_gray_median']:.4g}) "
                f"set to {medium_lac:g} µm⁻¹ makes the cell material's median {cell_lac:.4g} µm⁻¹, outside "
                f"{lo:g}× the medium … {hi:g} µm⁻¹ that cells have: the gray values are not proportional "
                f"to LAC (the medium shifted, e.g. to 0); give the scale, {GIVE_CALIBRATION_SCALE[0]}, so "
                "that the medium fixes the offset", remedies=[GIVE_CALIBRATION_SCALE])
    return Calibration(cal.scale, cal.offset, fit)


def describe_fit(cal: Calibration) -> str:
    """One line on how a calibration was fitted (for logs and the command line).

    Examples
    --------
    >>> print(describe_fit(Calibration(0.002, 0.0, {"method": "medium and given offset",
    ...     "medium_voxels": 900, "medium_gray_median": 55.5, "medium_gray_mad": 1.5,
    ...     "medium_lac_per_um": 0.111, "cell_lac_median_per_um": 0.25})))
    LAC = 0.002·gray + 0 µm⁻¹ (medium and given offset: 900 medium voxels, median gray 55.5 ± 1.5 (MAD) set to 0.111 µm⁻¹; cell material's median then 0.25 µm⁻¹)
    """
    f = cal.fit
    text = f"LAC = {cal.scale:.6g}·gray + {cal.offset:.6g} µm⁻¹"
    if "medium_voxels" in f:
        text += (f" ({f.get('method', 'fit')}: {f['medium_voxels']} medium voxels, median gray "
                 f"{f['medium_gray_median']:.6g} ± {f['medium_gray_mad']:.3g} (MAD) set to "
                 f"{f['medium_lac_per_um']:.4g} µm⁻¹")
        if "cell_lac_median_per_um" in f:
            text += f"; cell material's median then {f['cell_lac_median_per_um']:.3g} µm⁻¹"
        text += ")"
    return text
