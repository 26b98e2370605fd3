"""Training: one U-Net stage (:func:`train_stage`) and a whole cascade (:func:`train_cascade`).

One stage is trained on patches with

* the Dice + cross-entropy loss of nnU-Net (Isensee et al. 2021; soft Dice after
  Milletari et al. 2016, "V-Net", 3DV), in which voxels labelled with the ignore
  value (:data:`sxtlab.classes.UNANNOTATED`) contribute nothing — not to the loss,
  not to its gradient — so sparse annotation (a few labelled planes) trains
  correctly; voxels known only to be one of a *set* of classes (a cell's cytoplasm
  for a task with mitochondria it did not annotate, :mod:`sxtlab.task`) enter the
  cross-entropy through the summed probability of their set (the marginal loss of
  Shi et al. 2021, Med. Image Anal. 70:101979) and are left out of the Dice;
* class-balanced patch sampling: a share of the patches is centred on a voxel of a
  randomly chosen foreground class, so small rare organelles are seen; the others
  are centred on a random *annotated* voxel (never on empty, unannotated space);
* augmentation: flips, 90° rotations in the xy plane, intensity scale/shift and
  noise on the LAC channel, small anisotropic zoom;
* validation Dice per class on whole held-out volumes, best-checkpoint selection,
  early stopping, fixed seeds, resumable checkpoints, a tqdm progress bar with the
  running loss and a pandas history table.

The cascade's stage 2 is trained on stage-1 predictions that are either made out
of fold or corrupted on the fly (random morphology, removed components, as in
nnU-Net's cascade), so that it does not learn to trust a perfect stage 1.

Nothing here is needed to *apply* a model: see :mod:`sxtlab.cascade`.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import xarray as xr
from scipy import ndimage
from tqdm.auto import tqdm

from .cascade import (CONTEXT_MODES, CascadeModel, Context, Normalisation, block_labels, block_mean,
                      stage1_window, stage2_in_channels)
from .classes import UNANNOTATED, VOCABULARY, LabelSets, canonical_name, class_map
from .domain import input_statistics, reference_range
from .errors import FormatError
from .inference import WindowGrid, blend_block, crop_padded, sliding_window
from .unet import UNet3D, UNetConfig

__all__ = ["Augmentation", "TrainConfig", "Corruption", "CascadeConfig", "Sample", "PatchSampler",
           "dice_ce_loss", "train_stage", "train_cascade", "fast_config"]

LOG = logging.getLogger(__name__)
_CHECKPOINT_FORMAT = "sxtlab.train-checkpoint"


# ---------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------
@dataclass
class Augmentation:
    """Random transformations of training patches (nnU-Net-like, milder for CPU budgets).

    Attributes
    ----------
    flip : bool
        Mirror each axis with probability 1/2.
    rotate_xy : bool
        Rotate by a random multiple of 90° in the xy plane (180° only for
        non-square patches). Rotations that move z are left out: SXT volumes often
        have a missing wedge along one axis.
    intensity_scale, intensity_shift : float
        Multiply the intensity channels by U(1 − a, 1 + a) and add U(−b, b)
        (normalised units).
    noise_std : float
        Add Gaussian noise with σ ~ U(0, noise_std) (normalised units).
    zoom : float
        Per-axis zoom U(1 − z, 1 + z), applied with probability ``p_zoom``.
    intensity_channels : tuple of int
        Channels treated as intensities (the LAC); others (stage-1 context) are
        only moved geometrically.
    """

    flip: bool = True
    rotate_xy: bool = True
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.05
    zoom: float = 0.1
    p_zoom: float = 0.2
    intensity_channels: tuple[int, ...] = (0,)


@dataclass
class TrainConfig:
    """Settings of one training run (one stage).

    Attributes
    ----------
    patch_size : (pz, py, px)
        Training patch in voxels of the stage's grid; multiples of the U-Net's divisor.
    batch_size : int
        Patches per step.
    iterations : int
        Steps (optimizer updates) at most.
    lr, weight_decay : float
        AdamW settings; the learning rate decays polynomially (power 0.9, nnU-Net).
    oversample : float
        Share of patches centred on a voxel of a random foreground class.
    val_every : int
        Validate every this many steps (and at the end).
    patience : int
        Stop after this many validations without improvement (0: never).
    checkpoint_every : int
        Write the resumable checkpoint every this many steps.
    val_step : float
        Sliding-window step (fraction of the patch) in validation.
    seed : int
        Seed of patch sampling and augmentation.
    dice_weight, ce_weight : float
        Weights of the two loss terms.
    dice_background, batch_dice : bool
        Dice of the background class too, and Dice over the batch rather than per
        sample (:func:`dice_ce_loss`'s ``include_background`` and ``batch_dice``).
        MONAI's choice (background included, per sample) did not generalise better
        than the defaults on held-out cells (``benchmarks/results/generalisation.md``,
        2026-12-03 11:35).
    augmentation : Augmentation
    """

    patch_size: tuple[int, int, int] = (48, 48, 48)
    batch_size: int = 2
    iterations: int = 400
    lr: float = 3e-3
    weight_decay: float = 1e-5
    oversample: float = 0.5
    val_every: int = 50
    patience: int = 4
    checkpoint_every: int = 25
    val_step: float = 0.5
    seed: int = 0
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    dice_background: bool = False
    batch_dice: bool = True
    augmentation: Augmentation = field(default_factory=Augmentation)

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(p) for p in np.broadcast_to(np.asarray(self.patch_size), (3,)))  # type: ignore[assignment]
        for name in ("batch_size", "iterations", "val_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be ≥ 1, got {getattr(self, name)}")
        if not 0 <= self.oversample <= 1:
            raise ValueError(f"TrainConfig.oversample must be in [0, 1], got {self.oversample}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        d["augmentation"]["intensity_channels"] = list(self.augmentation.intensity_channels)
        return d


@dataclass
class Corruption:
    """Random damage to stage-1 output while training stage 2 (nnU-Net cascade style).

    Applied to the coarse context crop of each patch: with probability ``p_morph``
    each class channel gets a random grey dilation, erosion, opening or closing
    (cube of 2…``max_size`` coarse voxels); with probability ``p_remove`` one
    connected component (probability > 0.5) of a random class that covers at most
    ``max_fraction`` of the crop is removed.
    """

    p_morph: float = 0.4
    p_remove: float = 0.2
    max_size: int = 3
    max_fraction: float = 0.15

    def __call__(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Corrupted copy of a ``(C, z, y, x)`` context crop."""
        out = np.array(crop, np.float32, copy=True)
        ops = (ndimage.grey_dilation, ndimage.grey_erosion, ndimage.grey_opening, ndimage.grey_closing)
        if rng.random() < self.p_morph:
            for c in range(out.shape[0]):
                op = ops[rng.integers(len(ops))]
                size = int(rng.integers(2, max(self.max_size, 2) + 1))
                out[c] = op(out[c], size=(size,) * 3, mode="nearest")
        if out.shape[0] and rng.random() < self.p_remove:
            c = int(rng.integers(out.shape[0]))
            lab, n = ndimage.label(out[c] > 0.5)
            if n:
                sizes = np.bincount(lab.ravel())[1:]
                small = np.flatnonzero(sizes <= self.max_fraction * lab.size) + 1
                if small.size:
                    out[c][lab == rng.choice(small)] = 0.0
        return out


@dataclass
class CascadeConfig:
    """Settings of :func:`train_cascade`.

    Attributes
    ----------
    factor : int
        Downsampling factor of stage 1 (4: a 256³ cell is seen whole as 64³).
    stage1, stage2 : TrainConfig
        Training of each stage; stage 1's patch is in coarse voxels.
    stage1_unet, stage2_unet : UNetConfig
        Architectures (channels are set from the classes).
    context : {"probabilities", "onehot", "none"}
        Stage-1 output fed to stage 2 (see :class:`sxtlab.cascade.Context`); with
        ``"none"`` stage 2 trains on the LAC alone and stage 1 serves only to gate
        windows at inference.
    smooth_sigma : float
        Smoothing of the stage-1 probabilities (full-resolution voxels).
    normalisation : Normalisation or None
        Global LAC offset/scale; ``None`` fits it on the training cells.
    stage1_folds : int
        ≥ 2: stage 2 trains on out-of-fold stage-1 predictions (one extra stage-1
        model per fold); 0: on the final stage-1 model's own predictions.
    corruption : Corruption or None
        On-the-fly damage to the stage-1 context while training stage 2.
    val_fraction : float
        Share of the samples held out for validation when none are given.
    seed : int
        Seed of network initialisation and of the validation split.
    """

    factor: int = 4
    stage1: TrainConfig = field(default_factory=lambda: TrainConfig(patch_size=(32, 32, 32), iterations=300))
    stage2: TrainConfig = field(default_factory=lambda: TrainConfig(patch_size=(48, 48, 48), iterations=400))
    stage1_unet: UNetConfig = field(default_factory=UNetConfig)
    stage2_unet: UNetConfig = field(default_factory=UNetConfig)
    context: str = "probabilities"
    smooth_sigma: float = 2.0
    normalisation: Normalisation | None = None
    stage1_folds: int = 0
    corruption: Corruption | None = field(default_factory=Corruption)
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.context not in CONTEXT_MODES:
            raise ValueError(f"CascadeConfig.context must be one of {', '.join(CONTEXT_MODES)}, got {self.context!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable), recorded in the model's ``info``."""
        return {
            "factor": self.factor, "stage1": self.stage1.to_dict(), "stage2": self.stage2.to_dict(),
            "stage1_unet": self.stage1_unet.to_dict(), "stage2_unet": self.stage2_unet.to_dict(),
            "context": self.context, "smooth_sigma": self.smooth_sigma,
            "normalisation": None if self.normalisation is None else asdict(self.normalisation),
            "stage1_folds": self.stage1_folds,
            "corruption": None if self.corruption is None else asdict(self.corruption),
            "val_fraction": self.val_fraction, "seed": self.seed,
        }


# ---------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------
def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = UNANNOTATED,
                 label_sets: torch.Tensor | None = None, dice_weight: float = 1.0, ce_weight: float = 1.0,
                 smooth: float = 1e-5, include_background: bool = False,
                 batch_dice: bool = True) -> torch.Tensor:
    """Soft Dice + cross-entropy, with unannotated and partially labelled voxels.

    Parameters
    ----------
    logits : tensor (B, K, z, y, x)
        Network output.
    target : integer tensor (B, z, y, x)
        Class indices ``0 … K−1``, label-set codes ``K … K+S−1`` (rows of
        ``label_sets``) or ``ignore_index``.
    ignore_index : int
        Target value of unannotated voxels: their logits get exactly zero gradient
        and whatever the network predicts there leaves the loss unchanged.
    label_sets : bool tensor (S, K), optional
        Row ``s``: the classes a voxel with target ``K + s`` may be. Its
        cross-entropy term is ``−log Σ_{c ∈ set} p_c`` (marginal loss, Shi et al.
        2021, Med. Image Anal. 70:101979): any split of probability within the set
        costs the same; the Dice leaves it out.
    dice_weight, ce_weight : float
        Weights of the two terms.
    smooth : float
        Added to numerator and denominator of the Dice (nnU-Net uses 1e-5).
    include_background : bool
        Include class 0 in the Dice term (nnU-Net leaves it out; MONAI's
        ``DiceCELoss`` keeps it by default).
    batch_dice : bool
        Compute each class's Dice over the whole batch (nnU-Net's "batch Dice") or,
        if False, per sample and average over samples and classes (MONAI's
        default): then a class absent from a patch scores 1 only where nothing of
        it is predicted, which pushes hard against false positives in small patches.

    Returns
    -------
    scalar tensor
        ``ce_weight · CE + dice_weight · (1 − mean soft Dice)``, where CE is averaged
        over annotated voxels (a set's voxels included) and the soft Dice
        (Milletari et al. 2016) is computed per class, over the whole batch or per
        sample (``batch_dice``), on voxels of one known class. 0 (with zero
        gradient) if no voxel is annotated.

    Raises
    ------
    ValueError
        If the shapes do not fit, or a target value is neither a class, a row of
        ``label_sets`` nor ``ignore_index``.
    """
    if logits.ndim != 5 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"logits must be (B, K, z, y, x) and target (B, z, y, x); got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    k = logits.shape[1]
    n_sets = 0 if label_sets is None else label_sets.shape[0]
    target = target.long()
    valid = target != ignore_index
    n_valid = int(valid.sum())
    if not n_valid:
        return logits.sum() * 0.0
    t = torch.where(valid, target, 0)
    top = int(t.max())
    if top >= k + n_sets:
        raise ValueError(f"target holds value {top}: neither a class (0…{k - 1}), a label set "
                         f"({k}…{k + n_sets - 1}) nor the ignore value {ignore_index}")
    # torch.where (not a product) so that the unannotated voxels' gradient is exactly
    # 0 even where a prediction is inf.
    z = logits if n_valid == valid.numel() else torch.where(valid.unsqueeze(1), logits, 0.0)
    # One log-softmax, a gather and per-class scatter sums instead of one-hot and
    # set-membership tensors of the logits' size: a 2 × 6 × 64³ batch's loss
    # (forward and backward) takes 0.038 instead of 0.139 CPU s, a third of a step of
    # the strided stage 2 (benchmarks/results/generalisation.md, 2026-12-03).
    log_p = F.log_softmax(z, dim=1)
    single = t < k
    known = valid & single
    tc = torch.where(single, t, 0)
    log_pt = log_p.gather(1, tc.unsqueeze(1)).squeeze(1)
    nll = torch.where(known, -log_pt, 0.0).sum()
    if top >= k:
        # −log Σ_{c∈set} p_c for the voxels of a label set (few: computed on them alone)
        in_set = valid & ~single
        allowed = label_sets.to(device=logits.device, dtype=torch.bool)[t[in_set] - k]  # type: ignore[union-attr]
        set_log_p = log_p.movedim(1, -1)[in_set].masked_fill(~allowed, float("-inf"))
        nll = nll - torch.logsumexp(set_log_p, dim=1).sum()
    ce = nll / n_valid
    # soft Dice on voxels of one known class: Σ p·g per class is the sum of p_t over
    # that class's voxels, Σ g its voxel count; one row of sums per sample, or one
    # for the whole batch
    p = log_p.exp()
    p_sum = (p * known.unsqueeze(1).to(p.dtype)).sum((2, 3, 4))
    row = torch.arange(logits.shape[0], device=logits.device).view(-1, 1, 1, 1)
    if batch_dice:
        p_sum, row = p_sum.sum(0, keepdim=True), torch.zeros_like(row)
    n_rows = p_sum.shape[0]
    flat = (row * k + tc).flatten()
    inter = torch.zeros(n_rows * k, dtype=p.dtype, device=p.device).scatter_add(
        0, flat, torch.where(known, log_pt.exp(), 0.0).flatten()).view(n_rows, k)
    g_sum = torch.zeros(n_rows * k, dtype=p.dtype, device=p.device).scatter_add(
        0, flat, known.flatten().to(p.dtype)).view(n_rows, k)
    dice = (2 * inter + smooth) / (p_sum + g_sum + smooth)
    if not include_background:
        dice = dice[:, 1:]
    return ce_weight * ce + dice_weight * (1 - dice.mean())


# ---------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------
@dataclass
class Sample:
    """One training volume on the stage's grid.

    Attributes
    ----------
    image : ndarray, float32, shape (C, Z, Y, X)
        Input channels (normalised LAC first).
    labels : ndarray, uint8, shape (Z, Y, X)
        Class indices ``0 … K−1``, label-set codes ``K …`` (the ``label_sets`` of
        :func:`train_stage`), :data:`~sxtlab.classes.UNANNOTATED` where unannotated.
    context : Context, optional
        Stage-1 output; its channels are appended per patch (stage 2).
    name : str
        For messages.
    """

    image: np.ndarray
    labels: np.ndarray
    context: Context | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.image.ndim != 4 or self.image.shape[1:] != self.labels.shape:
            raise ValueError(f"sample {self.name!r}: image must be (C, Z, Y, X) and labels (Z, Y, X) on "
                             f"the same grid; got {self.image.shape} and {self.labels.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X)."""
        return tuple(self.labels.shape)  # type: ignore[return-value]

    @property
    def n_channels(self) -> int:
        """Input channels, context included."""
        return self.image.shape[0] + (self.context.n_channels if self.context is not None else 0)

    def fetch(self, starts: Sequence[int], size: Sequence[int],
              transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """Input channels ``(C, *size)`` of a box (edge-padded outside the volume)."""
        x = crop_padded(self.image, starts, size)
        if self.context is None:
            return x
        return np.concatenate([x, self.context.channels(starts, size, transform)])

    def fetch_labels(self, starts: Sequence[int], size: Sequence[int]) -> np.ndarray:
        """Labels of a box; outside the volume is unannotated."""
        out = np.full(tuple(size), UNANNOTATED, np.uint8)
        src, dst = [], []
        for s, n, m in zip(starts, size, self.shape):
            lo, hi = max(s, 0), min(s + n, m)
            if hi <= lo:
                return out
            src.append(slice(lo, hi))
            dst.append(slice(lo - s, hi - s))
        out[tuple(dst)] = self.labels[tuple(src)]
        return out


class PatchSampler:
    """Draws augmented training batches with class-balanced patch centres.

    Parameters
    ----------
    samples : sequence of Sample
    n_classes : int
        ``K`` (background included).
    config : TrainConfig
    corruption : Corruption, optional
        Applied to the context channels of each patch.
    max_locations : int
        Voxel positions kept per class and sample (a random subset) to choose from.
    """

    def __init__(self, samples: Sequence[Sample], n_classes: int, config: TrainConfig,
                 corruption: Corruption | None = None, max_locations: int = 50_000) -> None:
        self.samples = list(samples)
        self.config = config
        self.corruption = corruption
        # Its own generator: the positions kept do not depend on the training state,
        # so a resumed run sees the same ones.
        pick = np.random.default_rng([config.seed, 7])
        self.locations: list[list[np.ndarray]] = []
        self.annotated: list[np.ndarray] = []
        for s in self.samples:
            flat = s.labels.ravel()
            per_class = []
            for c in range(n_classes):
                idx = np.flatnonzero(flat == c)
                per_class.append(idx if idx.size <= max_locations else pick.choice(idx, max_locations, replace=False))
            self.locations.append(per_class)
            ann = np.flatnonzero(flat != UNANNOTATED)
            self.annotated.append(ann if ann.size <= max_locations else pick.choice(ann, max_locations, replace=False))
        self.usable = [i for i, a in enumerate(self.annotated) if a.size]
        if not self.usable:
            raise ValueError("no training sample has annotated voxels (all labels are 255)")
        self.fg_classes = [c for c in range(1, n_classes) if any(loc[c].size for loc in self.locations)]

    def _centre(self, rng: np.random.Generator) -> tuple[int, np.ndarray]:
        if self.fg_classes and rng.random() < self.config.oversample:
            c = self.fg_classes[rng.integers(len(self.fg_classes))]
            having = [i for i, loc in enumerate(self.locations) if loc[c].size]
            i = having[rng.integers(len(having))]
            flat = self.locations[i][c][rng.integers(self.locations[i][c].size)]
        else:
            i = self.usable[rng.integers(len(self.usable))]
            flat = self.annotated[i][rng.integers(self.annotated[i].size)]
        return i, np.array(np.unravel_index(flat, self.samples[i].shape))

    def patch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One augmented patch: input ``(C, pz, py, px)`` float32 and labels ``(pz, py, px)``."""
        cfg, aug = self.config, self.config.augmentation
        patch = np.array(cfg.patch_size)
        i, centre = self._centre(rng)
        sample = self.samples[i]
        # Jitter so that the chosen voxel is not always at the patch centre.
        centre = centre + rng.integers(-(patch // 4), patch // 4 + 1)
        zoomed = aug.zoom > 0 and rng.random() < aug.p_zoom
        region = np.maximum(np.round(patch * rng.uniform(1 - aug.zoom, 1 + aug.zoom, 3)).astype(int), 1) \
            if zoomed else patch
        start = centre - region // 2
        transform = None
        if sample.context is not None and self.corruption is not None:
            transform = lambda crop: self.corruption(crop, rng)  # noqa: E731
        x = sample.fetch(start, region, transform)
        y = sample.fetch_labels(start, region)
        if zoomed:
            size = tuple(int(p) for p in patch)
            x = F.interpolate(torch.from_numpy(x)[None], size=size, mode="trilinear", align_corners=False)[0].numpy()
            y = F.interpolate(torch.from_numpy(y)[None, None].float(), size=size, mode="nearest")[0, 0]
            y = y.numpy().astype(np.uint8)
        if aug.flip:
            for axis in range(3):
                if rng.random() < 0.5:
                    x, y = np.flip(x, axis + 1), np.flip(y, axis)
        if aug.rotate_xy:
            k = int(rng.integers(4)) if patch[1] == patch[2] else 2 * int(rng.integers(2))
            x, y = np.rot90(x, k, axes=(2, 3)), np.rot90(y, k, axes=(1, 2))
        x = np.array(x, np.float32)
        for c in aug.intensity_channels:
            x[c] = x[c] * rng.uniform(1 - aug.intensity_scale, 1 + aug.intensity_scale) \
                + rng.uniform(-aug.intensity_shift, aug.intensity_shift)
            if aug.noise_std > 0:
                x[c] += rng.normal(0.0, rng.uniform(0, aug.noise_std), x[c].shape).astype(np.float32)
        return x, np.ascontiguousarray(y)

    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, pz, py, px)`` float32 inputs and ``(B, pz, py, px)`` int64 labels."""
        xs, ys = zip(*(self.patch(rng) for _ in range(self.config.batch_size)))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))


# ---------------------------------------------------------------------------------
# Validation and the training loop
# ---------------------------------------------------------------------------------
def _validate(net: UNet3D, samples: Sequence[Sample], patch: Sequence[int], n_classes: int,
              step: float) -> np.ndarray:
    """Dice of classes 1 … K−1 pooled over whole validation volumes (NaN if absent),
    on voxels of one known class (not unannotated, not a label set)."""
    tp, fp, fn = (np.zeros(n_classes, np.int64) for _ in range(3))

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.softmax(net(x), dim=1)

    net.eval()
    try:
        for s in samples:
            grid = WindowGrid.make(s.shape, patch, step)
            whole = tuple(slice(0, n) for n in s.shape)
            probs, _ = blend_block(grid, whole, lambda st: s.fetch(st, grid.patch), predict, n_classes)
            pred = probs.argmax(axis=0)
            valid = s.labels < n_classes
            p, t = pred[valid], s.labels[valid]
            for c in range(1, n_classes):
                pc, tc = p == c, t == c
                tp[c] += np.count_nonzero(pc & tc)
                fp[c] += np.count_nonzero(pc & ~tc)
                fn[c] += np.count_nonzero(~pc & tc)
    finally:
        net.train()
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)[1:]


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash while saving leaves the previous checkpoint intact


