"""MRC / CCP4 maps (``.mrc .map .rec .st .ali .mrcs``, gzip-compressed too) via :mod:`mrcfile`.

Reading follows the MRC2014 specification (Cheng et al. 2015, J. Struct. Biol. 192,
146; https://www.ccpem.ac.uk/mrc_format/mrc2014.php) and the conventions that real
files break it with:

* the voxel size is ``cella / (mx, my, mz)`` in Å along (x, y, z) and becomes µm in
  (z, y, x) order; a cell of 0 Å (never set) or a voxel of 1 Å (the value written
  when the pixel size was unknown) means *unknown*: the reader warns and records
  ``None`` unless ``voxel_size=`` gives it;
* axes stored permuted (``mapc, mapr, maps`` other than 1, 2, 3) are transposed to
  true (z, y, x), each axis keeping its own voxel size;
* the position of the first voxel is the header ``origin`` (Å) when it is set,
  else ``(nxstart, nystart, nzstart)`` voxels (given in column, row, section
  order), as UCSF Chimera/ChimeraX read it;
* mode 0 is signed in MRC2014, but IMOD writes unsigned bytes unless bit 0 of
  ``imodFlags`` (byte 156, after ``imodStamp`` = ``'IMOD'`` at byte 152) is set,
  and stores a signed byte ``v`` for the value ``v + 128`` (IMOD's ``mrc_format``
  documentation; ccpem/mrcfile#25, #69). Without an IMOD stamp, header
  ``dmin``/``dmax`` outside -128..127 mark unsigned bytes. Every reinterpretation
  is reported in a warning; ``signed_bytes=`` overrides it;
* a missing ``'MAP '`` id (Amira exports, ccpem/mrcfile#44) or an unknown machine
  stamp is read anyway (mrcfile's permissive mode) with a warning naming the field;
* a data block shorter than the header promises raises :class:`~sxtlab.FormatError`
  with both byte counts.

sxtlab's own attrs (calibration, units, class names, exact voxel size and origin)
travel in the extended header as UTF-8 JSON, ``EXTTYP = 'JSON'``::

    {"sxtlab": {"version": 1, "name": ..., "dtype": ..., "voxel_size_um": [dz, dy, dx],
                "origin_um": [z0, y0, x0], "attrs": {...}}}

The header fields stay authoritative: the JSON voxel size and origin are used only
where they agree with the header (then they replace its float32-rounded values, so
a round trip is exact), and a tool that drops the extended header loses only the
attrs. A header label says where the JSON is. The extended header was chosen over
the ten 80-character labels because it has no size limit and programs such as IMOD
append to and drop labels; its price is that ``mrcfile.validate`` reports the
``'JSON'`` code as unrecognised (it accepts only the codes listed in MRC2014), while
readers skip ``nsymbt`` bytes of an extended header they do not know.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import mrcfile
import mrcfile.utils
from mrcfile.mrcinterpreter import MrcInterpreter
import numpy as np
import xarray as xr

from ..errors import FormatError, thread_warnings
from ._common import (LAZY_BYTES, build_volume, finite_checked, foreign_errors, metadata,
                      output_grid, parse_metadata, resolve_voxel_size, storage_dtype, warn)

__all__ = ["read", "write"]

#: Ångström per micrometre.
A_PER_UM = 1e4
#: ``imodStamp`` value (the bytes ``'IMOD'`` read as a little-endian int32).
IMOD_STAMP = 1146047817
#: EXTTYP code of sxtlab's JSON extended header.
EXTTYP_JSON = b"JSON"

_AXES_XYZ = ("x", "y", "z")
#: Byte offset of the header word ``nsymbt`` (bytes of extended header).
_NSYMBT = 92


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------
def read(path: Path, *, voxel_size=None, chunks: Any = None, segmentation: bool = False,
         classes: Mapping | None = None, signed_bytes: bool | None = None) -> xr.DataArray:
    """Read an MRC/CCP4 map (optionally gzip or bzip2 compressed) as a volume.

    Parameters
    ----------
    path : pathlib.Path
        The file.
    voxel_size : float or (dz, dy, dx), optional
        Voxel size in µm. Replaces an unset header value; replaces a set one with a
        warning when they differ. An entry ``None`` keeps the header's value for that
        axis.
    chunks : optional
        Dask chunks. Given, or for files larger than 256 MiB, the data are a lazy
        dask array over a memory map (compressed files are decompressed in memory).
    segmentation : bool
        ``True`` when called by :func:`sxtlab.io.read_segmentation`: an MRC file holds
        one volume, so this raises.
    classes : mapping, optional
        ``{value: class name}``: return a label volume (integer data only).
    signed_bytes : bool, optional
        How to read mode 0 (8-bit) data: ``True`` as signed int8 (MRC2014),
        ``False`` as unsigned 0..255 (IMOD). Default: decided from the header (see
        the module notes), with a warning whenever it departs from MRC2014.

    Returns
    -------
    xarray.DataArray
        dims ``(z, y, x)``, coords in µm (voxel centres; voxel indices when the voxel
        size is unknown), attrs as :func:`sxtlab.volume` makes them plus those that
        sxtlab stored in the file; ``units`` is ``"gray"`` for foreign files.

    Raises
    ------
    sxtlab.FormatError
        If the file is not a readable MRC file, its data block is shorter than the
        header promises (the message gives both byte counts), its mode is complex or
        unknown, its data are 2-D or 4-D, hold NaN/inf (counted and located), or
        ``voxel_size`` is invalid.

    Warns
    -----
    SxtlabWarning
        Unset voxel size (naming ``cella``), missing ``'MAP '`` id or unknown machine
        stamp, reinterpreted mode-0 bytes, extra bytes after the data, an override that
        differs from the header.
    """
    path = Path(path)
    where = str(path)
    if segmentation:
        raise FormatError(f"{where}: an MRC file holds one volume, not an image with labels; "
                          "read the image and the labels files separately")
    with foreign_errors(path, "MRC file") as at:
        return _read(path, at, voxel_size=voxel_size, chunks=chunks, classes=classes, signed_bytes=signed_bytes)


def _read(path: Path, at: foreign_errors, *, voxel_size, chunks: Any, classes: Mapping | None,
          signed_bytes: bool | None) -> xr.DataArray:
    """:func:`read` inside its boundary; ``at.field`` follows the part of the file being read."""
    where = str(path)
    compressed = _compression(path)
    at.field = "header (the first 1024 bytes)"
    header = _read_header(path, compressed)
    _check_header(header, where)
    _check_sizes(path, header, compressed)
    opener = mrcfile.open if compressed else mrcfile.mmap
    at.field = f"extended header ({int(header.nsymbt)} bytes) and data"
    with thread_warnings() as caught:
        mrc = opener(path, mode="r", permissive=True)
    with mrc:
        header = mrc.header.copy()
        ext = mrc.extended_header
        raw = mrc.data
    if raw is None:
        raise _truncated(path, header, compressed)
    _warn_nonstandard(header, caught, where)
    meta = _extended_metadata(header, ext, where)

    if raw.ndim == 4 and raw.shape[0] == 1:
        raw = raw[0]  # a volume stack (ispg >= 401) that holds a single volume
    if raw.ndim != 3:
        what = ("a single 2-D image (ispg = 0, nz = 1)" if raw.ndim == 2 else
                f"a stack of {raw.shape[0]} volumes (ispg = {int(header.ispg)}, nz / mz = {raw.shape[0]})")
        raise FormatError(f"{where}: expected one 3-D volume, found {what} with shape {raw.shape}")

    order = _zyx_order(header, where)
    lazy = chunks is not None or raw.nbytes > LAZY_BYTES
    native = raw.dtype.newbyteorder("=")
    if lazy:
        data = da.from_array(raw, chunks=chunks if chunks is not None else "auto", asarray=True)
        data = data.astype(native).transpose(order)
    else:
        # a writable in-memory copy in native byte order, detached from the file
        data = np.array(raw.transpose(order), dtype=native, order="C")
    if data.dtype == np.int8:
        data = _mode0_bytes(data, header, meta, signed_bytes, where)

    found_vs, unset_reason = _header_voxel_size(header)
    vs = resolve_voxel_size(found_vs, voxel_size, where=where)
    if vs is None:
        warn(f"{where}: {unset_reason}; the voxel size is unknown (coords are voxel indices) and any "
             "physical measurement will raise until it is given: pass voxel_size=(dz, dy, dx) in µm")
    origin = _header_origin(header, vs, where)
    if isinstance(data, da.Array):  # NumPy data are checked by sxtlab.volume
        data = finite_checked(data, where)
    at.field = "data"
    return build_volume(data, path=path, voxel_size=vs, origin_um=origin, meta=meta, classes=classes)


def _read_header(path: Path, compressed: str | None) -> np.recarray:
    """The 1024-byte header as mrcfile interprets it (byte order included), read on its own.

    mrcfile reads (and allocates) the ``nsymbt`` bytes of the extended header with the
    header, even for ``header_only=True``; a damaged ``nsymbt`` of 2**31 - 1 would cost
    2 GB. So the header is parsed from a copy whose ``nsymbt`` is 0 (0 in either byte
    order), and the true value is put back for :func:`_check_sizes`.
    """
    opener = {"gzip": gzip.open, "bzip2": bz2.open, None: open}[compressed]
    with opener(path, "rb") as fh:  # a damaged gzip/bzip2 stream's errors are the boundary's (read)
        head = fh.read(1024)
    if len(head) < 1024:
        raise FormatError(f"{path}: not a readable MRC file (ValueError: Couldn't read enough bytes for MRC header: "
                          f"{len(head)} bytes, the header needs 1024)")
    nsymbt = head[_NSYMBT:_NSYMBT + 4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported, naming the fields, from the full open
        mrc = MrcInterpreter(io.BytesIO(head[:_NSYMBT] + bytes(4) + head[_NSYMBT + 4:]), permissive=True,
                             header_only=True)
    header = mrc.header.copy()
    header.nsymbt = np.frombuffer(nsymbt, dtype=header.nsymbt.dtype)[0]
    return header


def _compression(path: Path) -> str | None:
    """``"gzip"``, ``"bzip2"`` or ``None``, from the file's magic bytes (as mrcfile does)."""
    with open(path, "rb") as fh:
        head = fh.read(3)
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head == b"BZh":
        return "bzip2"
    return None


