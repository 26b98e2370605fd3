"""Helpers that more than one format module uses.

- :func:`warn`: reader warnings, as :class:`~sxtlab.SxtlabWarning` on the user's line;
- length units (:func:`length_unit`, :func:`to_um`): the unit names that ImageJ,
  OME-XML, OME-NGFF and Amira files write, converted to µm;
- the voxel size a file records combined with the one a user gives
  (:func:`merge_voxel_size`, :func:`resolve_voxel_size`);
- sxtlab's attrs as JSON (:func:`jsonable`; :func:`metadata` and
  :func:`parse_metadata` for the ``{"sxtlab": ...}`` payload of MRC and TIFF files);
- building a read volume (:func:`build_volume`), checking finiteness
  (:func:`finite_checked`), and a writer's grid and storage type
  (:func:`output_grid`, :func:`storage_dtype`).
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..errors import FormatError, SxtlabError, SxtlabWarning
from ..volume import DIMS, check_finite, check_voxel_size, label_volume, volume

__all__ = [
    "LAZY_BYTES", "METADATA_VERSION", "UM_PER_UNIT", "KNOWN_UNITS",
    "warn", "length_unit", "to_um", "drop_float_noise", "merge_voxel_size", "resolve_voxel_size",
    "jsonable", "metadata", "parse_metadata", "build_volume", "finite_checked", "output_grid",
    "storage_dtype", "foreign_errors", "check_claimed_size", "MAX_RATIO", "MAX_EDGE",
]

#: Files larger than this (bytes) open lazily as dask arrays.
LAZY_BYTES = 256 * 2**20
#: Version of the JSON metadata layout that sxtlab writes into MRC and TIFF files.
METADATA_VERSION = 1

_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


# ---------------------------------------------------------------------------------------
# warnings
# ---------------------------------------------------------------------------------------
def warn(message: str) -> None:
    """Issue a :class:`~sxtlab.SxtlabWarning` attributed to the first caller outside sxtlab.

    Pointing at the user's line (not at this module) makes warning filters and
    ``-W error`` act where the file was opened.
    """
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is warn's caller
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, SxtlabWarning, stacklevel=level)


# ---------------------------------------------------------------------------------------
# the readers' boundary
# ---------------------------------------------------------------------------------------
#: Largest ratio of decoded to stored bytes believed of compressed data (deflate's limit
#: is 1032:1, LZW's and HxByteRLE's 127:1 about the same order); a header that claims
#: more is refused before anything is allocated.
MAX_RATIO = 1100

#: Most voxels along one axis of a volume read lazily from a file that need not hold
#: them all (a sparse Zarr array): its coords are allocated from the shape. 2**20 voxels
#: are 5 cm at 50 nm, far beyond any SXT field of view.
MAX_EDGE = 2**20

#: Exceptions that pass the boundary unchanged: sxtlab's own, the missing or unreadable
#: file that read_volume documents, memory exhaustion (no file's fault once sizes are
#: checked) and warnings turned into errors by a filter.
_PASS_THROUGH = (SxtlabError, FileNotFoundError, PermissionError, MemoryError, Warning)


class foreign_errors:  # noqa: N801  (used as a context manager, like contextlib's)
    """The one place where a reader turns its libraries' exceptions into :class:`~sxtlab.FormatError`.

    ``with foreign_errors(path, "TIFF stack") as at:`` wraps a reader's whole body; the reader sets
    ``at.field`` to the part of the file it is reading (``"header"``, ``"extended header
    (nsymbt)"``, ``"data"``), so that a tifffile, mrcfile, zarr, struct, XML or JSON
    exception (a damaged file, whatever its cause deep inside the library) becomes a
    FormatError naming the file and that field, chained so that the cause is kept.

    sxtlab's own errors, :class:`FileNotFoundError`, :class:`PermissionError`,
    :class:`MemoryError` and warnings raised as errors pass unchanged.
    """

    def __init__(self, path: str | Path, kind: str, field: str = "header") -> None:
        self.where, self.kind, self.field = str(path), kind, field

    def __enter__(self) -> "foreign_errors":
        return self

    def __exit__(self, kind, err, tb) -> bool:
        if err is None or not isinstance(err, Exception) or isinstance(err, _PASS_THROUGH):
            return False
        text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise FormatError(f"{self.where}: not a readable {self.kind}: cannot read its {self.field} "
                          f"({type(err).__name__}{': ' + text if text else ''})") from err


def check_claimed_size(claimed: int, available: int, *, where: str, field: str, compressed: bool = False) -> None:
    """Raise unless ``claimed`` bytes fit in the ``available`` bytes of the file.

    Called before anything is allocated from a header's sizes. ``compressed`` allows
    :data:`MAX_RATIO` decoded bytes per stored byte.

    Raises
    ------
    sxtlab.FormatError
        Naming the file, the field, the claimed and the available byte counts.
    """
    bound = available * MAX_RATIO if compressed else available
    if claimed < 0 or claimed > bound:
        what = (f"{available:,} compressed bytes (at most {bound:,} decoded)" if compressed
                else f"{available:,} bytes")
        raise FormatError(f"{where}: {field} claims {claimed:,} bytes, but the file holds {what}; "
                          "the header is damaged or the file truncated")


# ---------------------------------------------------------------------------------------
# length units
# ---------------------------------------------------------------------------------------
#: Length units by their OME-NGFF (UDUNITS-2) names, as (multiply, divide) factors to µm:
#: a division by a power of ten keeps e.g. 50 nm -> 0.05 µm correctly rounded.
UM_PER_UNIT: dict[str, tuple[float, float]] = {
    "femtometer": (1.0, 1e9),
    "picometer": (1.0, 1e6),
    "angstrom": (1.0, 1e4),
    "nanometer": (1.0, 1e3),
    "micrometer": (1.0, 1.0),
    "millimeter": (1e3, 1.0),
    "centimeter": (1e4, 1.0),
    "decimeter": (1e5, 1.0),
    "meter": (1e6, 1.0),
    "inch": (25400.0, 1.0),
}
#: Other spellings that files use (lower case, ``metre`` read as ``meter``, plurals dropped).
_UNIT_ALIASES: dict[str, str] = {
    "micron": "micrometer", "um": "micrometer", "µm": "micrometer", "μm": "micrometer",
    "nm": "nanometer", "mm": "millimeter", "cm": "centimeter", "m": "meter",
    "pm": "picometer", "fm": "femtometer", "å": "angstrom", "ångström": "angstrom", "a": "angstrom",
    "in": "inch",
}
#: The unit names :func:`length_unit` knows, for messages.
KNOWN_UNITS = ", ".join(sorted({*UM_PER_UNIT, *_UNIT_ALIASES}))


def length_unit(unit: str) -> str | None:
    """The OME-NGFF name of a length unit as a file spells it, or ``None`` if it is none.

    Case, surrounding blanks, ``metre`` for ``meter``, a plural ``s`` and ImageJ's
    escaped micro sign (``\\u00B5m``) are ignored: ``"Microns"``, ``"nm"``, ``"Å"`` and
    ``"nanometres"`` are all known.
    """
    if unit in UM_PER_UNIT:
        return unit
    key = unit.strip().lower().replace("\\u00b5", "µ").replace("metre", "meter")
    # Plurals ("microns", "nanometers") but not short symbols ("ms" is no metre).
    candidates = [key, key[:-1]] if key.endswith("s") and len(key) > 3 else [key]
    return next((_UNIT_ALIASES.get(c, c) for c in candidates if _UNIT_ALIASES.get(c, c) in UM_PER_UNIT), None)


def to_um(value: float, unit: str) -> float:
    """``value`` in ``unit`` (an OME-NGFF name, see :func:`length_unit`) in µm."""
    multiply, divide = UM_PER_UNIT[unit]
    return value * multiply / divide


def drop_float_noise(value: float) -> float:
    """``value`` rounded to 12 significant digits.

    The spacing ``extent / (n - 1)`` of an Amira BoundingBox written from a voxel
    size carries float noise (0.030000000000000002); 12 digits are far below any
    physical meaning.
    """
    return float(f"{value:.12g}")


# ---------------------------------------------------------------------------------------
# voxel size
# ---------------------------------------------------------------------------------------
def merge_voxel_size(found: Sequence[float | None], override: Any, *, where: str
                     ) -> tuple[tuple[float, float, float] | None, list[str]]:
    """Combine the voxel size a file records with the one a user gives.

    Parameters
    ----------
    found : (dz, dy, dx)
        From the file, µm; ``None`` for each axis the file leaves unknown.
    override : float, (dz, dy, dx), str or None
        From the user, µm, as :func:`sxtlab.volume.check_voxel_size` parses it; a
        ``None`` entry keeps the file's value for that axis.
    where : str
        The file, for messages.

    Returns
    -------
    voxel_size : tuple of 3 float, or None
        ``None`` when no override is given and the file leaves an axis unknown.
    differ : list of str
        The dims along which the override differs from a value the file records,
        for the caller's warning.

    Raises
    ------
    sxtlab.FormatError
        If the override is malformed, or leaves an axis unknown.
    """
    if override is None:
        return (tuple(found) if all(v is not None for v in found) else None), []  # type: ignore[return-value]
    values = check_voxel_size(override, where=f"{where}: voxel_size", partial=True)
    assert values is not None
    merged = [o if o is not None else f for o, f in zip(values, found)]
    missing = [d for d, v in zip(DIMS, merged) if v is None]
    if missing:
        raise FormatError(f"{where}: voxel_size={override!r} leaves {', '.join(missing)} unknown and the file "
                          "does not record it; give all of (dz, dy, dx) in µm")
    vs = tuple(float(v) for v in merged)
    differ = [d for d, o, f in zip(DIMS, values, found)
              if o is not None and f is not None and not np.isclose(float(o), f, rtol=1e-6, atol=0)]
    return vs, differ


def resolve_voxel_size(found: Sequence[float | None], override: Any, *, where: str
                       ) -> tuple[float, float, float] | None:
    """:func:`merge_voxel_size` with the MRC and TIFF readers' warning where the override differs.

    The AmiraMesh and OME-Zarr readers word their own warning from ``differ``.

    Warns
    -----
    SxtlabWarning
        If the override differs from a value the file records.
    """
    vs, differ = merge_voxel_size(found, override, where=where)
    if differ:
        assert vs is not None
        warn(f"{where}: voxel_size=({', '.join(f'{v:g}' for v in vs)}) µm overrides the file's "
             f"({', '.join('?' if f is None else f'{f:g}' for f in found)}) µm (dz, dy, dx) along {', '.join(differ)}")
    return vs


# ---------------------------------------------------------------------------------------
# attrs as JSON
# ---------------------------------------------------------------------------------------
def jsonable(value: Any, where: str, *, allow_nan: bool = True) -> Any:
    """Convert ``value`` to plain JSON types.

    NumPy scalars and arrays become Python numbers and lists, tuples lists, and
    mapping keys strings.

    Parameters
    ----------
    where : str
        The file and the attr, for messages; a nested value adds its key.
    allow_nan : bool
        Keep NaN and ±inf: Zarr attributes store them, standard JSON (the MRC and
        TIFF metadata) has no such numbers.

    Raises
    ------
    sxtlab.FormatError
        If a value is of a type JSON cannot hold, or NaN/inf with ``allow_nan=False``.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, f"{where}[{k!r}]", allow_nan=allow_nan) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, where, allow_nan=allow_nan) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return jsonable(value.tolist(), where, allow_nan=allow_nan)
    if isinstance(value, float) and not allow_nan and not math.isfinite(value):
        raise FormatError(f"{where}: {value!r} cannot be stored as JSON, which has no NaN or infinity")
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise FormatError(f"{where}: {type(value).__name__} values cannot be stored as JSON; "
                      "convert them to numbers, strings, lists or dicts")


