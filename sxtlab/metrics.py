"""Segmentation quality: Dice overlap and boundary error, with an ignore label.

Voxels whose *true* label is the ignore value (:data:`sxtlab.classes.UNANNOTATED`,
255, unless told otherwise) were never annotated: they count neither as hits nor
as misses, whatever the prediction says there. Counting them as background is the
classic error with sparse annotation (nnU-Net issues #1104, #1821): a prediction
that extends into unannotated space is then punished as false positive.

Dice follows Dice (1945) / Sørensen (1948): ``2·TP / (2·TP + FP + FN)``. Boundary
errors are surface distances in µm (average symmetric surface distance and the
95th-percentile Hausdorff distance), computed with
:func:`scipy.ndimage.distance_transform_edt` and the voxel size as ``sampling``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from .classes import UNANNOTATED, canonical_name, class_map
from .volume import check_same_grid

__all__ = ["dice", "boundary_error", "evaluate", "confusion", "reliability", "expected_calibration_error", "temper",
           "fit_temperature"]


def _arrays(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred), np.asarray(truth)
    if p.shape != t.shape:
        raise ValueError(f"prediction has shape {p.shape}, truth has {t.shape}")
    return p, t


def _label_arrays(pred: xr.DataArray | xr.Dataset, truth: xr.DataArray | xr.Dataset
                  ) -> tuple[xr.DataArray, xr.DataArray]:
    """The label volumes of ``pred`` and ``truth`` (segmentation Datasets give their
    ``labels``), refused unless they lie on the same grid
    (:func:`sxtlab.volume.check_same_grid`)."""
    arrays = []
    for what, v in (("prediction", pred), ("truth", truth)):
        if isinstance(v, xr.Dataset):
            if "labels" not in v:
                raise ValueError(f"the {what} is a Dataset without a 'labels' variable")
            v = v["labels"]
        if not isinstance(v, xr.DataArray):
            raise TypeError(f"the {what} must be a labelled xarray.DataArray (or a segmentation Dataset) whose "
                            f"'classes' attr names its values, got {type(v).__name__}")
        arrays.append(v)
    p, t = arrays
    check_same_grid(t, p, "the predicted labels", "the truth")
    return p, t


def dice(pred, truth, labels: Iterable[int] | None = None, *, ignore: int | None = UNANNOTATED
         ) -> dict[int, float]:
    """Dice coefficient per label value, leaving out voxels whose truth is ``ignore``.

    Parameters
    ----------
    pred, truth : integer arrays of the same shape
        Predicted and true label values (e.g. ``(z, y, x)``).
    labels : iterable of int, optional
        Label values to score; default every value in ``truth`` or ``pred`` except
        0 (background) and ``ignore``.
    ignore : int or None
        True-label value of unannotated voxels (default 255); ``None`` scores all.

    Returns
    -------
    dict
        ``{label: dice}``; NaN where the label is absent from both prediction and
        truth within the annotated voxels (Dice is undefined there, and averaging
        it as 1 or 0 would bias a mean).

    Examples
    --------
    >>> t = np.array([1, 1, 0, 255]); p = np.array([1, 0, 0, 1])
    >>> dice(p, t)
    {1: 0.6666666666666666}
    """
    p, t = _arrays(pred, truth)
    valid = t != ignore if ignore is not None else np.ones(t.shape, bool)
    pv, tv = p[valid], t[valid]
    if labels is None:
        labels = [int(v) for v in np.union1d(np.unique(tv), np.unique(pv)) if v != 0 and v != ignore]
    out: dict[int, float] = {}
    for c in labels:
        pc, tc = pv == c, tv == c
        tp = int(np.count_nonzero(pc & tc))
        denom = int(np.count_nonzero(pc)) + int(np.count_nonzero(tc))
        out[int(c)] = 2.0 * tp / denom if denom else float("nan")
    return out


def _surface(mask: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 6-neighbour in ``outside``.

    The volume's own border is no boundary (the object may continue beyond the
    field), nor is the edge of an unannotated region (``outside`` leaves it out).
    """
    return mask & ndimage.binary_dilation(outside)