def _stream_size(path: Path, compressed: str | None) -> int:
    """Size in bytes of the (decompressed) MRC stream."""
    if compressed is None:
        return os.path.getsize(path)
    module = gzip if compressed == "gzip" else bz2
    try:
        with module.open(path, "rb") as fh:
            return fh.seek(0, io.SEEK_END)
    except (OSError, EOFError):
        # a truncated compressed stream: count what decompresses
        with module.open(path, "rb") as fh:
            n = 0
            try:
                while chunk := fh.read(2**20):
                    n += len(chunk)
            except (OSError, EOFError):
                pass
            return n


def _check_header(header: np.recarray, where: str) -> None:
    """Raise for header fields that make the data unreadable (checked before mrcfile's guesses)."""
    dims = {f: int(header[f]) for f in ("nx", "ny", "nz")}
    if min(dims.values()) <= 0:
        raise FormatError(f"{where}: header dimensions (nx, ny, nz) = {tuple(dims.values())}: expected positive "
                          "numbers of columns, rows and sections")
    mode = int(header.mode)
    try:
        dtype = mrcfile.utils.dtype_from_mode(header.mode)
    except ValueError:
        raise FormatError(f"{where}: header 'mode' = {mode} is not an MRC2014 data mode "
                          "(expected 0, 1, 2, 6 or 12 for a real-valued volume)") from None
    if dtype.kind == "c":
        raise FormatError(f"{where}: header 'mode' = {mode} stores complex values (a Fourier transform?); "
                          "expected real values (mode 0, 1, 2, 6 or 12)")


