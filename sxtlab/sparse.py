"""Learning from sparse plane annotations: honest plane folds, annotation-guided
instance selection, annotation interpolation, and cascade training for one small volume.

Imaging-centre users annotate a few whole planes of a volume (in one or more
orientations) and leave the rest unannotated (:data:`~sxtlab.classes.UNANNOTATED`,
255). This module turns such a volume into

* **an honest evaluation** (:func:`annotated_planes`, :func:`plane_folds`): whole
  annotated planes are held out, never single voxels, because a voxel next to a
  training voxel almost always shares its label and would flatter any method;
* **a segmentation of the annotated object** (:func:`select_annotated_instances`):
  the annotation says *which* object is meant (here: one cell marked ``cell``, its
  neighbours in the capillary marked ``void``), which appearance alone cannot tell;
  the predicted foreground is split among the annotation's seeds and only what the
  ``cell`` seeds claim is kept;
* **the annotation completed** (:func:`interpolate_annotation`): random walks from
  the annotated voxels along the image's edges (Biomedisa's "smart interpolation"),
  which uses this volume alone;
* **a model** (:func:`fit_sparse`): the cascade of :mod:`sxtlab.cascade` trained by
  :func:`sxtlab.train.train_cascade` with settings that train on one small volume in
  minutes on two CPU cores and need no voxel size or calibration;
  :func:`segment_sparse` averages its probabilities with the interpolation and
  applies the instance selection.

How well each part does on held-out planes of a real volume, against Otsu and a
random forest, is in ``benchmarks/results/real.md``.

The loss ignores unannotated voxels (:func:`sxtlab.train.dice_ce_loss`), the way
nnU-Net handles partial labels (Isensee et al. 2021; "ignore label" of nnU-Net v2),
and the cascade's first stage sees the whole (downsampled) volume, so that the
network knows where in the capillary a patch lies. The baseline it is measured
against is the interactive pixel classifier of ilastik (Berg et al. 2019, Nature
Methods 16, 1226: a random forest on multiscale Gaussian, edge and texture
features), see ``benchmarks/bench_real.py``.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import xarray as xr
from scipy import ndimage

from .classes import UNANNOTATED, class_map
from .volume import DIMS

__all__ = ["annotated_planes", "PlaneFold", "plane_folds", "select_annotated_instances",
           "interpolate_annotation", "sparse_config", "fit_sparse", "segment_sparse"]

LOG = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------
# Which planes are annotated, and folds of them
# ---------------------------------------------------------------------------------
def _values(labels) -> np.ndarray:
    a = np.asarray(labels.values if isinstance(labels, xr.DataArray) else labels)
    if a.ndim != 3:
        raise ValueError(f"expected a 3-D (z, y, x) label volume, got shape {a.shape}")
    return a


def annotated_planes(labels, *, min_fraction: float = 0.5,
                     ignore: int = UNANNOTATED) -> dict[str, list[int]]:
    """The annotated planes of a sparsely labelled volume, per orientation.

    A plane (a whole slice ``z = i``, ``y = i`` or ``x = i``) counts as annotated
    when at least ``min_fraction`` of its voxels are. Slices between annotated
    planes are annotated only where planes of the other orientations cross them
    (about ``n/size`` per orientation: 0.2 for six planes in each of two other
    orientations on 60 voxels), so 0.5 separates the two unless planes are
    denser than every second slice, when the annotation is no longer sparse.

    Parameters
    ----------
    labels : xarray.DataArray or ndarray, shape (Z, Y, X)
        Label volume; ``ignore`` marks unannotated voxels.
    min_fraction : float
        Least annotated share of a slice's voxels for it to be a plane, in (0, 1].
    ignore : int
        Label value of unannotated voxels.

    Returns
    -------
    dict
        ``{"z": [...], "y": [...], "x": [...]}``: sorted slice indices (voxels).

    Raises
    ------
    ValueError
        If ``labels`` is not 3-D or ``min_fraction`` is outside (0, 1].
    """
    if not 0 < min_fraction <= 1:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
    annotated = _values(labels) != ignore
    out = {}
    for axis, dim in enumerate(DIMS):
        others = tuple(a for a in range(3) if a != axis)
        share = annotated.mean(axis=others)
        out[dim] = [int(i) for i in np.flatnonzero(share >= min_fraction)]
    return out


class PlaneFold(NamedTuple):
    """One split of the annotated planes into training and held-out planes.

    Attributes
    ----------
    train_labels : xarray.DataArray or ndarray, shape (Z, Y, X)
        The labels with the held-out planes, and a band of ``margin`` voxels on each
        side of them, set to the ignore value (same type, dtype and attrs as the input).
    test_mask : ndarray of bool, shape (Z, Y, X)
        The annotated voxels of the held-out planes: score only here.
    held_out : dict
        ``{"z": [...], "y": [...], "x": [...]}``: the held-out plane indices.
    """

    train_labels: xr.DataArray | np.ndarray
    test_mask: np.ndarray
    held_out: dict[str, list[int]]


def plane_folds(labels, n_folds: int = 3, *, margin: int = 2, planes: Mapping[str, Sequence[int]] | None = None,
                ignore: int = UNANNOTATED) -> list[PlaneFold]:
    """Split a plane-annotated volume into folds of whole held-out planes.

    In each orientation the annotated planes are taken in order and plane ``i``
    goes to fold ``i mod n_folds`` (every ``n_folds``-th plane is held out, so held-out
    planes spread over the volume and each fold keeps planes on both sides of
    them). Every plane is held out in exactly one fold.

    Planes of different orientations cross: a held-out ``z`` plane meets every
    training ``x`` and ``y`` plane along a line, and training voxels on and right
    next to that line would give the held-out plane's labels away. So the
    *training* labels lose, besides the held-out planes themselves, a band of
    ``margin`` voxels on each side of every held-out plane (the crossing lines and
    their neighbours), and the held-out planes are scored whole. Every scored voxel
    is then at least ``margin + 1`` voxels (along the held-out plane's normal) from
    any training label. This keeps the test set what the design asks for (whole
    held-out planes) at the price of a few training voxels; dropping the crossing
    voxels from the *test* set instead would keep all training voxels but score
    held-out planes with stripes missing exactly where the errors between planes
    are largest.

    Parameters
    ----------
    labels : xarray.DataArray or ndarray, shape (Z, Y, X)
        Sparse labels; ``ignore`` marks unannotated voxels.
    n_folds : int
        Number of folds, ≥ 2 and at most the number of planes of the orientation
        with most planes.
    margin : int
        Training voxels within this many voxels of a held-out plane are removed
        (0 removes only the crossing lines).
    planes : mapping, optional
        ``{"z": [...], "y": [...], "x": [...]}``; default :func:`annotated_planes`.
    ignore : int
        Label value of unannotated voxels.

    Returns
    -------
    list of PlaneFold
        ``n_folds`` folds ``(train_labels, test_mask, held_out)``.

    Raises
    ------
    ValueError
        If no annotated plane is found, ``n_folds`` < 2 or larger than the number
        of planes in every orientation, or ``margin`` < 0.

    Examples
    --------
    >>> lab = np.full((12, 12, 12), 255, np.uint8)
    >>> lab[[2, 6, 10]] = 0
    >>> folds = plane_folds(lab, 3, margin=1)
    >>> [f.held_out["z"] for f in folds]
    [[2], [6], [10]]
    >>> bool((folds[0].train_labels[folds[0].test_mask] == 255).all())
    True
    """
    data = _values(labels)
    if margin < 0:
        raise ValueError(f"margin must be ≥ 0 voxels, got {margin}")
    planes = {d: sorted(int(i) for i in p) for d, p in (planes or annotated_planes(data, ignore=ignore)).items()}
    most = max((len(p) for p in planes.values()), default=0)
    if most == 0:
        raise ValueError("no annotated plane found: the labels are not plane-wise sparse "
                         "(pass planes= to name them)")
    if not 2 <= n_folds <= most:
        raise ValueError(f"n_folds must be between 2 and the largest number of planes in one "
                         f"orientation ({most}), got {n_folds}")
    annotated = data != ignore
    folds = []
    for f in range(n_folds):
        test = np.zeros(data.shape, bool)
        band = np.zeros(data.shape, bool)
        held: dict[str, list[int]] = {}
        for d, idx in planes.items():
            axis = DIMS.index(d)
            held[d] = [p for i, p in enumerate(idx) if i % n_folds == f]
            for p in held[d]:
                sl: list = [slice(None)] * 3
                sl[axis] = p
                test[tuple(sl)] = True
                sl[axis] = slice(max(p - margin, 0), p + margin + 1)
                band[tuple(sl)] = True
        test &= annotated
        train = np.where(band, np.asarray(ignore, data.dtype), data)
        if isinstance(labels, xr.DataArray):
            train = labels.copy(data=train)
            train.attrs["held_out_planes"] = {d: list(v) for d, v in held.items()}
        folds.append(PlaneFold(train, test, held))
    return folds


# ---------------------------------------------------------------------------------
# Annotation-guided instance selection
# ---------------------------------------------------------------------------------
def _fill_solid(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its 3-D holes and the holes of every z, y and x section filled."""
    out = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        # A structuring element flat along `axis` connects voxels within sections
        # only, so each section is filled on its own (one call, not a Python loop).
        st = np.zeros((3, 3, 3), bool)
        sl: list = [slice(None)] * 3
        sl[axis] = 1
        st[tuple(sl)] = ndimage.generate_binary_structure(2, 1)
        out |= ndimage.binary_fill_holes(mask, structure=st)
    return out


def select_annotated_instances(prob_or_mask, labels, *, value: int = 1, threshold: float = 0.5,
                               fill_holes: bool = True, respect_annotation: bool = True,
                               ignore: int = UNANNOTATED) -> np.ndarray:
    """Keep the parts of a predicted foreground that the annotation marks as ``value``.

    Appearance says where cell *material* is; only the annotation says *which*
    cell is meant (the annotator marked one cell as ``cell`` and its touching
    neighbours as ``void``). The predicted foreground is therefore split among the
    annotation's seeds by a marker-controlled watershed (Beucher & Meyer 1993) on
    the negated distance to the foreground's edge, so that touching objects part
    at their neck:

    1. ``fg`` = prediction ≥ ``threshold`` (holes filled when ``fill_holes``);
    2. seeds: annotated ``value`` voxels in ``fg`` flood as *keep*, every other
       annotated voxel in ``fg`` (a neighbour marked ``void``, or an error of the
       prediction on an annotated plane) as *drop*;
    3. the watershed, confined to ``fg``, gives each foreground voxel to the seed
       that reaches it first; foreground components without any seed are dropped
       (an object nobody marked is not the one marked);
    4. optionally the annotation itself is written over the result where it exists.

    Parameters
    ----------
    prob_or_mask : ndarray or xarray.DataArray, shape (Z, Y, X)
        Probability of ``value`` (float in [0, 1]) or a boolean mask.
    labels : ndarray or xarray.DataArray, shape (Z, Y, X)
        The (sparse) annotation; ``ignore`` marks unannotated voxels. In an
        evaluation pass the *training* labels only, never the held-out ones.
    value : int
        Label value of the annotated object class.
    threshold : float
        Foreground threshold on probabilities (ignored for boolean masks).
    fill_holes : bool
        Fill holes of the foreground first and of the result last, both holes
        enclosed in 3-D and holes enclosed within any z, y or x section: a cell is
        a solid body whose every cross-section is filled, and a dark organelle
        inside it is still the cell (a hole open in 3-D through a thin tunnel is
        still closed in the sections). Leave it off for hollow classes.
    respect_annotation : bool
        Set annotated voxels to what the annotation says (``value`` → True, any
        other annotated label → False) in the result.
    ignore : int
        Label value of unannotated voxels.

    Returns
    -------
    ndarray of bool, shape (Z, Y, X)

    Raises
    ------
    ValueError
        If the shapes differ or the inputs are not 3-D.

    Examples
    --------
    Two touching blobs, one marked as the object and one as background:

    >>> m = np.zeros((1, 5, 11), bool); m[0, 1:4, 0:5] = m[0, 1:4, 6:11] = True; m[0, 2, 5] = True
    >>> lab = np.full(m.shape, 255, np.uint8); lab[0, 2, 1] = 1; lab[0, 2, 9] = 0
    >>> out = select_annotated_instances(m, lab, fill_holes=False)
    >>> out[0, 2].astype(int).tolist()
    [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    """
    from skimage.segmentation import watershed

    p = _values(prob_or_mask)
    lab = _values(labels)
    if p.shape != lab.shape:
        raise ValueError(f"prediction has shape {p.shape}, labels have {lab.shape}")
    fg = p.astype(bool) if p.dtype == bool else p >= threshold
    if fill_holes:
        fg = _fill_solid(fg)
    annotated = lab != ignore
    markers = np.zeros(lab.shape, np.int32)
    markers[fg & annotated & (lab != value)] = 2
    # "keep" written last: where an annotation is both (cannot happen for one label
    # volume, but a caller may pass merged ones) the object wins.
    markers[fg & (lab == value)] = 1
    if (markers == 1).any():
        # Ties in a flat landscape go to the seed met first in raster order; the
        # distance gives the flood a shape (necks are ridges), so they are rare.
        dist = ndimage.distance_transform_edt(fg)
        regions = watershed(-dist, markers, mask=fg)
        out = regions == 1
    else:
        out = np.zeros(lab.shape, bool)
    if respect_annotation:
        out[annotated & (lab == value)] = True
        out[annotated & (lab != value)] = False
    if fill_holes:
        out = _fill_solid(out)
        if respect_annotation:
            out[annotated & (lab != value)] = False
    return out


# ---------------------------------------------------------------------------------
# Training and applying a cascade on one sparsely annotated volume
# ---------------------------------------------------------------------------------
def sparse_config(*, iterations: tuple[int, int] = (600, 600), factor: int = 2, patch: int = 32,
                  batch_size: int = 2, seed: int = 0):
    """Cascade settings for one small, sparsely annotated volume on a CPU.

    Fixed a priori (not tuned on held-out planes) from the volume's size and the
    budget of a few minutes on two cores:

    * ``factor`` 2: a 60-voxel volume becomes 30 voxels, which one 32³ stage-1
      patch covers whole, so stage 1 sees the entire capillary (where the cell
      lies between its neighbours) in every step;
    * 32³ patches at both stages, batch 2, the default small U-Net (8–16–32
      channels), ``iterations`` steps per stage: 600 + 600 steps take about
      290 CPU-seconds with one torch thread (``benchmarks/results/real.md``);
      300 + 300 left the network under-trained (it missed the top of the cell
      in one fold);
    * validation only at the end and no early stopping: with one volume the only
      validation data are the training planes themselves, so choosing a checkpoint
      on them would be choosing on the training data;
    * everything else (Dice + CE with the ignore label, class-balanced patch
      centres on annotated voxels, flips and xy rotations, corrupted stage-1
      context) as in :class:`sxtlab.train.CascadeConfig`.

    Parameters
    ----------
    iterations : (int, int)
        Optimiser steps of stage 1 and stage 2.
    factor : int
        Stage-1 downsampling factor.
    patch : int
        Patch edge (voxels) of both stages; a multiple of 4 (the U-Net's divisor).
    batch_size : int
        Patches per step.
    seed : int
        Seed of initialisation, sampling and augmentation.

    Returns
    -------
    sxtlab.train.CascadeConfig
    """
    from .train import CascadeConfig, TrainConfig

    def stage(n: int, s: int) -> TrainConfig:
        return TrainConfig(patch_size=(patch,) * 3, batch_size=batch_size, iterations=n, val_every=n,
                           patience=0, checkpoint_every=max(n, 1), seed=s)

    return CascadeConfig(factor=factor, stage1=stage(iterations[0], seed), stage2=stage(iterations[1], seed + 1),
                         seed=seed)


def _task_labels(labels: xr.DataArray, task) -> tuple[xr.DataArray, list[str]]:
    from .task import Task

    t = task if isinstance(task, Task) else Task([task] if isinstance(task, str) else list(task))
    return t.remap(labels), list(t.classes)


def fit_sparse(dataset: xr.Dataset, task="cell", *, config=None, progress: bool = False,
               checkpoint_dir=None):
    """Train a two-stage cascade on one sparsely annotated volume.

    Only annotated voxels enter the loss (the ignore value 255 contributes
    nothing, :func:`sxtlab.train.dice_ce_loss`); the volume needs no voxel size
    (the model then never resamples) and no calibration (see Notes).

    Parameters
    ----------
    dataset : xarray.Dataset
        ``lac`` (z, y, x) and ``labels`` (z, y, x) with a ``classes`` attr, e.g.
        from :func:`sxtlab.read_project`.
    task : str, sequence of str or sxtlab.task.Task
        Classes to learn (``"cell"``); labels are mapped with
        :meth:`sxtlab.task.Task.remap` (classes the task does not name become
        background, classes it needs but the volume lacks become unannotated).
    config : sxtlab.train.CascadeConfig, optional
        Default :func:`sparse_config` (about 5 CPU-minutes).
    progress : bool
        Show progress bars.
    checkpoint_dir : path-like, optional
        Resumable checkpoints (see :func:`sxtlab.train.train_cascade`).

    Returns
    -------
    sxtlab.cascade.CascadeModel
        Its ``info`` holds the training history's summary, ``train_seconds`` (wall),
        ``train_cpu_seconds`` and ``sparse`` (annotated planes, input units).

    Raises
    ------
    ValueError
        If the dataset lacks ``lac`` or ``labels``, or no voxel is annotated with a
        task class.

    Notes
    -----
    An uncalibrated gray image (``units="gray"`` and no calibration) gives a model
    that takes gray values (:class:`sxtlab.cascade.Normalisation` ``units="gray"``,
    fitted on the annotated foreground): there is no LAC to put on a global scale.
    Such a model is meant for reconstructions like the one it was trained on, and
    refuses LAC input; ``info["sparse"]["input_units"]`` says which it takes.
    """
    from .train import train_cascade

    if not isinstance(dataset, xr.Dataset) or "lac" not in dataset or "labels" not in dataset:
        raise ValueError("fit_sparse needs an xarray.Dataset with 'lac' and 'labels' "
                         "(e.g. sxtlab.read_project('cell.hx'))")
    labels, classes = _task_labels(dataset["labels"], task)
    values = np.asarray(labels.values)
    fg = (values != 0) & (values != UNANNOTATED)
    if not fg.any():
        raise ValueError(f"no voxel is annotated as any of {classes}; the labels name "
                         f"{list(class_map(dataset['labels'].attrs.get('classes', {})).values())}")
    cfg = config if config is not None else sparse_config()
    sample = xr.Dataset({"lac": dataset["lac"], "labels": labels}, attrs=dataset.attrs)
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        # One volume: train_cascade validates on the training planes and says so;
        # sparse_config already turns model selection off for that reason.
        warnings.filterwarnings("ignore", message="one sample and no validation set")
        model, history = train_cascade([sample], classes, cfg, progress=progress, checkpoint_dir=checkpoint_dir)
    model.info["train_cpu_seconds"] = round(time.process_time() - c0, 1)
    model.info["train_seconds"] = round(time.perf_counter() - t0, 1)
    model.info["sparse"] = {
        "input_units": model.normalisation.units,
        "planes": annotated_planes(values),
        "annotated_voxels": int((values != UNANNOTATED).sum()),
        "final_train_loss": {str(s): float(h["train_loss"].iloc[-1]) for s, h in history.groupby("stage")},
    }
    LOG.info("fit_sparse: %s trained in %.0f s (%.0f CPU-s)", classes, model.info["train_seconds"],
             model.info["train_cpu_seconds"])
    return model


#: Edge penalties tried by ``interpolate_annotation(beta="auto")`` (image scaled to [0, 1]).
BETAS = (130.0, 1000.0, 8000.0, 64000.0)


def _unit_range(img: np.ndarray) -> np.ndarray:
    """Image mapped to [0, 1] by its 0.5 and 99.5 percentiles (clipped).

    ``random_walker``'s edge weights ``exp(−β·Δ²/(10·std))`` depend on the
    intensity scale, and its default β = 130 is meant for images in [0, 1]
    (``img_as_float`` of an integer image); gray values or LAC come in any range.
    """
    lo, hi = np.percentile(img, [0.5, 99.5])
    return np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0).astype(np.float32)


