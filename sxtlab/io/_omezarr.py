"""OME-Zarr (OME-NGFF) reading and writing of volumes and segmentations.

Versions
--------
sxtlab writes **OME-NGFF 0.5** by default (Zarr v3: ``zarr.json``, the NGFF metadata
under ``attributes.ome`` with one ``"version": "0.5"``, every array with
``dimension_names`` equal to the axes; spec: https://ngff.openmicroscopy.org/0.5/),
which current writers produce and ome-zarr-py ≥ 0.12, napari-ome-zarr and ngff-zarr
read. ``ngff_version="0.4"`` (``--ngff-version 0.4`` on the command line) writes
**0.4** instead (Zarr v2, ``.zattrs``, chunks with the ``/`` separator 0.4
requires) for readers that know no Zarr v3 (older napari-ome-zarr, Fiji's
n5-zarr/MoBIE, BigDataViewer). Reading accepts 0.4, 0.5 and the coordinate systems
of 0.6 (``coordinateSystems`` instead of ``axes``; transforms with ``input`` and
``output``, ``sequence`` of scale and translation), whichever wrote them.

Chunks are 64³ voxels (1 MiB of float32: a viewer reading one plane reads little at
every level). In 0.5, arrays of at least 2³ chunks are sharded (Zarr v3
``sharding_indexed``: :data:`SHARD_CHUNKS` chunks per axis in each file), which cuts the number
of files eightfold for large volumes while readers still fetch single chunks.

Layout written
--------------
::

    cell.ome.zarr/
        zarr.json         attributes: ome (multiscales: z, y, x; unit micrometer),
                          sxtlab (own metadata); .zattrs in 0.4
        0/ 1/ ...         the image, float32, largest level first (block mean)
        labels/zarr.json  attributes.ome.labels = ["labels"]
        labels/labels/    integer multiscale with as many levels as the image
                          (block mode) and "image-label" (colors, properties, source)
        probabilities/    (class, z, y, x) float32 multiscale (axes c, z, y, x;
                          block mean), not listed by NGFF: tools that do not know it
                          ignore it, and ``.../probabilities`` opens as an NGFF image

Every level has exactly one ``scale`` (its voxel size, µm) and one ``translation``
(the centre of its first voxel, µm), so that an xarray coordinate is
``translation + i * scale`` on every level. sxtlab's own metadata (all attrs of the
DataArray: ``units``, ``lac_scale``/``lac_offset``, ``source``, ``cell_id`` ...; the
Dataset's attrs; the probabilities' ``class`` coordinate) sits under the ``sxtlab``
key of each group's attributes, beside (never inside) the NGFF keys. Label colours
round-trip through the label volume's ``colours_rgba`` attr (``{"1": [r, g, b, a]}``,
0-255); where it is absent, colours come from :func:`sxtlab.classes.colour`.

An unknown voxel size is written as ``scale`` 1 per level-0 voxel with no ``unit``
on the axes (NGFF requires a scale, but the unit is optional, so no reader takes the
number for micrometres), and recorded as ``voxel_size_um: null`` in the sxtlab
metadata so that reading gives ``voxel_size_um`` ``None`` again, without a warning.

Probabilities are stored as float32 (exact round trip). float16 would halve the
size, but the measured benefit does not yet justify a lossy option; Blosc-zstd
compression already shrinks the large near-0/near-1 regions.

Large results are written chunk by chunk: pass a dask-backed DataArray or Dataset
(e.g. lazy cascade inference) to :func:`write`. Level 0 of all variables is stored
in one :func:`dask.array.store` call, so a graph they share (probabilities and their
arg-max labels) is computed once per chunk; each coarser level is then computed
from the level stored before it, read back from Zarr. Nothing is loaded whole.

Why not ome-zarr's writer: its ``write_multiscale`` sets a translation only
through the deprecated ``coordinate_transformations`` argument (its ``scale=``
route assumes an origin of 0), it computes each image's pyramid in its own pass
(a shared inference graph would run once per variable), and it would make
ome-zarr, with fsspec[s3], aiohttp, requests and pydantic, a runtime dependency for
some forty lines of JSON. Its ``Reader`` is not used for reading either: sxtlab must
turn units into µm, refuse to guess a missing unit and name the offending field,
which needs the metadata itself. The tests check conformance with ``ome_zarr``'s
``Reader`` and ``ome_zarr_models``' validators instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numcodecs
import numpy as np
import xarray as xr
import zarr

from ..classes import UNANNOTATED, UnknownClassError, canonical_name, class_map, colour, is_ignore_name
from ..errors import FormatError
from ..volume import DIMS, check_instance_ids, check_voxel_size, int_triple, label_volume, volume
from ..volume import segmentation as _segmentation
from ._common import MAX_EDGE, UM_PER_UNIT, foreign_errors, jsonable, length_unit, merge_voxel_size, to_um, warn

__all__ = ["read", "write", "NGFF_VERSION", "ZARR_FORMAT", "DEFAULT_CHUNK", "METADATA_KEY"]

#: OME-NGFF version that :func:`write` produces by default.
NGFF_VERSION = "0.5"
#: Versions :func:`write` can produce, and the Zarr format of each.
ZARR_FORMAT = {"0.4": 2, "0.5": 3}
#: Default chunk edge (voxels) of every level: 64³ float32 is 1 MiB per chunk.
DEFAULT_CHUNK = 64
#: Key of sxtlab's own metadata in each group's attributes.
METADATA_KEY = "sxtlab"
#: Version of the layout under :data:`METADATA_KEY`; bump when its meaning changes.
_LAYOUT_VERSION = 1
#: Most levels an automatic pyramid gets (a 1000³ volume needs 5 to fit one 64² tile).
_MAX_AUTO_LEVELS = 6

_LABELS_GROUP = "labels"
_LABEL_NAME = "labels"
#: Label image of instance ids (e.g. touching cells split by sxtlab.cells), beside the classes.
_INSTANCES_NAME = "instances"
_PROBABILITIES_GROUP = "probabilities"


# ---------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------
def _sxtlab_version() -> str:
    # Imported when called: the package is then fully initialised whatever it imports.
    from .. import __version__

    return __version__


# ---------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Level:
    """One pyramid level: shape, its factor against the level before, and geometry."""

    shape: tuple[int, int, int]
    factor: tuple[int, int, int]
    scale: tuple[float, float, float]
    translation: tuple[float, float, float]


def _grid(obj: xr.DataArray, where: str) -> tuple[tuple[float, float, float] | None, tuple[float, float, float]]:
    """Voxel size (µm, or None if unknown) and origin (µm) of a volume, checked on its coords."""
    if "voxel_size_um" not in obj.attrs:
        raise FormatError(
            f"{where}: no 'voxel_size_um' attr; build volumes with sxtlab.volume() or set "
            "attrs['voxel_size_um'] to [dz, dy, dx] in µm (None if unknown)"
        )
    vs = check_voxel_size(obj.attrs["voxel_size_um"], where=f"{where}: attrs['voxel_size_um']")
    if vs is None:
        # coords are voxel indices then; NGFF gets scale 1 and origin 0 in voxels.
        return None, (0.0, 0.0, 0.0)
    origin = []
    for d, s, n in zip(DIMS, vs, obj.shape):
        if d not in obj.coords or n == 0:
            origin.append(0.0)
            continue
        c = np.asarray(obj[d].values, dtype=float)
        # NGFF can only say translation + i * scale: refuse coords it cannot hold.
        if not np.allclose(c, c[0] + s * np.arange(n), rtol=0, atol=1e-6 * s):
            raise FormatError(
                f"{where}: coords along {d!r} are not evenly spaced at the voxel size {s} µm "
                f"(first {c[:3].tolist()}); OME-Zarr stores only origin + i * voxel size"
            )
        origin.append(float(c[0]))
    return vs, tuple(origin)  # type: ignore[return-value]


def _plan_levels(shape: tuple[int, int, int], voxel_size: tuple[float, float, float] | None,
                 origin: tuple[float, float, float], chunks: tuple[int, int, int],
                 levels: int | None) -> list[_Level]:
    """Shapes, factors and NGFF transforms of every pyramid level.

    Each level halves y and x (where they have at least 2 voxels); z is halved only
    where it spans more than one chunk and its voxel is not already coarser than
    y's and x's, so thin stacks keep their planes and anisotropic voxels approach
    isotropy. An automatic pyramid (``levels=None``) stops once a level fits one
    chunk in y and x.
    """
    if levels is not None and (int(levels) != levels or levels < 1):
        raise ValueError(f"levels must be a positive integer (1 = no pyramid), got {levels!r}")
    step = voxel_size if voxel_size is not None else (1.0, 1.0, 1.0)
    out = [_Level(shape, (1, 1, 1), step, origin)]
    while True:
        prev = out[-1]
        nz, ny, nx = prev.shape
        if levels is None:
            if max(ny, nx) <= max(chunks[1], chunks[2]) or len(out) >= _MAX_AUTO_LEVELS:
                break
        elif len(out) >= levels:
            break
        dz, dy, dx = prev.scale
        fz = 2 if nz > chunks[0] and dz <= min(dy, dx) * (1 + 1e-9) else 1
        factor = (fz, 2 if ny >= 2 else 1, 2 if nx >= 2 else 1)
        if factor == (1, 1, 1):
            raise ValueError(
                f"levels={levels}: level {len(out)} would be no smaller than level {len(out) - 1} "
                f"(shape {prev.shape}); ask for at most {len(out)} levels"
            )
        new_shape = tuple(n // f for n, f in zip(prev.shape, factor))
        # The centre of a block of f voxels lies (f - 1) / 2 voxels after its first.
        out.append(_Level(
            new_shape,  # type: ignore[arg-type]
            factor,
            tuple(s * f for s, f in zip(prev.scale, factor)),  # type: ignore[arg-type]
            tuple(t + (f - 1) / 2 * s for t, s, f in zip(prev.translation, prev.scale, factor)),  # type: ignore[arg-type]
        ))
    return out


def _axes(known: bool, channel: bool = False) -> list[dict[str, str]]:
    space = [{"name": d, "type": "space"} for d in DIMS]
    if known:
        for a in space:
            a["unit"] = "micrometer"
    return ([{"name": "c", "type": "channel"}] if channel else []) + space


def _multiscales(name: str, levels: list[_Level], known: bool, method: str, version: str, *,
                 channel: bool = False) -> list[dict[str, Any]]:
    lead_s, lead_t = ([1.0], [0.0]) if channel else ([], [])
    # 0.4 puts the version into each multiscale; 0.5 once, beside the "ome" keys.
    return [{
        **({"version": version} if version == "0.4" else {}),
        "name": name,
        "axes": _axes(known, channel),
        "datasets": [
            {"path": str(i), "coordinateTransformations": [
                {"type": "scale", "scale": lead_s + [float(s) for s in lv.scale]},
                {"type": "translation", "translation": lead_t + [float(t) for t in lv.translation]},
            ]}
            for i, lv in enumerate(levels)
        ],
        "type": method,
        "metadata": {
            "description": f"2x block {method} per level in y, x (and z where its scale doubles); "
                           "a trailing remainder is dropped",
            "method": f"dask.array.coarsen (block {method}), sxtlab {_sxtlab_version()}",
        },
    }]


def _block_mode(blocks: np.ndarray, axis: tuple[int, ...] | None = None) -> np.ndarray:
    """Most frequent value over ``axis`` (all if None; ties go to the lower value).

    The reduction for :func:`dask.array.coarsen`; the same rule as ``.sxt.downsample``
    on label volumes, so both pyramids agree.
    """
    if axis is None:
        axis = tuple(range(blocks.ndim))
    keep = [i for i in range(blocks.ndim) if i not in axis]
    flat = np.transpose(blocks, keep + list(axis)).reshape([blocks.shape[i] for i in keep] + [-1])
    s = np.sort(flat, axis=-1)
    # Blocks hold at most 8 voxels, so an all-pairs count is small and vectorised.
    counts = (s[..., :, None] == s[..., None, :]).sum(axis=-1)
    return np.take_along_axis(s, counts.argmax(axis=-1)[..., None], axis=-1)[..., 0]


def _reduce(x: da.Array, factor: tuple[int, ...], labels: bool) -> da.Array:
    """Block mean (images) or block mode (labels) by ``factor`` per axis, lazily."""
    x = x[tuple(slice(0, n - n % f) for n, f in zip(x.shape, factor))]
    axes = dict(enumerate(factor))
    if labels:
        return da.coarsen(_block_mode, x, axes).astype(x.dtype)
    return da.coarsen(np.mean, x, axes).astype(np.float32)


def _as_dask(data: Any, dtype: np.dtype, chunks: tuple[int, ...]) -> da.Array:
    """A dask array of ``data`` chunked exactly as its Zarr target (no ``.values``)."""
    arr = data if isinstance(data, da.Array) else da.from_array(np.asarray(data), chunks=chunks)
    # Aligned chunks let threads write whole Zarr chunks without a lock.
    return arr.astype(dtype).rechunk(chunks)


#: Chunks per shard along each spatial axis (Zarr v3 only): 2³ chunks of 64³ make one
#: file of 128³ voxels, the block ``CascadeModel.predict(out=...)`` computes at a
#: time, so sharding cuts the file count eightfold without holding more in memory.
SHARD_CHUNKS = 2


def _shards(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...] | None:
    """Shard shape of an array, or None where a shard would hold fewer than 2³ chunks
    (small arrays: one file per chunk is no burden, and a reader fetches less)."""
    lead = len(shape) - 3
    spatial = [min(c * SHARD_CHUNKS, -(-n // c) * c) for n, c in zip(shape[lead:], chunks[lead:])]
    if any(s < c * SHARD_CHUNKS for s, c in zip(spatial, chunks[lead:])):
        return None
    return tuple(chunks[:lead]) + tuple(spatial)


def _write_block(arr: zarr.Array) -> tuple[int, ...]:
    """The unit a writer may fill without a lock: the shard where there are shards
    (two threads writing chunks of one shard would overwrite each other), else the chunk."""
    shards = getattr(arr, "shards", None)
    return tuple(shards) if shards else tuple(arr.chunks)


class _Pyramid:
    """Zarr arrays of one multiscale group and how to fill them level by level."""

    def __init__(self, group: zarr.Group, data: Any, dtype: np.dtype, levels: list[_Level],
                 chunks: tuple[int, int, int], *, labels: bool, lead: int | None = None) -> None:
        self.labels = labels
        self.lead = () if lead is None else (lead,)
        self.arrays = []
        v3 = group.metadata.zarr_format == 3
        for i, lv in enumerate(levels):
            shape = self.lead + lv.shape
            ch = tuple(min(c, max(n, 1)) for c, n in zip((1,) * len(self.lead) + chunks, shape))
            if v3:
                # NGFF 0.5: dimension_names equal to the axes; Zarr v3's default chunk
                # keys ("c/0/0/0"); Blosc-zstd as ome-zarr writes.
                layout: dict[str, Any] = {
                    "dimension_names": ("c",) * len(self.lead) + DIMS,
                    "compressors": zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"),
                }
                shards = _shards(shape, ch)
                if shards is not None:
                    layout["shards"] = shards
            else:
                # NGFF 0.4 requires "/" between chunk indices.
                layout = {"chunk_key_encoding": {"name": "v2", "separator": "/"},
                          "compressors": numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)}
            self.arrays.append(group.create_array(str(i), shape=shape, dtype=dtype, chunks=ch, fill_value=0,
                                                  **layout))
        self.source0 = _as_dask(data, np.dtype(dtype), _write_block(self.arrays[0]))
        self.factors = [(1,) * len(self.lead) + lv.factor for lv in levels]

    def source(self, level: int) -> da.Array:
        if level == 0:
            return self.source0
        # Read the stored level before: each chunk of the input is computed only once.
        prev = da.from_zarr(self.arrays[level - 1])
        return _reduce(prev, self.factors[level], self.labels).rechunk(_write_block(self.arrays[level]))


#: Display colour of voxels nobody annotated: transparent, so that sparse annotations
#: do not veil the image; NGFF validators want a colour for every named value.
_UNANNOTATED_RGBA = [128, 128, 128, 0]


def _default_colors(classes: Mapping[int, str], unannotated: int | None) -> list[dict[str, Any]]:
    """NGFF ``colors`` (rgba, 0-255) from the vocabulary for ``{value: canonical name}``."""
    out = []
    for value, name in sorted(classes.items()):
        # Background stays transparent so that overlays show the image around cells.
        alpha = 0 if name == "background" else 255
        out.append({"label-value": int(value), "rgba": [int(round(c * 255)) for c in colour(name)] + [alpha]})
    if unannotated is not None and unannotated not in classes:
        out.append({"label-value": int(unannotated), "rgba": list(_UNANNOTATED_RGBA)})
    return out


def _label_metadata(labels: xr.DataArray, where: str, version: str) -> dict[str, Any]:
    """NGFF ``image-label`` of a label volume: colours, class names, source image."""
    classes = class_map(labels.attrs["classes"])
    unannotated = int(labels.attrs.get("unannotated_value", UNANNOTATED))
    own = {int(k): [int(c) for c in v] for k, v in (labels.attrs.get("colours_rgba") or {}).items()}
    colors = [{"label-value": c["label-value"], "rgba": own.get(c["label-value"], c["rgba"])}
              for c in _default_colors(classes, unannotated)]
    for c in colors:
        if len(c["rgba"]) != 4 or not all(0 <= v <= 255 for v in c["rgba"]):
            raise FormatError(f"{where}: colour of label {c['label-value']} must be 4 ints in 0-255, got {c['rgba']}")
    properties = [{"label-value": v, "name": n} for v, n in sorted(classes.items())]
    if unannotated not in classes:
        # Name the ignore value so that other tools show it as such.
        properties.append({"label-value": unannotated, "name": "unannotated"})
    return {**({"version": version} if version == "0.4" else {}), "colors": colors, "properties": properties,
            "source": {"image": "../../"}}


def _split(obj: xr.DataArray | xr.Dataset, where: str):
    """(image, labels or None, probabilities or None, instances or None, dataset attrs or None)."""
    if isinstance(obj, xr.DataArray):
        return obj, None, None, None, None
    if not isinstance(obj, xr.Dataset):
        raise TypeError(f"{where}: expected an xarray DataArray or Dataset, got {type(obj).__name__}")
    extra = sorted(set(obj.data_vars) - {"lac", "labels", "probabilities", _INSTANCES_NAME})
    if "lac" not in obj.data_vars or extra:
        raise FormatError(
            f"{where}: an OME-Zarr segmentation holds 'lac' (required), 'labels', 'instances' and "
            f"'probabilities'; the Dataset has {sorted(obj.data_vars)}"
        )
    instances = obj[_INSTANCES_NAME] if _INSTANCES_NAME in obj.data_vars else None
    if instances is not None:
        check_instance_ids(instances, where)
    labels = obj["labels"] if "labels" in obj.data_vars else None
    if labels is not None and "classes" not in labels.attrs:
        raise FormatError(f"{where}: 'labels' have no 'classes' attr naming their values")
    probs = obj["probabilities"] if "probabilities" in obj.data_vars else None
    if probs is not None and probs.dims != ("class",) + DIMS:
        raise FormatError(f"{where}: 'probabilities' must have dims ('class', 'z', 'y', 'x'), got {probs.dims}")
    return obj["lac"], labels, probs, instances, dict(obj.attrs)


def _own_metadata(obj: xr.DataArray, kind: str, where: str, **extra: Any) -> dict[str, Any]:
    """The ``sxtlab`` attributes of a group: all attrs of ``obj`` and what NGFF cannot say."""
    return {
        "layout_version": _LAYOUT_VERSION,
        "written_by": f"sxtlab {_sxtlab_version()}",
        "kind": kind,
        "name": jsonable(obj.name, f"{where}: name"),
        "attrs": jsonable(dict(obj.attrs), f"{where}: {obj.name or kind} attrs"),
        **{k: jsonable(v, f"{where}: {k}") for k, v in extra.items()},
    }


def _display(path: Path) -> Path:
    """The final output name for messages: write() receives the temporary name that
    :func:`sxtlab.io.atomic_output` makes (``.NAME.partial-TOKEN``)."""
    m = re.fullmatch(r"\.(.+)\.partial-[0-9a-f]+", path.name)
    return path.with_name(m.group(1)) if m else path


def write(obj: xr.DataArray | xr.Dataset, path: Path, *, levels: int | None = None,
          chunks: int | Sequence[int] = DEFAULT_CHUNK, ngff_version: str = NGFF_VERSION) -> None:
    """Write a volume or a segmentation Dataset as OME-Zarr (OME-NGFF 0.5 on Zarr v3, or 0.4).

    Called by :func:`sxtlab.io.write_volume`, which writes to a temporary name and
    renames it into place; ``path`` must not exist.

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        A volume (dims ``z, y, x``, attrs as built by :func:`sxtlab.volume`; stored
        as float32, or with its integer dtype for a label volume with ``classes``),
        or a segmentation Dataset with ``lac``, optional ``labels`` (integer, with
        ``classes``) and optional ``probabilities`` (``class, z, y, x``, float32).
        NumPy or dask data; dask data are stored chunk by chunk, never loaded whole.
    path : pathlib.Path
        Folder to create.
    levels : int, optional
        Number of resolution levels, level 0 included (1 = no pyramid). By default
        levels are added until one fits a single chunk in y and x (at most 6).
    chunks : int or (cz, cy, cx)
        Zarr chunk shape in voxels of every level (clipped to the level's shape);
        probabilities get ``(1, cz, cy, cx)``. The default 64³ (1 MiB of float32)
        keeps a viewer's read of one plane small at every level.
    ngff_version : {"0.5", "0.4"}
        ``"0.5"``: Zarr v3, metadata under ``attributes.ome``; ``"0.4"``: Zarr v2,
        ``.zattrs``, for readers without Zarr v3.

    Raises
    ------
    sxtlab.FormatError
        If ``obj`` is not a (z, y, x) volume, lacks ``voxel_size_um``, has coords
        that are not evenly spaced, labels without ``classes`` or not integer,
        probabilities with other dims, or attrs that JSON cannot hold.
    ValueError
        If ``levels`` or ``chunks`` are invalid, ``levels`` asks for more levels
        than the shape allows, or ``ngff_version`` is not "0.4" or "0.5".
    FileExistsError
        If ``path`` exists.

    Notes
    -----
    Follows OME-NGFF 0.5 (https://ngff.openmicroscopy.org/0.5/) or 0.4:
    ``multiscales`` with one ``scale`` and one ``translation`` per level, the
    ``labels`` group with ``image-label`` ``colors``/``properties``/``source``.
    """
    path = Path(path)
    where = str(_display(path))
    version = str(ngff_version)
    if version not in ZARR_FORMAT:
        raise ValueError(f"{where}: ngff_version must be one of {sorted(ZARR_FORMAT)}, got {ngff_version!r}")
    image, labels, probs, instances, ds_attrs = _split(obj, where)
    if image.dims != DIMS:
        raise FormatError(f"{where}: the image must have dims {DIMS}, got {image.dims}")
    is_label_volume = ds_attrs is None and "classes" in image.attrs
    if is_label_volume or labels is not None:
        lab = image if is_label_volume else labels
        if not np.issubdtype(lab.dtype, np.integer):
            raise FormatError(f"{where}: labels must be integers, got dtype {lab.dtype}")
    vs, origin = _grid(image, f"{where}: {image.name or 'image'}")
    for other, what in ((labels, "labels"), (probs, "probabilities"), (instances, "instances")):
        if other is not None and tuple(other.shape[-3:]) != tuple(image.shape):
            raise FormatError(f"{where}: {what} have shape {tuple(other.shape)}, the image has {tuple(image.shape)}")
    chunk3 = int_triple(chunks, "chunks")
    plan = _plan_levels(tuple(image.shape), vs, origin, chunk3, levels)  # type: ignore[arg-type]
    known = vs is not None

    # All metadata first, so that attrs JSON cannot hold fail before any data is written.
    kind = "labels" if is_label_volume else ("segmentation" if ds_attrs is not None else "image")
    root_attrs: dict[str, Any] = {
        "multiscales": _multiscales(str(image.name or "image"), plan, known,
                                    "mode" if is_label_volume else "mean", version),
    }
    if is_label_volume:
        # A label volume alone is an integer image that names its values, without a parent.
        root_attrs["image-label"] = {k: v for k, v in _label_metadata(image, where, version).items()
                                     if k != "source"}
    extra = {"dataset_attrs": ds_attrs} if ds_attrs is not None else {}
    root_attrs[METADATA_KEY] = _own_metadata(image, kind, where, **extra)
    groups: dict[str, dict[str, Any]] = {}
    if labels is not None:
        groups[f"{_LABELS_GROUP}/{_LABEL_NAME}"] = {
            "multiscales": _multiscales(_LABEL_NAME, plan, known, "mode", version),
            "image-label": _label_metadata(labels, f"{where}/{_LABELS_GROUP}/{_LABEL_NAME}", version),
            METADATA_KEY: _own_metadata(labels, "labels", where),
        }
    if instances is not None:
        # Ids name no class: NGFF image-label without properties (napari colours each id).
        groups[f"{_LABELS_GROUP}/{_INSTANCES_NAME}"] = {
            "multiscales": _multiscales(_INSTANCES_NAME, plan, known, "mode", version),
            "image-label": {**({"version": version} if version == "0.4" else {}), "source": {"image": "../../"}},
            METADATA_KEY: _own_metadata(instances, "instances", where),
        }
    if probs is not None:
        cls = probs.coords["class"].values if "class" in probs.coords else None
        groups[_PROBABILITIES_GROUP] = {
            "multiscales": _multiscales(_PROBABILITIES_GROUP, plan, known, "mean", version, channel=True),
            METADATA_KEY: _own_metadata(probs, "probabilities", where, class_coord=cls),
        }

    root = zarr.open_group(path, mode="w-", zarr_format=ZARR_FORMAT[version])
    pyramids = [_Pyramid(root, image.data, image.dtype if is_label_volume else np.float32, plan, chunk3,
                         labels=is_label_volume)]
    label_names = [n for n, v in ((_LABEL_NAME, labels), (_INSTANCES_NAME, instances)) if v is not None]
    if label_names:
        label_group = root.create_group(_LABELS_GROUP)
        for name, var in ((_LABEL_NAME, labels), (_INSTANCES_NAME, instances)):
            if var is not None:
                pyramids.append(_Pyramid(label_group.create_group(name), var.data, var.dtype, plan, chunk3,
                                         labels=True))
    if probs is not None:
        group = root.create_group(_PROBABILITIES_GROUP)
        pyramids.append(_Pyramid(group, probs.data, np.float32, plan, chunk3, labels=False,
                                 lead=probs.sizes["class"]))

    # One store per level for all variables: a graph they share runs once per chunk.
    for i in range(len(plan)):
        da.store([p.source(i) for p in pyramids], [p.arrays[i] for p in pyramids], lock=False)

    # Metadata last: an interrupted write never looks like a complete image.
    if label_names:
        root[_LABELS_GROUP].attrs.update(_versioned({"labels": label_names}, version))
    for name, attrs in groups.items():
        root[name].attrs.update(_versioned(attrs, version))
    root.attrs.update(_versioned(root_attrs, version))


def _versioned(attrs: dict[str, Any], version: str) -> dict[str, Any]:
    """A group's attributes as ``version`` lays them out: 0.4 flat; 0.5 the NGFF keys
    under ``ome`` with the version, sxtlab's own beside it."""
    if version == "0.4":
        return attrs
    ngff = {k: v for k, v in attrs.items() if k != METADATA_KEY}
    own = {k: v for k, v in attrs.items() if k == METADATA_KEY}
    return {"ome": {"version": version, **ngff}, **own}


# ---------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------
def _open_group(path: Path) -> zarr.Group:
    try:
        node = zarr.open(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as e:
        raise FormatError(f"{path}: not a Zarr group (no .zgroup/.zattrs or zarr.json found): {e}") from None
    if not isinstance(node, zarr.Group):
        raise FormatError(f"{path}: is a Zarr array, not an OME-Zarr group; open the folder that holds it")
    return node


class _Chunks:
    """A Zarr array for :func:`dask.array.from_array` whose reads are inside the reader's boundary.

    The data are read lazily, after :func:`read` returned: a damaged chunk (a codec
    error, a truncated file) raises :class:`~sxtlab.FormatError` naming the array
    when it is computed, not the codec's own exception.
    """

    def __init__(self, arr: zarr.Array, where: str) -> None:
        self.arr, self.where = arr, where
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        with foreign_errors(self.where, "OME-Zarr image", f"chunk data of array {self.arr.path!r} at {key}"):
            return np.asarray(self.arr[key])


def _lazy(arr: zarr.Array, where: str, chunks: Any) -> da.Array:
    """The array as dask, with the Zarr chunks unless ``chunks`` is given."""
    return da.from_array(_Chunks(arr, where), chunks=chunks if chunks is not None else arr.chunks,
                         asarray=False, fancy=False, meta=np.empty((0,) * arr.ndim, arr.dtype))


def _ome_attrs(group: zarr.Group) -> dict[str, Any]:
    """NGFF metadata of a group: ``.zattrs`` (0.4) or ``attributes.ome`` (0.5)."""
    attrs = dict(group.attrs)
    if group.metadata.zarr_format == 3 and isinstance(attrs.get("ome"), Mapping):
        return dict(attrs["ome"])
    return attrs


@dataclass
class _Multiscale:
    """The first ``multiscales`` entry of a group, parsed and checked."""

    group: zarr.Group
    where: str
    field: str
    axes: list[dict[str, Any]]
    keep: list[int]  # indices of the z, y, x axes (singleton t/c are dropped)
    datasets: list[dict[str, Any]]
    outer: list[dict[str, Any]]  # multiscale-level transforms, applied after the dataset's
    axes_field: str = ""  # where the axes are (0.6: inside a coordinate system)

    def array(self, level: int, chunks: Any) -> da.Array:
        if not 0 <= level < len(self.datasets):
            raise FormatError(f"{self.where}: level={level}, but {self.field} has levels 0 to {len(self.datasets) - 1}")
        rel = str(self.datasets[level].get("path", ""))
        try:
            arr = self.group[rel]
        except KeyError:
            raise FormatError(
                f"{self.where}: {self.field}.datasets[{level}].path = {rel!r} names no array in the group"
            ) from None
        if not isinstance(arr, zarr.Array):
            raise FormatError(f"{self.where}: {self.field}.datasets[{level}].path = {rel!r} is a group, not an array")
        if arr.ndim != len(self.axes):
            raise FormatError(
                f"{self.where}: array {rel!r} is {arr.ndim}-D with shape {arr.shape}, but "
                f"{self.field}.axes lists {len(self.axes)} axes {[a['name'] for a in self.axes]}"
            )
        if any(n > MAX_EDGE for n in arr.shape):
            # the coords are allocated from the shape (a sparse Zarr array may claim any size)
            raise FormatError(f"{self.where}: array {rel!r} ('shape' in .zarray or zarr.json) is {arr.shape}: expected at most "
                              f"{MAX_EDGE:,} voxels along each axis")
        dropped = [i for i in range(arr.ndim) if i not in self.keep]
        for i in dropped:
            if arr.shape[i] != 1:
                raise FormatError(
                    f"{self.where}: {self.field}.axes are {[a['name'] for a in self.axes]} with shape "
                    f"{arr.shape}; sxtlab reads 3-D (z, y, x) volumes, and axis "
                    f"{self.axes[i]['name']!r} has {arr.shape[i]} entries (select one first)"
                )
        if dropped and isinstance(chunks, tuple) and len(chunks) == len(DIMS):
            chunks = tuple(1 if i in dropped else chunks[self.keep.index(i)] for i in range(arr.ndim))
        data = _lazy(arr, self.where, chunks)
        return data[tuple(0 if i in dropped else slice(None) for i in range(arr.ndim))]

    def transform(self, level: int) -> tuple[list[float], list[float]]:
        """Scale and translation of a level along z, y, x, in the file's units.

        The dataset's transforms apply first, then the multiscale's own (NGFF 0.4).
        """
        n = len(self.axes)
        ds_field = f"{self.field}.datasets[{level}].coordinateTransformations"
        ds_transforms = self.datasets[level].get("coordinateTransformations") or []
        if not any(isinstance(t, Mapping) and t.get("type") == "scale" for t in _flat(ds_transforms)):
            raise FormatError(f"{self.where}: {ds_field} has no 'scale' transform (NGFF 0.4 requires one)")
        scale, trans = [1.0] * n, [0.0] * n
        for field, transforms in ((ds_field, _flat(ds_transforms)),
                                  (f"{self.field}.coordinateTransformations", _flat(self.outer))):
            for t in transforms:
                kind = t.get("type") if isinstance(t, Mapping) else None
                if kind == "identity":
                    continue
                if kind not in ("scale", "translation") or not isinstance(t.get(kind), list):
                    raise FormatError(
                        f"{self.where}: {field} has a {kind!r} transform without a list of values "
                        "(or one stored in a binary 'path'); sxtlab reads scale and translation lists"
                    )
                vals = [float(v) for v in t[kind]]
                if len(vals) != n:
                    raise FormatError(f"{self.where}: {field} {kind} {vals} has {len(vals)} values for {n} axes")
                if kind == "scale":
                    scale = [a * b for a, b in zip(scale, vals)]
                    trans = [a * b for a, b in zip(trans, vals)]
                else:
                    trans = [a + b for a, b in zip(trans, vals)]
        return [scale[i] for i in self.keep], [trans[i] for i in self.keep]

    def transform_units(self) -> list[tuple[str, Any]]:
        """Unit-like entries that tools put inside transforms (not NGFF): (field, value)."""
        found = []
        for level, ds in enumerate(self.datasets):
            for j, t in enumerate(ds.get("coordinateTransformations") or []):
                for k, v in t.items():
                    if "unit" in k.lower():
                        found.append((f"{self.field}.datasets[{level}].coordinateTransformations[{j}].{k}", v))
        return found


def _flat(transforms: Any) -> list[Any]:
    """Transforms in the order they apply, NGFF 0.6 ``sequence`` entries expanded."""
    out = []
    for t in transforms if isinstance(transforms, list) else []:
        if isinstance(t, Mapping) and t.get("type") == "sequence" and isinstance(t.get("transformations"), list):
            out.extend(_flat(t["transformations"]))
        else:
            out.append(t)
    return out


def _parse_multiscale(group: zarr.Group, attrs: dict[str, Any], where: str) -> _Multiscale:
    ms_list = attrs.get("multiscales")
    if not isinstance(ms_list, list) or not ms_list or not isinstance(ms_list[0], Mapping):
        hint = ""
        if "bioformats2raw.layout" in attrs:
            hint = "; this is a bioformats2raw container: open the image inside it, e.g. .../0"
        elif "plate" in attrs or "well" in attrs:
            hint = "; this is an HCS plate/well: open one of its images"
        raise FormatError(
            f"{where}: no 'multiscales' in the group's attributes (.zattrs, or zarr.json "
            f"attributes.ome), so it is not an OME-Zarr image; found keys {sorted(attrs)}{hint}"
        )
    ms = ms_list[0]  # NGFF: the first multiscale is the default
    field = "multiscales[0]"
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise FormatError(f"{where}: {field}.datasets is missing or empty")
    raw_axes = ms.get("axes")
    outer = ms.get("coordinateTransformations") or []
    axes_field = f"{field}.axes"
    if raw_axes is None and isinstance(ms.get("coordinateSystems"), list):
        raw_axes, outer, axes_field = _coordinate_system(ms, datasets, where, field)
    if not isinstance(raw_axes, list):
        raise FormatError(
            f"{where}: {field}.axes is missing (NGFF < 0.3); sxtlab needs axes named z, y, x")
    # NGFF 0.3 lists names only; 0.4 and later list dicts.
    axes = [dict(a) if isinstance(a, Mapping) else {"name": str(a)} for a in raw_axes]
    names = [str(a.get("name", "")).lower() for a in axes]
    keep = [i for i, n in enumerate(names) if n in DIMS]
    others = [n for n in names if n not in DIMS]
    if [names[i] for i in keep] != list(DIMS) or any(n not in ("t", "c") for n in others):
        raise FormatError(
            f"{where}: {axes_field} are {[a.get('name') for a in axes]}; sxtlab reads 3-D "
            "volumes with axes z, y, x (in that order; singleton t or c axes are dropped)"
        )
    return _Multiscale(group, where, field, axes, keep, datasets, outer, axes_field)


def _coordinate_system(ms: Mapping[str, Any], datasets: list, where: str, field: str
                       ) -> tuple[list, list, str]:
    """Axes, the transforms after the datasets' and the axes' field of an NGFF 0.6 multiscale.

    0.6 names coordinate systems (``coordinateSystems``: name and axes) and gives
    each transform an ``input`` and ``output``. The datasets' transforms map onto one
    system (the "intrinsic" one); a multiscale-level transform whose input is that
    system maps on to another (e.g. "physical"), whose axes, and units, are then the
    ones that hold: the coordinates a viewer shows.
    """
    systems = {str(cs.get("name")): (i, cs.get("axes")) for i, cs in enumerate(ms["coordinateSystems"])
               if isinstance(cs, Mapping)}
    if not systems:
        raise FormatError(f"{where}: {field}.coordinateSystems lists no coordinate system with a name and axes")
    first = datasets[0].get("coordinateTransformations") if isinstance(datasets[0], Mapping) else None
    outputs = [t.get("output") for t in first or [] if isinstance(t, Mapping) and t.get("output")]
    target = str(outputs[-1]) if outputs else list(systems)[-1]
    after: list = []
    for t in ms.get("coordinateTransformations") or []:
        if isinstance(t, Mapping) and str(t.get("input")) == target and str(t.get("output")) in systems:
            after, target = [t], str(t["output"])
            break
    if target not in systems:
        raise FormatError(f"{where}: {field}.datasets[0] maps to coordinate system {target!r}, which "
                          f"{field}.coordinateSystems does not list ({sorted(systems)})")
    index, axes = systems[target]
    return axes, after, f"{field}.coordinateSystems[{index}].axes"


def _grouped(found: dict[str, list[int]]) -> list[str]:
    """Messages with an ``{axes}`` slot, one per message listing all the axes it concerns."""
    return [msg.format(axes=",".join(str(i) for i in axes)) for msg, axes in found.items()]


def _axis_units(ms: _Multiscale) -> tuple[list[str] | None, list[str], list[str]]:
    """Per-axis NGFF length units (None unless every axis has one), the problems that
    make the unit unknown, and notes on units read leniently."""
    units: list[str] = []
    problems: dict[str, list[int]] = {}
    notes: dict[str, list[int]] = {}
    for i in ms.keep:
        ax = ms.axes[i]
        key_name = "unit"
        unit = ax.get("unit")
        if unit is None and ax.get("units") is not None:
            key_name, unit = "units", ax["units"]
            notes.setdefault(f"{ms.axes_field or ms.field + '.axes'}[{{axes}}].units = {unit!r}: NGFF names "
                             "this field 'unit'; "
                             "read as the unit", []).append(i)
        field = f"{ms.axes_field or ms.field + '.axes'}[{{axes}}].{key_name}"
        if unit is None:
            problems.setdefault(f"{field} is missing", []).append(i)
            continue
        if not isinstance(unit, str) or not unit.strip():
            problems.setdefault(f"{field} is blank ({unit!r})", []).append(i)
            continue
        if unit in UM_PER_UNIT:
            units.append(unit)
            continue
        name = length_unit(unit)
        if name is not None:
            notes.setdefault(f"{field} = {unit!r} is not an NGFF unit name; read as {name!r}", []).append(i)
            units.append(name)
        else:
            problems.setdefault(f"{field} = {unit!r} is not a length unit", []).append(i)
    return (units if not problems else None), _grouped(problems), _grouped(notes)


def _geometry(ms: _Multiscale, level: int, voxel_size: Any, recorded_unknown: bool
              ) -> tuple[tuple[float, float, float] | None, tuple[float, float, float]]:
    """Voxel size and origin (µm) of a level ((None, zeros) when the unit is unknown).

    Warns (:class:`~sxtlab.SxtlabWarning`) of units read leniently, an unknown unit
    and an override that differs from the file.
    """
    scale, trans = ms.transform(level)
    if any(not math.isfinite(s) or s <= 0 for s in scale):
        raise FormatError(f"{ms.where}: {ms.field}.datasets[{level}] scale {scale} must be positive and finite")
    units, problems, notes = _axis_units(ms)
    for note in notes:
        warn(f"{ms.where}: {note}")
    file_vs = tuple(to_um(s, u) for s, u in zip(scale, units)) if units is not None else None
    if voxel_size is not None:
        vs, differ = merge_voxel_size(file_vs or (None, None, None), voxel_size, where=ms.where)
        if differ:
            warn(f"{ms.where}: voxel_size={vs} µm replaces the file's {file_vs} µm "
                 f"({ms.field}.datasets[{level}] scale with the axes' units)")
        # The translation counts the same (possibly unknown) units as the scale.
        return vs, tuple(t / s * v for t, s, v in zip(trans, scale, vs))  # type: ignore[arg-type, return-value]
    if file_vs is None:
        if not recorded_unknown:
            msg = (f"{ms.where}: {'; '.join(problems)}: the voxel size is unknown (the scale "
                   f"{scale} is not assumed to be in µm); pass voxel_size=(dz, dy, dx) in µm")
            misplaced = ms.transform_units()
            if misplaced:
                msg += (f". A unit was found where NGFF defines none ({misplaced[0][0]} = "
                        f"{misplaced[0][1]!r}); it is not used; NGFF puts the unit on each axis")
            warn(msg)
        return None, (0.0, 0.0, 0.0)
    vs_checked = check_voxel_size(file_vs, where=f"{ms.where}: {ms.field}.datasets[{level}] scale")
    return vs_checked, tuple(to_um(t, u) for t, u in zip(trans, units))  # type: ignore[arg-type, return-value]


def _own(group: zarr.Group) -> dict[str, Any]:
    meta = dict(group.attrs).get(METADATA_KEY)
    return dict(meta) if isinstance(meta, Mapping) else {}


def _classes_from_properties(image_label: Mapping[str, Any], where: str) -> tuple[dict[int, str], int | None]:
    """Class map and ignore value named by NGFF ``image-label.properties``."""
    classes: dict[int, str] = {}
    ignore = None
    for p in image_label.get("properties") or []:
        if not isinstance(p, Mapping) or "label-value" not in p or not isinstance(p.get("name"), str):
            continue
        if is_ignore_name(p["name"]):
            ignore = int(p["label-value"])
            continue
        try:
            classes[int(p["label-value"])] = canonical_name(p["name"])
        except UnknownClassError as e:
            raise UnknownClassError(f"{where}: image-label.properties: {e}") from None
    return classes, ignore


def _label_level(group: zarr.Group, attrs: Mapping[str, Any], where: str, level: int, chunks: Any,
                 like: xr.DataArray):
    """One level of a label image group: integers of ``like``'s shape (lazy)."""
    data = _parse_multiscale(group, attrs, where).array(level, chunks)
    if tuple(data.shape) != tuple(like.shape):
        raise FormatError(
            f"{where}: the label image has shape {tuple(data.shape)} at level {level}, "
            f"its image {tuple(like.shape)}"
        )
    if not np.issubdtype(data.dtype, np.integer):
        raise FormatError(f"{where}: label image must hold integers, got dtype {data.dtype}")
    return data


def _label_array(group: zarr.Group, where: str, level: int, chunks: Any, like: xr.DataArray,
                 ) -> xr.DataArray:
    """A label image group (multiscales + image-label) as a label volume on ``like``'s grid."""
    attrs = _ome_attrs(group)
    data = _label_level(group, attrs, where, level, chunks, like)
    image_label = attrs.get("image-label") or {}
    classes, ignore = _classes_from_properties(image_label, where)
    own = _own(group)
    stored = dict(own.get("attrs") or {})
    if not classes and not stored:
        warn(f"{where}: image-label.properties name no classes; the label values are unnamed")
    # Keep colours only where they differ from the vocabulary's, which write() restores.
    unannotated = ignore if ignore is not None else stored.get("unannotated_value", UNANNOTATED)
    default = {str(c["label-value"]): c["rgba"] for c in _default_colors(classes, unannotated)}
    colours = {str(c["label-value"]): [int(v) for v in c["rgba"]]
               for c in image_label.get("colors") or []
               if isinstance(c, Mapping) and "label-value" in c and isinstance(c.get("rgba"), list)}
    colours = {k: v for k, v in colours.items() if default.get(k) != v}
    out = label_volume(data, like, classes, name=str(own.get("name") or "labels"))
    attrs_out = {**stored, **{k: out.attrs[k] for k in ("classes", "voxel_size_um")}} if stored else dict(out.attrs)
    attrs_out.pop("colours_rgba", None)
    if ignore is not None:
        attrs_out["unannotated_value"] = ignore
    if colours:
        attrs_out["colours_rgba"] = colours
    out.attrs = attrs_out
    return out


def _instance_array(group: zarr.Group, where: str, level: int, chunks: Any, like: xr.DataArray) -> xr.DataArray:
    """The ``instances`` label image (integer ids, no classes) on ``like``'s grid."""
    data = _label_level(group, _ome_attrs(group), where, level, chunks, like)
    stored = dict(_own(group).get("attrs") or {})
    return xr.DataArray(data, dims=DIMS, coords={d: like[d] for d in DIMS}, name=_INSTANCES_NAME,
                        attrs={**stored, "voxel_size_um": like.attrs.get("voxel_size_um")})


def _probabilities(group: zarr.Group, where: str, level: int, chunks: Any, like: xr.DataArray) -> xr.DataArray:
    attrs = _ome_attrs(group)
    ms_list = attrs.get("multiscales") or [{}]
    datasets = ms_list[0].get("datasets") or []
    if not 0 <= level < len(datasets):
        raise FormatError(f"{where}: has {len(datasets)} levels, level {level} was asked for")
    arr = group[str(datasets[level]["path"])]
    if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(like.shape):
        raise FormatError(
            f"{where}: probabilities have shape {tuple(arr.shape)} at level {level}; "
            f"expected (class,) + {tuple(like.shape)}"
        )
    if isinstance(chunks, tuple) and len(chunks) == 3:
        chunks = (1,) + chunks
    data = _lazy(arr, where, chunks)
    own = _own(group)
    coords: dict[str, Any] = {d: like[d] for d in DIMS}
    if own.get("class_coord") is not None:
        coords["class"] = np.asarray(own["class_coord"])
    stored = {**(own.get("attrs") or {})}
    if "voxel_size_um" in stored:
        stored["voxel_size_um"] = like.attrs.get("voxel_size_um")
    return xr.DataArray(data, dims=("class",) + DIMS, coords=coords,
                        name=str(own.get("name") or "probabilities"), attrs=stored)


def read(path: Path, *, voxel_size: Any = None, chunks: Any = None, segmentation: bool = False,
         level: int = 0, label_name: str | None = None) -> xr.DataArray | xr.Dataset:
    """Read an OME-Zarr image (OME-NGFF 0.4 or 0.5) lazily as a volume or segmentation.

    Parameters
    ----------
    path : pathlib.Path
        The image group (folder with ``.zattrs`` or ``zarr.json``).
    voxel_size : float or (dz, dy, dx), optional
        Voxel size in µm of the level read. Required where the axes carry no length
        unit; replaces the file's value otherwise (with a warning when they differ).
        The origin keeps its position in voxels.
    chunks : optional
        Dask chunks; default the Zarr chunks. Data stay lazy (dask) either way.
    segmentation : bool
        Return a Dataset with ``lac``, ``labels`` (from the NGFF ``labels`` group)
        and ``probabilities`` where present, instead of the image alone.
    level : int
        Pyramid level to read (0 = full resolution); labels and probabilities are
        read at the same level.
    label_name : str, optional
        Which label image of ``labels/`` to read; default ``"labels"`` if listed,
        else the first listed.

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        Dims ``(z, y, x)``, coords ``translation + i * scale`` in µm, attrs as
        written by :func:`write` (an image from another tool gets ``units="gray"``).
        A label image (``image-label`` at the root) reads as a label volume.

    Raises
    ------
    sxtlab.FormatError
        Naming the path and field: not a Zarr group, no ``multiscales``, axes other
        than z, y, x (non-singleton t/c, 2-D), a missing array or ``scale``, labels
        or probabilities whose shape differs from the image's, or no labels when
        ``segmentation=True``.
    sxtlab.classes.UnknownClassError
        If ``image-label.properties`` name a class outside sxtlab's vocabulary.
        Also if ``level`` is not a level of the file (a ``ValueError`` too).

    Warns
    -----
    SxtlabWarning
        When an axis unit is missing, blank or not a length (the voxel size is then
        unknown, ``voxel_size_um`` None, unless ``voxel_size`` is given), when a unit
        is written under a non-NGFF name (``micron``, ``nm``, ``units``), and when
        ``voxel_size`` overrides a different value in the file.
    """
    path = Path(path)
    with foreign_errors(path, "OME-Zarr image", "group metadata (.zattrs, .zarray, zarr.json)"):
        return _read(path, voxel_size=voxel_size, chunks=chunks, segmentation=segmentation, level=level,
                     label_name=label_name)


def _read(path: Path, *, voxel_size: Any, chunks: Any, segmentation: bool, level: int,
          label_name: str | None) -> xr.DataArray | xr.Dataset:
    """:func:`read` inside its boundary."""
    where = str(path)
    root = _open_group(path)
    attrs = _ome_attrs(root)
    ms = _parse_multiscale(root, attrs, where)
    own = _own(root)
    stored = dict(own.get("attrs") or {})
    recorded_unknown = "voxel_size_um" in stored and stored["voxel_size_um"] is None
    data = ms.array(level, chunks)
    vs, origin = _geometry(ms, level, voxel_size, recorded_unknown)

    is_label_image = "image-label" in attrs
    units = stored.get("units") if stored.get("units") in ("gray", "1/um") else "gray"
    image = volume(data, vs, units=units, origin_um=origin, name=str(own.get("name") or "lac"))
    if stored and not is_label_image:
        # Our own file: its attrs exactly, with the geometry of the level read.
        image.attrs = {**stored, "voxel_size_um": image.attrs["voxel_size_um"]}
    if is_label_image:
        return _label_array(root, where, level, chunks, image)
    if not segmentation:
        return image

    labels = probs = instances = None
    if _LABELS_GROUP in root and isinstance(root[_LABELS_GROUP], zarr.Group):
        names = [str(n) for n in _ome_attrs(root[_LABELS_GROUP]).get("labels") or []]
        if _INSTANCES_NAME in names and _INSTANCES_NAME in root[_LABELS_GROUP] and label_name != _INSTANCES_NAME:
            instances = _instance_array(root[_LABELS_GROUP][_INSTANCES_NAME],
                                        f"{where}/labels/{_INSTANCES_NAME}", level, chunks, image)
            names.remove(_INSTANCES_NAME)
        if label_name is None and names:
            label_name = _LABEL_NAME if _LABEL_NAME in names else names[0]
        if label_name is not None:
            if label_name not in root[_LABELS_GROUP]:
                raise FormatError(f"{where}/labels: no label image {label_name!r}; labels/.zattrs lists {names}")
            labels = _label_array(root[_LABELS_GROUP][label_name], f"{where}/labels/{label_name}", level,
                                  chunks, image)
    if _PROBABILITIES_GROUP in root and isinstance(root[_PROBABILITIES_GROUP], zarr.Group):
        probs = _probabilities(root[_PROBABILITIES_GROUP], f"{where}/{_PROBABILITIES_GROUP}", level, chunks, image)
    if labels is None and probs is None:
        raise FormatError(f"{where}: no label image (no 'labels' group listing one in labels/.zattrs); "
                          "read it with segmentation=False for the image alone")
    seg = _segmentation(image, labels, probs, **dict(own.get("dataset_attrs") or {}))
    if instances is not None:
        seg[_INSTANCES_NAME] = instances
    return seg