def _data_bytes(header: np.recarray) -> int:
    """Bytes of the data block the header claims: nx · ny · nz · the mode's item size (Python ints)."""
    itemsize = mrcfile.utils.dtype_from_mode(header.mode).itemsize
    return int(header.nx) * int(header.ny) * int(header.nz) * itemsize


def _check_sizes(path: Path, header: np.recarray, compressed: str | None) -> None:
    """Raise if the extended header or the data block the header claims cannot be in the file.

    mrcfile allocates ``nsymbt`` bytes for the extended header of a compressed file, and
    the data block, before it finds them missing; a damaged header could ask for gigabytes.
    """
    where = str(path)
    nsymbt = int(header.nsymbt)
    if nsymbt < 0:
        raise FormatError(f"{where}: header 'nsymbt' (extended header bytes) = {nsymbt}: expected 0 or more")
    # a compressed stream is measured by decompressing it (bounded by the compressed size)
    stream = _stream_size(path, compressed)
    available = stream - header.nbytes
    if nsymbt > available:
        raise FormatError(f"{where}: header 'nsymbt' claims an extended header of {nsymbt:,} bytes, but only "
                          f"{max(available, 0):,} bytes follow the 1024-byte header; the header is damaged "
                          "or the file truncated")
    if _data_bytes(header) > available - nsymbt:
        raise _truncated(path, header, compressed, stream)