def _walk(img01: np.ndarray, lab: np.ndarray, k: int, beta: float, tol: float, ignore: int) -> np.ndarray:
    from skimage.segmentation import random_walker

    annotated = lab != ignore
    present = [int(c) for c in np.unique(lab[annotated])]
    out = np.zeros((k, *lab.shape), np.float32)
    if len(present) == 1:
        out[present[0]] = 1.0
        return out
    # random_walker's seeds: 0 = unknown, 1 … n = the classes present.
    seeds = np.zeros(lab.shape, np.int32)
    for i, c in enumerate(present, start=1):
        seeds[lab == c] = i
    with warnings.catch_warnings():
        # Each class is solved on its own to the solver's tolerance, so values stray
        # outside [0, 1] and their sums from 1 by about ``tol`` (skimage warns);
        # they are clipped and renormalised below.
        warnings.filterwarnings("ignore", message="The probability range is outside")
        prob = random_walker(img01, seeds, beta=beta, mode="cg_j", tol=tol, return_full_prob=True)
    for i, c in enumerate(present):
        out[c] = np.clip(prob[i], 0.0, 1.0)
    out /= np.maximum(out.sum(axis=0, keepdims=True), np.float32(1e-12))
    return out


def _choose_beta(img01: np.ndarray, lab: np.ndarray, k: int, betas: Sequence[float], tol: float,
                 ignore: int) -> tuple[float, dict[float, float]]:
    """β with the best mean foreground Dice on inner held-out planes of the annotation."""
    folds = plane_folds(lab, 3, margin=2, ignore=ignore)
    scores: dict[float, float] = {}
    for beta in betas:
        tp = np.zeros(k)
        denom = np.zeros(k)
        for train, test, _ in folds:
            pred = _walk(img01, train, k, beta, tol, ignore).argmax(axis=0)[test]
            truth = lab[test]
            for c in range(1, k):
                tp[c] += np.count_nonzero((pred == c) & (truth == c))
                denom[c] += np.count_nonzero(pred == c) + np.count_nonzero(truth == c)
        dice = 2 * tp[1:] / np.maximum(denom[1:], 1)
        scores[float(beta)] = float(dice[denom[1:] > 0].mean()) if (denom[1:] > 0).any() else 0.0
    best = max(scores, key=lambda b: (scores[b], -abs(np.log(b / 130.0))))
    return best, scores