def metadata(obj: xr.DataArray, vs: tuple[float, float, float] | None, origin: Sequence[float], *,
             where: str) -> dict:
    """sxtlab's JSON payload for an MRC or TIFF file: name, dtype, exact grid and the other attrs::

        {"sxtlab": {"version": 1, "name": ..., "dtype": ..., "voxel_size_um": [dz, dy, dx],
                    "origin_um": [z0, y0, x0], "attrs": {...}}}

    Raises
    ------
    sxtlab.FormatError
        If an attr is not JSON-serialisable (NumPy values are converted).
    """
    attrs = {k: v for k, v in obj.attrs.items() if k not in ("voxel_size_um", "source")}
    payload = {"version": METADATA_VERSION, "name": None if obj.name is None else str(obj.name),
               "dtype": obj.dtype.name, "voxel_size_um": None if vs is None else list(vs),
               "origin_um": [float(o) for o in origin],
               "attrs": {str(k): jsonable(v, f"{where}: attr {k!r}", allow_nan=False) for k, v in attrs.items()}}
    return {"sxtlab": payload}


def parse_metadata(text: str, *, where: str) -> dict | None:
    """sxtlab's payload from JSON text, or ``None`` (with a warning if it is damaged)."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as err:  # RecursionError: nested deeper than the parser goes
        warn(f"{where}: sxtlab metadata is not valid JSON ({err}); attrs such as the calibration are not restored")
        return None
    payload = doc.get("sxtlab") if isinstance(doc, dict) else None
    if not isinstance(payload, dict):
        return None
    version = payload.get("version")
    if not isinstance(version, int) or version > METADATA_VERSION:
        warn(f"{where}: sxtlab metadata version {version!r} is not one this sxtlab reads "
             f"({METADATA_VERSION}); reading what it understands")
    if not isinstance(payload.get("attrs", {}), dict):
        warn(f"{where}: sxtlab metadata field 'attrs' is not a mapping; attrs are not restored")
        payload = {**payload, "attrs": {}}
    for key, (usable, expected) in _METADATA_FIELDS.items():
        if payload.get(key) is not None and not usable(payload[key]):
            warn(f"{where}: sxtlab metadata field {key!r} is {json.dumps(payload[key])[:80]}, expected "
                 f"{expected}; it is ignored (the header's value is used)")
            payload = {**payload, key: None}
    return payload


def _three_numbers(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


#: sxtlab metadata fields used beyond the attrs: how to tell a usable value, and what is expected.
_METADATA_FIELDS: dict[str, tuple[Any, str]] = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "dtype": (lambda v: isinstance(v, str), "a NumPy dtype name"),
    "voxel_size_um": (lambda v: _three_numbers(v) and all(x > 0 for x in v), "three positive numbers (µm)"),
    "origin_um": (_three_numbers, "three finite numbers (µm)"),
}


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------
def build_volume(data, *, path: Path, voxel_size, origin_um, meta: dict | None, classes: Mapping | None,
                 attrs: Mapping[str, Any] | None = None) -> xr.DataArray:
    """A volume (or label volume) from read data, the file's own ``attrs`` and sxtlab's metadata."""
    where = str(path)
    attrs = {**(attrs or {}), **(meta.get("attrs", {}) if meta else {})}
    # the grid comes from the header (checked against the metadata by the caller)
    attrs.pop("voxel_size_um", None)
    attrs.pop("source", None)
    if voxel_size is not None and meta is not None:
        voxel_size = _prefer_exact(voxel_size, meta, "voxel_size_um", rtol=1e-5)
        origin_um = _prefer_exact(origin_um, meta, "origin_um", rtol=1e-5, atol=1e-3 * min(voxel_size))
    data = _restore_dtype(data, meta.get("dtype") if meta else None)
    name = (meta or {}).get("name") or ("labels" if classes is not None else "lac")
    image = volume(data, voxel_size, units="gray", origin_um=origin_um, name=name, source=where, attrs=attrs)
    if classes is None:
        return image
    try:
        return label_volume(data, image, classes, name=name, attrs={"source": where})
    except FormatError as err:
        raise FormatError(f"{where}: cannot read as labels: {err}") from None


def _prefer_exact(found, meta: dict, key: str, *, rtol: float, atol: float = 0.0):
    """The exact value stored in sxtlab's metadata where it agrees with the (rounded) file value."""
    if meta.get(key) is None:
        return found
    exact = [float(v) for v in meta[key]]
    return tuple(exact) if np.allclose(exact, found, rtol=rtol, atol=atol) else found