def train_stage(net: UNet3D, train: Sequence[Sample], val: Sequence[Sample], config: TrainConfig, *,
                class_names: Sequence[str], checkpoint: str | os.PathLike | None = None,
                resume: bool = False, corruption: Corruption | None = None,
                label_sets: np.ndarray | None = None, progress: bool = True,
                desc: str = "training", on_step: Callable[[int, float], None] | None = None,
                ) -> tuple[UNet3D, pd.DataFrame]:
    """Train one U-Net on patches; return it with the best validation weights.

    Parameters
    ----------
    net : UNet3D
        Network to train (in place); its ``in_channels`` must match the samples'.
    train, val : sequences of Sample
        Training and validation volumes; without validation volumes the last
        weights are kept and early stopping is off.
    config : TrainConfig
    class_names : sequence of str
        Names of classes 1 … K−1 (history columns ``dice_<name>``).
    checkpoint : path-like, optional
        Resumable checkpoint file (weights, optimizer, step, random state, history),
        written every ``config.checkpoint_every`` steps, at validations and at the end.
    resume : bool
        Continue from ``checkpoint`` if it exists (a finished run is returned as is).
    corruption : Corruption, optional
        Damage to context channels (stage 2 of a cascade).
    label_sets : bool array (S, K), optional
        The classes that label-set code ``K + s`` stands for (see
        :func:`dice_ce_loss`).
    progress : bool
        Show a tqdm bar with the running loss.
    desc : str
        Label of the progress bar and the ``stage`` column.
    on_step : callable, optional
        Called as ``on_step(step, loss)`` after every step (e.g. for logging).

    Returns
    -------
    net : UNet3D
        With the weights of the best validation (or the last step), in eval mode.
    history : pandas.DataFrame
        One row per validation: ``step``, ``lr``, ``train_loss`` (mean since the
        previous row), ``dice_<class>``, ``mean_dice``, ``best``, ``elapsed_s``;
        ``history.plot(x="step", y=["train_loss", "mean_dice"])`` shows the run.

    Notes
    -----
    Seeds: patch sampling and augmentation use ``numpy.random.default_rng(config.seed)``
    (restored on resume); the network's initial weights are the caller's (seed
    torch before building it). torch's global settings (threads) are left alone.
    """
    k = net.config.out_channels
    names = [str(n) for n in class_names]
    if len(names) != k - 1:
        raise ValueError(f"class_names must name the {k - 1} foreground classes, got {names}")
    for s in [*train, *val]:
        if s.n_channels != net.config.in_channels:
            raise ValueError(f"sample {s.name!r} has {s.n_channels} input channels, the network takes "
                             f"{net.config.in_channels}")
    sampler = PatchSampler(train, k, config, corruption)
    sets = None if label_sets is None or not len(label_sets) else torch.as_tensor(np.asarray(label_sets, bool))
    rng = np.random.default_rng(config.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n_iter = config.iterations
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(1 - i / n_iter, 0.0) ** 0.9)
    step, best_score, best_step, bad, elapsed = 0, -np.inf, 0, 0, 0.0
    best_state: dict[str, torch.Tensor] | None = None
    rows: list[dict[str, Any]] = []
    ckpt = Path(checkpoint) if checkpoint is not None else None

    if resume and ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, weights_only=True)  # plain tensors and numbers only: no code runs
        if state.get("format") != _CHECKPOINT_FORMAT:
            raise FormatError(f"{ckpt}: not an sxtlab training checkpoint (format {state.get('format')!r})")
        if state["config"] != config.to_dict():
            changed = sorted(kk for kk in config.to_dict() if state["config"].get(kk) != config.to_dict()[kk])
            warnings.warn(f"{ckpt}: resuming with changed settings {changed}", stacklevel=2)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        step, best_score, best_step = state["step"], state["best_score"], state["best_step"]
        bad, elapsed, rows, best_state = state["bad"], state["elapsed"], state["history"], state["best"]
        LOG.info("%s: resuming from step %d of %d (%s)", desc, step, n_iter, ckpt)
        if state["done"]:
            if best_state is not None:
                net.load_state_dict(best_state)
            return net.eval(), pd.DataFrame(rows)

    def save(done: bool) -> None:
        if ckpt is None:
            return
        _save_checkpoint(ckpt, {
            "format": _CHECKPOINT_FORMAT, "version": 1, "step": step, "done": done,
            "net": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": rng.bit_generator.state, "best": best_state, "best_score": float(best_score),
            "best_step": best_step, "bad": bad, "elapsed": elapsed, "history": rows,
            "config": config.to_dict(),
        })

    net.train()
    losses: list[float] = []
    running = float("nan")
    t0 = time.perf_counter() - elapsed
    bar = tqdm(total=n_iter, initial=step, desc=desc, disable=not progress, leave=True)
    stop = False
    try:
        while step < n_iter and not stop:
            x, y = sampler.batch(rng)
            loss = dice_ce_loss(net(x), y, label_sets=sets, dice_weight=config.dice_weight,
                                ce_weight=config.ce_weight, include_background=config.dice_background,
                                batch_dice=config.batch_dice)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            value = float(loss.detach())
            losses.append(value)
            running = value if np.isnan(running) else 0.9 * running + 0.1 * value
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}", best=f"{best_score:.3f}" if best_state is not None else "-")
            if step % config.val_every == 0 or step == n_iter:
                row: dict[str, Any] = {"stage": desc, "step": step, "lr": opt.param_groups[0]["lr"],
                                       "train_loss": float(np.mean(losses)) if losses else float("nan")}
                losses = []
                if val:
                    dice = _validate(net, val, config.patch_size, k, config.val_step)
                    row.update({f"dice_{n}": float(d) for n, d in zip(names, dice)})
                    score = float(np.nanmean(dice)) if np.isfinite(dice).any() else -float(row["train_loss"])
                    row["mean_dice"] = score
                    improved = score > best_score
                    if improved:
                        best_score, best_step, bad = score, step, 0
                        best_state = {kk: v.detach().clone() for kk, v in net.state_dict().items()}
                    else:
                        bad += 1
                    row["best"] = improved
                    if config.patience and bad >= config.patience:
                        LOG.info("%s: early stop at step %d (best %.4f at step %d)", desc, step, best_score,
                                 best_step)
                        stop = True
                elapsed = time.perf_counter() - t0
                row["elapsed_s"] = elapsed
                rows.append(row)
                save(done=stop or step == n_iter)
            elif step % config.checkpoint_every == 0:
                elapsed = time.perf_counter() - t0
                save(done=False)
            if on_step is not None:
                on_step(step, value)
    finally:
        bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    return net.eval(), pd.DataFrame(rows)