def interpolate_annotation(image, labels, *, n_classes: int | None = None, beta: float | str = "auto",
                           betas: Sequence[float] = BETAS, tol: float = 1e-3,
                           ignore: int = UNANNOTATED) -> np.ndarray:
    """Class probabilities of every voxel by random walks from the annotated voxels.

    The "smart interpolation" of sparse slices in Biomedisa (Lösel et al. 2020,
    Nature Communications 11, 5577), after Grady's random walker (2006, IEEE TPAMI
    28, 1768): each unannotated voxel gets, per class, the probability that a
    random walk started there first reaches a voxel annotated with that class,
    where steps across strong intensity edges are unlikely
    (:func:`skimage.segmentation.random_walker`, conjugate gradients with a Jacobi
    preconditioner). It uses only this volume's annotation and image, so it
    completes the annotation of *this* volume but learns nothing to apply to
    another one; :func:`segment_sparse` combines it with a trained model.

    Parameters
    ----------
    image : ndarray or xarray.DataArray, shape (Z, Y, X)
        Gray values or LAC, any range: mapped to [0, 1] by its 0.5 and 99.5
        percentiles first, the range ``random_walker``'s β is made for.
    labels : ndarray or xarray.DataArray, shape (Z, Y, X)
        Class values ``0 … K−1`` where annotated, ``ignore`` elsewhere.
    n_classes : int, optional
        ``K``; default ``labels.max() + 1`` over the annotated voxels.
    beta : float or "auto"
        Edge penalty. ``"auto"`` picks among ``betas`` the one whose interpolation
        best predicts held-out planes of the annotation itself (3 inner
        :func:`plane_folds`, mean foreground Dice; ties to the one nearest
        skimage's default 130): the annotation validates its own interpolation,
        and nothing outside ``labels`` is looked at. Falls back to 130 where the
        annotation is not plane-wise (no planes found).
    betas : sequence of float
        Candidates for ``"auto"``.
    tol : float
        Tolerance of the conjugate-gradient solver.
    ignore : int
        Label value of unannotated voxels.

    Returns
    -------
    ndarray, float32, shape (K, Z, Y, X)
        Probabilities summing to 1 per voxel; a class without annotated voxels is
        0 everywhere; annotated voxels are one-hot.

    Raises
    ------
    ValueError
        If the shapes differ or nothing is annotated.

    Notes
    -----
    Cost grows with the number of voxels (one sparse linear system per class and,
    for ``"auto"``, ``3·len(betas)`` more): about 1 CPU-second per β and fold for
    60³, minutes for 256³; crop or downsample bigger volumes first.
    """
    img = _values(image).astype(np.float32)
    lab = _values(labels)
    if img.shape != lab.shape:
        raise ValueError(f"image has shape {img.shape}, labels have {lab.shape}")
    annotated = lab != ignore
    if not annotated.any():
        raise ValueError("nothing is annotated: every voxel has the ignore value")
    k = int(lab[annotated].max()) + 1 if n_classes is None else int(n_classes)
    img01 = _unit_range(img)
    if beta == "auto":
        try:
            beta, scores = _choose_beta(img01, lab, k, betas, tol, ignore)
            LOG.info("random-walk β %g chosen on inner plane folds (Dice %s)", beta, scores)
        except ValueError:  # not plane-wise sparse: no inner folds to validate on
            beta = 130.0
    return _walk(img01, lab, k, float(beta), tol, ignore)