def _truncated(path: Path, header: np.recarray, compressed: str | None, stream: int | None = None) -> FormatError:
    expected = _data_bytes(header)
    offset = header.nbytes + int(header.nsymbt)
    found = max((_stream_size(path, compressed) if stream is None else stream) - offset, 0)
    return FormatError(
        f"{path}: truncated or corrupt MRC file: the header promises {expected:,} data bytes "
        f"(nx, ny, nz = {int(header.nx)}, {int(header.ny)}, {int(header.nz)}; mode {int(header.mode)}) "
        f"after {offset:,} header bytes, but the file holds {found:,}"
    )


def _warn_nonstandard(header: np.recarray, caught: list, where: str) -> None:
    """Report, naming the fields, what mrcfile's permissive mode let through."""
    problems = []
    map_id = bytes(header.map)
    if map_id[:3] != b"MAP":
        problems.append(f"no 'MAP ' id string in field 'map' (at byte offset 208: {map_id!r})")
    try:
        mrcfile.utils.byte_order_from_machine_stamp(header.machst)
        stamp_ok = True
    except ValueError:
        stamp_ok = False
    byteorder = header.mode.dtype.byteorder
    order = "little" if byteorder == "<" or (byteorder in "=|" and sys.byteorder == "little") else "big"
    if not stamp_ok:
        problems.append(f"unrecognised machine stamp in field 'machst' ({bytes(header.machst)!r}), "
                        f"read as {order}-endian")
    if problems:
        warn(f"{where}: non-standard MRC header: {'; '.join(problems)}. Loaded anyway (written by Amira, "
             "SerialEM or an older tool?); check the values")
    for w in caught:
        msg = str(w.message)
        if msg.startswith(("Map ID string not found", "Unrecognised machine stamp")):
            continue  # reported above with the field names
        extra = re.match(r"MRC file is (\d+) bytes larger than expected", msg)
        if extra:
            warn(f"{where}: {int(extra.group(1)):,} bytes follow the data block that the header does not "
                 "account for; they are ignored")
        elif msg.startswith("Machine stamp"):
            warn(f"{where}: field 'machst': {msg}; the byte order of the 'mode' field was used")
        else:
            warn(f"{where}: mrcfile: {msg}")


