"""A reference catalog of segmented SXT cells, for task-based training.

An imaging centre collects segmented cells over years, each annotated for the
question it was made for: one user marked nuclei and lipid bodies, another only
mitochondria. The catalog records, for every entry, the image (with its voxel size
and calibration), the labels, **which classes the entry annotated** (and so which it
did not) and free metadata (species, cell type, condition, annotator, date, source),
so that a task can select the entries that can teach it.

Layout
------
A catalog is one folder that can be copied or archived as a whole::

    my_catalog/
        index.sqlite          # one row per entry: shape, voxel size, classes, metadata
        entries/<id>.zarr     # one Zarr v3 group per entry: lac, labels, z, y, x

Listing and selecting read only ``index.sqlite``, so they stay fast with thousands
of entries. Each entry group holds ``lac`` (float32) and ``labels`` (uint8 or
uint16) chunked 64³ with ``dimension_names`` ``z, y, x`` (``xarray.open_zarr``
reads a group directly), the coordinates ``z, y, x`` (µm), every array's attrs as
JSON, and a copy of the entry's index row under the group attr
``sxtlab_catalog_entry`` so that an entry folder describes itself. The index is
authoritative where the two differ.

Atomicity and concurrency
-------------------------
The index is SQLite in WAL mode (readers never block the writer; writers wait for
each other up to :data:`BUSY_TIMEOUT_S`). :meth:`Catalog.add` writes the entry's
group under a hidden temporary name, then, in one ``BEGIN IMMEDIATE`` transaction,
inserts the row, renames the group into place and commits. Because the rename
happens while the write lock is held, an entry folder that sits under its final name
without an index row can only be what a writer killed between rename and commit
left behind; :meth:`Catalog.open` removes such orphans (re-checking under the lock)
and hidden temporaries older than a day. An exception inside ``add`` or ``remove``
undoes everything at once. Two processes adding at once both succeed.

The guarantees are against process crashes and exceptions, not power loss (entry
files are not fsynced), and SQLite's WAL mode needs a local file system (not NFS).
Copy or archive a catalog while no process has it open, so that the WAL file has
been folded into ``index.sqlite``.

Selecting for a task
--------------------
:meth:`Catalog.select` keeps entries that annotated all (or any) of the requested
classes, matched through the vocabulary (:func:`sxtlab.classes.canonical_name`).
Membership is exact, also along the class hierarchy: an entry that annotated
``nucleus`` but not ``nucleolus`` labelled its nucleoli as nucleus and cannot tell
them apart, so it does not serve a task that asks for ``nucleolus``; an entry that
annotated only ``nucleolus`` does not know where the rest of the nucleus is, so it
does not serve a task that asks for ``nucleus``. ``background`` (label 0) is held by
every entry and is never a reason to exclude one.

Examples
--------
>>> import numpy as np, sxtlab
>>> from sxtlab.catalog import Catalog
>>> cat = Catalog.create(tmp / "cells")  # doctest: +SKIP
>>> img = sxtlab.volume(np.zeros((8, 8, 8), np.float32), voxel_size=0.03)
>>> lab = sxtlab.label_volume(np.ones((8, 8, 8), np.uint8), img, {1: "cell"})
>>> entry = cat.add(img, lab, species="yeast", annotator="ana")  # doctest: +SKIP
>>> cat.select(["cytoplasm"], species="yeast").index.tolist() == [entry]  # doctest: +SKIP
True
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import sqlite3
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr
from tqdm.auto import tqdm

from .classes import BACKGROUND, UNANNOTATED, VOCABULARY, UnknownClassError, canonical_name, class_map
from .errors import FormatError, OutputExistsError, SxtlabError, SxtlabWarning
from .io import read_project
from .io._atomic import atomic_output
from .volume import DIMS, check_finite, check_same_grid, check_voxel_size

__all__ = [
    "Catalog",
    "CatalogError",
    "EntryExistsError",
    "EntryNotFoundError",
    "InvalidEntryError",
    "FORMAT_VERSION",
    "STANDARD_METADATA",
    "import_projects",
]

#: Version of the on-disk layout this module writes; it reads this one and older.
FORMAT_VERSION = 1
#: Metadata keys every catalog lists as columns (values may be missing).
STANDARD_METADATA = ("species", "cell_type", "condition", "annotator", "date", "source")
#: How long a writer waits for another one's write lock, in seconds.
BUSY_TIMEOUT_S = 60.0
#: Hidden temporaries older than this (seconds) are taken for leftovers of a killed writer.
PARTIAL_MAX_AGE_S = 24 * 3600.0

_INDEX = "index.sqlite"
_ENTRIES = "entries"
_CHUNK = 64
_GROUP_ATTR = "sxtlab_catalog_entry"
# Classes an entry can annotate: background (label 0) is held by every entry.
_CLASSES = tuple(c for c in VOCABULARY if c != "background")
_FLOAT_COLUMNS = ("dz_um", "dy_um", "dx_um", "lac_scale", "lac_offset")
_BUILTIN_COLUMNS = ("shape", *_FLOAT_COLUMNS[:3], "units", *_FLOAT_COLUMNS[3:],
                    "annotated_classes", "label_classes")
# Metadata may not shadow a frame column or a Dataset attr set by get().
_RESERVED = {"id", "entry_id", "added", "path", *_BUILTIN_COLUMNS}
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Names Windows refuses for a file whatever its extension.
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                    *(f"LPT{i}" for i in range(1, 10))}
# Hidden names of entry groups in transit: ".<id>.zarr.partial-<token>" (being written)
# and ".<id>.zarr.removing-<token>" (being deleted).
_TRANSIT = re.compile(r"\.(?P<id>.+)\.zarr\.(?P<kind>partial|removing)-[0-9a-f]+")

_SCHEMA = """
CREATE TABLE catalog_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
    id TEXT PRIMARY KEY,
    added TEXT NOT NULL,
    nz INTEGER NOT NULL, ny INTEGER NOT NULL, nx INTEGER NOT NULL,
    dz_um REAL, dy_um REAL, dx_um REAL,
    units TEXT NOT NULL,
    lac_scale REAL, lac_offset REAL,
    annotated_classes TEXT NOT NULL,
    label_classes TEXT NOT NULL,
    metadata TEXT NOT NULL
);
-- Entry folders must not collide on case-insensitive file systems (macOS, Windows).
CREATE UNIQUE INDEX entries_id_nocase ON entries (id COLLATE NOCASE);
"""
_COLUMNS = ("id", "added", "nz", "ny", "nx", "dz_um", "dy_um", "dx_um", "units", "lac_scale",
            "lac_offset", "annotated_classes", "label_classes", "metadata")


class CatalogError(SxtlabError):
    """A folder is not a catalog this sxtlab can read, or the catalog is inconsistent."""


class InvalidEntryError(CatalogError, ValueError):
    """An entry id, its classes or its metadata are not acceptable."""


class EntryExistsError(CatalogError, ValueError):
    """An entry with the given id is already in the catalog."""


class EntryNotFoundError(CatalogError, KeyError):
    """No entry with the given id."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