# ---------------------------------------------------------------------------------
# The cascade
# ---------------------------------------------------------------------------------
def _order(names: set[str]) -> list[str]:
    vocab = list(VOCABULARY)
    return sorted(names, key=lambda n: (vocab.index(n) if n in vocab else len(vocab), n))


def _class_index(name: str, classes: list[str]) -> int:
    """Index of ``name``'s class among 1 … K−1 of ``classes``: itself or its nearest
    listed ancestor (nucleolus → nucleus), else 0 (background)."""
    target: str | None = name
    while target is not None and target not in classes:
        target = VOCABULARY[target].parent if target in VOCABULARY else None
    return 0 if target is None else classes.index(target) + 1


def _set_table(sets: LabelSets, n_classes: int) -> np.ndarray:
    """``(S, K)`` membership of codes ``K … K+S−1`` (``label_sets`` of :func:`train_stage`)."""
    out = np.zeros((len(sets.sets), n_classes), bool)
    for code, members in sets.sets.items():
        out[code - n_classes, sorted(members)] = True
    return out


def _remap(labels: xr.DataArray, classes: list[str], where: str, sets: LabelSets) -> np.ndarray:
    """Label values → class indices 1 … K−1 of ``classes`` (0 background, 255 kept),
    and the label-set codes of the ``label_sets`` attr (:meth:`sxtlab.task.Task.remap`)
    → codes of ``sets``.

    A class not among ``classes`` goes to its nearest ancestor that is (nucleolus →
    nucleus), else to background.
    """
    cmap = class_map(labels.attrs.get("classes", {}))
    label_sets = {int(code): [canonical_name(n) for n in names]
                  for code, names in labels.attrs.get("label_sets", {}).items()}
    values = np.asarray(labels.values)
    present = {int(v) for v in np.unique(values)}
    unknown = sorted(present - set(cmap) - set(label_sets) - {0, UNANNOTATED})
    if unknown:
        raise FormatError(f"{where}: label values {unknown} are not named in its 'classes' attr {cmap}")
    lut = np.zeros(max(present | {UNANNOTATED}) + 1, np.uint8)
    lut[UNANNOTATED] = UNANNOTATED
    for value, name in cmap.items():
        index = _class_index(name, classes)
        trained_as = classes[index - 1] if index else "background"
        if trained_as != name:
            LOG.info("%s: class %r is trained as %r", where, name, trained_as)
        if value < lut.size:
            lut[value] = index
    for code, names in label_sets.items():
        if code < lut.size:
            lut[code] = sets.code(frozenset(0 if n == "background" else _class_index(n, classes)
                                            for n in names))
    return lut[values]