def boundary_error(pred, truth, label: int, *, spacing: Sequence[float] | float = 1.0,
                   ignore: int | None = UNANNOTATED) -> dict[str, float]:
    """Surface distances between the predicted and true region of one label.

    Parameters
    ----------
    pred, truth : integer arrays ``(z, y, x)``
        Label volumes on the same grid.
    label : int
        The label value to compare.
    spacing : float or (dz, dy, dx)
        Voxel size in µm (distances come out in µm); 1 gives voxels.
    ignore : int or None
        True-label value of unannotated voxels. Predicted surface voxels lying there
        are left out, and the true region's edge against them is no surface, since
        nobody said where the boundary runs there.

    Returns
    -------
    dict
        ``assd`` (average symmetric surface distance), ``hd95`` (95th percentile of
        the symmetric distances) and ``hausdorff`` (maximum), in the units of
        ``spacing``; NaN when either surface is empty within the annotated voxels.
    """
    p, t = _arrays(pred, truth)
    if p.ndim != 3:
        raise ValueError(f"boundary_error needs 3-D (z, y, x) label volumes, got {p.ndim}-D")
    sampling = np.broadcast_to(np.asarray(spacing, float), (3,))
    valid = t != ignore if ignore is not None else np.ones(t.shape, bool)
    pm, tm = p == label, t == label
    sp = _surface(pm, ~pm)
    st = _surface(tm, ~tm & valid)
    sp_v, st_v = sp & valid, st
    nan = {"assd": float("nan"), "hd95": float("nan"), "hausdorff": float("nan")}
    if not sp_v.any() or not st_v.any():
        return nan
    # Distance from every voxel to the nearest surface voxel of the other region.
    d_to_t = ndimage.distance_transform_edt(~st, sampling=sampling)
    d_to_p = ndimage.distance_transform_edt(~sp, sampling=sampling)
    d = np.concatenate([d_to_t[sp_v], d_to_p[st_v]])
    return {"assd": float(d.mean()), "hd95": float(np.percentile(d, 95)), "hausdorff": float(d.max())}


def evaluate(pred: xr.DataArray | xr.Dataset, truth: xr.DataArray | xr.Dataset, *,
             classes: Mapping | None = None, boundary: bool = False) -> pd.DataFrame:
    """Per-class Dice (and optionally boundary error) of a segmentation against its truth.

    Classes are matched by *name*, so a prediction whose label values differ from the
    truth's (another model's class order) is still scored correctly.

    Parameters
    ----------
    pred : xarray.DataArray or xarray.Dataset
        Predicted label volume with a ``classes`` attr, or a segmentation Dataset
        (its ``labels`` are used).
    truth : xarray.DataArray or xarray.Dataset
        True label volume with a ``classes`` attr, or a segmentation Dataset; value
        255 is unannotated. Codes named in a ``label_sets`` attr
        (:meth:`sxtlab.task.Task.remap`: "cell or mitochondria") are left out for the
        classes of their set and count as "not this class" for the others. On the
        same grid as ``pred`` (dims and, where both have them, coordinates).
    classes : mapping, optional
        ``{value: name}`` of the truth, if its attrs lack it.
    boundary : bool
        Also compute surface distances (µm when the voxel size is known, else voxels).

    Returns
    -------
    pandas.DataFrame
        Indexed by class name, columns ``dice``, ``n_true``, ``n_pred`` (annotated
        voxels) and, with ``boundary``, ``assd``, ``hd95`` and ``hausdorff``.
        Classes of the truth that the prediction does not know get Dice 0 if present.

    Raises
    ------
    ValueError
        If the volumes lie on different grids (shape, dims or coordinates) or the
        truth's classes are not named.
    TypeError
        If a volume is not an xarray object.
    """
    pred, truth = _label_arrays(pred, truth)
    t_classes = class_map(classes if classes is not None else truth.attrs.get("classes", {}))
    p_classes = class_map(pred.attrs.get("classes", {}))
    if not t_classes:
        raise ValueError("the truth has no 'classes' attr naming its label values; pass classes=")
    by_name = {n: v for v, n in p_classes.items()}
    p, t = _arrays(pred.values, truth.values)
    valid = t != UNANNOTATED
    label_sets = {int(code): {canonical_name(n) for n in names}
                  for code, names in truth.attrs.get("label_sets", {}).items()}
    vs = truth.attrs.get("voxel_size_um")
    spacing = vs if vs is not None else 1.0
    rows = []
    for value, name in sorted(t_classes.items()):
        pv = by_name.get(name, -1)
        known = valid & ~np.isin(t, [code for code, names in label_sets.items() if name in names])
        tc, pc = (t == value) & known, (p == pv) & known
        n_t, n_p = int(tc.sum()), int(pc.sum())
        tp = int((tc & pc).sum())
        row = {"class": name, "dice": 2 * tp / (n_t + n_p) if n_t + n_p else float("nan"),
               "n_true": n_t, "n_pred": n_p}
        if boundary:
            # Map both to a common binary encoding so the label values may differ.
            both = np.where(known, tc.astype(np.uint8), np.uint8(UNANNOTATED))
            row.update(boundary_error(pc.astype(np.uint8), both, 1, spacing=spacing))
        rows.append(row)
    return pd.DataFrame(rows).set_index("class")


