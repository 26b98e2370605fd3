"""Two-stage (cascaded) 3-D U-Net segmentation of whole SXT cells.

Stage 1 sees the whole cell block-mean downsampled by an integer factor (a large
receptive field on little memory) and gives a coarse probability map of each
class. Stage 2 works on full-resolution patches whose input channels are the LAC
plus the stage-1 probabilities of the foreground classes, upsampled to full
resolution, and refines the boundaries.

This follows the seed project's ``ncxt_sxtcnn`` cascade (stage 1 on a block-mean
downsampled volume; its probabilities upsampled, Gaussian smoothed and fed with the
LAC to stage 2) and nnU-Net's ``3d_cascade_fullres`` (Isensee et al. 2021, Nature
Methods 18, 203), whose one-hot variant is available as ``context="onehot"``. With
``context="none"`` stage 2 takes the LAC alone and stage 1 only finds the cell and
gates the windows (steps 3–4 below): on phantom cells held out from training, the
same stage-2 network scores higher without stage 1's probabilities than with them,
which draw the nucleus into the cytoplasm beside it
(``benchmarks/results/generalisation.md``, 2026-12-05 08:11 and 09:41).

Prediction (this module) needs no training code: :class:`CascadeModel` holds both
networks and everything needed to apply them (classes, downsampling factor, the
global LAC normalisation, the voxel size it was trained at), saves them as
safetensors weights plus JSON metadata, and loads them without executing code
from the file. Training lives in :mod:`sxtlab.train` (:func:`sxtlab.train.train_cascade`).

Inference
---------
1. The LAC is normalised with the model's fixed offset/scale (µm⁻¹), never with
   per-image statistics: absolute LAC is the signal in SXT.
2. Stage 1 runs on the block-mean downsampled volume (dask ``coarsen`` for lazy
   input), in one window over the whole coarse volume up to :data:`STAGE1_MAX_EDGE`
   per axis (sliding windows beyond), each window alone.
3. Its probabilities are smoothed (Gaussian, ``smooth_sigma`` full-resolution
   voxels, applied on the coarse grid) and trilinearly interpolated between block
   centres to any full-resolution window, on demand. Where the coarse grid exceeds
   :data:`COARSE_IN_MEMORY` voxels, ``predict(volume, out=...)`` keeps stage 1's
   input, output and smoothed output as chunked Zarr arrays in its temporary
   folder, and each stage-2 block reads the coarse region it needs.
4. Stage 2 runs by sliding window (Gaussian blending, σ = patch/8, step half a
   patch, :mod:`sxtlab.inference`). Windows where stage 1 calls every voxel
   background with probability ≥ ``skip_background`` are not run at all, stage 1's
   answer filling them: fields of view are mostly medium, so this is where the
   time goes (``benchmarks/results/cascade.md``). Where stage 1 is surer still
   (≥ ``trust_background``), its answer stands in the windows that do run: a 32³
   window of medium alone normalises, under instance norm, to featureless noise
   that a stage 2 without its input at the head (``UNetConfig.input_to_head``) can
   take for cytoplasm.
5. Stage 2 runs block by block in raster order (:class:`Stage2Blocks`): each
   window of the global grid runs once, with the block it starts in, and hands
   the overhang of its output to the blocks after it. In memory the blocks fill
   one array; larger than memory, ``predict(volume, out="seg.ome.zarr")`` builds
   the same blocks lazily and writes them chunk by chunk through
   :func:`sxtlab.io.write_volume`, so both give the same values.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version as _pkg_version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from scipy import ndimage
from tqdm.auto import tqdm

from .classes import UNANNOTATED, canonical_name
from .clean import clean_labels
from .errors import FormatError
from .inference import BlockPlan, RasterBlender, WindowGrid, crop_padded, flip_tta, sliding_window
from .metrics import check_temperature, temper
from .unet import UNet3D
from .volume import DIMS, check_voxel_size, int_triple, label_volume, segmentation

__all__ = ["CascadeModel", "Stage2Blocks", "BATCH_SIZE", "PRECISIONS", "Normalisation", "Context", "block_mean", "block_labels",
           "stage1_window", "FORMAT_NAME", "FORMAT_VERSION", "STAGE1_MAX_EDGE", "COARSE_IN_MEMORY",
           "COARSE_CHUNK", "CONTEXT_MODES", "stage2_in_channels"]

LOG = logging.getLogger(__name__)

#: ``format`` field of a model's ``model.json``.
FORMAT_NAME = "sxtlab.cascade"
#: Highest model format version this sxtlab reads (and the one it writes).
FORMAT_VERSION = 1
_META = "model.json"
_WEIGHTS = "weights.safetensors"
#: Relative voxel-size difference above which the input is resampled.
_VOXEL_RTOL = 0.02
#: Largest stage-1 window edge (coarse voxels) at inference: a 512³ volume at factor
#: 4 is seen in one pass. One window of the default network takes 705 MiB at 128³,
#: 339 at 96³, 143 at 64³ (run alone; ``benchmarks/results/inference.md``). Smaller
#: windows would bound it further but change what stage 1 calls: on the 512³
#: benchmark field, windows of 96³ changed 1.3 % of its coarse labels and its Dice
#: per class by up to 0.41, so the edge is the model's question, not memory's.
STAGE1_MAX_EDGE = 128
#: Largest coarse grid (voxels) whose stage-1 field ``predict(out=...)`` holds in
#: memory: that of a 512³ volume at factor 4 (6 classes × 128³ float32, 48 MiB, and
#: its smoothed copy). Above it (1024³: 6 × 256³, 384 MiB) stage 1 writes its input and
#: probabilities chunk by chunk into the temporary folder beside the output, and each
#: stage-2 block reads only the coarse region it needs (:meth:`Context.crop`).
COARSE_IN_MEMORY = 128 ** 3
#: Chunk edge (coarse voxels) of a chunked stage-1 field, and of the blocks stage 1
#: blends it in.
COARSE_CHUNK = 64
#: Default ``skip_background``: stage-2 windows where stage 1's background
#: probability is at least this at every voxel are not run (stage 1's answer fills
#: them). Measured (``benchmarks/results/cascade.md``): 0.5 runs 671 instead of
#: 1 109 of 3 375 windows on a 256³ field, and leaves 94 % instead of 27 % of a 512³
#: field's windows skippable, where stage 1 is only moderately sure (median 0.86)
#: of medium far from the cell.
SKIP_BACKGROUND = 0.5
#: Default ``trust_background``: in windows that do run, voxels where stage 1's
#: background probability is at least this keep stage 1's answer. Lower values let
#: stage 1's coarse boundary override stage 2's: on briefly trained task models
#: 0.5 cost 0.03–0.05 cytoplasm Dice against 0.95 (``benchmarks/results/task.md``).
TRUST_BACKGROUND = 0.95
#: Default windows per stage-2 network call: a batch of 2 or more takes oneDNN's
#: convolutions, 5× faster per window than a batch of one on the default model
#: (``benchmarks/results/inference.md``), and 4 amortises the per-call overhead.
BATCH_SIZE = 4
#: Arithmetic of the stage-2 network: float32, or bfloat16 autocast (oneDNN's
#: bfloat16 convolutions, on CPUs with AVX-512 BF16 or AMX about 1.7× faster here;
#: labels measured against float32 in ``benchmarks/results/inference.md``).
PRECISIONS = ("float32", "bfloat16")
#: What a model's input can be: LAC in µm⁻¹, or uncalibrated gray values.
INPUT_UNITS = ("1/um", "gray")


def stage2_in_channels(n_classes: int, context: str) -> int:
    """Stage 2's input channels: the LAC, and a context channel per foreground class
    unless ``context`` is ``"none"`` (``n_classes`` counts the background).

    >>> stage2_in_channels(6, "probabilities"), stage2_in_channels(6, "none")
    (6, 1)
    """
    return 1 if context == "none" else n_classes


def _sxtlab_version() -> str:
    try:
        return _pkg_version("sxtlab")
    except PackageNotFoundError:
        return "0+unknown"


# ---------------------------------------------------------------------------------
# Intensities and grids
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Normalisation:
    """Global intensity normalisation ``x = (value − offset) / scale``.

    Fixed for a model (recorded in its metadata), the same for every image, so that
    a lipid body's absolute LAC means the same to the network in every cell.

    Attributes
    ----------
    offset, scale : float
        In the units of the values (µm⁻¹ for LAC).
    units : {"1/um", "gray"}
        What the model takes: LAC in µm⁻¹ (the default; calibrated gray values are
        converted), or the **uncalibrated gray values** of reconstructions like the
        one it was trained on (a model trained from sparse annotations of a single
        volume that has no calibration, :func:`sxtlab.sparse.fit_sparse`).
    """

    offset: float
    scale: float
    units: str = "1/um"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.offset) and np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"normalisation needs a finite offset and a positive scale, "
                             f"got offset={self.offset}, scale={self.scale} ({self.units})")
        if self.units not in INPUT_UNITS:
            raise ValueError(f"normalisation units must be one of {INPUT_UNITS}, got {self.units!r}")

    def apply(self, values):
        """Normalised float32 values of an array (NumPy or dask) in :attr:`units`."""
        return (values.astype(np.float32) - np.float32(self.offset)) / np.float32(self.scale)

    @classmethod
    def fit(cls, values: np.ndarray, units: str = "1/um") -> "Normalisation":
        """Offset/scale from the values of annotated cells (mean and std after clipping).

        As nnU-Net's CT scheme: clip to the 0.5–99.5 percentiles, then mean and standard
        deviation. LAC is rounded to 0.0001 µm⁻¹ so that the model file reads cleanly
        (with a floor of 0.001 µm⁻¹ on the scale); gray values, whose range can be
        anything (sample_12's cells span about 0.01), keep 6 significant digits.
        """
        v = np.asarray(values, np.float64).ravel()
        if v.size == 0:
            raise ValueError("cannot fit an intensity normalisation: no annotated foreground voxels")
        lo, hi = np.percentile(v, [0.5, 99.5])
        v = np.clip(v, lo, hi)
        mean, std = float(v.mean()), float(v.std())
        if units == "1/um":
            return cls(round(mean, 4), round(max(std, 1e-3), 4), units)
        return cls(float(f"{mean:.6g}"), float(f"{std or max(abs(mean), 1.0):.6g}"), units)


def block_mean(data, factor: Sequence[int]):
    """Block mean by ``factor`` per axis, edge-padding a trailing remainder.

    Padding (rather than trimming, as ``.sxt.downsample`` does) keeps the last
    partial block, so every full-resolution voxel has a coarse voxel of its own.
    Works lazily on dask arrays (``dask.array.coarsen``), so that a larger-than-memory
    volume is reduced chunk by chunk.

    Parameters
    ----------
    data : ndarray or dask array, shape (Z, Y, X)
    factor : (fz, fy, fx)

    Returns
    -------
    array of shape ``ceil(Z/fz), ceil(Y/fy), ceil(X/fx)``, float32
    """
    pad = [(0, -n % f) for n, f in zip(data.shape, factor)]
    if isinstance(data, np.ndarray):
        x = np.pad(data.astype(np.float32), pad, mode="edge") if any(p for _, p in pad) else data
        s = x.shape
        r = x.reshape(s[0] // factor[0], factor[0], s[1] // factor[1], factor[1], s[2] // factor[2], factor[2])
        return r.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)
    import dask.array as da

    x = da.pad(data.astype(np.float32), pad, mode="edge") if any(p for _, p in pad) else data
    # coarsen needs every chunk to be a multiple of the factor
    x = x.rechunk(tuple(max(f, (c // f) * f) for c, f in zip(x.chunksize, factor)))
    return da.coarsen(np.mean, x, dict(enumerate(factor)), trim_excess=False).astype(np.float32)


def block_labels(labels: np.ndarray, factor: Sequence[int], n_classes: int,
                 ignore: int = UNANNOTATED) -> np.ndarray:
    """Coarse labels: the most frequent *annotated* label of each block.

    Unannotated voxels do not vote, so a sparsely annotated plane survives
    downsampling (a block mode that counted them would erase it); a block with no
    annotated voxel becomes ``ignore``. Ties go to the lower label.

    Parameters
    ----------
    labels : ndarray (Z, Y, X), values ``0 … n_classes−1`` or ``ignore``
    factor : (fz, fy, fx)
    n_classes : int
        Label values that vote: the classes, and in training the label-set codes
        that follow them (:func:`sxtlab.train.dice_ce_loss`).

    Returns
    -------
    ndarray, uint8, shape ``ceil(Z/fz), ceil(Y/fy), ceil(X/fx)``
    """
    pad = [(0, -n % f) for n, f in zip(labels.shape, factor)]
    x = np.pad(labels, pad, constant_values=ignore)
    s = x.shape
    r = x.reshape(s[0] // factor[0], factor[0], s[1] // factor[1], factor[1], s[2] // factor[2], factor[2])
    counts = np.stack([(r == c).sum(axis=(1, 3, 5)) for c in range(n_classes)])
    out = counts.argmax(axis=0).astype(np.uint8)
    out[counts.sum(axis=0) == 0] = ignore
    return out


def _linear_index(u: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour indices and weight for linear interpolation at positions ``u`` (clamped)."""
    u = np.clip(u, 0, n - 1)
    i0 = np.minimum(np.floor(u).astype(np.int64), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    return i0, i1, (u - i0).astype(np.float32)


def _interp_axis(a: np.ndarray, axis: int, i0: np.ndarray, i1: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``a0 + (a1 − a0)·w`` along ``axis``, computed in place.

    Two arrays of the result's size at a time instead of four: a stage-2 block's
    context channels are about 110 MiB for the default model.
    """
    shape = [1] * a.ndim
    shape[axis] = -1
    a0 = np.take(a, i0, axis=axis)
    out = np.take(a, i1, axis=axis)
    out -= a0
    out *= w.reshape(shape)
    out += a0
    return out


def interpolate_to_grid(field: np.ndarray, source: xr.DataArray, target: xr.DataArray) -> np.ndarray:
    """A channels-first field on ``source``'s grid, interpolated linearly to ``target``'s voxel centres.

    Parameters
    ----------
    field : ndarray (C, Z, Y, X)
        Values on ``source``'s grid (probabilities, say).
    source, target : xarray.DataArray (z, y, x)
        Volumes with regular coords in µm; ``source``'s spacing is read from its coords.
        Target centres beyond ``source``'s first or last take its edge values.

    Returns
    -------
    ndarray (C, *target.shape), float32, C-contiguous
    """
    for axis, d in enumerate(DIMS):
        src = source[d].values
        step = float(src[1] - src[0]) if len(src) > 1 else 1.0
        field = _interp_axis(field, axis + 1, *_linear_index((target[d].values - src[0]) / step, len(src)))
    return np.ascontiguousarray(field, np.float32)


#: How stage 1's output reaches stage 2: its smoothed probabilities, their arg-max
#: one-hot, or nothing ("none": stage 2 sees the LAC alone and stage 1 only chooses
#: which windows run and where background stands; the ablation in
#: ``benchmarks/results/generalisation.md``, 2026-12-05, found its probabilities as
#: stage-2 input bloat the nucleus into the cytoplasm).
CONTEXT_MODES = ("probabilities", "onehot", "none")


class Context:
    """Stage-1 output on the coarse grid, turned into stage-2 input channels on demand.

    Parameters
    ----------
    probabilities : ndarray or zarr.Array, float32, shape (K, lz, ly, lx)
        Stage-1 class probabilities (background first) on the coarse grid: an
        array in memory, or the Zarr array of a large volume's chunked stage-1
        field (:meth:`CascadeModel.stage1_probabilities` with a ``store``).
    factor : (fz, fy, fx)
        Downsampling factor between the full and the coarse grid.
    mode : {"probabilities", "onehot", "none"}
        Feed smoothed, trilinearly upsampled probabilities (``ncxt_sxtcnn``), the
        one-hot arg-max upsampled by repetition (nnU-Net cascade), or no channels
        (:data:`CONTEXT_MODES`; the probabilities still gate the windows).
    smooth_sigma : float
        Gaussian σ in full-resolution voxels (``ncxt_sxtcnn`` uses 2), applied on the
        coarse grid as σ/factor; 0 disables.
    store : path-like, optional
        Folder where the smoothed copy of a Zarr ``probabilities`` (and, for
        ``"onehot"``, its arg-max) is written, chunk by chunk; needed with one,
        unused with an ndarray. The caller removes it.

    Attributes
    ----------
    shape : (lz, ly, lx)
        The coarse grid.

    Notes
    -----
    Full-resolution voxel ``i`` lies at coarse position ``(i + 0.5)/f − 0.5`` (block
    centres), clamped at the borders. Interpolation is separable, so any window is
    computed alone and equals the same region of a whole-volume upsampling.

    A context over Zarr arrays is never read whole: :meth:`crop` reads the coarse
    region of a box once (stage 2 crops once per block), and answers for boxes
    inside it as the whole context would. Its smoothing runs chunk by chunk with a
    halo of the Gaussian's radius (``dask.array.map_overlap``), which gives the
    values of smoothing the whole array.
    """

    def __init__(self, probabilities, factor: Sequence[int], *, mode: str = "probabilities",
                 smooth_sigma: float = 2.0, store: str | os.PathLike | None = None) -> None:
        if mode not in CONTEXT_MODES:
            raise ValueError(f"context mode must be one of {', '.join(CONTEXT_MODES)}, got {mode!r}")
        self.factor = int_triple(factor, "factor")
        self.mode = mode
        sigma = [0.0] + [smooth_sigma / f for f in self.factor] if smooth_sigma > 0 else None
        if isinstance(probabilities, np.ndarray):
            p = np.asarray(probabilities, np.float32)
            self._smoothed = ndimage.gaussian_filter(p, sigma, mode="nearest") if sigma else p
            self._argmax = probabilities.argmax(axis=0) if mode == "onehot" else None
        else:
            if store is None:
                raise ValueError(f"a chunked stage-1 field ({type(probabilities).__name__}) needs a store "
                                 f"folder for its smoothed copy")
            self._smoothed, self._argmax = _smooth_chunked(probabilities, sigma, mode == "onehot", Path(store))
        self.shape: tuple[int, int, int] = tuple(int(n) for n in self._smoothed.shape[1:])  # type: ignore[assignment]
        # where the held arrays start in the coarse grid (not 0 in a crop)
        self._origin = (0, 0, 0)

    @property
    def n_channels(self) -> int:
        """Stage-2 context channels (foreground classes; none in mode ``"none"``)."""
        return 0 if self.mode == "none" else self._smoothed.shape[0] - 1

    def crop(self, starts: Sequence[int], size: Sequence[int]) -> "Context":
        """This context for the full-resolution box at ``starts``, holding only the coarse region it needs.

        The region is read once (from Zarr, or as views in memory); every method
        then gives the whole context's values for boxes inside this one, at their
        positions in the volume, and raises ``ValueError`` for a box outside it.
        """
        region = self._held(self._region(starts, size))
        crop = copy.copy(self)
        crop._smoothed = np.asarray(self._smoothed[(slice(None), *region)])
        if self._argmax is not None:
            crop._argmax = np.asarray(self._argmax[region])
        crop._origin = tuple(o + r.start for o, r in zip(self._origin, region))
        return crop

    def _indices(self, starts: Sequence[int], size: Sequence[int], order: int):
        out = []
        for s, n, f, m in zip(starts, size, self.factor, self.shape):
            i = np.arange(s, s + n)
            if order == 0:
                i0 = np.clip(i // f, 0, m - 1)
                out.append((i0, i0, np.zeros(n, np.float32)))
            else:
                out.append(_linear_index((i + 0.5) / f - 0.5, m))
        return out

    def _region(self, starts: Sequence[int], size: Sequence[int]) -> tuple[slice, slice, slice]:
        """Coarse voxels a full-resolution box interpolates from (its nearest ones for ``order`` 0 among them)."""
        return tuple(slice(int(i0.min()), int(i1.max()) + 1)  # type: ignore[return-value]
                     for i0, i1, _ in self._indices(starts, size, 1))

    def _held(self, region: tuple[slice, ...]) -> tuple[slice, ...]:
        """A region of the coarse grid in the held arrays."""
        held = self._smoothed.shape[1:]
        out = tuple(slice(r.start - o, r.stop - o) for r, o in zip(region, self._origin))
        if any(r.start < 0 or r.stop > n for r, n in zip(out, held)):
            raise ValueError(f"coarse region {region} lies outside this cropped context "
                             f"(origin {self._origin}, shape {tuple(held)})")
        return out

    def _features(self, region: tuple[slice, ...]) -> np.ndarray:
        """The stage-2 context channels on the coarse grid over a held region."""
        if self.mode == "onehot":
            arg = np.asarray(self._argmax[region])
            return (arg[None] == np.arange(1, self._smoothed.shape[0])[:, None, None, None]).astype(np.float32)
        return np.asarray(self._smoothed[(slice(1, None), *region)])

    def _upsample(self, read: Callable[[tuple[slice, ...]], np.ndarray], starts, size, order: int,
                  transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        idx = self._indices(starts, size, order)
        lo = [int(i0.min()) for i0, _, _ in idx]
        hi = [int(i1.max()) + 1 for _, i1, _ in idx]
        a = read(self._held(tuple(slice(a, b) for a, b in zip(lo, hi))))
        if transform is not None:
            a = transform(a)
        for axis, ((i0, i1, w), o) in enumerate(zip(idx, lo)):
            a = _interp_axis(a, axis + 1, i0 - o, i1 - o, w)
        return np.ascontiguousarray(a, dtype=np.float32)

    def channels(self, starts: Sequence[int], size: Sequence[int],
                 transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """Context channels ``(K−1, *size)`` of the full-resolution box at ``starts``.

        ``transform`` (training only) is applied to the coarse crop first, e.g. the
        corruption that keeps stage 2 from trusting stage 1 blindly.
        """
        if self.mode == "none":
            return np.zeros((0, *size), np.float32)
        return self._upsample(self._features, starts, size, 0 if self.mode == "onehot" else 1, transform)

    def probabilities_at(self, starts: Sequence[int], size: Sequence[int]) -> np.ndarray:
        """Upsampled stage-1 probabilities ``(K, *size)`` (all classes) of a box."""
        return self._upsample(lambda region: np.asarray(self._smoothed[(slice(None), *region)]), starts, size, 1)

    def background_min(self, starts: Sequence[int], size: Sequence[int]) -> float:
        """Least stage-1 background probability over the coarse voxels a box interpolates from."""
        return float(np.asarray(self._smoothed[(0, *self._held(self._region(starts, size)))]).min())

    def sure_min(self, starts: Sequence[int], size: Sequence[int]) -> float:
        """Least stage-1 probability of the class it picks over the coarse voxels a box interpolates from.

        0 where it picks more than one class there: a box stage 1 calls all one class
        (medium, or cytoplasm far from any organelle) with at least this probability.
        """
        p = np.asarray(self._smoothed[(slice(None), *self._held(self._region(starts, size)))])
        top = p.argmax(axis=0)
        if (top != top.flat[0]).any():
            return 0.0
        return float(p[top.flat[0]].min())


def _smooth_chunked(probabilities, sigma: list[float] | None, argmax: bool, store: Path):
    """Smoothed copy (and arg-max) of a Zarr stage-1 field, written chunk by chunk into ``store``."""
    import dask
    import dask.array as da

    raw = da.from_zarr(probabilities)
    smoothed = raw
    if sigma:
        # scipy's kernel radius (truncate 4σ): with that halo each chunk's values
        # are those of smoothing the whole array ("nearest" continues the borders alike)
        halo = tuple(int(4.0 * s + 0.5) for s in sigma)
        smoothed = raw.map_overlap(ndimage.gaussian_filter, depth=halo, boundary="nearest", sigma=sigma,
                                   mode="nearest", dtype=np.float32)
    with dask.config.set(scheduler="synchronous"):
        return (_to_zarr(smoothed, store / "smoothed"),
                _to_zarr(raw.argmax(axis=0).astype(np.uint8), store / "argmax") if argmax else None)


def _to_zarr(array, path: Path):
    """A dask array computed chunk by chunk into a new Zarr array at ``path``."""
    import dask.array as da
    import zarr

    out = zarr.open_array(str(path), mode="w", shape=array.shape, dtype=array.dtype,
                          chunks=tuple(c[0] for c in array.chunks))
    da.store(array, out, lock=False)
    return out


def stage1_window(coarse_shape: Sequence[int], divisor: int, patch: Sequence[int]) -> tuple[int, int, int]:
    """Stage-1 window for a coarse volume: all of it, up to :data:`STAGE1_MAX_EDGE` per axis.

    Stage 1 is meant to see the whole cell: one window over the whole coarse volume
    normalises (instance norm) over the cell and its medium together, so that pure
    medium far from the cell is still recognised, whereas a tile of medium alone
    would normalise to featureless input. Larger volumes fall back to a sliding
    window of that edge (or the training ``patch`` if larger), so one pass stays
    bounded in memory. Edges are rounded up to multiples of ``divisor``, and are at
    least twice it: at the U-Net's deepest level instance norm needs more than one
    voxel (a small volume is padded up to that window).
    """
    cap = max(STAGE1_MAX_EDGE, *patch)
    return tuple(max(2 * divisor, min(-(-int(n) // divisor) * divisor, cap - cap % divisor))  # type: ignore[return-value]
                 for n in coarse_shape)


# ---------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------
def _softmax_predictor(net: UNet3D, precision: str = "float32", *,
                       pair_lone: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """Softmax of ``net`` on a batch of windows; ``pair_lone``: a batch of one runs as a pair."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bfloat16"):
            if pair_lone and len(x) == 1:
                # ATen sends a batch of one with few channels to its native slow_conv3d
                # instead of oneDNN (the size heuristic in ConvParams::use_mkldnn): a 32³
                # window of the default model takes 5× as long alone as in a pair
                # (benchmarks/results/inference.md), so a lone window runs twice.
                return torch.softmax(net(torch.cat([x, x]))[:1].float(), dim=1)
            return torch.softmax(net(x).float(), dim=1)

    return predict


def _json_voxel_size(vs) -> list[float] | str:
    return "unknown" if vs is None else [float(v) for v in vs]


class CascadeModel:
    """Trained two-stage segmentation model: prediction, saving and loading.

    Parameters
    ----------
    stage1, stage2 : UNet3D
        Stage 1 takes 1 channel (normalised LAC); stage 2 takes ``1 + K − 1``
        (LAC and the foreground context); both output ``K = len(classes) + 1``.
    classes : sequence of str
        Foreground class names (canonical, see :mod:`sxtlab.classes`) for label
        values 1, 2, …; 0 is background.
    factor : int or (fz, fy, fx)
        Downsampling factor of stage 1.
    normalisation : Normalisation
        Global LAC offset/scale (µm⁻¹).
    voxel_size : (dz, dy, dx) or None
        Full-resolution voxel size (µm) of the training data; ``None`` if unknown
        (then inputs are never resampled).
    stage1_patch, stage2_patch : int or (pz, py, px)
        Window sizes (coarse voxels for stage 1, full-resolution for stage 2);
        multiples of the networks' ``divisor``.
    context : {"probabilities", "onehot", "none"}
        How stage-1 output is fed to stage 2 (see :class:`Context`); with ``"none"``
        stage 2 takes the LAC alone.
    smooth_sigma : float
        Smoothing of the stage-1 probabilities, full-resolution voxels.
    temperature : float
        Temperature of the output probabilities (:func:`sxtlab.metrics.temper`),
        fitted on held-out cells by ``scripts/fit_temperature.py``; 1 leaves stage 2's
        softmax as it is. Labels do not depend on it.
    info : dict, optional
        Free-form, JSON-serialisable notes (how it was trained).
    """

    def __init__(self, stage1: UNet3D, stage2: UNet3D, classes: Sequence[str], *,
                 factor: int | Sequence[int], normalisation: Normalisation,
                 voxel_size: Sequence[float] | None, stage1_patch: int | Sequence[int],
                 stage2_patch: int | Sequence[int], context: str = "probabilities",
                 smooth_sigma: float = 2.0, temperature: float = 1.0,
                 info: dict[str, Any] | None = None) -> None:
        self.classes = [canonical_name(c) for c in classes]
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct, got {self.classes}")
        k = len(self.classes) + 1
        self.stage1, self.stage2 = stage1, stage2
        c1, c2 = stage1.config, stage2.config
        if (c1.in_channels, c1.out_channels) != (1, k):
            raise ValueError(f"stage 1 must map 1 channel to {k} classes, it maps "
                             f"{c1.in_channels} to {c1.out_channels}")
        if context not in CONTEXT_MODES:
            raise ValueError(f"context must be one of {', '.join(CONTEXT_MODES)}, got {context!r}")
        n_in = stage2_in_channels(k, context)
        if (c2.in_channels, c2.out_channels) != (n_in, k):
            raise ValueError(f"stage 2 must map {n_in} channels (LAC + {n_in - 1} context) to {k} classes, "
                             f"it maps {c2.in_channels} to {c2.out_channels}")
        self.factor = int_triple(factor, "factor")
        self.normalisation = normalisation
        self.voxel_size = check_voxel_size(voxel_size, where="model voxel size")
        self.stage1_patch = int_triple(stage1_patch, "stage1_patch")
        self.stage2_patch = int_triple(stage2_patch, "stage2_patch")
        for net, patch, name in ((stage1, self.stage1_patch, "stage1_patch"),
                                 (stage2, self.stage2_patch, "stage2_patch")):
            if any(p % net.config.divisor for p in patch):
                raise ValueError(f"{name} {patch} must be multiples of {net.config.divisor} "
                                 f"(the U-Net's depth is {net.config.depth})")
        self.context = context
        self.smooth_sigma = float(smooth_sigma)
        self.temperature = check_temperature(temperature)
        self.info = dict(info or {})
        stage1.eval()
        stage2.eval()

    # -- identity -------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        """Number of output classes, background included."""
        return len(self.classes) + 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of both stages, keys prefixed ``stage1.`` / ``stage2.``."""
        out = {f"stage1.{k}": v for k, v in self.stage1.state_dict().items()}
        out.update({f"stage2.{k}": v for k, v in self.stage2.state_dict().items()})
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def _weights_bytes(self) -> bytes:
        from safetensors.torch import save

        return save(self.state_dict())

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the weights as saved (identifies the model in results)."""
        return hashlib.sha256(self._weights_bytes()).hexdigest()

    def metadata(self) -> dict[str, Any]:
        """The JSON metadata written beside the weights."""
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "sxtlab_version": _sxtlab_version(),
            "classes": self.classes,
            "factor": list(self.factor),
            "normalisation": {"offset": self.normalisation.offset, "scale": self.normalisation.scale,
                              "units": self.normalisation.units, "formula": "(value - offset) / scale"},
            "voxel_size_um": _json_voxel_size(self.voxel_size),
            "context": {"mode": self.context, "smooth_sigma": self.smooth_sigma},
            "stage1": {"unet": self.stage1.config.to_dict(), "patch": list(self.stage1_patch)},
            "stage2": {"unet": self.stage2.config.to_dict(), "patch": list(self.stage2_patch),
                       "temperature": self.temperature},
            "info": self.info,
        }

    def __repr__(self) -> str:
        vs = "unknown" if self.voxel_size is None else f"{tuple(round(v, 5) for v in self.voxel_size)} µm"
        return (f"CascadeModel(classes={self.classes}, factor={self.factor}, voxel_size={vs}, "
                f"stage2_patch={self.stage2_patch})")

    # -- saving and loading ---------------------------------------------------------
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Save as a folder with ``model.json`` and ``weights.safetensors``.

        Written atomically (a temporary folder renamed into place).

        Raises
        ------
        sxtlab.OutputExistsError
            If ``path`` exists and ``overwrite`` is false.
        """
        from .io import atomic_output

        data = self._weights_bytes()
        meta = self.metadata()
        meta["weights"] = {"file": _WEIGHTS, "sha256": hashlib.sha256(data).hexdigest()}

        def write(tmp: Path) -> None:
            tmp.mkdir()
            (tmp / _WEIGHTS).write_bytes(data)
            (tmp / _META).write_text(json.dumps(meta, indent=1) + "\n")

        return atomic_output(path, write, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, *, classes: Sequence[str] | None = None) -> "CascadeModel":
        """Load a model saved by :meth:`save`; never executes code from the files.

        Parameters
        ----------
        path : path-like
            The model folder (or its ``model.json``).
        classes : sequence of str, optional
            Classes the caller expects, in label order; a model for other classes
            is refused.

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        sxtlab.FormatError
            If ``path`` is not an sxtlab model (no ``model.json``, not JSON, wrong
            ``format``), was written by a newer sxtlab (``format_version`` above
            :data:`FORMAT_VERSION`), a field is missing, of the wrong type or out of
            range, its weights are missing, outside the folder, corrupt (checksum) or
            do not fit the recorded architecture, or it was made for other classes
            than ``classes``. The message names the file and the field.

        Notes
        -----
        Everything is checked before a network is built (:mod:`sxtlab._modelfile`):
        the size and nesting of ``model.json``, its schema, the weights' checksum and
        every tensor's name, dtype and shape against the recorded configuration.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load

        from ._modelfile import read_meta, read_weights, validate_meta

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such model folder")
        folder = path.parent if path.is_file() else path
        meta_path = folder / _META
        if not meta_path.is_file():
            raise FormatError(f"{path}: not an sxtlab model: expected a folder with {_META} and "
                              f"{_WEIGHTS}, found {sorted(p.name for p in folder.iterdir())[:10]}")
        spec = validate_meta(read_meta(meta_path), meta_path, format_name=FORMAT_NAME,
                             format_version=FORMAT_VERSION, sxtlab_version=_sxtlab_version())
        if classes is not None:
            expected = [canonical_name(c) for c in classes]
            if expected != spec.classes:
                raise FormatError(f"{path}: the model segments classes {spec.classes}, expected {expected}")
        # Every name, dtype and shape was checked against the configuration, so nothing
        # below should fail; should safetensors or torch still refuse, it is this file's fault.
        data = read_weights(folder, spec, meta_path)
        weights_file = folder / spec.weights_file
        try:
            tensors = load(data)
            stages = []
            for prefix, config in (("stage1.", spec.stage1), ("stage2.", spec.stage2)):
                net = UNet3D(config)
                net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                                    strict=True)
                stages.append(net)
            offset, scale, units = spec.normalisation
            return cls(stages[0], stages[1], spec.classes, factor=spec.factor,
                       normalisation=Normalisation(offset, scale, units), voxel_size=spec.voxel_size,
                       stage1_patch=spec.stage1_patch, stage2_patch=spec.stage2_patch,
                       context=spec.context, smooth_sigma=spec.smooth_sigma,
                       temperature=spec.temperature, info=spec.info)
        except (SafetensorError, RuntimeError, ValueError) as err:
            raise FormatError(f"{weights_file}: cannot build the model it records: {err}") from err

    # -- stages ---------------------------------------------------------------------
    def stage1_probabilities(self, lac_normalised, *, tta: bool = False, progress: bool = False,
                             store: str | os.PathLike | None = None):
        """Stage-1 probabilities ``(K, lz, ly, lx)`` on the coarse grid.

        Parameters
        ----------
        lac_normalised : ndarray or dask array (Z, Y, X)
            Normalised LAC at full resolution (dask: reduced chunk by chunk).
        tta : bool
            Average over the 8 axis mirrorings.
        progress : bool
            Show a progress bar.
        store : path-like, optional
            A folder for temporary Zarr arrays. Where the coarse grid has more than
            :data:`COARSE_IN_MEMORY` voxels, the coarse input and the probabilities
            are written there chunk by chunk (:data:`COARSE_CHUNK`) and never held
            whole; the caller removes the folder.

        Returns
        -------
        ndarray, or zarr.Array in ``store``
            The same values either way, up to the order of float sums.
        """
        low = block_mean(lac_normalised, self.factor)
        # Stage 1's windows are large (the whole coarse volume, up to STAGE1_MAX_EDGE):
        # alone, their wide layers take oneDNN, and a pair would only double the
        # activations and the time (a 128³ window of the default model: 1 383 against
        # 705 MiB, 7.6 against 3.4 CPU s; benchmarks/results/inference.md).
        net = _softmax_predictor(self.stage1, pair_lone=False)
        window = stage1_window(low.shape, self.stage1.config.divisor, self.stage1_patch)
        if store is not None and np.prod(low.shape) > COARSE_IN_MEMORY:
            return self._stage1_to_zarr(low, flip_tta(net) if tta else net, window, Path(store), progress)
        if not isinstance(low, np.ndarray):
            import dask

            with dask.config.set(scheduler="synchronous"):
                low = low.compute()
        return sliding_window(low[None], net, window, out_channels=self.n_classes, tta=tta, progress=progress)

    def _stage1_to_zarr(self, low, predict: Callable[[torch.Tensor], torch.Tensor], window: tuple[int, int, int],
                        store: Path, progress: bool):
        """Stage 1 of a large coarse grid, from and into Zarr arrays in ``store``.

        The coarse input is computed chunk by chunk into ``store/lac``. The windows are
        those :func:`~sxtlab.inference.sliding_window` runs, blended block by block in
        raster order (:class:`~sxtlab.inference.RasterBlender`, each window once), and
        each block is written to ``store/probabilities`` as it is done: what stays in
        memory is one window's activations and the overhang of the windows into the
        blocks after theirs.
        """
        import dask
        import dask.array as da
        import zarr

        with dask.config.set(scheduler="synchronous"):
            lac = _to_zarr(da.asarray(low).rechunk(COARSE_CHUNK), store / "lac")
        plan = BlockPlan.make(WindowGrid.make(lac.shape, window, 0.5), COARSE_CHUNK)
        blender = RasterBlender(plan, predict, self.n_classes, batch_size=1)
        probs = zarr.open_array(str(store / "probabilities"), mode="w", shape=(self.n_classes, *lac.shape),
                                chunks=(self.n_classes, *plan.block), dtype=np.float32)
        for index in tqdm(plan.indices(), desc="stage 1 blocks", leave=False, disable=not progress):
            block, _ = blender.blend(index, lambda s: crop_padded(lac, s, window)[None])
            probs[(slice(None), *plan.slices(index))] = block
        return probs

    def context_for(self, lac_normalised, *, store: str | os.PathLike | None = None, **kwargs: Any) -> Context:
        """Stage-1 :class:`Context` of a normalised full-resolution volume.

        With ``store``, a large volume's stage-1 field is chunked in that folder
        (:meth:`stage1_probabilities`), and so is its smoothed copy (:class:`Context`).
        """
        return Context(self.stage1_probabilities(lac_normalised, store=store, **kwargs), self.factor,
                       mode=self.context, smooth_sigma=self.smooth_sigma, store=store)

    def stage2_window(self, window: int | Sequence[int] | None = None) -> tuple[int, int, int]:
        """Stage-2 window for prediction: ``window`` checked against the network, or the training patch.

        Raises
        ------
        ValueError
            If an edge is not a positive multiple of the stage-2 network's divisor.
        """
        if window is None:
            return self.stage2_patch
        w = int_triple(window, "window")
        div = self.stage2.config.divisor
        if any(v < 1 or v % div for v in w):
            raise ValueError(f"stage-2 window {w} must be positive multiples of {div} "
                             f"(the U-Net's depth is {self.stage2.config.depth})")
        return w

    def stage2_blocks(self, read: Callable[[tuple[slice, slice, slice]], np.ndarray], shape: Sequence[int],
                      context: Context, *, block_size: int | Sequence[int] = 128, step: float | int = 0.5,
                      window: int | Sequence[int] | None = None, tta: bool = False, precision: str = "float32",
                      skip_background: float | None = SKIP_BACKGROUND, skip_sure: float | None = None,
                      trust_background: float | None = TRUST_BACKGROUND,
                      batch_size: int = BATCH_SIZE) -> "Stage2Blocks":
        """Stage 2 over a volume, block by block, every window run once (:class:`Stage2Blocks`).

        Parameters
        ----------
        read : callable
            ``read(region)`` → normalised LAC (float32 ndarray) of a region (slices
            within the volume).
        shape : (Z, Y, X)
            Shape of the whole volume (the window grid is global).
        context : Context
            Stage-1 output for the whole volume.
        block_size : int or (bz, by, bx)
            Output block edge in voxels.
        skip_background, skip_sure, trust_background, batch_size, step, window, tta, precision
            As :meth:`predict`.
        """
        return Stage2Blocks(self, read, shape, context, block_size=block_size, step=step, window=window, tta=tta,
                            precision=precision, skip_sure=skip_sure,
                            skip_background=skip_background, trust_background=trust_background,
                            batch_size=batch_size)

    # -- input checks ---------------------------------------------------------------
    def _model_values(self, volume: xr.DataArray) -> xr.DataArray:
        """The volume in the units the model takes (:attr:`Normalisation.units`)."""
        if not isinstance(volume, xr.DataArray):
            raise TypeError(f"predict expects an xarray.DataArray volume (z, y, x), got {type(volume).__name__}")
        if volume.dims != DIMS:
            raise FormatError(f"predict expects dims {DIMS}, got {volume.dims}")
        units, wanted = volume.attrs.get("units"), self.normalisation.units
        if units is None:
            warnings.warn(f"the volume has no 'units' attr; assuming {wanted!r}, which the model takes",
                          stacklevel=3)
            return volume
        if wanted == "gray":
            if units != "gray":
                raise FormatError(
                    f"this model takes the uncalibrated gray values of reconstructions like the one it was "
                    f"trained on ({self.info.get('trained_on', '?')}), got units {units!r}")
            return volume
        if units == "gray":
            LOG.info("converting gray values to LAC with the recorded calibration")
            return volume.sxt.to_lac()
        if units != "1/um":
            raise FormatError(f"predict needs LAC (units '1/um') or calibrated gray values, "
                              f"got units {units!r}")
        return volume

    def _needs_resampling(self, volume: xr.DataArray) -> bool:
        if self.voxel_size is None:
            return False
        vs = volume.attrs.get("voxel_size_um")
        if vs is None:
            warnings.warn(f"the volume's voxel size is unknown; assuming the model's "
                          f"{self.voxel_size} µm (no resampling)", stacklevel=3)
            return False
        return not np.allclose(vs, self.voxel_size, rtol=_VOXEL_RTOL, atol=0)

    def _dataset(self, volume: xr.DataArray, probs, extra: dict[str, Any]) -> xr.Dataset:
        labels = probs.argmax(axis=0).astype(np.uint8)  # NumPy or lazily for dask
        lab = label_volume(labels, volume, {str(i + 1): c for i, c in enumerate(self.classes)})
        prob = xr.DataArray(probs, dims=("class", *DIMS),
                            coords={"class": ["background", *self.classes], **{d: volume[d] for d in DIMS}},
                            name="probabilities", attrs={"long_name": "class probability", "units": "1"})
        attrs = {
            "model": FORMAT_NAME,
            "model_format_version": FORMAT_VERSION,
            "model_classes": list(self.classes),
            "model_weights_sha256": self.weights_sha256,
            "model_voxel_size_um": _json_voxel_size(self.voxel_size),
            "sxtlab_version": _sxtlab_version(),
            **extra,
        }
        return segmentation(volume.rename("lac"), lab, prob, **attrs)

    # -- prediction -----------------------------------------------------------------
    def predict(self, volume: xr.DataArray, *, out: str | os.PathLike | None = None,
                overwrite: bool = False, tta: bool = False, step: float | int = 0.5,
                window: int | Sequence[int] | None = None, precision: str = "float32",
                skip_background: float | None = SKIP_BACKGROUND, skip_sure: float | None = None,
                trust_background: float | None = TRUST_BACKGROUND,
                batch_size: int = BATCH_SIZE, block_size: int = 128, progress: bool = True,
                clean: bool = True, ngff_version: str | None = None) -> xr.Dataset:
        """Segment a volume.

        Parameters
        ----------
        volume : xarray.DataArray (z, y, x)
            LAC (``units`` ``"1/um"``) or gray values with a recorded calibration;
            NumPy- or dask-backed.
        out : path-like, optional
            Write the segmentation to this OME-Zarr folder chunk by chunk (memory
            bounded by ``block_size``, not by the volume) and return it opened lazily.
        overwrite : bool
            Replace an existing ``out``.
        tta : bool
            Average over the 8 axis mirrorings: 8 network passes per stage-2 window (a
            128³ field took 2.3× as long; ``benchmarks/results/generalisation.md``, 2026-12-05 22:58).
        step : float or int
            Window step, fraction of the patch or voxels (default half a patch).
        window : int or (pz, py, px), optional
            Stage-2 window edge in voxels, a multiple of the network's divisor
            (default: the model's training patch, :attr:`stage2_patch`). Larger
            windows give instance norm other statistics than training did; their
            Dice and time are measured in ``benchmarks/results/inference.md``.
        precision : {"float32", "bfloat16"}
            Arithmetic of the stage-2 network (:data:`PRECISIONS`); bfloat16 is
            faster where the CPU has AVX-512 BF16 or AMX and changes a few labels.
        skip_background : float or None
            Stage 2 does not run windows where stage 1 calls every voxel background
            with at least this probability; stage 1's answer fills them (``None``:
            every window runs).
        skip_sure : float or None
            Stage 2 does not run windows where stage 1 calls every voxel one and the
            same class (cytoplasm far from any organelle, say) with at least this
            probability; stage 1's answer fills them. Off by default (``None``); its
            Dice and time are measured in ``benchmarks/results/inference.md``.
        trust_background : float or None
            Where stage 1 calls a voxel background with at least this probability,
            its answer stands even where stage 2 ran (``None``: stage 2's answer is
            kept wherever it ran).
        batch_size : int
            Windows per stage-2 network call (:data:`BATCH_SIZE`).
        block_size : int
            Output block edge (voxels). Stage 2 runs block by block in raster order,
            each window once whatever the block size; a block holds about
            ``(K + 2)·block³·4`` bytes, plus the overhang of its windows into the
            blocks after it (at most ``patch − 1`` voxels deep). With ``out`` it bounds
            the memory; in memory it bounds the working buffers.
        progress : bool
            Show progress bars.
        clean : bool
            Clean the labels as :func:`sxtlab.clean.clean_labels` does (specks below
            the class's minimum volume removed, holes of nucleus, lipid bodies and
            vacuoles filled, touching lipid bodies and vacuoles split); needs a known
            voxel size (the volume's or the model's). Only in memory: with ``out``
            or a dask-backed volume the labels are the arg-max, block by block.
        ngff_version : {"0.5", "0.4"}, optional
            OME-NGFF version of ``out`` (default :data:`sxtlab.io._omezarr.NGFF_VERSION`,
            0.5; "0.4" for readers without Zarr v3).

        Returns
        -------
        xarray.Dataset
            ``lac`` (the input), ``labels`` (uint8; ``classes`` attr names the model's
            classes) and ``probabilities`` (class, z, y, x), on the input's grid with
            its coords and attrs; the model's identity in the Dataset attrs.

        Raises
        ------
        sxtlab.FormatError
            If the volume is not (z, y, x) LAC.
        ValueError
            If the input must be resampled (its voxel size differs from the model's)
            and it is dask-backed or ``out`` is given: resample it first with
            ``.sxt.resample(model.voxel_size)``.

        Notes
        -----
        A volume whose voxel size differs from the model's by more than 2% is
        resampled to the model's voxel size (linear), segmented, and its
        probabilities interpolated back to the input grid; a warning says so.
        """
        volume = self._model_values(volume)
        lazy = out is not None or not isinstance(volume.data, np.ndarray)
        if self._needs_resampling(volume):
            if lazy:
                raise ValueError(
                    f"the volume's voxel size {volume.attrs['voxel_size_um']} µm differs from the "
                    f"model's {list(self.voxel_size)} µm; blockwise prediction does not resample: "
                    f"resample it first with .sxt.resample({list(self.voxel_size)})")
            seg = self._predict_resampled(volume, tta=tta, step=step, window=window, precision=precision,
                                          skip_background=skip_background, skip_sure=skip_sure,
                                          trust_background=trust_background, batch_size=batch_size,
                                          progress=progress)
            return self._clean(seg) if clean else seg
        kw = dict(tta=tta, step=step, window=window, precision=precision, skip_background=skip_background,
                  skip_sure=skip_sure, trust_background=trust_background, batch_size=batch_size, block_size=block_size)
        if out is not None:
            return self._predict_to_zarr(volume, out, overwrite, ngff_version, **kw)
        if lazy:
            import dask

            with dask.config.set(scheduler="synchronous"):
                return self.predict_lazy(volume, **kw).compute()
        data = np.asarray(volume.values, np.float32)
        norm = self.normalisation.apply(data)
        ctx = self.context_for(norm, tta=tta)
        stage2 = self.stage2_blocks(lambda region: norm[region], data.shape, ctx, block_size=block_size, step=step,
                                    window=window, tta=tta, precision=precision, skip_background=skip_background,
                                    skip_sure=skip_sure, trust_background=trust_background, batch_size=batch_size)
        probs = np.empty((self.n_classes, *data.shape), np.float32)
        for block, p in tqdm(stage2, total=len(stage2.plan.indices()), desc="stage 2 blocks", leave=False,
                             disable=not progress):
            probs[(slice(None), *block)] = p
        counts = stage2.counts
        LOG.info("stage 2 ran on %d of %d windows", counts["windows"] - counts["skipped"], counts["windows"])
        seg = self._dataset(volume, probs, {"windows": counts["windows"], "windows_skipped": counts["skipped"],
                                            "tta": tta})
        return self._clean(seg) if clean else seg

    def _clean(self, seg: xr.Dataset) -> xr.Dataset:
        vs = seg["labels"].attrs.get("voxel_size_um") or self.voxel_size
        if vs is None:
            LOG.info("labels not cleaned: neither the volume nor the model knows its voxel size")
            return seg
        return seg.assign(labels=clean_labels(seg["labels"], voxel_size=vs))

    def _predict_resampled(self, volume: xr.DataArray, **kwargs: Any) -> xr.Dataset:
        src = tuple(volume.attrs["voxel_size_um"])
        msg = (f"resampling the volume from {src} µm to the model's voxel size {self.voxel_size} µm, "
               f"and the result back to the input grid")
        LOG.warning(msg)
        warnings.warn(msg, stacklevel=3)
        resampled = volume.sxt.resample(self.voxel_size)
        seg = self.predict(resampled, clean=False, **kwargs)
        p = interpolate_to_grid(seg["probabilities"].values, resampled, volume)
        return self._dataset(volume, p,
                             {**{k: v for k, v in seg.attrs.items() if not k.startswith(("model", "sxtlab"))},
                              "resampled_from_um": list(self.voxel_size)})

    def predict_lazy(self, volume: xr.DataArray, *, tta: bool = False, step: float | int = 0.5,
                     window: int | Sequence[int] | None = None, precision: str = "float32",
                     skip_background: float | None = SKIP_BACKGROUND, skip_sure: float | None = None,
                     trust_background: float | None = TRUST_BACKGROUND, batch_size: int = BATCH_SIZE,
                     block_size: int = 128) -> xr.Dataset:
        """A dask-backed segmentation Dataset computed block by block when stored.

        Stage 1 runs now (on the coarse volume); each ``block_size``³ output block
        of stage 2 is a dask task (:meth:`Stage2Blocks.get`) that reads only the
        input region its windows need, each window running once over all the
        blocks when they are computed in raster order. Values equal :meth:`predict`'s
        in memory. Parameters as :meth:`predict`.

        Stage 1's coarse field is held in memory whatever the size: the returned
        Dataset outlives this call, and a chunked field would need a folder that
        outlives it too. For volumes whose coarse grid exceeds
        :data:`COARSE_IN_MEMORY`, ``predict(volume, out=...)`` chunks it.
        """
        import dask
        import dask.array as da

        volume, stage2 = self._lazy_stage2(volume, tta=tta, step=step, window=window, precision=precision,
                                           skip_background=skip_background, skip_sure=skip_sure,
                                           trust_background=trust_background,
                                           batch_size=batch_size, block_size=block_size)
        k = self.n_classes
        # Explicit task names: letting dask tokenize the method would pickle the context.
        # Each block's task takes the one before it in raster order as an argument it
        # ignores, so that dask computes them in that order (left free, it started with
        # the last block). Dask may still hold computed blocks until it stores them:
        # predict(out=...) writes them itself, block by block.
        token = f"sxtlab-stage2-{uuid.uuid4().hex}"
        get = dask.delayed(stage2.get, pure=False)
        tasks, previous = {}, None
        for index in stage2.plan.indices():
            previous = tasks[index] = get(index, previous, dask_key_name=f"{token}-{'-'.join(map(str, index))}")
        counts = stage2.plan.counts
        rows = [[[da.from_delayed(tasks[i, j, m], (k, *(s.stop - s.start for s in stage2.plan.slices((i, j, m)))),
                                  np.float32)
                  for m in range(counts[2])] for j in range(counts[1])] for i in range(counts[0])]
        probs = da.block(rows)
        return self._dataset(volume, probs, {"tta": tta, "block_size": list(stage2.plan.block)})

    def _lazy_stage2(self, volume: xr.DataArray, *, tta: bool, block_size: int | Sequence[int],
                     store: Path | None = None, **kwargs: Any) -> tuple[xr.DataArray, "Stage2Blocks"]:
        """Stage 1 now (chunked in ``store`` if large), and stage 2 of a volume to be computed block by block."""
        import dask.array as da

        volume = self._model_values(volume)
        data = volume.data if not isinstance(volume.data, np.ndarray) else da.from_array(volume.data)
        norm = self.normalisation.apply(data)
        ctx = self.context_for(norm, tta=tta, store=store)

        def read(region):
            return np.asarray(norm[region].compute(), np.float32)

        shape = tuple(int(n) for n in volume.shape)
        return volume, self.stage2_blocks(read, shape, ctx, tta=tta, block_size=block_size, **kwargs)

    def _predict_to_zarr(self, volume: xr.DataArray, out: str | os.PathLike, overwrite: bool,
                         ngff_version: str | None = None, **kwargs: Any) -> xr.Dataset:
        """Stage 2 block by block in raster order into a temporary Zarr array, then the OME-Zarr output.

        Why not :meth:`predict_lazy` through dask: the blocks must run in raster order
        (:class:`Stage2Blocks`) and be freed once written, and dask, given the order as
        task dependencies, computed every block before storing any (peak memory grew
        by one block's probabilities per block). The temporary folder, beside ``out``,
        holds the probabilities once on disk (and, for a volume whose coarse grid
        exceeds :data:`COARSE_IN_MEMORY`, stage 1's chunked field);
        :func:`sxtlab.io.write_volume` then writes the image, labels, probabilities and
        pyramids from it chunk by chunk. The folder is removed whether this succeeds or
        fails.
        """
        import dask
        import dask.array as da
        import zarr

        from .errors import OutputExistsError
        from .io import read_segmentation, write_volume

        out = Path(out)
        if out.exists() and not overwrite:   # before the long part, as write_volume would
            raise OutputExistsError(f"{out} exists; pass overwrite=True (or --overwrite) to replace it")
        tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.mkdir()
            volume, stage2 = self._lazy_stage2(volume, store=tmp, **kwargs)
            shape = tuple(int(n) for n in volume.shape)
            store = zarr.open_array(str(tmp / "stage2"), mode="w", shape=(self.n_classes, *shape),
                                    chunks=(self.n_classes, *stage2.plan.block), dtype=np.float32)
            for block, probs in stage2:
                store[(slice(None), *block)] = probs
            ds = self._dataset(volume, da.from_zarr(store),
                               {"tta": kwargs["tta"], "block_size": list(stage2.plan.block),
                                "windows": stage2.counts["windows"], "windows_skipped": stage2.counts["skipped"]})
            # One chunk at a time: torch is done, and a threaded scheduler would hold
            # several chunks (and their inputs) in memory.
            with dask.config.set(scheduler="synchronous"):
                write_volume(ds, out, overwrite=overwrite,
                             **({"ngff_version": ngff_version} if ngff_version is not None else {}))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return read_segmentation(out)