def _extended_metadata(header: np.recarray, ext: np.ndarray | None, where: str) -> dict | None:
    """sxtlab's JSON from the extended header, or ``None`` if there is none."""
    if ext is None or ext.size == 0 or bytes(header.exttyp) != EXTTYP_JSON:
        return None
    return parse_metadata(ext.tobytes().decode("utf-8", errors="replace"), where=f"{where} (extended header)")


def _zyx_order(header: np.recarray, where: str) -> tuple[int, int, int]:
    """Transpose that takes the stored (section, row, column) axes to true (z, y, x)."""
    crs = (int(header.mapc), int(header.mapr), int(header.maps))
    if crs == (0, 0, 0):
        warn(f"{where}: header 'mapc, mapr, maps' = 0, 0, 0 (unset); assuming 1, 2, 3 "
             "(columns along x, rows along y, sections along z)")
        crs = (1, 2, 3)
    if sorted(crs) != [1, 2, 3]:
        raise FormatError(f"{where}: header 'mapc, mapr, maps' = {crs}: expected a permutation of 1, 2, 3 "
                          "(the axes x, y, z along columns, rows and sections)")
    stored = (crs[2], crs[1], crs[0])  # array axes are (section, row, column)
    return tuple(stored.index(axis) for axis in (3, 2, 1))  # type: ignore[return-value]


def _crs_to_xyz(values: Sequence[float], header: np.recarray) -> tuple[float, float, float]:
    """Reorder a (column, row, section) triple, such as nxstart..nzstart, to (x, y, z)."""
    crs = (int(header.mapc), int(header.mapr), int(header.maps))
    if sorted(crs) != [1, 2, 3]:
        crs = (1, 2, 3)
    out = [0.0, 0.0, 0.0]
    for value, axis in zip(values, crs):
        out[axis - 1] = float(value)
    return tuple(out)  # type: ignore[return-value]


def _header_voxel_size(header: np.recarray) -> tuple[tuple[float | None, ...], str]:
    """Voxel size (dz, dy, dx) in µm from cella / (mx, my, mz); ``None`` per unset axis.

    Also returns the reason for the warning given when it stays unknown.
    """
    cella = [float(header.cella[a]) for a in _AXES_XYZ]
    grid = [int(header[f]) for f in ("mx", "my", "mz")]
    per_axis: dict[str, float | None] = {}
    for axis, c, m in zip(_AXES_XYZ, cella, grid):
        angstrom = c / m if m > 0 else 0.0
        # 0 Å: cella never set; 1 Å: the placeholder many tools write for "no pixel size"
        unset = not np.isfinite(angstrom) or angstrom <= 0 or np.isclose(angstrom, 1.0, rtol=1e-6, atol=0)
        per_axis[axis] = None if unset else _float32_digits(angstrom) / A_PER_UM
    unset_axes = [a for a in _AXES_XYZ if per_axis[a] is None]
    reason = (
        f"voxel size unset in the MRC header along {', '.join(unset_axes)}: cella = "
        f"({', '.join(f'{c:g}' for c in cella)}) Å over (mx, my, mz) = {tuple(grid)} gives "
        f"({', '.join(f'{c / m:g}' if m > 0 else 'n/a' for c, m in zip(cella, grid))}) Å per voxel, "
        "and 0 or 1 Å means unset"
    )
    return (per_axis["z"], per_axis["y"], per_axis["x"]), reason


def _float32_digits(value: float) -> float:
    """Round to the 7 significant digits that a float32 header field holds.

    ``cella`` and ``origin`` are float32: 23.2 Å is stored as 23.1999998...; keeping
    only the digits the field can hold gives back the value that was written.
    """
    return float(f"{value:.7g}")