def confusion(pred: xr.DataArray | xr.Dataset, truth: xr.DataArray | xr.Dataset, *, normalize: bool = False) -> pd.DataFrame:
    """Where each true class's voxels went: a confusion matrix matched by class name.

    Dice says how much of a class was found; this says what the rest was called
    (a dark nucleus called vacuole, say), which is what a retraining can act on.

    Parameters
    ----------
    pred : xarray.DataArray or xarray.Dataset
        Predicted label volume with a ``classes`` attr, or a segmentation Dataset.
    truth : xarray.DataArray or xarray.Dataset
        True label volume with a ``classes`` attr (value 0 is ``background``), or a
        segmentation Dataset; values it does not name (unannotated 255, label-set
        codes) are left out. On the same grid as ``pred`` (dims and coordinates).
    normalize : bool
        Divide each row by its sum: the share of the true class's annotated voxels
        given to each predicted class (rows of absent classes are NaN).

    Returns
    -------
    pandas.DataFrame
        Rows: true classes, columns: predicted classes (each ``background`` first,
        then by label value; a name given to several values once), then ``other``
        for values the prediction's ``classes`` attr does not name. Voxel counts
        (int64) or shares.

    Raises
    ------
    ValueError
        If the volumes lie on different grids (shape, dims or coordinates), a volume
        is not of integers or the truth has no ``classes`` attr.
    TypeError
        If a volume is not an xarray object.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> truth = xr.DataArray(np.array([0, 1, 1, 2, 2, 2]), attrs={"classes": {1: "cell", 2: "nucleus"}})
    >>> pred = xr.DataArray(np.array([0, 1, 2, 2, 2, 1]), attrs={"classes": {1: "cell", 2: "nucleus"}})
    >>> confusion(pred, truth).loc["nucleus"].tolist()
    [0, 1, 2, 0]
    """
    pred, truth = _label_arrays(pred, truth)
    t_classes = class_map(truth.attrs.get("classes", {}))
    if not t_classes:
        raise ValueError("the truth has no 'classes' attr naming its label values")
    p_classes = {0: "background", **class_map(pred.attrs.get("classes", {}))}
    t_classes = {0: "background", **t_classes}
    p, t = _arrays(pred.values, truth.values)
    if p.dtype.kind not in "iu" or t.dtype.kind not in "iu":
        raise ValueError(f"label volumes must hold integers, got {p.dtype} (prediction) and {t.dtype} (truth)")
    columns = list(dict.fromkeys(p_classes[v] for v in sorted(p_classes, key=lambda v: (v != 0, v)))) + ["other"]
    rows = list(dict.fromkeys(t_classes[v] for v in sorted(t_classes, key=lambda v: (v != 0, v))))
    tc = _codes(t, {v: rows.index(n) for v, n in t_classes.items()}, missing=-1)
    pc = _codes(p, {v: columns.index(n) for v, n in p_classes.items()}, missing=len(columns) - 1)
    keep = tc >= 0
    # one bincount over (truth row, prediction column) codes rather than pandas.crosstab:
    # it keeps the rows and columns of classes absent from both volumes (crosstab drops
    # them), and is no slower (0.3 s against 0.4 s for 2 M voxels)
    counts = np.bincount(tc[keep] * len(columns) + pc[keep], minlength=len(rows) * len(columns))
    table = pd.DataFrame(counts.reshape(len(rows), len(columns)), index=pd.Index(rows, name="truth"),
                         columns=pd.Index(columns, name="prediction"))
    if normalize:
        table = table.div(table.sum(axis=1).replace(0, np.nan), axis=0)
    return table


def _codes(values: np.ndarray, code_of: Mapping[int, int], missing: int) -> np.ndarray:
    """Flat int64 codes of integer label ``values``; values not in ``code_of`` get ``missing``."""
    flat = values.ravel()
    info = np.iinfo(flat.dtype)
    # only the keys the volume's dtype can hold, in that dtype, so that no comparison
    # goes through float64 (uint64 values above 2**53 would collide)
    known = sorted(v for v in code_of if info.min <= v <= info.max)
    out = np.full(flat.shape, missing, np.int64)
    if not known:
        return out
    keys = np.array(known, dtype=flat.dtype)
    at = np.minimum(np.searchsorted(keys, flat), len(keys) - 1)
    hit = keys[at] == flat
    out[hit] = np.array([code_of[v] for v in known], np.int64)[at[hit]]
    return out


