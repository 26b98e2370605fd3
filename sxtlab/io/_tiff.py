"""TIFF stacks (``.tif .tiff``) via :mod:`tifffile`: ImageJ, OME-TIFF, Amira and plain.

The voxel size is looked up, in this order, in

1. OME-XML (OME-TIFF): ``Pixels`` attributes ``PhysicalSizeX/Y/Z`` with their
   ``PhysicalSize*Unit`` (default µm, as the OME schema says);
2. ImageJ metadata: ``XResolution``/``YResolution`` tags (pixels per unit), the z
   ``spacing`` and the ``unit`` (``yunit``/``zunit`` where given) in the
   ImageJ description, and ``xorigin``/``yorigin``/``zorigin`` (pixels, ImageJ's
   ``Calibration``: coordinate = (index − origin) · pixel size);
3. Amira's ImageDescription ``BoundingBox x0 x1 y0 y1 z0 z1`` (centres of the first
   and last voxels, so spacing = extent / (n − 1)), whose unit Amira does not record:
   ``box_units=`` gives it, as for AmiraMesh files (:mod:`._amira`);
4. plain TIFF ``XResolution``/``YResolution`` with ``ResolutionUnit`` inch or cm.

A voxel size is never guessed: an axis that the file does not calibrate (a stack
without z ``spacing``, MIC-DKFZ/nnUNet#2542; Amira's unit-less box) leaves the voxel
size unknown, with a warning naming the file and the missing field, until
``voxel_size=`` gives it. ``voxel_size=(dz, None, None)`` keeps the file's y and x.

:func:`write` produces an ImageJ hyperstack (axes ZYX, ``unit=micron``, ``spacing``,
resolution and origin) that ImageJ/Fiji, napari and tifffile read with the right
scale. sxtlab's own attrs (calibration, units, class names, the exact voxel size and
origin, the original dtype) travel as JSON in the ImageJ ``Info`` property, which
ImageJ shows under Image > Show Info and keeps when it saves the file; the layout is
the one of MRC files (``{"sxtlab": {...}}``, :func:`._common.metadata`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import xarray as xr

from ..errors import FormatError
from ._common import (KNOWN_UNITS, LAZY_BYTES, build_volume, check_claimed_size, drop_float_noise, finite_checked,
                      foreign_errors, length_unit, metadata, output_grid, parse_metadata, resolve_voxel_size,
                      storage_dtype, to_um, warn)

__all__ = ["read", "write"]

#: Unit names that mean "not calibrated".
_UNCALIBRATED = {"", "pixel", "pixels", "px", "none"}
#: tifffile's axis letters that may stand for z: Z, or I/Q for pages of unlabelled stacks.
_Z_AXES = "ZIQ"
_BOX = re.compile(r"BoundingBox((?:\s+[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?){6})")


@dataclass
class _Grid:
    """What a TIFF says about its grid: per axis (z, y, x), ``None`` where it says nothing."""

    voxel_um: list[float | None] = field(default_factory=lambda: [None, None, None])
    #: first voxel's centre in voxel units (so that a given voxel size places it)
    origin_vox: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    #: why (part of) the voxel size is unknown, for the warning
    missing: str = ""
    #: what the file says in its own terms, recorded in the volume's attrs
    attrs: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------
def read(path: Path, *, voxel_size=None, chunks: Any = None, segmentation: bool = False,
         classes: Mapping | None = None, box_units: str | None = None) -> xr.DataArray:
    """Read a TIFF stack (one page per z slice, or an ImageJ/OME hyperstack) as a volume.

    Parameters
    ----------
    path : pathlib.Path
        The file.
    voxel_size : float or (dz, dy, dx), optional
        Voxel size in µm. Replaces what the file leaves unknown (a ``None`` entry
        keeps the file's value for that axis); replaces a recorded value with a
        warning when they differ.
    chunks : optional
        Dask chunks. Given, or for data larger than 256 MiB, the volume is a lazy
        dask array whose chunks tifffile reads on demand.
    segmentation : bool
        ``True`` when called by :func:`sxtlab.io.read_segmentation`: a TIFF stack
        holds one volume, so this raises.
    classes : mapping, optional
        ``{value: class name}``: return a label volume (integer data only).
    box_units : str, optional
        Unit of an Amira ``BoundingBox`` (e.g. ``"nm"``, ``"A"``, ``"um"``), which
        Amira does not record; without it (or ``voxel_size``) such a file's voxel size
        is unknown. The box's spacing and first voxel are kept in the attrs
        ``amira_box_spacing_zyx`` and ``amira_bounding_box`` (file units).

    Returns
    -------
    xarray.DataArray
        dims ``(z, y, x)``, coords in µm (voxel indices where the voxel size is
        unknown); ``units`` is ``"gray"`` unless sxtlab wrote the file.

    Raises
    ------
    sxtlab.FormatError
        If the file is not a readable TIFF (or needs a codec that is missing), is a
        single 2-D image, has channels, samples (RGB) or time instead of z, has more
        than three non-singleton axes, holds NaN/inf, ``voxel_size`` is invalid, or
        ``box_units`` is an unknown unit or given for a file without an Amira box.

    Warns
    -----
    SxtlabWarning
        Voxel size unknown along an axis (naming the missing field, e.g. ImageJ
        ``spacing``), an Amira bounding box in unknown units, an unknown unit name,
        more than one image series, an override that differs from the file.
    """
    path = Path(path)
    where = str(path)
    if segmentation:
        raise FormatError(f"{where}: a TIFF stack holds one volume, not an image with labels; "
                          "read the image and the labels files separately")
    with foreign_errors(path, "TIFF stack") as at:
        with tifffile.TiffFile(path) as tif:
            at.field = "image series (page shapes, ImageJ/OME metadata)"
            if not tif.series:
                raise FormatError(f"{where}: the TIFF holds no image (no pages)")
            series = tif.series[0]
            _check_series_size(series, path)
            shape, dtype = _check_axes(series, where), series.dtype
            if len(tif.series) > 1:
                warn(f"{where}: the file holds {len(tif.series)} image series; reading the first, "
                     f"axes {series.axes} and shape {series.shape}")
            at.field = "calibration (ImageDescription, resolution tags, OME-XML)"
            grid = _grid(tif, shape, where, box_units)
            at.field = "ImageJ Info (sxtlab metadata)"
            meta = _sxtlab_metadata(tif, where)
            lazy = chunks is not None or series.nbytes > LAZY_BYTES
            at.field = "pixel data"
            data = None if lazy else series.asarray().reshape(shape)
    if data is None:
        data = finite_checked(
            da.from_array(_LazyTiff(where, shape, dtype), chunks=chunks if chunks is not None else "auto",
                          asarray=False, fancy=False, meta=np.empty((0, 0, 0), dtype)),
            where)
    if data.dtype == bool:
        data = data.astype(np.uint8)

    vs = resolve_voxel_size(grid.voxel_um, voxel_size, where=where)
    if vs is None:
        known = ", ".join(f"d{d} = {v:g} µm" for d, v in zip("zyx", grid.voxel_um) if v is not None)
        warn(f"{where}: {grid.missing}{f'; the file gives {known}' if known else ''}; the voxel size is "
             "unknown, never assumed 1 or equal to another axis, and any physical measurement will raise "
             "until it is given: pass voxel_size=(dz, dy, dx) in µm"
             + (", or None for the axes the file gives" if known else "")
             + (", or box_units='nm' (or 'A', 'um') if the BoundingBox is in that unit"
                if "amira_bounding_box" in grid.attrs else ""))
    origin = (0.0, 0.0, 0.0) if vs is None else tuple(o * v for o, v in zip(grid.origin_vox, vs))
    return build_volume(data, path=path, voxel_size=vs, origin_um=origin, meta=meta, classes=classes,
                        attrs=grid.attrs)


def _check_axes(series: tifffile.TiffPageSeries, where: str) -> tuple[int, int, int]:
    """The (z, y, x) shape of a series whose singleton axes tifffile has squeezed."""
    axes, shape = series.axes, tuple(series.shape)
    if len(axes) == 3 and axes[1:] == "YX" and axes[0] in _Z_AXES:
        return shape  # type: ignore[return-value]
    if axes == "YX":
        raise FormatError(f"{where}: a single 2-D image of shape {shape}; expected a 3-D stack (z, y, x)")
    names = {"C": "channels", "S": "samples (RGB/RGBA)", "T": "time points"}
    extra = [f"{names[a]} ({a})" for a in axes if a in names]
    raise FormatError(
        f"{where}: axes {axes} with shape {shape}: expected a 3-D stack with axes ZYX"
        + (f"; it has {', '.join(extra)}, which are not z" if extra else "")
        + "; save one channel and time point as a z stack"
    )


def _check_series_size(series: tifffile.TiffPageSeries, path: Path) -> None:
    """Raise if the pixels the tags claim cannot be in the file (before anything is allocated).

    Both the decoded size (shape and dtype; at most :data:`MAX_RATIO` times the file for
    compressed data) and every strip or tile (``StripOffsets`` + ``StripByteCounts``, which
    tifffile reads with one allocation of the claimed count) must fit in the file.
    """
    page, size, where = series.keyframe, path.stat().st_size, str(path)
    compressed = int(page.compression) != 1  # TIFF Compression 1: none
    check_claimed_size(int(series.nbytes), size, where=where, compressed=compressed,
                       field=f"the image series (axes {series.axes}, shape {tuple(series.shape)} of {series.dtype}; "
                             f"ImageLength {page.imagelength}, ImageWidth {page.imagewidth})")
    for p in series.pages:
        if p is None:
            continue
        for offset, count in zip(p.dataoffsets, p.databytecounts):
            if count and offset + count > size:
                raise FormatError(f"{where}: page {p.index}: a strip or tile at byte {offset:,} of {count:,} bytes "
                                  f"(StripOffsets/StripByteCounts or TileOffsets/TileByteCounts) ends beyond the "
                                  f"file's {size:,} bytes; the file is damaged or truncated")


def _length_unit(unit: Any, field_name: str, where: str) -> str | None:
    """The NGFF name of ``unit``, ``None`` for an uncalibrated or unknown unit (warned)."""
    if unit is None or str(unit).strip().lower() in _UNCALIBRATED:
        return None
    name = length_unit(str(unit))
    if name is None:
        warn(f"{where}: unknown length unit {unit!r} in {field_name}; that axis is treated as uncalibrated "
             f"(known units: {KNOWN_UNITS})")
    return name


def _pixel_size(page: tifffile.TiffPage, tag: str) -> float | None:
    """Units per pixel from an XResolution/YResolution tag (pixels per unit)."""
    t = page.tags.get(tag)
    if t is None:
        return None
    value = t.value
    num, den = (value if isinstance(value, tuple) else (value, 1))
    return float(den) / float(num) if num and den else None


def _grid(tif: tifffile.TiffFile, shape: tuple[int, int, int], where: str, box_units: str | None) -> _Grid:
    page = tif.pages.first
    box = None if tif.is_ome or tif.is_imagej else _BOX.search(page.description or "")
    if box_units is not None and box is None:
        raise FormatError(f"{where}: box_units={box_units!r} applies to TIFFs with an Amira 'BoundingBox' "
                          "ImageDescription; this file has none (give voxel_size= instead)")
    if tif.is_ome:
        return _ome_grid(tif, where)
    if tif.is_imagej:
        return _imagej_grid(tif.imagej_metadata or {}, page, where)
    if box is not None:
        return _amira_grid([float(v) for v in box.group(1).split()], shape, box_units, where)
    return _plain_grid(page)


def _ome_grid(tif: tifffile.TiffFile, where: str) -> _Grid:
    grid = _Grid()
    image = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
    if isinstance(image, list):
        image = image[0]
    pixels = image.get("Pixels", {})
    missing = []
    for i, axis in enumerate("ZYX"):
        size = pixels.get(f"PhysicalSize{axis}")
        # the OME schema's default unit for PhysicalSize* is µm
        unit = _length_unit(pixels.get(f"PhysicalSize{axis}Unit", "µm"), f"OME-XML PhysicalSize{axis}Unit", where)
        if size is None or unit is None or not float(size) > 0:
            missing.append(f"PhysicalSize{axis}")
        else:
            grid.voxel_um[i] = to_um(float(size), unit)
    grid.missing = f"OME-XML Pixels has no usable {', '.join(missing)} (z spacing / pixel size)" if missing else ""
    return grid


def _imagej_grid(md: dict, page: tifffile.TiffPage, where: str) -> _Grid:
    grid = _Grid()
    unit = md.get("unit")
    units = {"x": _length_unit(unit, "ImageJ 'unit'", where)}
    for axis in "yz":  # ImageJ writes yunit/zunit only where they differ from 'unit'
        key = f"{axis}unit"
        units[axis] = _length_unit(md[key], f"ImageJ {key!r}", where) if key in md else units["x"]
    per_pixel = {"x": _pixel_size(page, "XResolution"), "y": _pixel_size(page, "YResolution"),
                 "z": float(md["spacing"]) if md.get("spacing") is not None else None}
    missing = []
    for i, axis in enumerate("zyx"):
        size, axis_unit = per_pixel[axis], units[axis]
        if size is None or axis_unit is None or not size > 0:
            missing.append(axis)
        else:
            grid.voxel_um[i] = to_um(size, axis_unit)
        grid.origin_vox[i] = -float(md.get(f"{axis}origin", 0.0))
    reasons = []
    if "z" in missing:
        reasons.append("no z spacing: the ImageJ metadata have no 'spacing' entry, the z voxel size"
                       if md.get("spacing") is None else
                       f"ImageJ 'spacing' = {md['spacing']} (unit {md.get('zunit', unit)!r}) is not a usable "
                       "z voxel size")
    if {"y", "x"} & set(missing):
        reasons.append(f"ImageJ x/y calibration missing (unit {unit!r}, XResolution/YResolution tags)")
    grid.missing = "; ".join(reasons)
    return grid


def _amira_grid(box: list[float], shape: tuple[int, int, int], box_units: str | None, where: str) -> _Grid:
    """Amira's ``BoundingBox x0 x1 y0 y1 z0 z1``: voxel-centre extents in an unrecorded unit."""
    grid = _Grid()
    unit = None
    if box_units is not None:
        unit = length_unit(box_units)
        if unit is None:
            raise FormatError(f"{where}: box_units={box_units!r} is not a length unit sxtlab knows ({KNOWN_UNITS})")
    lows = {"x": box[0], "y": box[2], "z": box[4]}
    spacing = {"x": (box[1] - box[0]), "y": (box[3] - box[2]), "z": (box[5] - box[4])}
    sizes = dict(zip("zyx", shape))
    found = {}
    for i, axis in enumerate("zyx"):
        n = sizes[axis]
        step = drop_float_noise(spacing[axis] / (n - 1)) if n > 1 else 0.0
        found[axis] = step
        grid.origin_vox[i] = lows[axis] / step if step > 0 else 0.0
        if unit is not None and step > 0:
            grid.voxel_um[i] = to_um(step, unit)
    grid.attrs = {"amira_bounding_box": box, "amira_box_spacing_zyx": [found[a] for a in "zyx"]}
    if box_units is not None:
        grid.attrs["amira_box_units"] = box_units
    def triple(in_unit: str | None) -> str:
        return ", ".join(f"{found[a] if in_unit is None else to_um(found[a], in_unit):g}" for a in "zyx")

    text = f"the Amira ImageDescription 'BoundingBox {' '.join(f'{v:g}' for v in box)}'"
    grid.missing = (
        f"{text} gives a spacing (dz, dy, dx) = ({triple(None)}) in file units, which Amira does not record "
        f"(in Å that would be ({triple('angstrom')}) µm, in nm ({triple('nanometer')}) µm)"
        if unit is None else
        f"{text} gives no positive spacing along an axis (a single voxel, or an inverted box)"
    )
    return grid


def _plain_grid(page: tifffile.TiffPage) -> _Grid:
    grid = _Grid()
    tag_unit = page.tags.get("ResolutionUnit")
    # TIFF ResolutionUnit: 1 none, 2 inch (the default), 3 centimetre
    unit = {2: "inch", 3: "centimeter"}.get(int(tag_unit.value) if tag_unit is not None else 2)
    for i, tag in ((1, "YResolution"), (2, "XResolution")):
        size = _pixel_size(page, tag)
        if size is not None and unit is not None:
            grid.voxel_um[i] = to_um(size, unit)
    grid.missing = ("no z spacing: a plain TIFF records none (no ImageJ 'spacing', OME PhysicalSizeZ "
                    "or Amira BoundingBox)")
    return grid


def _sxtlab_metadata(tif: tifffile.TiffFile, where: str) -> dict | None:
    """sxtlab's JSON from the ImageJ ``Info`` property, if sxtlab wrote the file."""
    info = (tif.imagej_metadata or {}).get("Info") if tif.is_imagej else None
    # other tools put free text in Info; only sxtlab's JSON object starts so
    if not isinstance(info, str) or not info.lstrip().startswith('{"sxtlab"'):
        return None
    return parse_metadata(info, where=f"{where} (ImageJ Info)")


class _LazyTiff:
    """Array-like over a TIFF series for :func:`dask.array.from_array`.

    Each chunk opens the file and lets tifffile read only the pages and strips it
    needs (``imread(selection=...)``), so no file handle is shared between threads
    or kept open by the volume.
    """

    def __init__(self, path: str, shape: tuple[int, int, int], dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype, self.ndim = path, shape, np.dtype(dtype), 3

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        # read after read() returned, so inside a boundary of its own
        with foreign_errors(self.path, "TIFF stack", f"pixel data at {key}"):
            return np.asarray(tifffile.imread(self.path, series=0, level=0, selection=key))


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------
def write(obj: xr.DataArray, path: Path) -> None:
    """Write a volume as an ImageJ hyperstack TIFF (axes ZYX, uncompressed).

    The voxel size goes into the ImageJ calibration (``unit=micron``, ``spacing`` = dz,
    XResolution/YResolution = 1/dx, 1/dy) and the first voxel's centre into
    ``xorigin``/``yorigin``/``zorigin`` (pixels); all attrs, with the exact voxel size
    and origin, into the ``Info`` property as JSON (see the module notes). A dask
    volume is written slab by slab.

    Data types: uint8, uint16, int16 and float32 are stored as they are (the types
    ImageJ reads); bool, int8 and other integers go to the smallest of uint8, uint16,
    int16 that holds them (or float32 up to ±2**24), float16 to float32, all restored
    on reading; float64 is rounded to float32.

    Raises
    ------
    sxtlab.FormatError
        If ``obj`` is not a (z, y, x) DataArray, its coords disagree with its voxel
        size, it holds NaN/inf or values no ImageJ type holds exactly, or an attr is
        not JSON-serialisable.
    """
    obj, vs, origin = output_grid(obj, path)
    where = str(path)
    data = finite_checked(obj.data, where)
    store = storage_dtype(data, where, ("uint8", "uint16", "int16"), "float32", "an ImageJ TIFF")
    data = data.astype(store) if data.dtype != store else data
    md: dict[str, Any] = {"axes": "ZYX",
                          "Info": json.dumps(metadata(obj, vs, origin, where=where), allow_nan=False)}
    resolution = None
    if vs is not None:
        dz, dy, dx = vs
        resolution = (1.0 / dx, 1.0 / dy)
        md.update(spacing=dz, unit="micron")
        for axis, o, v in zip("zyx", origin, vs):
            if o:
                md[f"{axis}origin"] = -o / v  # ImageJ: coordinate = (index - origin) * pixel size
    pixels: np.ndarray | Iterator[np.ndarray] = data if isinstance(data, np.ndarray) else _pages(data)
    try:
        tifffile.imwrite(path, pixels, shape=data.shape, dtype=data.dtype, imagej=True,
                         resolution=resolution, metadata=md, photometric="minisblack")
    except FormatError:
        raise  # from a dask chunk (NaN/inf), already naming the file and the voxel
    except (ValueError, OSError) as err:
        raise FormatError(f"{where}: cannot write the ImageJ TIFF ({err})") from None


def _pages(data: da.Array) -> Iterator[np.ndarray]:
    """The z slices of a dask volume, computing one chunk of slices at a time."""
    z0 = 0
    for nz in data.chunks[0]:
        yield from np.asarray(data[z0:z0 + nz].compute())
        z0 += nz