def _restore_dtype(data, stored: str | None):
    """Cast back to the dtype sxtlab wrote from, where the stored type held it exactly."""
    if not isinstance(stored, str) or stored == data.dtype.name:
        return data
    try:
        cast = np.dtype(stored)
    except TypeError:
        return data
    exact = (
        # integers stored narrower, or as float (bool stays uint8: volumes are numeric)
        cast.kind in "iu" and data.dtype.kind in "iuf"
        or cast.kind == "f" and data.dtype.kind == "f" and cast.itemsize < data.dtype.itemsize  # float16
    )
    return data.astype(cast) if exact else data


def finite_checked(data, where: str):
    """``data`` checked for NaN/inf: a NumPy array now, a dask array chunk by chunk.

    A lazy volume cannot be checked when it is opened without reading it whole, so
    the check of a dask array runs on every chunk as it is computed.

    Raises
    ------
    sxtlab.FormatError
        For NumPy data holding NaN/inf (counted and located); dask data raise it
        when the offending chunk is computed.
    """
    if not isinstance(data, da.Array):
        check_finite(np.asarray(data), where=where)
        return data
    if data.dtype.kind != "f":
        return data
    return data.map_blocks(_check_block, where=where, dtype=data.dtype, meta=np.empty((0, 0, 0), data.dtype))