def _uncalibrated(lac: xr.DataArray) -> bool:
    """Gray values without a calibration to LAC (a model can only take them as they are)."""
    return lac.attrs.get("units") == "gray" and lac.sxt.calibration is None


def _input_units(samples: Sequence[xr.Dataset]) -> str:
    """``"1/um"`` if every sample is LAC or calibrated gray, ``"gray"`` if none has a
    calibration (the model then takes uncalibrated gray values); mixing is refused."""
    # malformed samples count as LAC here; _prepare names what is wrong with them
    kinds = ["gray" if isinstance(ds, xr.Dataset) and "lac" in ds and _uncalibrated(ds["lac"]) else "1/um"
             for ds in samples]
    if len(set(kinds)) > 1:
        raise FormatError(
            f"samples {[i for i, k in enumerate(kinds) if k == 'gray']} are uncalibrated gray values, the "
            "others LAC: one model cannot take both; calibrate the gray ones (.sxt.with_calibration)")
    return kinds[0]


def _prepare(samples: Sequence[xr.Dataset], classes: list[str],
             sets: LabelSets) -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = []
    for i, ds in enumerate(samples):
        if not isinstance(ds, xr.Dataset) or "lac" not in ds or "labels" not in ds:
            raise FormatError(f"sample {i}: a training sample is a Dataset with 'lac' and 'labels', got "
                              f"{type(ds).__name__} {sorted(getattr(ds, 'data_vars', []))}")
        name = str(ds.attrs.get("cell_id", ds["lac"].attrs.get("cell_id", f"sample {i}")))
        lac = ds["lac"]
        if lac.attrs.get("units") == "gray" and lac.sxt.calibration is not None:
            lac = lac.sxt.to_lac()
        out.append((name, np.asarray(lac.values, np.float32), _remap(ds["labels"], classes, name, sets)))
    return out


