"""Sliding-window inference with Gaussian-blended overlapping patches.

A network trained on patches predicts a large volume window by window; where
windows overlap, their outputs are averaged with a Gaussian importance map
(σ = patch/8 per axis, as in nnU-Net, Isensee et al. 2021, and MONAI), which
down-weights the patch borders where a convolutional network sees least context.

The window grid is *global*: window starts along an axis of size ``n`` are
``0, step, 2·step, …`` plus a last window flush with the end (so every voxel is
covered; tilings that add only corner windows leave gaps, TorchIO #181). Axes
shorter than the patch are padded (edge values) and cropped back. The importance
map is floored at a small positive value so that no voxel ends with weight 0
(0/0 = NaN at patch corners, MONAI #5302).

Because the grid is global, any output *block* can be computed alone from the
windows that intersect it (:func:`blend_block`) and gives exactly the values the
whole-volume computation gives there; this is what lets :mod:`sxtlab.cascade`
write results larger than memory block by block.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["window_starts", "importance_map", "WindowGrid", "blend_block", "sliding_window",
           "flip_tta"]

Slices = tuple[slice, slice, slice]
#: ``fetch(starts)`` returns the input channels ``(C, pz, py, px)`` of the window at
#: ``starts`` (already padded where the window leaves the volume).
Fetch = Callable[[tuple[int, int, int]], np.ndarray]
#: ``predict(batch)`` maps a ``(B, C, pz, py, px)`` tensor to ``(B, K, pz, py, px)``.
Predict = Callable[[torch.Tensor], torch.Tensor]
#: ``skip(starts)`` is True for windows that need no network pass.
Skip = Callable[[tuple[int, int, int]], bool]


def window_starts(size: int, patch: int, step: int) -> list[int]:
    """Start indices of windows of ``patch`` voxels along an axis of ``size`` voxels.

    ``0, step, 2·step, …`` and, if the last one stops short of the end, one more
    flush with the end. An axis shorter than the patch gets the single start 0
    (the caller pads).

    Examples
    --------
    >>> window_starts(150, 64, 48)
    [0, 48, 86]
    """
    if patch < 1 or step < 1:
        raise ValueError(f"patch and step must be ≥ 1 voxel, got patch={patch}, step={step}")
    if step > patch:
        raise ValueError(f"step {step} > patch {patch} would leave voxels uncovered")
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] + patch < size:
        starts.append(size - patch)
    return starts


def importance_map(patch: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125,
                   floor: float = 1e-4) -> np.ndarray:
    """Blending weights of one window, shape ``patch``, maximum 1.

    Parameters
    ----------
    patch : (pz, py, px)
        Window size in voxels.
    mode : {"gaussian", "constant"}
        Gaussian (σ = ``sigma_scale`` · patch per axis, centred on the patch centre)
        or uniform weights.
    floor : float
        Smallest weight; keeps every voxel's total weight positive.
    """
    patch = tuple(int(p) for p in patch)
    if mode == "constant":
        return np.ones(patch, np.float32)
    if mode != "gaussian":
        raise ValueError(f"blend mode must be 'gaussian' or 'constant', got {mode!r}")
    w = np.ones(patch, np.float64)
    for axis, p in enumerate(patch):
        x = np.arange(p) - (p - 1) / 2
        g = np.exp(-0.5 * (x / (sigma_scale * p)) ** 2)
        shape = [1, 1, 1]
        shape[axis] = p
        w = w * g.reshape(shape)
    w /= w.max()
    return np.maximum(w, floor).astype(np.float32)


def _steps(patch: Sequence[int], step: float | int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(step, float):
        if not 0 < step <= 1:
            raise ValueError(f"a fractional step must be in (0, 1] of the patch, got {step}")
        return tuple(max(1, int(p * step)) for p in patch)  # type: ignore[return-value]
    s = np.broadcast_to(np.asarray(step), (3,))
    if not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"step must be a float fraction of the patch or integer voxels, got {step!r}")
    return tuple(int(v) for v in s)  # type: ignore[return-value]


@dataclass(frozen=True)
class WindowGrid:
    """The global window grid over a volume.

    Attributes
    ----------
    shape : (Z, Y, X)
        Volume shape in voxels.
    patch : (pz, py, px)
        Window size.
    step : (sz, sy, sx)
        Distance between window starts (the last window per axis may be closer).
    """

    shape: tuple[int, int, int]
    patch: tuple[int, int, int]
    step: tuple[int, int, int]

    @classmethod
    def make(cls, shape: Sequence[int], patch: Sequence[int] | int,
             step: float | int | Sequence[int] = 0.5) -> "WindowGrid":
        """Grid for ``shape`` with windows of ``patch`` and ``step`` (fraction or voxels)."""
        p = tuple(int(v) for v in np.broadcast_to(np.asarray(patch), (3,)))
        return cls(tuple(int(v) for v in shape), p, _steps(p, step))  # type: ignore[arg-type]

    def starts(self, axis: int) -> list[int]:
        """Window starts along one axis."""
        return window_starts(self.shape[axis], self.patch[axis], self.step[axis])

    def windows(self, block: Slices | None = None) -> Iterator[tuple[int, int, int]]:
        """Starts ``(z, y, x)`` of the windows intersecting ``block`` (default: all), in order."""
        axes = []
        for a in range(3):
            lo, hi = (0, self.shape[a]) if block is None else (block[a].start, block[a].stop)
            axes.append([s for s in self.starts(a) if s < hi and s + self.patch[a] > lo])
        return itertools.product(*axes)

    def n_windows(self, block: Slices | None = None) -> int:
        """Number of windows intersecting ``block``."""
        return sum(1 for _ in self.windows(block))


def crop_padded(array, starts: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """``array[..., s:s+n]`` over the last three axes, edge-padded where it leaves the array.

    ``array`` may be a NumPy or dask array (only the needed region is read).
    """
    shape = array.shape[-3:]
    src, pad = [], []
    for s, n, m in zip(starts, size, shape):
        lo, hi = max(s, 0), min(s + n, m)
        src.append(slice(lo, hi))
        pad.append((lo - s, s + n - hi))
    region = np.asarray(array[(Ellipsis, *src)])
    if any(p != (0, 0) for p in pad):
        region = np.pad(region, [(0, 0)] * (region.ndim - 3) + pad, mode="edge")
    return region


def flip_tta(predict: Predict) -> Predict:
    """Wrap ``predict`` to average over the 8 mirrorings of the three spatial axes.

    Test-time augmentation as in nnU-Net: costs 8 network passes per window.
    """

    def mirrored(x: torch.Tensor) -> torch.Tensor:
        out = None
        for k in range(4):
            for dims in itertools.combinations((2, 3, 4), k):
                y = predict(torch.flip(x, dims) if dims else x)
                y = torch.flip(y, dims) if dims else y
                out = y if out is None else out + y
        return out / 8

    return mirrored


def blend_block(grid: WindowGrid, block: Slices, fetch: Fetch, predict: Predict, out_channels: int,
                *, weights: np.ndarray | None = None, skip: Skip | None = None,
                fallback: np.ndarray | None = None, batch_size: int = 1,
                progress: bool | tqdm = False) -> tuple[np.ndarray, dict[str, int]]:
    """Blend the outputs of every window intersecting one output block.

    Parameters
    ----------
    grid : WindowGrid
        The global window grid.
    block : (slice, slice, slice)
        Output region in voxels of the volume (steps of 1).
    fetch : callable
        ``fetch(starts) -> (C, pz, py, px)`` float32 input of a window.
    predict : callable
        Network wrapper, ``(B, C, pz, py, px)`` tensor → ``(B, K, pz, py, px)``.
    out_channels : int
        ``K``.
    weights : ndarray, optional
        Importance map of shape ``grid.patch`` (default Gaussian, σ = patch/8).
    skip : callable, optional
        ``skip(starts)`` → True for windows that need no network pass (e.g. windows
        a coarse model calls background with confidence); they contribute the
        ``fallback`` values instead, with their usual weights.
    fallback : ndarray, shape ``(K, *block_shape)``
        Output of skipped windows at every voxel of the block (a function of
        position only, e.g. upsampled stage-1 probabilities), so a skipped window
        costs one weight addition and no network pass.
    batch_size : int
        Windows per network call.
    progress : bool or tqdm
        Show a progress bar (or advance the one given).

    Returns
    -------
    out : ndarray, float32, shape ``(K, *block_shape)``
        Weighted mean of the window outputs.
    counts : dict
        ``{"windows": n, "skipped": m}``.
    """
    bshape = tuple(s.stop - s.start for s in block)
    if skip is not None and (fallback is None or fallback.shape != (out_channels, *bshape)):
        raise ValueError(f"skip needs a fallback of shape {(out_channels, *bshape)}, the output of skipped "
                         f"windows; got {None if fallback is None else fallback.shape}")
    if weights is None:
        weights = importance_map(grid.patch)
    acc = np.zeros((out_channels, *bshape), np.float32)
    wsum = np.zeros(bshape, np.float32)       # weight of the windows run through the network
    wall = np.zeros(bshape, np.float32) if skip is not None else wsum   # weight of all windows
    counts = {"windows": 0, "skipped": 0}
    own_bar = progress is True
    bar = tqdm(total=grid.n_windows(block), desc="windows", leave=False) if own_bar else progress

    def overlap(starts: tuple[int, int, int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        # the window's intersection with the block, in block and in window coordinates
        dst, src = [], []
        for s, p, b in zip(starts, grid.patch, block):
            lo, hi = max(s, b.start), min(s + p, b.stop)
            dst.append(slice(lo - b.start, hi - b.start))
            src.append(slice(lo - s, hi - s))
        return tuple(dst), tuple(src)

    pending: list[tuple[tuple[int, int, int], np.ndarray]] = []

    def flush() -> None:
        x = torch.from_numpy(np.stack([inp for _, inp in pending]))
        y = predict(x).detach().cpu().numpy().astype(np.float32, copy=False)
        if y.shape[1] != out_channels:
            raise ValueError(f"the network returned {y.shape[1]} channels, expected {out_channels}")
        for (starts, _), out in zip(pending, y):
            dst, src = overlap(starts)
            w = weights[src]
            acc[(slice(None), *dst)] += w * out[(slice(None), *src)]
            wsum[dst] += w
        pending.clear()

    for starts in grid.windows(block):
        counts["windows"] += 1
        if skip is not None:
            dst, src = overlap(starts)
            wall[dst] += weights[src]
            if skip(starts):
                counts["skipped"] += 1
                if bar:
                    bar.update(1)
                continue
        pending.append((starts, fetch(starts)))
        if len(pending) >= batch_size:
            flush()
        if bar:
            bar.update(1)
    if pending:
        flush()
    if own_bar:
        bar.close()
    if counts["skipped"]:
        # Σ_skipped w·f = f · (Σ_all w − Σ_run w): the fallback f depends on position only.
        acc += fallback * (wall - wsum)
    return acc / wall, counts


def sliding_window(image: np.ndarray, predict: Predict, patch: Sequence[int] | int, *,
                   step: float | int | Sequence[int] = 0.5, blend: str = "gaussian",
                   sigma_scale: float = 0.125, out_channels: int | None = None, batch_size: int = 1,
                   tta: bool = False, progress: bool = False) -> np.ndarray:
    """Predict a whole array window by window and blend the overlaps.

    Parameters
    ----------
    image : ndarray, shape ``(C, Z, Y, X)``
        Input channels (any size; axes shorter than the patch are edge-padded and the
        result cropped back).
    predict : callable
        ``(B, C, pz, py, px)`` tensor → ``(B, K, pz, py, px)`` tensor.
    patch : int or (pz, py, px)
        Window size in voxels.
    step : float or int or (sz, sy, sx)
        Float: fraction of the patch (0.5 = half a patch, the default); int(s): voxels.
    blend : {"gaussian", "constant"}
        Importance map.
    sigma_scale : float
        σ of the Gaussian as a fraction of the patch (1/8 as nnU-Net and MONAI).
    out_channels : int, optional
        ``K``; default ``C``.
    batch_size : int
        Windows per network call.
    tta : bool
        Average over the 8 axis mirrorings (:func:`flip_tta`).
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    ndarray, float32, shape ``(K, Z, Y, X)``

    Examples
    --------
    An identity "network" returns its input exactly:

    >>> x = np.random.default_rng(0).random((1, 10, 30, 30), dtype=np.float32)
    >>> y = sliding_window(x, lambda t: t, 16)
    >>> bool(np.allclose(x, y, atol=1e-6))
    True
    """
    if image.ndim != 4:
        raise ValueError(f"sliding_window expects (C, Z, Y, X), got shape {image.shape}")
    grid = WindowGrid.make(image.shape[1:], patch, step)
    k = image.shape[0] if out_channels is None else out_channels
    net = flip_tta(predict) if tta else predict
    block = tuple(slice(0, n) for n in image.shape[1:])
    out, _ = blend_block(grid, block, lambda s: crop_padded(image, s, grid.patch), net, k,
                         weights=importance_map(grid.patch, blend, sigma_scale),
                         batch_size=batch_size, progress=progress)
    return out
