"""Gray value → linear absorption coefficient (LAC) calibration.

A reconstruction stores gray values ``g``; the LAC (µm⁻¹) is the affine map
``LAC = scale · g + offset``. Reconstruction software rarely records the map, so
SXT practice is to calibrate on regions of known LAC: the medium around the cell
(water/ice ≈ 0.105–0.111 µm⁻¹ at 517 eV, Henke et al. 1993) and, where present, a
reference material of known LAC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import SxtlabError

__all__ = ["Calibration", "CalibrationError", "estimate_calibration", "LAC_WATER_PER_UM",
           "LAC_ICE_PER_UM"]

#: LAC of water at 517 eV, µm⁻¹ (Henke et al. 1993, via the CXRO tables).
LAC_WATER_PER_UM = 0.111
#: LAC of vitreous ice at 517 eV, µm⁻¹ (Henke et al. 1993, via the CXRO tables).
LAC_ICE_PER_UM = 0.105


class CalibrationError(SxtlabError, ValueError):
    """A calibration cannot be applied or estimated from the given input."""


@dataclass(frozen=True)
class Calibration:
    """Affine gray → LAC map, ``LAC = scale · gray + offset`` (µm⁻¹).

    Attributes
    ----------
    scale : float
        µm⁻¹ per gray unit; must be finite and non-zero.
    offset : float
        µm⁻¹.
    fit : dict
        How the calibration was obtained (reference values, residuals); free form,
        JSON-serialisable.

    Examples
    --------
    >>> Calibration(scale=1e-3, offset=0.0).apply(np.array([100.0]))
    array([0.1])
    """

    scale: float
    offset: float = 0.0
    fit: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not (np.isfinite(self.scale) and self.scale != 0):
            raise CalibrationError(f"calibration scale must be finite and non-zero, got {self.scale!r}")
        if not np.isfinite(self.offset):
            raise CalibrationError(f"calibration offset must be finite, got {self.offset!r}")

    def apply(self, gray):
        """Map gray values (any array, NumPy or dask) to LAC in µm⁻¹."""
        return gray * self.scale + self.offset

    def invert(self, lac):
        """Map LAC values (µm⁻¹) back to gray values."""
        return (lac - self.offset) / self.scale

    def to_attrs(self) -> dict[str, float]:
        """The volume attrs (``lac_scale``, ``lac_offset``) that record this calibration."""
        return {"lac_scale": float(self.scale), "lac_offset": float(self.offset)}

    @classmethod
    def from_attrs(cls, attrs: dict) -> "Calibration | None":
        """The calibration recorded in a volume's attrs, or ``None`` if there is none."""
        if attrs.get("lac_scale") is None:
            return None
        return cls(float(attrs["lac_scale"]), float(attrs.get("lac_offset", 0.0)))


def _region_values(image: np.ndarray, region, what: str) -> np.ndarray:
    mask = np.asarray(region)
    if mask.dtype != bool:
        raise CalibrationError(f"{what} must be a boolean mask, got dtype {mask.dtype}")
    if mask.shape != image.shape:
        raise CalibrationError(f"{what} has shape {mask.shape}, the image has {image.shape}")
    values = image[mask]
    if values.size == 0:
        raise CalibrationError(f"{what} is empty: it selects no voxel of the image")
    return values.astype(np.float64)