def _header_origin(header: np.recarray, vs: tuple[float, float, float] | None, where: str) -> tuple[float, ...]:
    """Centre of the first voxel, (z0, y0, x0) in µm."""
    origin = [float(header.origin[a]) for a in _AXES_XYZ]
    if not all(np.isfinite(origin)):
        raise FormatError(f"{where}: header 'origin' = {tuple(origin)} Å: expected finite numbers")
    if any(origin):
        x, y, z = (_float32_digits(o) / A_PER_UM for o in origin)
        return (z, y, x)
    if vs is None:
        return (0.0, 0.0, 0.0)
    start = _crs_to_xyz([int(header.nxstart), int(header.nystart), int(header.nzstart)], header)
    return (start[2] * vs[0], start[1] * vs[1], start[0] * vs[2])


def _imod_flags(header: np.recarray) -> int | None:
    """IMOD's ``imodFlags`` (byte offset 156), or ``None`` without ``imodStamp`` (offset 152)."""
    # mrcfile keeps these bytes inside the opaque 'extra2' field (MRC2014 words 29-49)
    raw = header.extra2.tobytes()
    stamp, flags = np.frombuffer(raw[40:48], dtype=header.mode.dtype.byteorder.replace("|", "=") + "i4")
    return int(flags) if stamp == IMOD_STAMP else None