# -- validation ---------------------------------------------------------------------

def _json_default(value: Any) -> Any:
    # NumPy scalars and arrays convert without loss; anything else is refused.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _to_json(value: Any, where: str) -> str:
    try:
        return json.dumps(value, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        text = repr(value)
        raise InvalidEntryError(
            f"{where} = {text if len(text) <= 80 else text[:77] + '...'} cannot be stored as JSON "
            f"({exc}); use str, int, float "
            "(finite), bool, None, or lists and dicts of them (dates as ISO strings, "
            "e.g. date.isoformat())"
        ) from None


def _jsonable_attrs(attrs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The attrs as they will read back from JSON, each key checked on its own."""
    out = {}
    for key, value in attrs.items():
        if not isinstance(key, str):
            raise InvalidEntryError(f"{where} key {key!r} is a {type(key).__name__}; attr names must be str")
        out[key] = json.loads(_to_json(value, f"{where}[{key!r}]"))
    return out


def _check_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    for key in metadata:
        if key in _RESERVED or key.startswith("annotates_"):
            raise InvalidEntryError(
                f"metadata key {key!r} is reserved for the catalog's own columns "
                f"({', '.join(sorted(_RESERVED))}, annotates_<class>); choose another name"
            )
    return _jsonable_attrs(metadata, "metadata")


def _check_entry_id(entry_id: Any) -> str:
    if not isinstance(entry_id, str) or not _ID_PATTERN.fullmatch(entry_id):
        raise InvalidEntryError(
            f"entry id {entry_id!r} is not safe as a folder name: use 1–128 letters, digits, "
            "'_', '-' or '.', starting with a letter or digit"
        )
    if entry_id.split(".")[0].upper() in _WINDOWS_DEVICES:
        raise InvalidEntryError(f"entry id {entry_id!r} is a reserved device name on Windows")
    return entry_id


def _check_dims(arr: Any, what: str) -> None:
    if not isinstance(arr, xr.DataArray):
        raise FormatError(
            f"{what}: expected an xarray.DataArray (from sxtlab.volume / sxtlab.label_volume), "
            f"got {type(arr).__name__}"
        )
    if arr.dims != DIMS:
        raise FormatError(
            f"{what}: expected dims {DIMS}, got {arr.dims}"
            + (f"; use .transpose{DIMS}" if set(arr.dims) == set(DIMS) else "")
        )
    if 0 in arr.shape:
        raise FormatError(f"{what}: shape {tuple(arr.shape)} is empty")


def _check_image(image: xr.DataArray) -> tuple[float, float, float] | None:
    """Validate an image volume; return its voxel size (None when unknown)."""
    _check_dims(image, "image")
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise FormatError(f"image: expected real numbers, got dtype {image.dtype}")
    units = image.attrs.get("units")
    if units not in ("1/um", "gray"):
        raise FormatError(
            f"image: attr 'units' must be '1/um' (LAC) or 'gray', got {units!r}; build the image "
            "with sxtlab.volume()"
        )
    check_finite(image.data, where="image")
    return check_voxel_size(image.attrs.get("voxel_size_um"), where="image: attr 'voxel_size_um'")


def _present_values(data: Any) -> set[int]:
    """The distinct values of an integer array, NumPy or dask, read slab by slab."""
    if isinstance(data, da.Array):
        return {int(v) for v in da.unique(data).compute()}
    data = np.asarray(data)
    # Slabs of about 4 M voxels bound the memory np.unique needs for its sort.
    step = max(1, (1 << 22) // max(1, data[0].size))
    seen: set[int] = set()
    for z in range(0, data.shape[0], step):
        seen.update(np.unique(data[z:z + step]).tolist())
    return seen


def _check_labels(labels: xr.DataArray, image: xr.DataArray) -> tuple[np.dtype, dict[int, str]]:
    """Validate a label volume against its image.

    Returns the dtype the labels are stored with and their ``{value: canonical name}``.
    Reads the labels once (to find the values they hold).
    """
    _check_dims(labels, "labels")
    check_same_grid(image, labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise FormatError(f"labels: expected integers, got dtype {labels.dtype}")
    if "classes" not in labels.attrs:
        raise FormatError(
            "labels: no 'classes' attr naming their values (e.g. {'1': 'cell', '2': 'nucleus'}); "
            "build them with sxtlab.label_volume()"
        )
    named = class_map(labels.attrs["classes"])
    present = _present_values(labels.data)
    unnamed = sorted(present - set(named) - {BACKGROUND, UNANNOTATED})
    if unnamed:
        raise FormatError(
            f"labels hold values {unnamed} that their classes attr {labels.attrs['classes']} does "
            f"not name ({BACKGROUND} is background, {UNANNOTATED} unannotated)"
        )
    if labels.dtype in (np.uint8, np.uint16):
        return labels.dtype, named
    highest = max(present | set(named) | {UNANNOTATED})
    lowest = min(present | set(named))
    if lowest < 0 or highest > np.iinfo(np.uint16).max:
        raise FormatError(f"labels: values {lowest}..{highest} do not fit uint16 (0..65535)")
    return np.dtype(np.uint8 if highest <= np.iinfo(np.uint8).max else np.uint16), named


def _canonical_classes(names: str | Iterable[str]) -> list[str]:
    """Canonical names in vocabulary order, without duplicates and without background."""
    if isinstance(names, str):
        names = [names]
    wanted = {canonical_name(str(n)) for n in names}
    return [c for c in _CLASSES if c in wanted]


def _annotated_classes(classes: str | Iterable[str] | None, named: dict[int, str],
                       attr: Any) -> list[str]:
    present = _canonical_classes(named.values())
    if classes is None:
        annotated = present
    else:
        annotated = _canonical_classes(classes)
        missing = [c for c in annotated if c not in present]
        if missing:
            raise InvalidEntryError(
                f"classes names {missing}, which the labels' classes attr {attr} does not name; "
                "an annotated class needs a label value"
            )
    if not annotated:
        raise InvalidEntryError(
            f"the entry annotates no class (labels' classes attr {attr}, classes={classes!r}); "
            "name at least one class other than background"
        )
    return annotated


# -- files --------------------------------------------------------------------------

def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(min(_CHUNK, n) for n in shape)


def _remove_tree(path: Path) -> None:
    """Delete a folder; another process deleting the same folder at once is not an error."""

    def ignore_vanished(exc: BaseException) -> None:
        if not isinstance(exc, FileNotFoundError):
            raise exc

    if sys.version_info >= (3, 12):  # onerror is deprecated from 3.12, onexc is new there
        shutil.rmtree(path, onexc=lambda func, p, exc: ignore_vanished(exc))
    else:
        shutil.rmtree(path, onerror=lambda func, p, info: ignore_vanished(info[1]))


def _write_array(group: zarr.Group, name: str, data: Any, dtype: np.dtype, fill_value: int,
                 attrs: dict[str, Any]) -> None:
    shape = tuple(data.shape)
    arr = group.create_array(name, shape=shape, dtype=dtype, chunks=_chunks(shape),
                             fill_value=fill_value, dimension_names=DIMS, attributes=attrs)
    if isinstance(data, da.Array):
        # Rechunk to the Zarr chunks so that no two dask tasks write the same chunk.
        da.store(data.astype(dtype).rechunk(arr.chunks), arr, lock=False)
    else:
        arr[...] = np.asarray(data, dtype=dtype)


def _write_entry_group(path: Path, coords: dict[str, tuple[np.ndarray, dict]], image: Any, labels: Any,
                       labels_dtype: np.dtype, image_attrs: dict, labels_attrs: dict,
                       group_attrs: dict) -> None:
    """Write one entry's Zarr v3 group at ``path``.

    ``coords`` maps each dim to its values (µm) and attrs; ``image`` and ``labels``
    are NumPy or dask arrays of shape (z, y, x).
    """
    group = zarr.create_group(store=str(path), zarr_format=3, attributes={_GROUP_ATTR: group_attrs})
    for d, (values, attrs) in coords.items():
        group.create_array(d, data=values, dimension_names=(d,), attributes=attrs)
    _write_array(group, "lac", image, np.dtype(np.float32), 0, image_attrs)
    # Chunks nobody annotated equal the fill value and are not written at all.
    _write_array(group, "labels", labels, labels_dtype, UNANNOTATED, labels_attrs)


def _insert_entry(con: sqlite3.Connection, row: dict[str, Any]) -> None:
    con.execute(f"INSERT INTO entries ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                [row[c] for c in _COLUMNS])


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename a finished entry group to its final name (the caller holds the write lock)."""
    if final.exists():
        # Under the lock, a folder with this name and no index row is what a writer
        # killed between rename and commit left; it is not an entry.
        _remove_tree(final)
    os.replace(tmp, final)


def _loads_many(texts: Iterable[str]) -> list[Any]:
    """Decode many JSON texts with one call (one call per text is most of to_frame's time)."""
    return json.loads(f"[{','.join(texts)}]")


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _matches(series: pd.Series, condition: Any) -> pd.Series:
    """Filter one column: a callable is called per present value, a list/set means any
    of, anything else means equal. Missing values never match."""

    def one(value: Any) -> bool:
        if _missing(value):
            return False
        if callable(condition):
            return bool(condition(value))
        if isinstance(condition, (list, set, frozenset)):
            return value in condition
        return bool(value == condition)

    return pd.Series([one(v) for v in series], index=series.index, dtype=bool)


# -- the catalog --------------------------------------------------------------------

class Catalog:
    """A folder of segmented cells: an SQLite index and one Zarr group per entry.

    Create one with :meth:`create`, open one with :meth:`open`. A catalog is a
    container of entry ids: ``len(cat)``, ``for entry_id in cat``, ``entry_id in cat``
    (ids compare case-insensitively, as entry folders do on macOS and Windows).
    It pickles as its path, so it can be handed to worker processes.

    Parameters
    ----------
    path : path-like
        The catalog folder.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CatalogError
        If ``path`` is not a catalog (the message names what is missing) or was
        written by a newer format version than this sxtlab reads.

    Examples
    --------
    >>> cat = Catalog.open("reference_cells")  # doctest: +SKIP
    >>> cat.select(["nucleus", "lipid droplets"], species="yeast")  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self._path = Path(path).absolute()
        self._lock = threading.RLock()
        self._con: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._forked: list[sqlite3.Connection] = []
        self._check_layout()
        self._connection()

    # -- opening ----------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike) -> "Catalog":
        """Create an empty catalog folder at ``path`` and open it.

        The folder is built under a temporary name and renamed into place, so a
        failed create leaves nothing.

        Raises
        ------
        sxtlab.OutputExistsError
            If anything exists at ``path``.
        FileNotFoundError
            If the parent folder does not exist.

        Examples
        --------
        >>> cat = Catalog.create("reference_cells")  # doctest: +SKIP
        >>> len(cat)  # doctest: +SKIP
        0
        """
        path = Path(path)
        if path.exists():
            raise OutputExistsError(
                f"{path} exists; open an existing catalog with Catalog.open({str(path)!r}) "
                "or create one at a new path"
            )

        def write(tmp: Path) -> None:
            tmp.mkdir()
            (tmp / _ENTRIES).mkdir()
            con = sqlite3.connect(tmp / _INDEX, isolation_level=None)
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(_SCHEMA)
                from . import __version__  # here, not at the top: sxtlab/__init__ may import this module

                con.executemany("INSERT INTO catalog_meta VALUES (?, ?)", [
                    ("format_version", str(FORMAT_VERSION)),
                    ("created", _utc_now()),
                    ("created_by", f"sxtlab {__version__}"),
                ])
            finally:
                # Closing the last connection folds the WAL into index.sqlite before the rename.
                con.close()

        atomic_output(path, write)
        return cls(path)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Catalog":
        """Open an existing catalog and clear what crashed writers left behind.

        Entries half-written or half-removed by a killed process are never listed;
        opening removes them (see :meth:`clean`). A catalog on read-only storage
        opens without cleaning.

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        CatalogError
            If ``path`` is not a catalog (the message names what is missing) or its
            format version is newer than :data:`FORMAT_VERSION`.

        Examples
        --------
        >>> cat = Catalog.open("reference_cells")  # doctest: +SKIP
        >>> cat.to_frame()[["species", "annotated_classes"]]  # doctest: +SKIP
        """
        cat = cls(path)
        try:
            cat.clean()
        # Read-only storage: nothing can be cleaned, and listing ignores leftovers anyway.
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc):
                raise
        return cat

    def _check_layout(self) -> None:
        p = self._path
        if not p.exists():
            raise FileNotFoundError(f"no catalog at {p}: the folder does not exist (create one with Catalog.create)")
        if not p.is_dir():
            raise CatalogError(f"{p} is a file, not a catalog folder (one with {_INDEX} and {_ENTRIES}/)")
        missing = [name for name in (_INDEX, _ENTRIES) if not (p / name).exists()]
        if missing:
            raise CatalogError(
                f"{p} is not an sxtlab catalog: it has no {' and no '.join(missing)} "
                f"(a catalog folder holds {_INDEX} and {_ENTRIES}/; create one with Catalog.create)"
            )

    def _connection(self) -> sqlite3.Connection:
        if self._con is not None and self._pid == os.getpid():
            return self._con
        if self._con is not None:
            # Inherited through fork: SQLite forbids using it, and closing it here could
            # disturb the parent's locks, so keep it referenced and unused.
            self._forked.append(self._con)
        self._pid = os.getpid()
        index = self._path / _INDEX
        # mode=rw: never create an empty database where the index should be. One
        # connection serves all threads, serialised by self._lock.
        con = sqlite3.connect(f"{index.as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S,
                              isolation_level=None, check_same_thread=False)
        try:
            meta = dict(con.execute("SELECT key, value FROM catalog_meta").fetchall())
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            con.close()
            raise CatalogError(f"{index} is not an sxtlab catalog index ({exc})") from None
        if "format_version" not in meta or "entries" not in tables:
            con.close()
            raise CatalogError(
                f"{index} is not an sxtlab catalog index: it lacks "
                + ("the format_version record" if "format_version" not in meta else "the entries table")
            )
        version = int(meta["format_version"])
        if version > FORMAT_VERSION:
            con.close()
            raise CatalogError(
                f"{self._path} was written in catalog format version {version} "
                f"({meta.get('created_by', 'unknown writer')}); this sxtlab reads versions up to "
                f"{FORMAT_VERSION}: upgrade sxtlab"
            )
        self._con = con
        return con

    def close(self) -> None:
        """Close the index; the catalog reopens it on next use."""
        with self._lock:
            if self._con is not None and self._pid == os.getpid():
                self._con.close()
            self._con = None

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self) -> tuple:
        return (type(self), (str(self._path),))

    # -- properties and container protocol ---------------------------------------
    @property
    def path(self) -> Path:
        """The catalog folder (absolute)."""
        return self._path

    @property
    def _entries(self) -> Path:
        return self._path / _ENTRIES

    def entry_path(self, entry_id: str) -> Path:
        """Folder of an entry's Zarr group (``entries/<id>.zarr``).

        Raises
        ------
        EntryNotFoundError
            If there is no such entry.
        """
        return self._entries / f"{self._row(entry_id)['id']}.zarr"

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._connection().execute(sql, tuple(params)).fetchall()

    def _row(self, entry_id: str) -> dict[str, Any]:
        rows = self._query(f"SELECT {', '.join(_COLUMNS)} FROM entries WHERE id = ? COLLATE NOCASE",
                           (entry_id,))
        if not rows:
            raise EntryNotFoundError(f"no entry {entry_id!r} in the catalog at {self._path}")
        return dict(zip(_COLUMNS, rows[0]))

    def __len__(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM entries")[0][0])

    def __iter__(self) -> Iterator[str]:
        return iter([r[0] for r in self._query("SELECT id FROM entries ORDER BY rowid")])

    def __contains__(self, entry_id: object) -> bool:
        if not isinstance(entry_id, str):
            return False
        return bool(self._query("SELECT 1 FROM entries WHERE id = ? COLLATE NOCASE", (entry_id,)))

    def __repr__(self) -> str:
        counts = dict.fromkeys(_CLASSES, 0)
        rows = self._query("SELECT annotated_classes FROM entries")
        for (annotated,) in rows:
            for c in json.loads(annotated):
                counts[c] += 1
        summary = ", ".join(f"{c} {n}" for c, n in counts.items() if n) or "none"
        return f"<Catalog {str(self._path)!r}: {len(rows)} entries; annotated: {summary}>"

    # -- writing ----------------------------------------------------------------
    def add(self, image: xr.DataArray, labels: xr.DataArray,
            classes: str | Iterable[str] | None = None, *, entry_id: str | None = None,
            **metadata: Any) -> str:
        """Add one segmented cell; atomic, and safe while other processes add too.

        Parameters
        ----------
        image : xarray.DataArray, dims (z, y, x)
            From :func:`sxtlab.volume`: attr ``units`` ``"1/um"`` or ``"gray"``,
            ``voxel_size_um`` ``[dz, dy, dx]`` in µm or ``None`` (unknown; recorded as
            such), calibration attrs optional. Stored as float32 with all its attrs;
            only the ``z, y, x`` coordinates are kept.
        labels : xarray.DataArray of int, dims (z, y, x)
            From :func:`sxtlab.label_volume`, on the image's grid, with a ``classes``
            attr naming every value other than 0 (background) and 255 (unannotated).
            Stored as uint8/uint16 (kept if already one of them, else the smaller
            that holds the values).
        classes : str or list of str, optional
            The classes this entry annotated (synonyms allowed). Default: every
            class the labels' ``classes`` attr names. Giving fewer says that the
            other named values are not to be trusted as annotations of their class.
        entry_id : str, optional
            A stable id, safe as a folder name (letters, digits, ``_ - .``; unique
            ignoring case). Default: a new ``uuid4`` hex.
        **metadata
            JSON-serialisable values, e.g. ``species``, ``cell_type``, ``condition``,
            ``annotator``, ``date`` (ISO string), ``source`` (default: the image's
            ``source`` attr). Stored as they read back from JSON (tuples as lists).

        Returns
        -------
        str
            The entry id.

        Raises
        ------
        sxtlab.FormatError
            If the image or labels are not 3-D ``(z, y, x)`` volumes, not on the same
            grid, have an invalid voxel size or units, NaN/inf values, or label values
            their ``classes`` attr does not name.
        sxtlab.classes.UnknownClassError
            If a class name is not in the vocabulary.
        InvalidEntryError
            If ``classes`` names a class the labels do not, no class is annotated, a
            metadata key is reserved, a metadata value or attr is not
            JSON-serialisable (the message names the key), or the id is unsafe.
        EntryExistsError
            If ``entry_id`` is taken.

        Examples
        --------
        >>> eid = cat.add(img, lab, classes=["nucleus"], species="yeast", date="2024-05-01")  # doctest: +SKIP
        """
        voxel_size = _check_image(image)
        labels_dtype, named = _check_labels(labels, image)
        annotated = _annotated_classes(classes, named, labels.attrs["classes"])
        if "source" not in metadata and image.attrs.get("source") is not None:
            metadata["source"] = image.attrs["source"]
        meta = _check_metadata(metadata)
        image_attrs = _jsonable_attrs(image.attrs, "image attrs")
        labels_attrs = _jsonable_attrs(labels.attrs, "labels attrs")
        coords = {d: (np.asarray(image[d].values, dtype=np.float64),
                      _jsonable_attrs(image[d].attrs, f"image coordinate {d!r} attrs"))
                  for d in DIMS if d in image.coords}
        entry_id = uuid.uuid4().hex if entry_id is None else _check_entry_id(entry_id)
        if entry_id in self:  # checked again under the write lock; this saves the write
            raise EntryExistsError(f"entry {entry_id!r} exists in {self._path}; choose another id")
        calibration = (image_attrs.get("lac_scale"), image_attrs.get("lac_offset"))
        row = {
            "id": entry_id, "added": _utc_now(),
            "nz": image.shape[0], "ny": image.shape[1], "nx": image.shape[2],
            "dz_um": None, "dy_um": None, "dx_um": None,
            "units": image_attrs["units"],
            "lac_scale": None if calibration[0] is None else float(calibration[0]),
            "lac_offset": None if calibration[1] is None else float(calibration[1]),
            "annotated_classes": json.dumps(annotated),
            "label_classes": json.dumps({str(k): v for k, v in sorted(named.items())}),
            "metadata": json.dumps(meta),
        }
        if voxel_size is not None:
            row["dz_um"], row["dy_um"], row["dx_um"] = voxel_size
        group_attrs = {"format_version": FORMAT_VERSION, **self._describe(row)}

        tmp = self._entries / f".{entry_id}.zarr.partial-{uuid.uuid4().hex[:12]}"
        try:
            # The slow part, outside the lock, so that writers work in parallel.
            _write_entry_group(tmp, coords, image.data, labels.data, labels_dtype, image_attrs,
                               labels_attrs, group_attrs)
            self._publish(row, tmp)
        finally:
            if tmp.exists():
                _remove_tree(tmp)
        return entry_id

    def _publish(self, row: dict[str, Any], tmp: Path) -> None:
        """Insert the row, rename the group into place and commit, all under the write lock."""
        final = self._entries / f"{row['id']}.zarr"
        with self._lock:
            con = self._connection()
            con.execute("BEGIN IMMEDIATE")
            try:
                if con.execute("SELECT 1 FROM entries WHERE id = ? COLLATE NOCASE", (row["id"],)).fetchone():
                    raise EntryExistsError(f"entry {row['id']!r} exists in {self._path}; choose another id")
                _insert_entry(con, row)
                _move_into_place(tmp, final)
                con.execute("COMMIT")
            except BaseException:
                # Undo the rename while the lock is still held, so that no cleaner takes
                # the folder for an orphan in between; the caller removes tmp.
                if final.exists() and not tmp.exists():
                    os.replace(final, tmp)
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

    def remove(self, entry_id: str) -> None:
        """Remove an entry: its index row and its folder, atomically.

        Lazy arrays from an earlier :meth:`get` of this entry stop working.

        Raises
        ------
        EntryNotFoundError
            If there is no such entry.

        Examples
        --------
        >>> cat.remove(eid)  # doctest: +SKIP
        >>> eid in cat  # doctest: +SKIP
        False
        """
        moved: Path | None = None
        with self._lock:
            con = self._connection()
            con.execute("BEGIN IMMEDIATE")
            try:
                found = con.execute("SELECT id FROM entries WHERE id = ? COLLATE NOCASE", (entry_id,)).fetchone()
                if found is None:
                    raise EntryNotFoundError(f"no entry {entry_id!r} in the catalog at {self._path}")
                con.execute("DELETE FROM entries WHERE id = ?", (found[0],))
                final = self._entries / f"{found[0]}.zarr"
                if final.exists():
                    # A hidden name first, so that the slow delete happens outside the lock
                    # and never races an add that reuses the id.
                    moved = self._entries / f".{found[0]}.zarr.removing-{uuid.uuid4().hex[:12]}"
                    os.replace(final, moved)
                con.execute("COMMIT")
            except BaseException:
                if moved is not None:  # put the folder back while the lock is still held
                    os.replace(moved, final)
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        if moved is not None:
            _remove_tree(moved)

    def update_metadata(self, entry_id: str, **metadata: Any) -> dict[str, Any]:
        """Set (or, with ``None``, delete) metadata of an entry.

        The index and the copy in the entry's group attrs are updated under the
        write lock; the index is authoritative if a crash separates them.

        Returns
        -------
        dict
            The entry's metadata after the update.

        Raises
        ------
        EntryNotFoundError
            If there is no such entry.
        InvalidEntryError
            If a key is reserved or a value is not JSON-serialisable (the message
            names the key).

        Examples
        --------
        >>> cat.update_metadata(eid, condition="starved", date=None)  # doctest: +SKIP
        {'species': 'yeast', 'condition': 'starved'}
        """
        updates = _check_metadata({k: v for k, v in metadata.items() if v is not None})
        with self._lock:
            con = self._connection()
            con.execute("BEGIN IMMEDIATE")
            group: zarr.Group | None = None
            old_attrs: dict[str, Any] = {}
            try:
                found = con.execute("SELECT id, metadata FROM entries WHERE id = ? COLLATE NOCASE",
                                    (entry_id,)).fetchone()
                if found is None:
                    raise EntryNotFoundError(f"no entry {entry_id!r} in the catalog at {self._path}")
                meta = json.loads(found[1])
                meta.update(updates)
                for key in (k for k, v in metadata.items() if v is None):
                    meta.pop(key, None)
                con.execute("UPDATE entries SET metadata = ? WHERE id = ?", (json.dumps(meta), found[0]))
                path = self._entries / f"{found[0]}.zarr"
                if path.is_dir():
                    group = zarr.open_group(str(path), mode="r+")
                    old_attrs = dict(group.attrs[_GROUP_ATTR])
                    group.attrs[_GROUP_ATTR] = {**old_attrs, "metadata": meta}
                con.execute("COMMIT")
            except BaseException:
                if group is not None and old_attrs:
                    group.attrs[_GROUP_ATTR] = old_attrs
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        return meta

    def clean(self, partial_older_than_s: float = PARTIAL_MAX_AGE_S) -> list[str]:
        """Remove what crashed writers left in ``entries/``; listing never shows it.

        - an entry folder without an index row (writer killed between rename and
          commit): removed;
        - a hidden folder of an interrupted :meth:`remove`: finished if the row is
          gone, renamed back if the commit never happened;
        - a hidden temporary of an interrupted :meth:`add` older than
          ``partial_older_than_s`` seconds: removed. Younger ones may belong to a
          writer still at work; pass 0 only when no process is adding.

        Decisions about folders that writers rename are taken under the write lock,
        so cleaning is safe while other processes add and remove.

        Returns
        -------
        list of str
            Names (in ``entries/``) removed or restored.
        """
        now = time.time()
        names = [e.name for e in os.scandir(self._entries)]
        done: list[str] = []
        for name in names:
            m = _TRANSIT.fullmatch(name)
            if m and m["kind"] == "partial":
                try:
                    old = now - (self._entries / name).stat().st_mtime > partial_older_than_s
                except FileNotFoundError:  # its writer just finished or failed
                    continue
                if old:
                    _remove_tree(self._entries / name)
                    done.append(name)
        listed = set(self)
        suspects = [n for n in names
                    if (n.endswith(".zarr") and not n.startswith(".") and n[:-5] not in listed)
                    or ((m := _TRANSIT.fullmatch(n)) and m["kind"] == "removing")]
        if not suspects:
            return done
        to_delete: list[Path] = []
        with self._lock:
            con = self._connection()
            con.execute("BEGIN IMMEDIATE")
            try:
                listed = {r[0] for r in con.execute("SELECT id FROM entries")}
                for name in suspects:
                    path = self._entries / name
                    if not path.exists():
                        continue
                    m = _TRANSIT.fullmatch(name)
                    if m is None:
                        if name[:-5] in listed:
                            continue  # committed since the scan
                        hidden = self._entries / f".{name[:-5]}.zarr.removing-{uuid.uuid4().hex[:12]}"
                        os.replace(path, hidden)
                        to_delete.append(hidden)
                    elif m["id"] in listed and not (self._entries / f"{m['id']}.zarr").exists():
                        os.replace(path, self._entries / f"{m['id']}.zarr")  # remove() never committed
                    else:
                        to_delete.append(path)
                    done.append(name)
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        for path in to_delete:
            _remove_tree(path)
        return done

    # -- reading ----------------------------------------------------------------
    def _describe(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """An index row as JSON-ready values (the group attr copy and get()'s attrs)."""
        return {
            "entry_id": row["id"],
            "added": row["added"],
            "annotated_classes": json.loads(row["annotated_classes"]),
            "label_classes": json.loads(row["label_classes"]),
            "metadata": json.loads(row["metadata"]),
        }

    def entry_classes(self, entry_id: str) -> list[str]:
        """Canonical names of the classes an entry annotated, in vocabulary order.

        Raises
        ------
        EntryNotFoundError
            If there is no such entry.

        Examples
        --------
        >>> cat.entry_classes(eid)  # doctest: +SKIP
        ['nucleus', 'lipid_body']
        """
        return json.loads(self._row(entry_id)["annotated_classes"])

    def metadata(self, entry_id: str) -> dict[str, Any]:
        """An entry's metadata (from the index)."""
        return json.loads(self._row(entry_id)["metadata"])

    def get(self, entry_id: str) -> xr.Dataset:
        """Open an entry lazily as a segmentation Dataset.

        Returns
        -------
        xarray.Dataset
            ``lac`` (float32) and ``labels`` (uint8/uint16), dims ``(z, y, x)``,
            dask arrays chunked as stored (64³), coords in µm, each variable's attrs
            exactly as added (through JSON). Dataset attrs: ``entry_id``, ``added``
            (ISO UTC), ``annotated_classes``, ``label_classes`` and the metadata keys.

        Raises
        ------
        EntryNotFoundError
            If there is no such entry.
        CatalogError
            If the index lists the entry but its folder is missing.

        Examples
        --------
        >>> ds = cat.get(eid)  # doctest: +SKIP
        >>> ds.labels.attrs["classes"]  # doctest: +SKIP
        {'1': 'cell', '2': 'nucleus'}
        """
        row = self._row(entry_id)
        path = self._entries / f"{row['id']}.zarr"
        if not path.is_dir():
            raise CatalogError(
                f"entry {row['id']!r} is in the index but its folder {path} is missing; "
                f"remove it with catalog.remove({row['id']!r})"
            )
        group = zarr.open_group(str(path), mode="r")
        coords = {d: xr.Variable(d, group[d][...], attrs=group[d].attrs.asdict())
                  for d in DIMS if d in group}
        data_vars = {
            name: xr.DataArray(da.from_zarr(group[name]), dims=DIMS, coords=coords,
                               attrs=group[name].attrs.asdict(), name=name)
            for name in ("lac", "labels")
        }
        described = self._describe(row)
        attrs = {**described.pop("metadata"), **described}
        return xr.Dataset(data_vars, attrs=attrs)

    def to_frame(self) -> pd.DataFrame:
        """One row per entry, from the index alone (no image is opened).

        Returns
        -------
        pandas.DataFrame
            Index ``id`` (insertion order). Columns: ``shape`` (tuple nz, ny, nx),
            ``dz_um, dy_um, dx_um`` (µm; NaN when unknown), ``units``, ``lac_scale``,
            ``lac_offset`` (NaN when none), ``annotated_classes`` (list),
            ``label_classes`` (dict value → class), ``annotates_<class>`` (bool, one
            per vocabulary class), the :data:`STANDARD_METADATA` columns, any other
            metadata keys (sorted), ``added`` (UTC timestamp) and ``path`` (the
            entry's folder).

        Examples
        --------
        >>> cat.to_frame().groupby("species").annotates_nucleus.sum()  # doctest: +SKIP
        """
        rows = self._query(f"SELECT {', '.join(_COLUMNS)} FROM entries ORDER BY rowid")
        # Column by column: a dict per row costs several times more with thousands of rows.
        col = dict(zip(_COLUMNS, zip(*rows))) if rows else dict.fromkeys(_COLUMNS, ())
        annotated = _loads_many(col["annotated_classes"])
        metadata = _loads_many(col["metadata"])
        extra = sorted(set().union(*metadata) - set(STANDARD_METADATA))
        prefix = f"{self._entries}{os.sep}"
        data: dict[str, Any] = {
            "id": list(col["id"]),
            "shape": list(zip(col["nz"], col["ny"], col["nx"])),
            **{c: np.array(col[c], dtype=float) for c in _FLOAT_COLUMNS[:3]},
            "units": list(col["units"]),
            **{c: np.array(col[c], dtype=float) for c in _FLOAT_COLUMNS[3:]},
            "annotated_classes": annotated,
            "label_classes": _loads_many(col["label_classes"]),
            **{f"annotates_{c}": np.array([c in a for a in annotated], dtype=bool) for c in _CLASSES},
            **{k: [m.get(k) for m in metadata] for k in (*STANDARD_METADATA, *extra)},
            "added": pd.to_datetime(list(col["added"]), utc=True, format="ISO8601"),
            "path": [f"{prefix}{i}.zarr" for i in col["id"]],
        }
        return pd.DataFrame(data).set_index("id")

    def select(self, classes: str | Iterable[str] | None = None, *, how: str = "all",
               **filters: Any) -> pd.DataFrame:
        """Entries that can teach a task: they annotated the classes and match the filters.

        Reads the index only.

        Parameters
        ----------
        classes : str or list of str, optional
            Class names or synonyms. Membership is exact along the hierarchy: an
            entry that annotated ``nucleus`` but not ``nucleolus`` does not serve
            ``nucleolus`` (its nucleoli are labelled nucleus), nor does one that
            annotated only ``nucleolus`` serve ``nucleus``. ``background`` matches
            every entry.
        how : {"all", "any"}
            Keep entries that annotated all of ``classes``, or at least one.
        **filters
            Column (metadata or built-in, see :meth:`to_frame`) = condition: a
            value (equal), a list or set (any of them), or a callable called with
            each present value and returning bool. Entries missing the column never
            match.

        Returns
        -------
        pandas.DataFrame
            The matching rows of :meth:`to_frame`.

        Raises
        ------
        sxtlab.classes.UnknownClassError
            If a class name is not in the vocabulary.
        ValueError
            If ``how`` is not ``"all"`` or ``"any"``, or a filter names a column that
            no entry has (in a non-empty catalog; an empty one returns no rows).

        Examples
        --------
        >>> cat.select(["nucleus", "LDs"], species="yeast",
        ...            dz_um=lambda dz: dz <= 0.04)  # doctest: +SKIP
        """
        if how not in ("all", "any"):
            raise ValueError(f"how must be 'all' or 'any', got {how!r}")
        frame = self.to_frame()
        keep = pd.Series(True, index=frame.index, dtype=bool)
        if classes is not None:
            names = [classes] if isinstance(classes, str) else list(classes)
            wanted = _canonical_classes(names)
            # Every entry holds background, so asking for it among "any" keeps them all.
            any_background = how == "any" and "background" in {canonical_name(n) for n in names}
            if wanted and not any_background:
                flags = frame[[f"annotates_{c}" for c in wanted]]
                keep &= flags.all(axis=1) if how == "all" else flags.any(axis=1)
        for key, condition in filters.items():
            if key not in frame.columns:
                if frame.empty:
                    return frame
                raise ValueError(
                    f"no entry has a column {key!r} to filter on; columns: "
                    f"{', '.join(c for c in frame.columns if not c.startswith('annotates_'))}"
                )
            keep &= _matches(frame[key], condition)
        return frame[keep]


# ---------------------------------------------------------------------------------
# Importing an archive of Amira projects
# ---------------------------------------------------------------------------------

def _fingerprint(paths: Iterable[Path]) -> str:
    """SHA-256 of the files' bytes, in order: the identity of an imported cell."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def import_projects(catalog: Catalog, folder: str | os.PathLike, *, pattern: str = "*.hx",
                    class_map: Mapping[str, str] | None = None, voxel_size: Any = None,
                    calibration: Any = None, progress: bool = True, **metadata: Any) -> pd.DataFrame:
    """Add every segmented Amira project under a folder that the catalog lacks.

    Each project (``.hx``, searched recursively) is read with
    :func:`sxtlab.io.read_project`: its image and the label field connected to it,
    with the field's ``Materials`` mapped onto the vocabulary and materials named like
    ``ignore`` made unannotated. A project whose materials name no known class is
    **not** guessed at: it is reported with those names, to be mapped with
    ``class_map`` on a later run. The entry id is the project's name plus the first
    12 hex digits of the SHA-256 of its image and label files, so re-running the
    import adds only projects whose files are new (moving or renaming a folder does
    not duplicate its cells; editing a label field adds the edited cell anew).

    Parameters
    ----------
    catalog : Catalog
        Where the cells go.
    folder : path-like
        Searched recursively for ``pattern``.
    pattern : str
        Glob of the project files.
    class_map : mapping of str to str, optional
        Material name → class (or ``"ignore"``), for names the vocabulary lacks.
    voxel_size : float or (dz, dy, dx), optional
        Voxel size in µm for projects whose files record none (Amira's
        ``BoundingBox`` in voxel units); without it their voxel size stays unknown.
    calibration : sxtlab.Calibration or callable, optional
        Gray → LAC calibration recorded on every project's image, or a function
        ``f(image, project_path) -> Calibration`` called per project (e.g. with
        :func:`sxtlab.calibrate_from_medium`); a project it fails on is reported
        ``"failed"`` with the reason.
    progress : bool
        Show a progress bar.
    **metadata
        Added to every entry (e.g. ``species="yeast"``), next to the provenance:
        ``source`` (the project), ``image_file``, ``labels_file``, ``sha256``.

    Returns
    -------
    pandas.DataFrame
        One row per project: ``project``, ``status`` (``"added"``, ``"present"``:
        already in the catalog, ``"unmapped"``: materials no class matches,
        ``"no labels"``: no label field, ``"failed"``: unreadable), ``entry``,
        ``classes`` (annotated), ``voxel_size_um`` and ``message`` (the reason, or
        the reader's warnings, e.g. an unknown voxel size).

    Raises
    ------
    FileNotFoundError
        If ``folder`` is not a folder.

    Examples
    --------
    >>> report = import_projects(cat, "/archive/amira", class_map={"Inside": "cell"})  # doctest: +SKIP
    >>> report.status.value_counts()  # doctest: +SKIP
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of Amira projects")
    rows = []
    for hx in tqdm(sorted(root.rglob(pattern)), desc="import", unit="project", disable=not progress):
        row: dict[str, Any] = {"project": str(hx), "status": "failed", "entry": None, "classes": None,
                               "voxel_size_um": None, "message": ""}
        rows.append(row)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SxtlabWarning)
                ds = read_project(hx, voxel_size=voxel_size, class_map=class_map)
            row["message"] = " | ".join(str(w.message) for w in caught)
            if "labels" not in ds:
                row["status"] = "no labels"
                continue
            if calibration is not None:
                cal = calibration(ds["lac"], str(hx)) if callable(calibration) else calibration
                if cal is not None:
                    ds["lac"] = ds["lac"].sxt.with_calibration(cal)
            files = [Path(ds.attrs["image_file"]), Path(ds.attrs["labels_file"])]
            sha = _fingerprint(files)
            entry_id = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', hx.stem)}-{sha[:12]}"
            row["entry"] = entry_id
            row["voxel_size_um"] = ds["lac"].attrs.get("voxel_size_um")
            if entry_id in catalog:
                row["status"] = "present"
                row["classes"] = catalog.entry_classes(entry_id)
                continue
            provenance = {"source": str(hx), "image_file": str(files[0]), "labels_file": str(files[1]),
                          "sha256": sha}
            catalog.add(ds["lac"], ds["labels"], entry_id=entry_id, **{**metadata, **provenance})
            row["status"], row["classes"] = "added", catalog.entry_classes(entry_id)
        except UnknownClassError as exc:
            row["status"], row["message"] = "unmapped", str(exc)
        except EntryExistsError:  # another process imported it meanwhile
            row["status"] = "present"
        except (SxtlabError, OSError, ValueError) as exc:
            row["message"] = f"{type(exc).__name__}: {exc}"
    return pd.DataFrame(rows, columns=["project", "status", "entry", "classes", "voxel_size_um", "message"])


# ---------------------------------------------------------------------------------
# A catalog of phantom cells, annotated the way real archives are
# ---------------------------------------------------------------------------------
