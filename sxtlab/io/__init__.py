"""Read and write SXT volumes: MRC/.rec, AmiraMesh, TIFF stacks and OME-Zarr.

Every reader returns volumes as built by :mod:`sxtlab.volume` (dims ``z, y, x``,
coords in µm, attrs with voxel size and calibration) and turns whatever goes wrong
in the libraries beneath it into :class:`~sxtlab.FormatError` naming the file and the
field (sizes a header claims are checked against the file before anything is
allocated); every writer is atomic (temporary name, then rename; see
:mod:`sxtlab.io._atomic`): it creates a new output exclusively, refuses to replace
an existing one unless ``overwrite=True``, and cleans what a killed write left.

The format is chosen by content where the extension is ambiguous (``.rec`` is an
MRC file for IMOD but an AmiraMesh file for Amira), else by extension:

============================  ===========  ==========
extension                     read         write
============================  ===========  ==========
``.mrc .map .rec .st .ali``   MRC          MRC
``.mrc.gz .map.gz``           MRC (gzip)   --
``.am .rec .labels``          AmiraMesh    AmiraMesh
``.hx``                       Amira project (image + labels) --
``.tif .tiff``                TIFF stack   TIFF (ImageJ hyperstack)
``.zarr .ome.zarr``           OME-Zarr     OME-Zarr
============================  ===========  ==========
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

import xarray as xr

from ..errors import FormatError
from ._atomic import atomic_output

__all__ = ["read_volume", "read_segmentation", "read_project", "write_volume", "detect_format",
           "atomic_output"]

_EXTENSIONS = {
    ".mrc": "mrc", ".map": "mrc", ".st": "mrc", ".ali": "mrc", ".mrcs": "mrc",
    ".mrc.gz": "mrc", ".map.gz": "mrc",
    ".am": "amira", ".labels": "amira", ".hx": "amira",
    ".tif": "tiff", ".tiff": "tiff",
    ".zarr": "omezarr",
}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for ext in sorted(_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return path.suffix.lower()


def _looks_like_amira(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(64)
    return head.startswith((b"# AmiraMesh", b"# Avizo", b"# HyperSurface", b"# Amira"))


def detect_format(path: str | os.PathLike, *, for_writing: bool = False) -> str:
    """Name of the format of ``path``: ``"mrc"``, ``"amira"``, ``"tiff"`` or ``"omezarr"``.

    Raises
    ------
    FormatError
        If the extension is not one sxtlab reads (the message lists those it does),
        or ``path`` is a folder that is not OME-Zarr.
    """
    path = Path(path)
    ext = _suffix(path)
    # Amira saves AmiraMesh under any name (its templates hold an AmiraMesh "blob.tiff").
    if not for_writing and path.is_file() and _looks_like_amira(path):
        return "amira"
    if ext == ".rec":
        if for_writing or not path.is_file():
            return "mrc"
        return "amira" if _looks_like_amira(path) else "mrc"
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    if not for_writing and path.is_dir():
        raise FormatError(f"{path}: is a folder; sxtlab reads a volume file, or an OME-Zarr folder named *.zarr "
                          "(Amira projects: the .hx file, not its -files folder)")
    raise FormatError(
        f"{path}: unknown extension {ext or '(none)'!r}; sxtlab reads "
        f"{', '.join(sorted(set(_EXTENSIONS) | {'.rec'}))}"
    )


def _module(fmt: str) -> ModuleType:
    # Imported on demand so that `import sxtlab` stays light.
    if fmt == "mrc":
        from . import _mrc as m
    elif fmt == "amira":
        from . import _amira as m
    elif fmt == "tiff":
        from . import _tiff as m
    else:
        from . import _omezarr as m
    return m


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file() and not os.access(path, os.R_OK):
        raise PermissionError(f"{path}: file is not readable")
    return path


def read_volume(path: str | os.PathLike, *, voxel_size=None, calibration=None,
                chunks: Any = None, **kwargs: Any) -> xr.DataArray:
    """Read one volume (image or label field) from a file.

    Parameters
    ----------
    path : path-like
        A file in one of the formats of this module.
    voxel_size : float or (dz, dy, dx), optional
        Voxel size in µm; required where the file does not record one (and then
        replaces the unknown value), or overrides what the file says (with a warning
        when they differ).
    calibration : sxtlab.Calibration, optional
        Gray → LAC calibration to record on a gray image.
    chunks : optional
        Dask chunks; files larger than 256 MiB open lazily by default.

    Returns
    -------
    xarray.DataArray
        dims ``(z, y, x)``, coords in µm; a label field (AmiraMesh ``.labels``,
        OME-Zarr labels) has integer values and a ``classes`` attr.

    Raises
    ------
    FileNotFoundError, PermissionError
        If the file is missing or unreadable.
    sxtlab.FormatError
        If the extension is unknown or the file is corrupt (the message names the
        file and the field).
    """
    path = _existing(path)
    fmt = detect_format(path)
    out = _module(fmt).read(path, voxel_size=voxel_size, chunks=chunks, **kwargs)
    if isinstance(out, xr.Dataset):
        out = out["lac"]
    if calibration is not None:
        out = out.sxt.with_calibration(calibration)
    return out


def read_segmentation(path: str | os.PathLike, *, voxel_size=None, chunks: Any = None,
                      **kwargs: Any) -> xr.Dataset:
    """Read an image with its labels as a segmentation Dataset.

    OME-Zarr files written by :func:`write_volume` and Amira projects (``.hx``)
    hold both; for other formats pass the image and read labels separately.

    Returns
    -------
    xarray.Dataset
        ``lac`` (z, y, x), ``labels`` (z, y, x) with ``classes``, and
        ``probabilities`` (class, z, y, x) where the file holds them.
    """
    path = _existing(path)
    fmt = detect_format(path)
    out = _module(fmt).read(path, voxel_size=voxel_size, chunks=chunks, segmentation=True, **kwargs)
    if not isinstance(out, xr.Dataset):
        raise FormatError(f"{path}: holds a single volume, not an image with labels")
    return out


def read_project(path: str | os.PathLike, *, voxel_size=None, **kwargs: Any) -> xr.Dataset:
    """Read an Amira project (``.hx``): its image and the label field connected to it.

    ``${SCRIPTDIR}`` is resolved to the project's folder; materials become class
    names of the vocabulary, and materials named like ``ignore``/``unlabeled``
    become the unannotated value 255. See :func:`sxtlab.io._amira.read_project`
    for the keywords (``class_map=``, ``box_units=``, ``labels=``).

    Returns
    -------
    xarray.Dataset
        ``lac`` (gray values unless calibrated) and, where the project has one,
        ``labels``.

    Raises
    ------
    FileNotFoundError
        If the project or a file it loads is missing (both paths are named).
    sxtlab.FormatError
        If the label field's lattice differs from its image's.
    """
    from ._amira import read_project as _read_project

    return _read_project(_existing(path), voxel_size=voxel_size, **kwargs)


def write_volume(obj: xr.DataArray | xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False,
                 **kwargs: Any) -> Path:
    """Write a volume (or a segmentation Dataset, to OME-Zarr) atomically.

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        A volume from :func:`sxtlab.volume`, or a segmentation Dataset (OME-Zarr
        only: the image, an NGFF ``labels`` group and the probabilities).
    path : path-like
        Output; its extension chooses the format.
    overwrite : bool
        Replace an existing output (only once the new one is complete).
    **kwargs
        Options of the format's writer; OME-Zarr: ``ngff_version`` (``"0.5"``, the
        default, Zarr v3; ``"0.4"``, Zarr v2, for readers without Zarr v3),
        ``levels`` and ``chunks`` (see :func:`sxtlab.io._omezarr.write`).

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    sxtlab.OutputExistsError
        If ``path`` exists and ``overwrite`` is false.
    sxtlab.FormatError
        If the format cannot hold ``obj`` (e.g. a Dataset to MRC).
    """
    path = Path(path)
    fmt = detect_format(path, for_writing=True)
    module = _module(fmt)
    if isinstance(obj, xr.Dataset) and fmt != "omezarr":
        raise FormatError(f"{path}: only OME-Zarr holds a whole segmentation; write its variables one by one")
    return atomic_output(path, lambda tmp: module.write(obj, tmp, **kwargs), overwrite=overwrite)