def _voxel_size(samples: Sequence[xr.Dataset]) -> tuple[float, float, float] | None:
    sizes = [ds["lac"].attrs.get("voxel_size_um") for ds in samples]
    if all(v is None for v in sizes):
        return None
    if any(v is None for v in sizes) or not all(np.allclose(v, sizes[0], rtol=0.02) for v in sizes):
        raise FormatError(f"training samples have different voxel sizes {sizes} µm; resample them to one "
                          "voxel size first (.sxt.resample)")
    return tuple(float(v) for v in sizes[0])  # type: ignore[return-value]


def train_cascade(samples: Sequence[xr.Dataset], classes: Sequence[str] | None = None,
                  config: CascadeConfig | None = None, *, validation: Sequence[xr.Dataset] | None = None,
                  checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
                  init: CascadeModel | None = None, stage1_from: CascadeModel | None = None,
                  progress: bool = True) -> tuple[CascadeModel, pd.DataFrame]:
    """Train a two-stage cascade on segmented cells.

    Parameters
    ----------
    samples : sequence of xarray.Dataset
        Training cells, each with ``lac`` (LAC, or gray with a calibration) and
        ``labels`` (``classes`` attr; 255 = unannotated, e.g. sparse planes). All on
        one voxel size (or all unknown).
    classes : sequence of str, optional
        Classes to learn, in label order; default every class named by the samples,
        in vocabulary order. A sample class not listed is learnt as its nearest
        listed ancestor (nucleolus → nucleus), else as background.
    config : CascadeConfig, optional
    validation : sequence of xarray.Dataset, optional
        Held-out cells for validation; default ``config.val_fraction`` of the
        samples (none held out when there is only one sample: then the training
        cell is used, and a warning says that model selection is optimistic).
    checkpoint_dir : path-like, optional
        Folder for resumable checkpoints of each stage.
    resume : bool
        Continue an interrupted run from ``checkpoint_dir``.
    init : CascadeModel, optional
        Fine-tune: start both stages from this model's weights (its classes,
        architectures, stage-1 factor and normalisation are kept) instead of a
        random initialisation. With ``stage1_from``, only stage 2 starts from
        ``init``'s (a later sitting of a stage 2 trained on a kept stage 1).
    stage1_from : CascadeModel, optional
        Keep this model's stage 1 as it is (with its classes, factor, stage-1 patch
        and normalisation) and train only a new stage 2 on its context, e.g. a
        stage 1 that generalises better than one retrained on more cells of one
        generator (``benchmarks/results/generalisation.md``). Its context on cells it
        was trained on is in-sample (``config.corruption`` still applies; folds do
        not).
    progress : bool
        Show progress bars.

    Returns
    -------
    model : CascadeModel
    history : pandas.DataFrame
        Rows of every stage's validations (column ``stage``).

    Raises
    ------
    ValueError
        If ``init`` or ``stage1_from`` was trained for other classes than ``classes``,
        or both are given and ``init``'s stage 2 was trained on another stage-1 grid
        or normalisation than ``stage1_from``'s.
    """
    cfg = config or CascadeConfig()
    if stage1_from is not None and init is not None:
        # their classes are compared below, as for any init
        for what in ("factor", "normalisation"):
            if getattr(init, what) != getattr(stage1_from, what):
                raise ValueError(f"the stage 2 to continue (init) has {what} {getattr(init, what)!r}, the kept "
                                 f"stage 1 (stage1_from) {getattr(stage1_from, what)!r}: they must agree")
    if stage1_from is not None:
        if classes is not None and [canonical_name(c) for c in classes] != stage1_from.classes:
            raise ValueError(f"cannot train a stage 2 for {list(classes)} on a stage 1 for {stage1_from.classes}")
        classes = stage1_from.classes
        cfg = replace(cfg, factor=stage1_from.factor, stage1_unet=stage1_from.stage1.config,
                      stage1=replace(cfg.stage1, patch_size=stage1_from.stage1_patch),
                      normalisation=stage1_from.normalisation, stage1_folds=0)
    if init is not None:
        if classes is not None and [canonical_name(c) for c in classes] != init.classes:
            raise ValueError(f"cannot fine-tune a model for {init.classes} into one for {list(classes)}")
        classes = init.classes
        cfg = replace(cfg, factor=init.factor, stage2_unet=init.stage2.config, normalisation=init.normalisation,
                      context=init.context, smooth_sigma=init.smooth_sigma)
        if stage1_from is None:
            cfg = replace(cfg, stage1_unet=init.stage1.config)
    if not samples:
        raise ValueError("train_cascade needs at least one sample")
    names = [canonical_name(c) for c in classes] if classes is not None else _order(
        {n for ds in samples for n in class_map(ds["labels"].attrs.get("classes", {})).values()})
    if not names:
        raise ValueError("no classes to learn: pass classes= or samples whose labels name classes")
    k = len(names) + 1
    vs = _voxel_size([*samples, *(validation or [])])
    factor = (cfg.factor,) * 3 if np.isscalar(cfg.factor) else tuple(cfg.factor)
    rng = np.random.default_rng(cfg.seed)
    units = _input_units([*samples, *(validation or [])])

    train_sets, val_sets = list(samples), list(validation or [])
    if not val_sets:
        if len(train_sets) > 1:
            n_val = max(1, int(round(cfg.val_fraction * len(train_sets))))
            order = rng.permutation(len(train_sets))
            val_sets = [train_sets[i] for i in order[:n_val]]
            train_sets = [train_sets[i] for i in order[n_val:]]
        else:
            warnings.warn("one sample and no validation set: validating on the training cell, so the "
                          "best-checkpoint choice is optimistic", stacklevel=2)
            val_sets = list(train_sets)
    # training codes follow the classes: K, K+1, ...
    sets = LabelSets(k, range(k, UNANNOTATED))
    train_data, val_data = _prepare(train_sets, names, sets), _prepare(val_sets, names, sets)
    label_sets = _set_table(sets, k)
    if cfg.normalisation is not None and cfg.normalisation.units != units:
        raise FormatError(f"the samples are {units!r} values but the normalisation "
                          f"{'of the model to fine-tune ' if init is not None else ''}is for "
                          f"{cfg.normalisation.units!r}")
    for name, _, lab in train_data:
        missing = [c for i, c in enumerate(names, 1) if not (lab == i).any()]
        if missing:
            LOG.info("%s: no voxel of %s", name, missing)

    norm = cfg.normalisation
    if norm is None:
        fg = np.concatenate([lac[(lab != 0) & (lab < k)] for _, lac, lab in train_data])
        norm = Normalisation.fit(fg[rng.permutation(fg.size)[:1_000_000]], units=units)
    LOG.info("intensity normalisation: offset %.6g, scale %.6g %s", norm.offset, norm.scale, norm.units)

    def coarse(data) -> list[Sample]:
        return [Sample(block_mean(norm.apply(lac), factor)[None], block_labels(lab, factor, k + len(label_sets)),
                       name=n)
                for n, lac, lab in data]

    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)

    def stage1(train_s: list[Sample], val_s: list[Sample], tag: str, seed_offset: int):
        torch.manual_seed(cfg.seed + seed_offset)
        net = UNet3D(replace(cfg.stage1_unet, in_channels=1, out_channels=k))
        if init is not None:
            net.load_state_dict(init.stage1.state_dict())
        tc = replace(cfg.stage1, seed=cfg.stage1.seed + seed_offset)
        return train_stage(net, train_s, val_s, tc, class_names=names, label_sets=label_sets,
                           progress=progress, desc=tag,
                           checkpoint=ckdir / f"{tag.replace(' ', '')}.pt" if ckdir else None, resume=resume)

    t_start = time.perf_counter()
    low_train, low_val = coarse(train_data), coarse(val_data)
    if stage1_from is not None:
        net1, hist1 = copy.deepcopy(stage1_from.stage1).eval(), pd.DataFrame()
    else:
        net1, hist1 = stage1(low_train, low_val, "stage 1", 0)

    def probs(net: UNet3D, s: Sample) -> np.ndarray:
        # exactly as CascadeModel.stage1_probabilities does at inference
        window = stage1_window(s.shape, net.config.divisor, cfg.stage1.patch_size)

        def predict(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return torch.softmax(net(x), dim=1)

        return sliding_window(s.image, predict, window, out_channels=k)

    uses_context = cfg.context != "none"

    def context(p: np.ndarray | None) -> Context | None:
        return Context(p, factor, mode=cfg.context, smooth_sigma=cfg.smooth_sigma) if uses_context else None

    histories = [hist1]
    folds = cfg.stage1_folds if uses_context and cfg.stage1_folds >= 2 and len(low_train) >= cfg.stage1_folds else 0
    if uses_context and cfg.stage1_folds >= 2 and not folds:
        warnings.warn(f"stage1_folds={cfg.stage1_folds} needs as many training samples, got "
                      f"{len(low_train)}: using corrupted in-sample stage-1 predictions", stacklevel=2)
    train_probs: list[np.ndarray | None] = [None] * len(low_train)
    if folds:
        assignment = np.arange(len(low_train)) % folds
        for f in range(folds):
            inner = [s for s, a in zip(low_train, assignment) if a != f]
            net_f, hist_f = stage1(inner, low_val, f"stage 1 fold {f}", 100 + f)
            histories.append(hist_f)
            for i in np.flatnonzero(assignment == f):
                train_probs[i] = probs(net_f, low_train[i])
    elif uses_context:
        train_probs = [probs(net1, s) for s in low_train]
    full_train = [Sample(norm.apply(lac)[None], lab, context(p), n)
                  for (n, lac, lab), p in zip(train_data, train_probs)]
    full_val = [Sample(norm.apply(lac)[None], lab, context(probs(net1, s) if uses_context else None), n)
                for (n, lac, lab), s in zip(val_data, low_val)]
    torch.manual_seed(cfg.seed + 1)
    net2 = UNet3D(replace(cfg.stage2_unet, in_channels=stage2_in_channels(k, cfg.context), out_channels=k))
    if init is not None:
        net2.load_state_dict(init.stage2.state_dict())
    net2, hist2 = train_stage(net2, full_train, full_val, cfg.stage2, class_names=names, label_sets=label_sets,
                              corruption=cfg.corruption, progress=progress, desc="stage 2",
                              checkpoint=ckdir / "stage2.pt" if ckdir else None, resume=resume)
    histories.append(hist2)
    history = pd.concat(histories, ignore_index=True)
    info = {
        "fine_tuned_from": None if init is None else init.weights_sha256,
        "stage1_from": None if stage1_from is None else stage1_from.weights_sha256,
        "trained_on": [n for n, _, _ in train_data],
        "validated_on": [n for n, _, _ in val_data],
        # what the training volumes looked like, so that a study can say which of its
        # volumes lie outside that range (sxtlab.domain.ood_scores)
        "input_statistics": reference_range(input_statistics(lac, vs) for _, lac, _ in train_data),
        "config": cfg.to_dict() | {"normalisation": asdict(norm)},
        "train_seconds": round(time.perf_counter() - t_start, 1),
        "validation_mean_dice": {str(st): float(h["mean_dice"].max()) for st, h in history.groupby("stage")
                                 if "mean_dice" in h},
    }
    model = CascadeModel(net1, net2, names, factor=factor, normalisation=norm, voxel_size=vs,
                         stage1_patch=cfg.stage1.patch_size, stage2_patch=cfg.stage2.patch_size,
                         context=cfg.context, smooth_sigma=cfg.smooth_sigma, info=info)
    return model, history


def fast_config(iterations: tuple[int, int] = (60, 80), *, seed: int = 0) -> CascadeConfig:
    """A short cascade training run (a minute or two on 2 cores), for trying things out.

    Small networks (depth 3, 8 base channels), small patches and few iterations; the
    defaults of :class:`CascadeConfig` train for longer.
    """
    net = UNetConfig(depth=3, base_width=8)
    stage1 = TrainConfig(patch_size=(16, 16, 16), batch_size=2, iterations=iterations[0], lr=1e-2,
                         val_every=max(1, iterations[0] // 2), patience=0)
    stage2 = TrainConfig(patch_size=(24, 24, 24), batch_size=2, iterations=iterations[1], lr=1e-2,
                         val_every=max(1, iterations[1] // 2), patience=0)
    return CascadeConfig(factor=2, stage1=stage1, stage2=stage2, stage1_unet=net, stage2_unet=net, seed=seed)
