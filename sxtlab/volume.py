"""Volumes that know their physics: xarray objects with voxel size and calibration.

A *volume* is an :class:`xarray.DataArray` with dims ``("z", "y", "x")`` whose
coordinates are voxel centres in µm and whose attrs carry

``voxel_size_um``
    ``[dz, dy, dx]`` in µm (anisotropic allowed), or ``None`` when unknown (then the
    coordinates are voxel indices with units ``"voxel"``);
``units``
    ``"1/um"`` for LAC, ``"gray"`` for uncalibrated values, ``"label"`` for labels;
``lac_scale``, ``lac_offset``
    the gray → LAC calibration, ``LAC = lac_scale · gray + lac_offset`` (optional);
``source``, ``cell_id``
    where the data came from.

A *label volume* has integer values and a ``classes`` attr ``{"1": "nucleus", ...}``
(see :mod:`sxtlab.classes`). A *segmentation* is an :class:`xarray.Dataset` with a
``lac`` image, ``labels`` and optionally ``probabilities`` (dims ``class, z, y, x``).

All verbs live on the ``.sxt`` accessor and keep the attrs::

    >>> import numpy as np, sxtlab
    >>> v = sxtlab.volume(np.zeros((4, 6, 8), np.float32), voxel_size=(0.05, 0.03, 0.03))
    >>> v.sxt.downsample(2).sxt.voxel_size
    (0.1, 0.06, 0.06)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .calibration import Calibration
from .classes import UNANNOTATED, class_map
from .errors import GIVE_CALIBRATION, GIVE_VOXEL_SIZE, FormatError, VoxelSizeUnknownError

__all__ = [
    "DIMS",
    "volume",
    "label_volume",
    "segmentation",
    "check_voxel_size",
    "check_finite",
    "check_instance_ids",
    "check_same_grid",
    "SxtAccessor",
]

DIMS = ("z", "y", "x")
VoxelSize = float | Sequence[float]


def check_voxel_size(voxel_size: VoxelSize | str | None, *, where: str = "voxel_size",
                     partial: bool = False) -> tuple[float, float, float] | None:
    """Parse and validate a voxel size; return it as ``(dz, dy, dx)`` floats in µm.

    The one parser of voxel sizes: the readers' ``voxel_size=``, the command line's
    ``--voxel-size`` and every other entry point go through it, so they accept and
    refuse the same things with the same words.

    Parameters
    ----------
    voxel_size : float, str, sequence of 1 or 3, or None
        One value (isotropic voxels) or three ``(dz, dy, dx)``, in µm; a string
        ``"D"``, ``"DZ,DY,DX"`` or ``"DZxDYxDX"`` as typed on a command line.
        ``None`` means unknown and is returned as is.
    where : str
        What gave the value (a file and header field, ``--voxel-size``), quoted at
        the start of messages.
    partial : bool
        Allow ``None`` for single axes of three (kept unknown, e.g. "keep the file's
        y and x"); they are returned as ``None``.

    Returns
    -------
    tuple of 3 float, or None

    Raises
    ------
    FormatError
        If it is not one or three numbers, or a number is not finite and positive.

    Examples
    --------
    >>> check_voxel_size("0.05,0.032,0.032")
    (0.05, 0.032, 0.032)
    >>> check_voxel_size((0.032,))
    (0.032, 0.032, 0.032)
    """
    if voxel_size is None:
        return None
    if isinstance(voxel_size, str):
        items: list = [v.strip() for v in voxel_size.lower().replace("x", ",").split(",")]
    else:
        items = [v.item() if isinstance(v, np.generic) else v for v in np.ravel(np.asarray(voxel_size, object))]
    if len(items) == 1:
        items = items * 3
    if len(items) != 3:
        raise FormatError(f"{where}: expected one value or three (dz, dy, dx) in µm, got {voxel_size!r}")
    values: list[float | None] = []
    for item in items:
        if item is None and partial:
            values.append(None)
            continue
        try:
            values.append(float(item))
        except (TypeError, ValueError):
            raise FormatError(f"{where}: expected one number or three (dz, dy, dx) in µm, got {voxel_size!r}"
                              ) from None
    known = np.array([v for v in values if v is not None], float)
    if not np.all(np.isfinite(known)) or np.any(known <= 0):
        raise FormatError(f"{where}: voxel size must be finite and positive (µm), got (dz, dy, dx) = "
                          f"({', '.join('?' if v is None else f'{v:g}' for v in values)})")
    return tuple(values)  # type: ignore[return-value]


def check_finite(data, *, where: str = "volume") -> None:
    """Raise if a NumPy array holds NaN or inf, saying how many and where the first is.

    Dask arrays are not checked (that would read them whole); readers check chunks.
    """
    if not isinstance(data, np.ndarray) or not np.issubdtype(data.dtype, np.floating):
        return
    bad = ~np.isfinite(data)
    n = int(bad.sum())
    if n:
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        n_nan = int(np.isnan(data).sum())
        raise FormatError(
            f"{where}: {n} non-finite values ({n_nan} NaN, {n - n_nan} inf) of {data.size}; "
            f"the first at (z, y, x) = {first}"
        )


def _coords(shape, voxel_size, origin) -> dict[str, xr.Variable]:
    if voxel_size is None:
        return {
            d: xr.Variable(d, np.arange(n, dtype=float), {"units": "voxel"})
            for d, n in zip(DIMS, shape)
        }
    return {
        d: xr.Variable(d, o + s * np.arange(n, dtype=float), {"units": "um"})
        for d, n, s, o in zip(DIMS, shape, voxel_size, origin)
    }


def _check_3d(data, where: str) -> None:
    if getattr(data, "ndim", None) != 3:
        raise FormatError(
            f"{where}: expected a 3-D (z, y, x) array, got {getattr(data, 'ndim', '?')}-D "
            f"with shape {tuple(getattr(data, 'shape', ()))}"
        )


def volume(
    data,
    voxel_size: VoxelSize | None,
    *,
    calibration: Calibration | None = None,
    units: str | None = None,
    origin_um: Sequence[float] = (0.0, 0.0, 0.0),
    name: str = "lac",
    source: str | None = None,
    cell_id: str | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """Build an image volume from an array and its voxel size.

    Parameters
    ----------
    data : numpy.ndarray or dask.array.Array, shape (z, y, x)
        Gray or LAC values.
    voxel_size : float or (dz, dy, dx) or None
        Voxel size in µm; ``None`` when unknown (coords are then voxel indices).
    calibration : Calibration, optional
        The gray → LAC map of ``data``; recorded in attrs, not applied
        (use ``.sxt.to_lac()``).
    units : {"1/um", "gray"}, optional
        Units of ``data``; default ``"gray"`` when a calibration is given, else ``"1/um"``.
    origin_um : (z0, y0, x0)
        Centre of voxel ``(0, 0, 0)`` in µm.
    name, source, cell_id : str
        Recorded on the DataArray.
    attrs : mapping, optional
        Extra attrs (JSON-serialisable).

    Returns
    -------
    xarray.DataArray
        dims ``(z, y, x)``, coords in µm (voxel centres).

    Raises
    ------
    FormatError
        If ``data`` is not 3-D, holds NaN/inf (NumPy input), or the voxel size is
        not positive and finite.
    """
    where = f"volume {source!r}" if source else "volume"
    _check_3d(data, where)
    vs = check_voxel_size(voxel_size, where=f"{where}: voxel size")
    if isinstance(data, np.ndarray) and not np.issubdtype(data.dtype, np.number):
        raise FormatError(f"{where}: expected numeric values, got dtype {data.dtype}")
    check_finite(data, where=where)
    if units is None:
        units = "gray" if calibration is not None else "1/um"
    if units not in ("1/um", "gray"):
        raise FormatError(f"{where}: units must be '1/um' (LAC) or 'gray', got {units!r}")
    a: dict[str, Any] = {
        "long_name": "LAC" if units == "1/um" else "gray value",
        "units": units,
        "voxel_size_um": list(vs) if vs is not None else None,
    }
    if calibration is not None:
        a.update(calibration.to_attrs())
    if source is not None:
        a["source"] = str(source)
    if cell_id is not None:
        a["cell_id"] = str(cell_id)
    a.update(attrs or {})
    return xr.DataArray(data, dims=DIMS, coords=_coords(data.shape, vs, origin_um), name=name, attrs=a)


def label_volume(data, like: xr.DataArray, classes: Mapping, *, name: str = "labels",
                 attrs: Mapping[str, Any] | None = None) -> xr.DataArray:
    """Build a label volume on the grid of an image volume.

    Parameters
    ----------
    data : integer array, shape (z, y, x)
        Label values: 0 background, :data:`~sxtlab.classes.UNANNOTATED` (255) for
        voxels nobody annotated, others as in ``classes``.
    like : xarray.DataArray
        The image whose coords and voxel size the labels share.
    classes : mapping
        ``{value: class name}``; names may be synonyms and are stored canonical.

    Raises
    ------
    FormatError
        If the shape differs from ``like`` or the values are not integers.
    sxtlab.classes.UnknownClassError
        If a class name is not in the vocabulary.
    """
    _check_3d(data, "labels")
    if tuple(data.shape) != tuple(like.shape):
        raise FormatError(f"labels have shape {tuple(data.shape)}, their image has {tuple(like.shape)}")
    if not np.issubdtype(data.dtype, np.integer):
        raise FormatError(f"labels must be integers, got dtype {data.dtype}")
    cmap = class_map(classes)
    a = {
        "long_name": "class label",
        "units": "label",
        "voxel_size_um": like.attrs.get("voxel_size_um"),
        "classes": {str(k): v for k, v in sorted(cmap.items())},
        "unannotated_value": UNANNOTATED,
    }
    for key in ("source", "cell_id"):
        if key in like.attrs:
            a[key] = like.attrs[key]
    a.update(attrs or {})
    return xr.DataArray(data, dims=DIMS, coords=like.coords, name=name, attrs=a)


def check_same_grid(a: xr.DataArray, b: xr.DataArray, what: str = "labels", reference: str = "the image") -> None:
    """Raise :class:`FormatError` unless ``b`` (named ``what``) lies on the same voxel
    grid as ``a`` (named ``reference``): the same shape, dims in the same order, voxel
    size and, where both carry them, coordinates."""
    if tuple(a.shape) != tuple(b.shape):
        raise FormatError(f"{what} have shape {tuple(b.shape)}, {reference} has {tuple(a.shape)}")
    # a transposed volume of the same shape would otherwise pass: its coordinates
    # compare equal name by name while its values lie along other axes
    if tuple(a.dims) != tuple(b.dims):
        raise FormatError(f"{what} have dims {tuple(b.dims)}, {reference} has {tuple(a.dims)}")
    va, vb = a.attrs.get("voxel_size_um"), b.attrs.get("voxel_size_um")
    if va is not None and vb is not None and not np.allclose(va, vb, rtol=1e-6):
        raise FormatError(f"{what} have voxel size {vb} µm, {reference} has {va} µm")
    for d in a.dims:
        if d in a.coords and d in b.coords and not np.allclose(a[d].values, b[d].values, atol=1e-9):
            raise FormatError(f"{what} coordinates along {d!r} differ from {reference}'s: the two lie on "
                              f"different grids along {d!r} (starting at {b[d].values[0]:g} and {a[d].values[0]:g})")


def check_instance_ids(instances: xr.DataArray, where: str = "") -> None:
    """Raise :class:`FormatError` unless ``instances`` are integer ids with dims (z, y, x).

    The ``instances`` variable of a segmentation (e.g. touching cells split by
    :func:`sxtlab.cells.split_cells`); ``where`` prefixes the message.
    """
    if tuple(instances.dims) != DIMS or not np.issubdtype(instances.dtype, np.integer):
        raise FormatError(f"{where}{': ' if where else ''}'instances' must be integer ids with dims {DIMS}, "
                          f"got dims {tuple(instances.dims)} and dtype {instances.dtype}")


def segmentation(image: xr.DataArray, labels: xr.DataArray | None = None,
                 probabilities: xr.DataArray | None = None, **attrs: Any) -> xr.Dataset:
    """Bundle an image, its labels and class probabilities into a segmentation Dataset.

    Returns
    -------
    xarray.Dataset
        Variables ``lac`` (z, y, x), ``labels`` (z, y, x) and, if given,
        ``probabilities`` (class, z, y, x); ``attrs`` become the Dataset's attrs.

    Raises
    ------
    FormatError
        If the labels or probabilities do not share the image's grid.
    """
    data = {"lac": image.rename("lac")}
    if labels is not None:
        check_same_grid(image, labels)
        if "classes" not in labels.attrs:
            raise FormatError("labels have no 'classes' attr naming their values")
        data["labels"] = labels.rename("labels").assign_coords(image.coords)
    if probabilities is not None:
        check_same_grid(image, probabilities.isel({"class": 0}, drop=True), "probabilities")
        data["probabilities"] = probabilities.assign_coords({d: image[d] for d in DIMS})
    return xr.Dataset(data, attrs=dict(attrs))


def int_triple(value: int | Sequence[int], what: str) -> tuple[int, int, int]:
    """``(z, y, x)`` positive integers from one or three values; ``what`` names them in errors."""
    f = np.atleast_1d(np.asarray(value)).ravel()
    if f.size == 1:
        f = np.repeat(f, 3)
    if f.size != 3 or not np.all(f == np.round(f)) or np.any(f < 1):
        raise ValueError(f"{what} must be 1 or 3 positive integers (z, y, x), got {value!r}")
    return tuple(int(v) for v in f)  # type: ignore[return-value]


def _block_mode(labels: xr.DataArray, factors: dict[str, int]) -> xr.DataArray:
    """Most frequent label per block (ties go to the lower value)."""
    values = np.unique(np.asarray(labels))
    counts = xr.concat(
        [(labels == v).coarsen(factors, boundary="trim").sum() for v in values], dim="value"
    )
    mode = counts.argmax("value")
    return xr.DataArray(values[mode.values].astype(labels.dtype), dims=DIMS, coords=mode.coords)


@xr.register_dataarray_accessor("sxt")
class SxtAccessor:
    """Volume verbs on any DataArray built by :func:`volume` or :func:`label_volume`.

    The accessor keeps no state (xarray caches it per object); every verb returns a
    new DataArray with updated attrs.
    """

    def __init__(self, obj: xr.DataArray) -> None:
        self._obj = obj

    # -- properties -----------------------------------------------------------------
    @property
    def has_voxel_size(self) -> bool:
        """Whether the voxel size is known."""
        return self._obj.attrs.get("voxel_size_um") is not None

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel size ``(dz, dy, dx)`` in µm.

        Raises
        ------
        VoxelSizeUnknownError
            If the volume's voxel size is unknown (give one with ``with_voxel_size``).
        """
        vs = self._obj.attrs.get("voxel_size_um")
        if vs is None:
            src = self._obj.attrs.get("source", "this volume")
            raise VoxelSizeUnknownError(
                f"the voxel size of {src} is unknown; give it with `.sxt.with_voxel_size((dz, dy, dx))` in µm "
                f"(or {GIVE_VOXEL_SIZE[0]} when reading)", remedies=[GIVE_VOXEL_SIZE])
        return tuple(float(v) for v in vs)  # type: ignore[return-value]

    @property
    def voxel_volume_um3(self) -> float:
        """Volume of one voxel, dz·dy·dx in µm³."""
        dz, dy, dx = self.voxel_size
        return dz * dy * dx

    @property
    def is_labels(self) -> bool:
        """Whether this is a label volume (it has a ``classes`` attr)."""
        return "classes" in self._obj.attrs

    @property
    def classes(self) -> dict[int, str]:
        """``{label value: canonical class name}`` of a label volume."""
        if not self.is_labels:
            raise FormatError(f"{self._obj.name!r} is not a label volume: it has no 'classes' attr")
        return class_map(self._obj.attrs["classes"])

    @property
    def calibration(self) -> Calibration | None:
        """The recorded gray → LAC calibration, or ``None``."""
        return Calibration.from_attrs(self._obj.attrs)

    @property
    def origin_um(self) -> tuple[float, float, float]:
        """Centre of the first voxel in µm (0 where the voxel size is unknown)."""
        if not self.has_voxel_size:
            return (0.0, 0.0, 0.0)
        return tuple(float(self._obj[d].values[0]) if self._obj.sizes[d] else 0.0 for d in DIMS)  # type: ignore[return-value]

    # -- verbs ----------------------------------------------------------------------
    def with_voxel_size(self, voxel_size: VoxelSize, origin_um: Sequence[float] | None = None) -> xr.DataArray:
        """Set (or replace) the voxel size in µm; coords are recomputed."""
        vs = check_voxel_size(voxel_size)
        origin = origin_um if origin_um is not None else (
            self.origin_um if self.has_voxel_size else (0.0, 0.0, 0.0))
        out = self._obj.assign_coords(_coords(self._obj.shape, vs, origin))
        out.attrs = {**self._obj.attrs, "voxel_size_um": list(vs)}
        return out

    def with_calibration(self, calibration: Calibration) -> xr.DataArray:
        """Record a gray → LAC calibration on an uncalibrated (gray) volume."""
        if self._obj.attrs.get("units") != "gray":
            raise FormatError(
                f"a calibration maps gray values; this volume's units are {self._obj.attrs.get('units')!r}"
            )
        out = self._obj.copy(deep=False)
        out.attrs = {**self._obj.attrs, **calibration.to_attrs()}
        return out

    def to_lac(self, calibration: Calibration | None = None) -> xr.DataArray:
        """Convert gray values to LAC (µm⁻¹) with ``LAC = scale · gray + offset``.

        Uses ``calibration`` if given, else the one recorded in attrs. A volume
        already in LAC is returned unchanged.

        Raises
        ------
        sxtlab.calibration.CalibrationError
            If the volume is gray and no calibration is given or recorded.
        """
        from .calibration import CalibrationError

        obj = self._obj
        if obj.attrs.get("units") == "1/um":
            return obj
        cal = calibration or self.calibration
        if cal is None:
            raise CalibrationError(
                f"{obj.attrs.get('source', 'this volume')} holds gray values and has no calibration; "
                f"give one ({GIVE_CALIBRATION[0]})", remedies=[GIVE_CALIBRATION])
        out = cal.apply(obj.astype(np.float32)).astype(np.float32)
        out.attrs = {**obj.attrs, **cal.to_attrs(), "units": "1/um", "long_name": "LAC"}
        out.name = obj.name
        return out

    def crop(self, **bounds: tuple[float | None, float | None]) -> xr.DataArray:
        """Crop to physical bounds in µm (inclusive, on voxel centres); coords stay true.

        Examples
        --------
        >>> v.sxt.crop(z=(0.0, 1.0), x=(None, 2.5))  # doctest: +SKIP
        """
        unknown = set(bounds) - set(DIMS)
        if unknown:
            raise ValueError(f"crop takes bounds for {DIMS}, got {sorted(unknown)}")
        out = self._obj.sel({d: slice(*b) for d, b in bounds.items()})
        if 0 in out.shape:
            raise ValueError(f"crop {bounds} selects no voxel (extent: {self.extent_um()})")
        return out

    def extent_um(self) -> dict[str, tuple[float, float]]:
        """First and last voxel centre along each axis (µm, or voxels when unknown)."""
        return {d: (float(self._obj[d].values[0]), float(self._obj[d].values[-1])) for d in DIMS}

    def downsample(self, factor: int | Sequence[int]) -> xr.DataArray:
        """Downsample by an integer factor per axis (block mean; block mode for labels).

        A trailing remainder that does not fill a block is dropped. The new coords
        are the centres of the blocks and the voxel size is multiplied by the factor.
        """
        f = int_triple(factor, "downsampling factor")
        obj = self._obj
        factors = dict(zip(DIMS, f))
        if self.is_labels:
            out = _block_mode(obj, factors)
        else:
            out = obj.coarsen(factors, boundary="trim").mean().astype(obj.dtype)
        out.attrs = dict(obj.attrs)
        out.name = obj.name
        if self.has_voxel_size:
            out.attrs["voxel_size_um"] = [v * k for v, k in zip(self.voxel_size, f)]
        else:
            # coords are block centres in input voxels; keep them as voxel indices of the output
            out = out.assign_coords(_coords(out.shape, None, None))
        return out

    def resample(self, voxel_size: VoxelSize, *, order: int | None = None) -> xr.DataArray:
        """Resample to another voxel size (µm) keeping the physical extent.

        Uses :func:`scipy.ndimage.zoom` (``grid_mode=True`` so that voxel edges, not
        centres, stay aligned). Images use linear interpolation, labels nearest.
        The data are loaded into memory.
        """
        from scipy import ndimage

        new = check_voxel_size(voxel_size)
        old = self.voxel_size
        obj = self._obj
        if order is None:
            order = 0 if self.is_labels else 1
        zoom = [o / n for o, n in zip(old, new)]
        data = ndimage.zoom(np.asarray(obj.values), zoom, order=order, grid_mode=True, mode="nearest")
        # the first voxel's lower edge stays where it was
        origin = [o - d / 2 + nd / 2 for o, d, nd in zip(self.origin_um, old, new)]
        out = xr.DataArray(data.astype(obj.dtype), dims=DIMS, coords=_coords(data.shape, new, origin),
                           name=obj.name, attrs={**obj.attrs, "voxel_size_um": list(new)})
        return out