def estimate_calibration(
    image,
    medium,
    medium_lac: float = LAC_WATER_PER_UM,
    *,
    reference=None,
    reference_lac: float | None = None,
    scale: float | None = None,
    offset: float | None = None,
) -> Calibration:
    """Estimate a gray → LAC calibration from reference regions of known LAC.

    With two regions (the medium and a reference material) both ``scale`` and
    ``offset`` are solved from their median gray values. With the medium alone, one
    of the two must be known: given the ``scale`` (e.g. from the reconstruction's
    known pixel size and normalisation) the offset is estimated; given the
    ``offset`` (``0`` for a reconstruction of ``-ln(I/I0)`` whose values are
    proportional to LAC, e.g. LAC per voxel or in other length units) the scale is.

    Parameters
    ----------
    image : array_like or xarray.DataArray, shape (z, y, x)
        Gray values.
    medium : array_like of bool, shape (z, y, x)
        Voxels of the surrounding medium.
    medium_lac : float
        LAC of the medium, µm⁻¹ (default: water at 517 eV, 0.111).
    reference, reference_lac : array_like of bool and float, optional
        A second region and its LAC (µm⁻¹).
    scale : float, optional
        µm⁻¹ per gray unit; the medium then fixes the offset.
    offset : float, optional
        µm⁻¹; the medium then fixes the scale. Without a reference region, give
        ``scale`` or ``offset`` (not both).

    Returns
    -------
    Calibration
        With ``fit`` reporting the median and robust spread (MAD) of each region and
        the residual of the medium's LAC after calibration.

    Raises
    ------
    CalibrationError
        If the regions are empty or of the wrong shape, if both regions have the
        same gray value, if neither a reference nor a scale or offset is given, or
        if an offset is given and the medium's median gray value is 0.

    Examples
    --------
    >>> gray = np.full((4, 4, 4), 100.0); gray[2:] = 500.0
    >>> medium = np.zeros(gray.shape, bool); medium[:2] = True
    >>> cal = estimate_calibration(gray, medium, 0.1, reference=~medium, reference_lac=0.5)
    >>> round(cal.scale, 6), round(cal.offset, 6)
    (0.001, 0.0)
    """
    data = np.asarray(image, dtype=np.float64)
    g_med = _region_values(data, medium, "medium region")
    med = float(np.median(g_med))
    fit: dict[str, Any] = {
        "medium_gray_median": med,
        "medium_gray_mad": float(np.median(np.abs(g_med - med))),
        "medium_lac_per_um": float(medium_lac),
        "medium_voxels": int(g_med.size),
    }
    if reference is not None:
        if reference_lac is None:
            raise CalibrationError("a reference region needs its reference_lac (µm⁻¹)")
        g_ref = _region_values(data, reference, "reference region")
        ref = float(np.median(g_ref))
        if np.isclose(ref, med):
            raise CalibrationError(
                f"medium and reference regions have the same median gray value ({med:g}); "
                "they cannot define a scale"
            )
        fitted_scale = (reference_lac - medium_lac) / (ref - med)
        fit.update(
            method="two regions",
            reference_gray_median=ref,
            reference_gray_mad=float(np.median(np.abs(g_ref - ref))),
            reference_lac_per_um=float(reference_lac),
            reference_voxels=int(g_ref.size),
        )
    elif scale is not None and offset is not None:
        raise CalibrationError("with the medium alone give scale or offset, not both (both known: "
                               "sxtlab.Calibration(scale, offset) needs no estimate)")
    elif scale is not None:
        fitted_scale = float(scale)
        fit.update(method="medium and given scale")
    elif offset is not None:
        if med == 0:
            raise CalibrationError(
                f"the medium's median gray value is 0, so no scale maps it to {medium_lac:g} µm⁻¹ with "
                f"offset {offset:g}; give the scale instead (the offset is then estimated)")
        fitted_scale = (medium_lac - float(offset)) / med
        fit.update(method="medium and given offset")
    else:
        raise CalibrationError(
            "give either a reference region with its reference_lac, or the scale (µm⁻¹ per gray unit) "
            "or the offset (µm⁻¹) of the calibration"
        )
    # A given offset stays exactly as given (not recomputed with rounding error).
    fitted_offset = float(offset) if offset is not None and scale is None and reference is None \
        else medium_lac - fitted_scale * med
    cal = Calibration(float(fitted_scale), float(fitted_offset), fit)
    fit["medium_lac_residual_per_um"] = float(np.mean(cal.apply(g_med)) - medium_lac)
    return cal