def reliability(probabilities, truth, *, n_bins: int = 15, ignore: int | None = UNANNOTATED) -> pd.DataFrame:
    """Reliability table of predicted class probabilities against the truth.

    Each annotated voxel falls into the bin of its top-label confidence (the largest
    class probability); a well calibrated model is right in a share of the voxels of
    a bin equal to their mean confidence (Guo et al. 2017, "On calibration of modern
    neural networks", ICML, §2).

    Parameters
    ----------
    probabilities : array (K, z, y, x) or xarray.DataArray with a ``class`` dim first
        Class probabilities, summing to 1 over the first axis; class ``k`` is label
        value ``k`` of ``truth``.
    truth : integer array (z, y, x)
        True label values 0 … K−1; ``ignore`` (255) is left out.
    n_bins : int
        Equal-width confidence bins over [0, 1].
    ignore : int or None
        True-label value of unannotated voxels.

    Returns
    -------
    pandas.DataFrame
        One row per non-empty bin: ``bin_lo``, ``bin_hi``, ``confidence`` (mean),
        ``accuracy`` (share of voxels whose top label is the truth), ``voxels``.

    Raises
    ------
    ValueError
        If the shapes disagree or ``n_bins`` < 1.

    Examples
    --------
    >>> p = np.array([[0.9, 0.2], [0.1, 0.8]])[:, :, None, None]  # (K=2, 2, 1, 1)
    >>> reliability(p, np.array([0, 0])[:, None, None], n_bins=2)[["confidence", "accuracy"]].round(3).values.tolist()
    [[0.85, 0.5]]
    """
    p = np.asarray(probabilities, dtype=np.float32)
    t = np.asarray(truth)
    if p.shape[1:] != t.shape:
        raise ValueError(f"probabilities have shape {p.shape}, expected (K, *{t.shape}) for truth {t.shape}")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    keep = np.ones(t.shape, bool) if ignore is None else t != ignore
    conf = p.max(axis=0)[keep].astype(np.float64)
    right = (p.argmax(axis=0)[keep] == t[keep])
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, int(n_bins) - 1)
    voxels = np.bincount(which, minlength=n_bins)
    conf_sum = np.bincount(which, weights=conf, minlength=n_bins)
    right_sum = np.bincount(which, weights=right, minlength=n_bins)
    used = voxels > 0
    return pd.DataFrame({"bin_lo": edges[:-1][used], "bin_hi": edges[1:][used],
                         "confidence": conf_sum[used] / voxels[used], "accuracy": right_sum[used] / voxels[used],
                         "voxels": voxels[used]})


def expected_calibration_error(probabilities, truth, *, n_bins: int = 15,
                               ignore: int | None = UNANNOTATED) -> float:
    """Expected calibration error: ``Σ_b (n_b / N) · |accuracy_b − confidence_b|``
    over the bins of :func:`reliability` (Guo et al. 2017, eq. 3); 0 is perfect.

    Parameters and errors as :func:`reliability`; NaN when no voxel is annotated.

    Examples
    --------
    >>> p = np.array([[0.9, 0.2], [0.1, 0.8]])[:, :, None, None]
    >>> round(expected_calibration_error(p, np.array([0, 0])[:, None, None], n_bins=2), 3)
    0.35
    """
    table = reliability(probabilities, truth, n_bins=n_bins, ignore=ignore)
    n = table["voxels"].sum()
    if n == 0:
        return float("nan")
    return float((table["voxels"] * (table["accuracy"] - table["confidence"]).abs()).sum() / n)


#: Temperatures :func:`fit_temperature` searches (a model whose best temperature lies
#: outside is broken, not over- or under-confident).
TEMPERATURE_RANGE = (0.25, 10.0)


def check_temperature(temperature: float) -> float:
    """``temperature`` as a float; ``ValueError`` unless it is a positive finite number."""
    t = float(temperature)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return t


