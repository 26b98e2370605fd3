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
windows that intersect it (:func:`blend_block`) and gives the values the
whole-volume computation gives there. Blocks computed alone run the windows on
their edges once per block they touch; :class:`RasterBlender` instead plans the
windows over the whole volume (:class:`BlockPlan`: each window belongs to the
block it starts in) and blends the blocks in raster order, each window run once
and its overhang handed to the blocks after it. This is what lets
:mod:`sxtlab.cascade` predict, in memory or larger than memory, block by block.

Hand-written rather than MONAI's ``sliding_window_inference``: MONAI blends
the whole volume in one array (no blocks, so nothing larger than memory), has
no per-window skipping with a fallback, and at equal batch was no faster here
(``benchmarks/results/inference.md``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["window_starts", "importance_map", "WindowGrid", "blend_block", "BlockPlan", "RasterBlender",
           "sliding_window", "flip_tta"]

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


def _overlap(starts: Sequence[int], patch: Sequence[int], block: Slices) -> tuple[Slices, Slices]:
    """A window's intersection with a block, in block and in window coordinates."""
    dst, src = [], []
    for s, p, b in zip(starts, patch, block):
        lo, hi = max(s, b.start), min(s + p, b.stop)
        dst.append(slice(lo - b.start, hi - b.start))
        src.append(slice(lo - s, hi - s))
    return tuple(dst), tuple(src)  # type: ignore[return-value]


def _run_windows(windows: Sequence[tuple[int, int, int]], fetch: Fetch, predict: Predict, out_channels: int,
                 batch_size: int) -> Iterator[tuple[tuple[int, int, int], np.ndarray]]:
    """``(starts, output (K, pz, py, px))`` of each window, ``batch_size`` windows per network call."""
    for i in range(0, len(windows), max(1, batch_size)):
        chunk = windows[i:i + max(1, batch_size)]
        x = torch.from_numpy(np.stack([fetch(s) for s in chunk]))
        y = predict(x).detach().cpu().numpy().astype(np.float32, copy=False)
        if y.shape[1] != out_channels:
            raise ValueError(f"the network returned {y.shape[1]} channels, expected {out_channels}")
        yield from zip(chunk, y)


def blend_block(grid: WindowGrid, block: Slices, fetch: Fetch, predict: Predict, out_channels: int,
                *, weights: np.ndarray | None = None, skip: Skip | None = None,
                fallback: np.ndarray | None = None, batch_size: int = 1,
                progress: bool | tqdm = False) -> tuple[np.ndarray, dict[str, int]]:
    """Blend the outputs of every window intersecting one output block.

    The block is computed alone, so windows that also cover a neighbouring block
    run again for it; :class:`RasterBlender` blends a whole volume's blocks with
    every window run once.

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
    _check_fallback(skip, fallback, (out_channels, *bshape))
    if weights is None:
        weights = importance_map(grid.patch)
    acc = np.zeros((out_channels, *bshape), np.float32)
    wsum = np.zeros(bshape, np.float32)       # weight of the windows run through the network
    wall = np.zeros(bshape, np.float32) if skip is not None else wsum   # weight of all windows
    windows = list(grid.windows(block))
    run = []
    for starts in windows:
        if skip is not None:
            dst, src = _overlap(starts, grid.patch, block)
            wall[dst] += weights[src]
            if skip(starts):
                continue
        run.append(starts)
    own_bar = progress is True
    bar = tqdm(total=len(windows), desc="windows", leave=False) if own_bar else progress
    if bar:
        bar.update(len(windows) - len(run))
    for starts, out in _run_windows(run, fetch, predict, out_channels, batch_size):
        dst, src = _overlap(starts, grid.patch, block)
        w = weights[src]
        acc[(slice(None), *dst)] += w * out[(slice(None), *src)]
        wsum[dst] += w
        if bar:
            bar.update(1)
    if own_bar:
        bar.close()
    counts = {"windows": len(windows), "skipped": len(windows) - len(run)}
    if counts["skipped"]:
        # Σ_skipped w·f = f · (Σ_all w − Σ_run w): the fallback f depends on position only.
        acc += fallback * (wall - wsum)
    acc /= wall
    return acc, counts


def _check_fallback(skip: Skip | None, fallback: np.ndarray | None, shape: tuple[int, ...]) -> None:
    if skip is not None and (fallback is None or fallback.shape != shape):
        raise ValueError(f"skip needs a fallback of shape {shape}, the output of skipped "
                         f"windows; got {None if fallback is None else fallback.shape}")


@dataclass(frozen=True)
class BlockPlan:
    """Output blocks of a volume, each owning the windows of the global grid that start in it.

    Every window of ``grid`` starts in exactly one block, so blending the blocks in
    raster order, each running only the windows it owns and handing their overhang
    to the blocks after it (:class:`RasterBlender`), runs every window once. A block
    computed alone (:func:`blend_block`) runs every window that intersects it,
    about ``((B + P)/S − 1)³ / (B/S)³`` times as many (1.4× for blocks of 128 and
    windows of 32 at step 16, 1.6× for windows of 48 at step 24).

    Attributes
    ----------
    grid : WindowGrid
        The global window grid.
    block : (bz, by, bx)
        Block edge in voxels; the last block per axis may be shorter.
    """

    grid: WindowGrid
    block: tuple[int, int, int]

    @classmethod
    def make(cls, grid: WindowGrid, block: int | Sequence[int]) -> "BlockPlan":
        """Plan of ``grid`` in blocks of edge ``block`` (int or per axis), at least 1 voxel."""
        b = tuple(int(v) for v in np.broadcast_to(np.asarray(block), (3,)))
        if min(b) < 1:
            raise ValueError(f"block edges must be ≥ 1 voxel, got {b}")
        return cls(grid, b)  # type: ignore[arg-type]

    @property
    def counts(self) -> tuple[int, int, int]:
        """Blocks per axis."""
        return tuple(-(-n // b) for n, b in zip(self.grid.shape, self.block))  # type: ignore[return-value]

    def indices(self) -> list[tuple[int, int, int]]:
        """Block indices in raster order (z slowest), the order :class:`RasterBlender` needs."""
        return list(itertools.product(*(range(c) for c in self.counts)))

    def slices(self, index: Sequence[int]) -> Slices:
        """Voxels of the block at ``index``."""
        return tuple(slice(i * b, min((i + 1) * b, n))
                     for i, b, n in zip(index, self.block, self.grid.shape))  # type: ignore[return-value]

    def _owned_starts(self, axis: int, i: int) -> list[int]:
        lo, hi = i * self.block[axis], (i + 1) * self.block[axis]
        return [s for s in self.grid.starts(axis) if lo <= s < hi]

    def owned(self, index: Sequence[int]) -> list[tuple[int, int, int]]:
        """Starts of the windows that start in the block, in raster order."""
        return list(itertools.product(*(self._owned_starts(a, i) for a, i in enumerate(index))))

    def region(self, index: Sequence[int]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """``(starts, size)`` of the union of the block's own windows (not clipped to the volume).

        Empty (size 0 on some axis) where no window starts in the block.
        """
        starts, size = [], []
        for a, i in enumerate(index):
            own = self._owned_starts(a, i)
            lo = own[0] if own else i * self.block[a]
            starts.append(lo)
            size.append(own[-1] + self.grid.patch[a] - lo if own else 0)
        return tuple(starts), tuple(size)  # type: ignore[return-value]


class RasterBlender:
    """Blend a volume's blocks in raster order, running every window once.

    Each block runs the windows that start in it (:meth:`BlockPlan.owned`); the
    parts of their weighted outputs that fall in later blocks wait in accumulators
    of those blocks, bounded by the overhang (at most ``patch − 1`` voxels deep),
    and allocated only where a window ran. A block is complete once it is blended:
    every window that intersects it starts in it or in a block before it.

    Parameters
    ----------
    plan : BlockPlan
    predict : callable
        ``(B, C, pz, py, px)`` tensor → ``(B, K, pz, py, px)``.
    out_channels : int
        ``K``.
    weights : ndarray, optional
        Importance map (default Gaussian, σ = patch/8).
    batch_size : int
        Windows per network call.
    """

    def __init__(self, plan: BlockPlan, predict: Predict, out_channels: int, *,
                 weights: np.ndarray | None = None, batch_size: int = 2) -> None:
        self.plan, self.predict, self.out_channels, self.batch_size = plan, predict, out_channels, batch_size
        self.weights = importance_map(plan.grid.patch) if weights is None else weights
        self._order = plan.indices()
        self._next = 0
        # (target block, source offset) → (acc (K, *piece), wsum (*piece)) at the target block's origin
        self._pending: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[np.ndarray, np.ndarray]] = {}

    @property
    def next_index(self) -> tuple[int, int, int] | None:
        """The block :meth:`blend` takes next (None when all are done)."""
        return self._order[self._next] if self._next < len(self._order) else None

    @property
    def pending_bytes(self) -> int:
        """Memory held by overhang accumulators of blocks not yet blended."""
        return sum(a.nbytes + w.nbytes for a, w in self._pending.values())

    def _piece_shape(self, target: Sequence[int], source: Sequence[int]) -> tuple[int, ...]:
        # Along an axis where the source block lies before the target, the source's own
        # windows reach at most to its last start + patch.
        plan, shape = self.plan, []
        for a, (t, s) in enumerate(zip(target, source)):
            edge = plan.slices(target)[a]
            if t == s:
                shape.append(edge.stop - edge.start)
            else:
                st, size = plan.region([s if b == a else 0 for b in range(3)])
                shape.append(max(0, min(edge.stop, st[a] + size[a]) - edge.start))
        return tuple(shape)

    def blend(self, index: Sequence[int], fetch: Fetch, *, skip: Skip | None = None,
              fallback: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, int]]:
        """Weighted mean of all windows over the block at ``index``, which must be :attr:`next_index`.

        Parameters
        ----------
        fetch, skip, fallback
            As :func:`blend_block`, for the block's own windows (``fallback`` covers the block).

        Returns
        -------
        out : ndarray, float32, ``(K, *block_shape)``
        counts : dict
            ``{"windows": own windows, "skipped": own windows skipped}``; summed over
            the blocks, every window of the grid once.

        Raises
        ------
        ValueError
            If ``index`` is not the next block in raster order.
        """
        index = tuple(int(i) for i in index)
        if index != self.next_index:
            raise ValueError(f"blocks are blended in raster order: expected {self.next_index}, got {index}")
        self._next += 1
        plan, grid, weights, k = self.plan, self.plan.grid, self.weights, self.out_channels
        block = plan.slices(index)
        bshape = tuple(s.stop - s.start for s in block)
        _check_fallback(skip, fallback, (k, *bshape))
        acc = np.zeros((k, *bshape), np.float32)
        wsum = np.zeros(bshape, np.float32)
        for key in [key for key in self._pending if key[0] == index]:
            a, w = self._pending.pop(key)
            piece = tuple(slice(0, n) for n in w.shape)
            acc[(slice(None), *piece)] += a
            wsum[piece] += w
        own = plan.owned(index)
        run = own if skip is None else [s for s in own if not skip(s)]
        for starts, out in _run_windows(run, fetch, self.predict, k, self.batch_size):
            self._add(index, starts, out, acc, wsum)
        counts = {"windows": len(own), "skipped": len(own) - len(run)}
        if skip is None:
            acc /= wsum
            return acc, counts
        # Σ_skipped w·f = f · (Σ_all w − Σ_run w): the fallback f depends on position only,
        # and every window's weight over the block is known without running it.
        wall = np.zeros(bshape, np.float32)
        for starts in grid.windows(block):
            dst, src = _overlap(starts, grid.patch, block)
            wall[dst] += weights[src]
        acc += fallback * (wall - wsum)
        acc /= wall
        return acc, counts

    def _add(self, index: tuple[int, ...], starts: tuple[int, int, int], out: np.ndarray,
             acc: np.ndarray, wsum: np.ndarray) -> None:
        plan, patch = self.plan, self.plan.grid.patch
        # blocks the window reaches, per axis: from its own to the one holding its last voxel
        span = [range(i, min(c, (min(s + p, n) - 1) // b + 1))
                for i, s, p, n, b, c in zip(index, starts, patch, plan.grid.shape, plan.block, plan.counts)]
        for target in itertools.product(*span):
            block = plan.slices(target)
            dst, src = _overlap(starts, patch, block)
            w = self.weights[src]
            if target == index:
                acc[(slice(None), *dst)] += w * out[(slice(None), *src)]
                wsum[dst] += w
                continue
            key = (target, index)
            if key not in self._pending:
                piece = self._piece_shape(target, index)
                self._pending[key] = (np.zeros((self.out_channels, *piece), np.float32),
                                      np.zeros(piece, np.float32))
            a, ws = self._pending[key]
            a[(slice(None), *dst)] += w * out[(slice(None), *src)]
            ws[dst] += w


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