class Stage2Blocks:
    """Stage-2 probabilities of a volume, block by block in raster order, every window run once.

    Made by :meth:`CascadeModel.stage2_blocks`. The windows of the global grid are
    planned over the whole volume and each runs with the block it starts in
    (:class:`sxtlab.inference.RasterBlender`), so none runs twice whatever the block
    size; the in-memory and the Zarr-backed paths both go through here, and give the
    same values. Per block, the LAC and the stage-1 context channels are built once,
    over the union of the windows that run (skipped windows need neither).

    Iterating yields ``(block slices, probabilities (K, *block))`` in raster order;
    :meth:`get` serves blocks in any order (dask's), computing those before it first
    and keeping them until asked for.
    """

    def __init__(self, model: CascadeModel, read: Callable[[tuple[slice, slice, slice]], np.ndarray],
                 shape: Sequence[int], context: Context, *, block_size: int | Sequence[int], step: float | int,
                 window: int | Sequence[int] | None, tta: bool, precision: str, skip_background: float | None,
                 skip_sure: float | None, trust_background: float | None, batch_size: int) -> None:
        self.read, self.context = read, context
        self.skip_sure = skip_sure
        self.skip_background, self.trust_background = skip_background, trust_background
        self.n_classes, self.temperature = model.n_classes, model.temperature
        self.plan = BlockPlan.make(WindowGrid.make(shape, model.stage2_window(window), step), block_size)
        net = _softmax_predictor(model.stage2, precision)
        self._predict = flip_tta(net) if tta else net
        self._batch_size = batch_size
        self.counts = {"windows": 0, "skipped": 0}
        # dask's threaded scheduler may ask for several blocks at once; the raster is one
        self._lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        self.blender = RasterBlender(self.plan, self._predict, self.n_classes, batch_size=self._batch_size)
        self._ahead: dict[tuple[int, int, int], np.ndarray] = {}

    def __iter__(self):
        while self.blender.next_index is not None:
            index, probs = self._next()
            yield self.plan.slices(index), probs

    def get(self, index: Sequence[int], after: Any = None) -> np.ndarray:
        """Probabilities ``(K, *block)`` of the block at ``index``.

        ``after`` is ignored: a dask dependency on the block before, which orders the tasks.

        Blocks before it in raster order are computed first and kept until asked for
        (none are when asked in raster order). A block asked for again (the dask graph
        computed twice) starts the raster over.
        """
        index = tuple(int(i) for i in index)
        with self._lock:
            upcoming = self.blender.next_index
            if index not in self._ahead and (upcoming is None or np.ravel_multi_index(index, self.plan.counts)
                                              < np.ravel_multi_index(upcoming, self.plan.counts)):
                self._start()
            while index not in self._ahead:
                done, probs = self._next()
                self._ahead[done] = probs
            return self._ahead.pop(index)

    def _next(self) -> tuple[tuple[int, int, int], np.ndarray]:
        plan, patch = self.plan, self.plan.grid.patch
        index = self.blender.next_index
        block = plan.slices(index)
        own = plan.owned(index)
        # Everything below asks stage 1 about the block and its own windows, which may
        # reach past it: the coarse region they need is read once (from Zarr for a
        # chunked stage-1 field).
        starts, size = plan.region(index)
        stop = [max(b.stop, s + n) for b, s, n in zip(block, starts, size)]
        ctx = self.context.crop([b.start for b in block], [e - b.start for b, e in zip(block, stop)])
        skip_at, sure_at = self.skip_background, self.skip_sure

        def needed(s: tuple[int, int, int]) -> bool:
            if skip_at is not None and ctx.background_min(s, patch) >= skip_at:
                return False
            return sure_at is None or ctx.sure_min(s, patch) < sure_at

        gated_windows = skip_at is not None or sure_at is not None
        run = [s for s in own if needed(s)] if gated_windows else own
        fetch = self._fetcher(run, ctx) if run else None
        gated = gated_windows or self.trust_background is not None
        # Stage 1's answer on the block, computed once: the output of skipped windows
        # and, below, of every voxel where stage 1 is sure of background.
        coarse = (ctx.probabilities_at([b.start for b in block], [b.stop - b.start for b in block])
                  if gated else None)
        chosen = set(run)
        out, counts = self.blender.blend(index, fetch, skip=(lambda s: s not in chosen) if gated_windows else None,
                                         fallback=coarse)
        for key in counts:
            self.counts[key] += counts[key]
        if self.trust_background is not None:
            # Where stage 1, which sees the whole cell, is sure of background, its answer
            # stands: a stage-2 window of medium alone is featureless after instance
            # norm, and stage 2 then calls noise "cell" far from any cell.
            sure = coarse[0] >= self.trust_background
            out[:, sure] = coarse[:, sure]
        return index, temper(out, self.temperature)

    def _fetcher(self, run: list[tuple[int, int, int]],
                 ctx: Context) -> Callable[[tuple[int, int, int]], np.ndarray]:
        """Window inputs cut from the LAC and the context of the box the running windows span."""
        patch, shape = self.plan.grid.patch, self.plan.grid.shape
        lo = [min(s[a] for s in run) for a in range(3)]
        hi = [max(s[a] for s in run) + patch[a] for a in range(3)]
        region = tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(lo, hi, shape))
        lac = self.read(region)
        origin = [r.start for r in region]
        # Interpolation is separable and per voxel, so cropping one upsampled box gives
        # exactly each window's own upsampling.
        context = ctx.channels(lo, [b - a for a, b in zip(lo, hi)])

        def fetch(starts: tuple[int, int, int]) -> np.ndarray:
            box = tuple(slice(s - a, s - a + p) for s, a, p in zip(starts, lo, patch))
            return np.concatenate([crop_padded(lac, [s - o for s, o in zip(starts, origin)], patch)[None],
                                   context[(slice(None), *box)]])

        return fetch