def temper(probabilities: np.ndarray, temperature: float, *, axis: int = 0) -> np.ndarray:
    """Probabilities of logits divided by ``temperature`` (temperature scaling).

    ``softmax(z / T)`` equals ``p ** (1/T)`` renormalised, for ``p = softmax(z)``: the
    normaliser of the logits cancels, so tempering needs only the probabilities
    (Guo et al. 2017, "On calibration of modern neural networks", ICML, §4.2).
    ``T > 1`` softens over-confident probabilities; every voxel keeps the order of
    its classes, so the arg-max labels never change.

    Parameters
    ----------
    probabilities : ndarray, float, shape (K, ...)
        Class probabilities summing to 1 along ``axis``.
    temperature : float
        ``T > 0``; 1 returns ``probabilities`` itself.
    axis : int
        The class axis.

    Returns
    -------
    ndarray, float32, same shape

    Raises
    ------
    ValueError
        If ``temperature`` is not a positive finite number.

    Examples
    --------
    >>> temper(np.array([0.9, 0.1]), 2.0).round(3)
    array([0.75, 0.25], dtype=float32)
    """
    t = check_temperature(temperature)
    if t == 1.0:
        return probabilities
    # in log space: p ** (1/T) underflows for small p and large 1/T
    logp = np.log(np.maximum(np.asarray(probabilities, np.float32), np.float32(1e-30)))
    logp /= np.float32(t)
    logp -= logp.max(axis=axis, keepdims=True)
    np.exp(logp, out=logp)
    logp /= logp.sum(axis=axis, keepdims=True)
    return logp


def fit_temperature(probabilities, truth, *, ignore: int | None = UNANNOTATED, max_voxels: int = 2_000_000,
                    seed: int = 0) -> float:
    """The temperature that minimises the negative log-likelihood of the truth.

    Temperature scaling (Guo et al. 2017, §4.2): one scalar fitted on held-out
    cells, never on the training cells, minimising the mean ``−log p_T(truth)`` over
    the annotated voxels (a bounded search over :data:`TEMPERATURE_RANGE`, in
    ``log T``).

    Parameters
    ----------
    probabilities : array (K, z, y, x), or a list of them
        Class probabilities (class ``k`` is label value ``k``) of one or more cells.
    truth : int array (z, y, x), or a list of them (same length)
        True labels; voxels equal to ``ignore`` do not count.
    max_voxels : int
        Annotated voxels used at most (a random subset, drawn with ``seed``, above it).

    Returns
    -------
    float
        The fitted temperature (> 1: the model was over-confident).

    Raises
    ------
    ValueError
        If no voxel is annotated, or shapes differ.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.integers(0, 2, 10_000)
    >>> right = rng.random(10_000) < 0.7        # right 70 % of the time, 95 % sure
    >>> label = np.where(right, truth, 1 - truth)
    >>> p = np.stack([np.where(label == 0, 0.95, 0.05), np.where(label == 1, 0.95, 0.05)])
    >>> t = fit_temperature(p, truth)
    >>> round(float(temper(p, t).max(0).mean()), 2)   # tempered confidence = accuracy
    0.7
    """
    probs = probabilities if isinstance(probabilities, (list, tuple)) else [probabilities]
    truths = truth if isinstance(truth, (list, tuple)) else [truth]
    if len(probs) != len(truths):
        raise ValueError(f"{len(probs)} probability arrays but {len(truths)} truths")
    logs, rows = [], []
    for p, t in zip(probs, truths):
        p, t = np.asarray(p), np.asarray(t)
        if p.shape[1:] != t.shape:
            raise ValueError(f"probabilities of shape {p.shape} do not match truth of shape {t.shape}")
        keep = np.ones(t.shape, bool) if ignore is None else t != ignore
        logs.append(np.log(np.maximum(p[:, keep].astype(np.float64), 1e-30)))
        rows.append(t[keep].astype(np.int64))
    logp, label = np.concatenate(logs, axis=1), np.concatenate(rows)
    if label.size == 0:
        raise ValueError("no annotated voxel to fit a temperature on")
    if label.size > max_voxels:
        pick = np.random.default_rng(seed).choice(label.size, max_voxels, replace=False)
        logp, label = logp[:, pick], label[pick]
    true_logp = logp[label, np.arange(label.size)]

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        top = z.max(axis=0)
        return float(np.mean(top + np.log(np.exp(z - top).sum(axis=0)) - true_logp / np.exp(log_t)))

    from scipy.optimize import minimize_scalar

    lo, hi = np.log(TEMPERATURE_RANGE)
    return float(np.exp(minimize_scalar(nll, bounds=(lo, hi), method="bounded",
                                        options={"xatol": 1e-3}).x))