def _check_block(block: np.ndarray, where: str, block_info: dict | None = None) -> np.ndarray:
    bad = ~np.isfinite(block)
    if bad.any():
        start = [lo for lo, _ in block_info[0]["array-location"]] if block_info else [0, 0, 0]
        first = tuple(int(i + s) for i, s in zip(np.argwhere(bad)[0], start))
        n, n_nan = int(bad.sum()), int(np.isnan(block).sum())
        raise FormatError(f"{where}: {n} non-finite values ({n_nan} NaN, {n - n_nan} inf) in the chunk at "
                          f"(z, y, x) = {tuple(start)}; the first at {first}")
    return block


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------
def output_grid(obj, path: Path) -> tuple[xr.DataArray, tuple[float, float, float] | None, tuple[float, ...]]:
    """The volume in (z, y, x) order with its voxel size and origin (µm), checked.

    Raises
    ------
    sxtlab.FormatError
        If ``obj`` is not a 3-D DataArray with dims z, y, x, or its coords are not
        spaced by its ``voxel_size_um``.
    """
    where = str(path)
    if not isinstance(obj, xr.DataArray):
        raise FormatError(f"{where}: expected an xarray.DataArray volume, got {type(obj).__name__}")
    if sorted(obj.dims) != sorted(DIMS):
        raise FormatError(f"{where}: expected a 3-D volume with dims (z, y, x), got dims {obj.dims} "
                          f"and shape {tuple(obj.shape)}")
    obj = obj.transpose(*DIMS)
    if 0 in obj.shape:
        raise FormatError(f"{where}: the volume is empty: shape (z, y, x) = {tuple(obj.shape)}")
    vs = check_voxel_size(obj.attrs.get("voxel_size_um"), where=f"{where}: attr voxel_size_um")
    if vs is None:
        return obj, None, (0.0, 0.0, 0.0)
    origin = []
    for d, step in zip(DIMS, vs):
        if d not in obj.coords:
            origin.append(0.0)
            continue
        c = np.asarray(obj[d].values, dtype=float)
        if c.size > 1 and not np.allclose(np.diff(c), step, rtol=1e-6, atol=0):
            raise FormatError(f"{where}: coords along {d!r} are spaced {np.diff(c)[:3].tolist()}... µm, but attr "
                              f"voxel_size_um gives {step} µm; fix the attr (e.g. .sxt.with_voxel_size)")
        origin.append(float(c[0]) if c.size else 0.0)
    return obj, vs, tuple(origin)