def _mode0_bytes(data, header: np.recarray, meta: dict | None, signed_bytes: bool | None, where: str):
    """Interpret mode-0 bytes as signed or unsigned; warn when departing from MRC2014."""
    as_unsigned = lambda a: a.view(np.uint8)  # noqa: E731  (same bytes, 0..255)
    if signed_bytes is not None:
        return data if signed_bytes else as_unsigned(data)
    flags = _imod_flags(header)
    if meta is not None:
        # sxtlab marks the unsigned bytes it writes with IMOD's stamp, and only those
        return as_unsigned(data) if flags == 0 else data
    if flags is not None and flags & 1:
        warn(f"{where}: mode 0 bytes carry IMOD's signed flag (imodStamp 'IMOD', imodFlags bit 0 set): "
             "IMOD stores the value v as the signed byte v - 128, so they were read as unsigned 0..255 "
             "(signed + 128, e.g. an IMOD mask -128/-127 -> 0/1); pass signed_bytes=True for the raw signed bytes")
        return as_unsigned(data) ^ np.uint8(0x80)
    if flags is not None:
        warn(f"{where}: mode 0 bytes read as unsigned 0..255 (assumed unsigned): the IMOD stamp is present and "
             "imodFlags bit 0 (signed) is clear, IMOD's convention for unsigned bytes; MRC2014 says signed, "
             "pass signed_bytes=True to read them so")
        return as_unsigned(data)
    dmin, dmax = float(header.dmin), float(header.dmax)
    stats_set = np.isfinite(dmin) and np.isfinite(dmax) and dmin < dmax
    if stats_set and dmin >= 0 and dmax > 127:
        warn(f"{where}: mode 0 bytes read as unsigned 0..255 (assumed unsigned): header dmin, dmax = "
             f"{dmin:g}, {dmax:g} lie outside the signed range -128..127 of MRC2014; pass signed_bytes=True "
             "to read them as signed")
        return as_unsigned(data)
    if stats_set and dmin < 0:
        return data  # header statistics confirm MRC2014's signed bytes
    if isinstance(data, np.ndarray) and not (data < 0).any():
        return data  # no negative byte: signed and unsigned agree
    warn(f"{where}: mode 0 bytes read as signed -128..127 (MRC2014; assumed signed): neither an IMOD stamp nor "
         f"the header dmin, dmax ({dmin:g}, {dmax:g}) tell the signedness; pass signed_bytes=False if they "
         "are unsigned 0..255")
    return data


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------
def write(obj: xr.DataArray, path: Path) -> None:
    """Write a volume as an MRC2014 file (little-endian, axes 1, 2, 3, no compression).

    The header holds the voxel size (``cella`` = n · voxel, Å) and the first voxel's
    centre (``origin``, Å); the extended header holds sxtlab's attrs as JSON (see the
    module notes), so that the data, voxel size, origin, calibration and class names
    read back exactly. Dask arrays are written chunk by chunk into a memory map.

    Data types: float32, int8, int16 and uint16 are stored as they are (modes 2, 0,
    1, 6); uint8 and bool as mode 0 with IMOD's unsigned-byte stamp (as IMOD writes
    them; plain mrcfile reads such bytes as signed); float16 as float32; other
    integers in the smallest of uint8, int8, uint16, int16 that holds their range,
    else float32 up to ±2**24 (the original dtype is restored on reading); float64 is
    rounded to float32.

    Raises
    ------
    sxtlab.FormatError
        If ``obj`` is not a (z, y, x) DataArray, its coords disagree with its voxel
        size, it holds NaN/inf, complex values or integers beyond ±2**24, or an
        attr is not JSON-serialisable.
    """
    obj, vs, origin = output_grid(obj, path)
    where = str(path)
    data = finite_checked(obj.data, where)
    store_dtype = storage_dtype(data, where, ("uint8", "int8", "uint16", "int16"), "float32", "MRC")
    data = data.astype(store_dtype) if data.dtype != store_dtype else data
    mode = {"uint8": 0, "int8": 0, "int16": 1, "uint16": 6, "float32": 2}[np.dtype(store_dtype).name]
    text = json.dumps(metadata(obj, vs, origin, where=where), allow_nan=False).encode("utf-8")
    text += b" " * (-len(text) % 4)  # keep the data block 4-byte aligned for memory maps
    ext = np.frombuffer(text, dtype="V1")
    try:
        mrc = mrcfile.new_mmap(path, shape=data.shape, mrc_mode=mode, overwrite=True,
                               extended_header=ext, exttyp=EXTTYP_JSON)
    except (ValueError, OSError) as err:
        raise FormatError(f"{where}: cannot create the MRC file ({err})") from None
    with mrc:
        target = mrc.data.view(np.uint8) if store_dtype == np.uint8 else mrc.data
        if isinstance(data, da.Array):
            da.store(data, target, lock=False)
        else:
            target[...] = data
        h = mrc.header
        if vs is not None:
            mrc.voxel_size = (vs[2] * A_PER_UM, vs[1] * A_PER_UM, vs[0] * A_PER_UM)
        h.origin = (origin[2] * A_PER_UM, origin[1] * A_PER_UM, origin[0] * A_PER_UM)
        h.nxstart = h.nystart = h.nzstart = 0
        h.dmin, h.dmax, h.dmean, h.rms = _statistics(target)
        if store_dtype == np.uint8:
            # IMOD's stamp with imodFlags bit 0 clear: these bytes are unsigned
            extra = bytearray(h.extra2.tobytes())
            extra[40:48] = np.array([IMOD_STAMP, 0], dtype=h.mode.dtype.byteorder.replace("|", "=") + "i4").tobytes()
            h.extra2 = bytes(extra)
        mrc.add_label("sxtlab: volume attrs as JSON in the extended header (EXTTYP JSON)")


def _statistics(data: np.ndarray) -> tuple[float, float, float, float]:
    """dmin, dmax, dmean, rms (standard deviation from the mean, as MRC2014 defines it).

    Accumulated over slabs of about 64 MiB so that a large memory-mapped file needs
    no float64 copy of itself.
    """
    step = max(1, (64 * 2**20) // max(1, data[0].size * 8))
    lo, hi, total, squares = np.inf, -np.inf, 0.0, 0.0
    for z in range(0, data.shape[0], step):
        slab = np.asarray(data[z:z + step], dtype=np.float64)
        lo, hi = min(lo, slab.min()), max(hi, slab.max())
        total += slab.sum()
        squares += np.square(slab).sum()
    mean = total / data.size
    return float(lo), float(hi), float(mean), float(np.sqrt(max(squares / data.size - mean**2, 0.0)))