def segment_sparse(dataset: xr.Dataset, model=None, *, interpolate: bool = True, select: bool = True,
                   threshold: float = 0.5, beta: float | str = "auto", labels: xr.DataArray | None = None,
                   progress: bool = False) -> xr.Dataset:
    """Segment a sparsely annotated volume: its model, its annotation, or both.

    Probabilities are the model's (:meth:`CascadeModel.predict`), the random-walk
    interpolation of the annotation (:func:`interpolate_annotation`), or the mean
    of the two. The two err differently: the interpolation is exact on and near
    the annotated planes and follows the image's edges between them, but knows
    nothing of what cells look like; the model knows appearance and whole-volume
    context, but draws smoother, less exact boundaries and can extrapolate wrongly
    where no plane crosses a part of the object. Then, per class, only the
    instances the annotation marks are kept (:func:`select_annotated_instances`).

    Parameters
    ----------
    dataset : xarray.Dataset
        ``lac`` and ``labels`` (the sparse annotation), as given to :func:`fit_sparse`.
    model : sxtlab.cascade.CascadeModel, optional
        From :func:`fit_sparse`; without it, the interpolation alone.
    interpolate : bool
        Average the model's probabilities with the annotation's interpolation.
    select : bool
        Keep only the instances the annotation marks; otherwise the arg-max.
    threshold : float
        Foreground probability threshold of the instance selection.
    beta : float or "auto"
        Edge penalty of the interpolation (see :func:`interpolate_annotation`).
    labels : xarray.DataArray, optional
        Annotation to use instead of ``dataset["labels"]`` (an evaluation passes a
        fold's training labels here).
    progress : bool
        Show progress bars.

    Returns
    -------
    xarray.Dataset
        ``lac``, ``labels`` (uint8; classes of the model, or of the task's
        annotation without one) and ``probabilities`` (class, z, y, x); attrs
        ``sparse_probabilities`` (``"model"``, ``"interpolation"`` or
        ``"model+interpolation"``) and ``instance_selection``.

    Raises
    ------
    ValueError
        If neither a model nor ``interpolate`` is given, or the annotation is missing.
    """
    from .volume import label_volume, segmentation

    if model is None and not interpolate:
        raise ValueError("segment_sparse needs a model, interpolate=True, or both")
    ann = labels if labels is not None else dataset.get("labels")
    if ann is None and (select or interpolate):
        raise ValueError("selection and interpolation need the annotation: pass a dataset with 'labels' "
                         "or labels=")
    image = dataset["lac"]
    if model is not None:
        classes = list(model.classes)
        seg = model.predict(image, progress=progress)
        probs = np.asarray(seg["probabilities"].values)
        attrs = dict(seg.attrs)
    else:
        classes = list(class_map(ann.attrs.get("classes", {})).values())
        if not classes:
            raise ValueError("the annotation has no 'classes' attr naming its label values")
        probs, attrs = None, {}
    lab = np.asarray(_task_labels(ann, classes)[0].values) if ann is not None else None
    if interpolate:
        walk = interpolate_annotation(np.asarray(image.values), lab, n_classes=len(classes) + 1, beta=beta)
        probs = walk if probs is None else (probs + walk) / 2
    source = "+".join(n for n, used in (("model", model is not None), ("interpolation", interpolate)) if used)
    if select:
        out = np.zeros(probs.shape[1:], np.uint8)
        # Classes in order; a later class overwrites an earlier one where both keep a voxel.
        for value in range(1, len(classes) + 1):
            out[select_annotated_instances(probs[value], lab, value=value, threshold=threshold)] = value
    else:
        out = probs.argmax(axis=0).astype(np.uint8)
    lac = dataset["lac"]
    prob = xr.DataArray(probs.astype(np.float32), dims=("class", *DIMS),
                        coords={"class": ["background", *classes], **{d: lac[d] for d in DIMS}},
                        name="probabilities", attrs={"long_name": "class probability", "units": "1"})
    labels_out = label_volume(out, lac, {str(i + 1): c for i, c in enumerate(classes)})
    return segmentation(lac, labels_out, prob, **attrs, sparse_probabilities=source,
                        instance_selection=bool(select))