def storage_dtype(data, where: str, ints: Sequence[str], floating: str, fmt: str) -> np.dtype:
    """The dtype a writer stores ``data`` in: its own, or the smallest that holds it exactly.

    Parameters
    ----------
    ints : sequence of str
        Integer dtypes the format stores, smallest first.
    floating : str
        The format's float dtype (float16 widens to it, float64 rounds to it).

    Raises
    ------
    sxtlab.FormatError
        If the data are complex or non-numeric, or integers outside every ``ints`` range
        and beyond what ``floating`` holds exactly.
    """
    dtype = data.dtype
    if dtype.name in ints or dtype.name == floating:
        return dtype
    if dtype.kind == "f":
        return np.dtype(floating)
    if dtype.kind == "b":
        return np.dtype("uint8")
    if dtype.kind not in "iu":
        raise FormatError(f"{where}: {fmt} cannot store values of dtype {dtype}; expected real numbers")
    lo, hi = data.min(), data.max()
    if isinstance(data, da.Array):
        lo, hi = da.compute(lo, hi)
    lo, hi = int(lo), int(hi)
    for name in ints:
        info = np.iinfo(name)
        if info.min <= lo and hi <= info.max:
            return np.dtype(name)
    mantissa = 2 ** (np.finfo(floating).nmant + 1)
    if -mantissa <= lo and hi <= mantissa:
        return np.dtype(floating)
    raise FormatError(f"{where}: {fmt} cannot store {dtype} values {lo}..{hi} exactly (its integer types are "
                      f"{', '.join(ints)}); rescale or convert them to {floating} first")
