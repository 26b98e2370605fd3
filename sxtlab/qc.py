"""Quality control of a segmentation from its class probabilities: confidence and volume intervals.

A model's probabilities say where it hesitates. Per organelle instance (numbered
as :func:`sxtlab.measure.instances` numbers them) and per class of a cell, this
module turns them into

=========================  =========================================================
``volume_expected_um3``    Σp over the instance's neighbourhood × voxel volume: the
                           volume the probabilities expect
``volume_low_um3``         voxels with p ≥ ``high`` (0.95): the confident core
``volume_high_um3``        voxels with p ≥ ``low`` (0.05): the plausible extent; the
                           interval between them is the volume's error bar
``volume_sd_um3``          √Σp(1−p) × voxel volume: the spread if voxels erred
                           independently (they do not; an underestimate)
``entropy_mean``           mean normalised entropy −Σ p log p / log K of the
                           instance's voxels, 0 (certain) to 1 (uniform)
``uncertain_fraction``     share of the plausible extent with ``low`` ≤ p < ``high``
=========================  =========================================================

where p is the probability of the instance's class *region* (the class and its
descendants, as measurements nest them) and the neighbourhood is the instance
grown by ``margin`` voxels, less other instances of its class.

How well the interval covers the truth is measured, not assumed (:func:`coverage`;
the thresholds' note, :data:`LOW`, and ``benchmarks/bench_study.py``): on 24 phantom
cells segmented by the shipped model it held the true volume of every whole cell and
vacuole, 92 % of nuclei, 96 % of lipid bodies and 49 % of mitochondria
(``benchmarks/results/study.md``, 2026-12-05 22:40). A mitochondrion's interval misses
where the model splits the tube into pieces (each piece is matched to the whole tube,
whose volume its own interval cannot hold: ``true_instance`` in :func:`coverage` groups
them) and where it misses part of a tube and is sure of what it draws.

:func:`review` ranks cells and objects by how likely they are wrong, for a person
to look at first: cells by their out-of-distribution score
(:func:`sxtlab.domain.ood_scores`) and uncertain share, objects by their
uncertain fraction.

Examples
--------
>>> import numpy as np, sxtlab
>>> lab = np.zeros((12, 12, 12), np.uint8); lab[2:10, 2:10, 2:10] = 1
>>> img = sxtlab.volume(np.zeros(lab.shape, np.float32), 0.1)
>>> p = np.stack([lab == 0, lab == 1]).astype(np.float32)
>>> import xarray as xr
>>> probs = xr.DataArray(p, dims=("class", "z", "y", "x"), coords={"class": ["background", "cell"], **{d: img[d] for d in "zyx"}})
>>> seg = sxtlab.segmentation(img, sxtlab.label_volume(lab, img, {1: "cell"}), probs)
>>> t = instance_uncertainty(seg)
>>> float(t["volume_expected_um3"].iloc[0].round(3)), round(float(t["entropy_mean"].iloc[0]), 6)
(0.512, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from .classes import descendants
from .domain import OOD_FLAG
from .errors import FormatError
from .measure import _prepare

__all__ = ["LOW", "HIGH", "CONFIDENT", "UNCERTAIN_FLAG", "CELL_UNCERTAIN_FLAG", "instance_uncertainty", "class_confidence",
           "review", "coverage"]

#: Probability thresholds of the volume interval: the plausible extent (p ≥ LOW) and
#: the confident core (p ≥ HIGH). Chosen by measured coverage, which the interval does
#: not promise: on 7 phantom cells (48³ and 64³ at 50 nm, simulated acquisition; the
#: default model of 2026-12-02) it held the true volume of 86 % of 29 lipid bodies, 89 % of 9
#: mitochondria and all 7 cells (objects the model made up left out), where 0.25-0.75
#: held 52 %, 56 % and all 7; on 4 other 48³ cells (benchmarks/results/study_quick.md)
#: 57 % of 23 lipid bodies, 2 of 3 mitochondria and all 4 cells. Where the model's
#: probabilities are overconfident (its model card) the interval is too narrow.
LOW = 0.05
HIGH = 0.95
#: A voxel is uncertain (:func:`class_confidence`) where its largest class probability
#: is below this.
CONFIDENT = 0.75
#: An object whose uncertain fraction reaches this is flagged for review. Measured on 4
#: phantom cells (48³, the shipped model; benchmarks/results/study_quick.md): objects
#: the model made up had a median uncertain fraction of 0.89, real ones 0.44; 0.6
#: flagged 9 of the 10 made-up objects and 2 of the 30 real ones.
UNCERTAIN_FLAG = 0.6
#: A cell whose share of uncertain voxels (largest class probability < CONFIDENT) in its
#: labelled region reaches this is flagged for review.
CELL_UNCERTAIN_FLAG = 0.25


def _probabilities(seg: xr.Dataset) -> xr.DataArray:
    if "probabilities" not in seg:
        raise FormatError(f"the segmentation holds no class probabilities (it holds "
                          f"{sorted(map(str, seg.data_vars))}); QC needs a model's output with probabilities")
    return seg["probabilities"]


def _entropy(p: np.ndarray) -> np.ndarray:
    """Normalised entropy over axis 0 (K classes), 0 … 1."""
    k = p.shape[0]
    q = np.clip(p, 1e-12, 1.0)
    return (-(q * np.log(q)).sum(axis=0) / math.log(k)).astype(np.float32)


def _region_probability(p: np.ndarray, names: list[str], name: str) -> np.ndarray:
    idx = [i for i, n in enumerate(names) if n in descendants(name)]
    return p[idx].sum(axis=0)


def instance_uncertainty(seg: xr.Dataset, *, low: float = LOW, high: float = HIGH, margin: int = 2,
                         connectivity: int = 1, class_names: Iterable[str] | None = None,
                         cell_id: str | None = None) -> pd.DataFrame:
    """Volume intervals and confidence of every organelle instance, from the probabilities.

    Parameters
    ----------
    seg : xarray.Dataset
        A model's segmentation: ``labels`` (z, y, x) with class names and
        ``probabilities`` (class, z, y, x) whose ``class`` coordinate names the
        classes (``background`` first), as :meth:`sxtlab.cascade.CascadeModel.predict`
        writes. The voxel size must be known.
    low, high : float
        Probability thresholds of the interval (0 < low < high < 1).
    margin : int
        Voxels the neighbourhood reaches beyond the instance (where the plausible
        extent may lie).
    connectivity : {1, 2, 3}
        As :func:`sxtlab.measure.instances` (the instance numbers match its rows).
    class_names : iterable of str, optional
        Classes to report; default every class that has probabilities.
    cell_id : str, optional
        As :func:`sxtlab.measure.instances`.

    Returns
    -------
    pandas.DataFrame
        One row per instance: ``cell_id``, ``class``, ``instance``, ``voxel_count``,
        ``volume_um3`` (the labels'), ``volume_expected_um3``, ``volume_low_um3``,
        ``volume_high_um3``, ``volume_sd_um3``, ``entropy_mean``,
        ``uncertain_fraction`` (see the module notes). ``attrs`` record ``low``,
        ``high`` and ``margin``.

    Raises
    ------
    sxtlab.FormatError
        If the segmentation has no probabilities or they do not name its classes.
    sxtlab.VoxelSizeUnknownError
        If the voxel size is unknown.
    """
    if not 0 < low < high < 1:
        raise ValueError(f"need 0 < low < high < 1, got low={low}, high={high}")
    probs = _probabilities(seg)
    names = [str(c) for c in probs["class"].values]
    vol = _prepare(seg, intensity=None, connectivity=connectivity, cell_id=cell_id)
    vv = vol.voxel_volume
    missing = [n for n in vol.select(class_names) if n not in names and n != "background"]
    if missing and class_names is not None:
        raise FormatError(f"the probabilities name classes {names}, not {missing}")
    wanted = [n for n in vol.select(class_names) if n in names and n != "background"]
    structure = ndimage.generate_binary_structure(3, 1)
    rows = []
    shape = vol.labels.shape
    for name in wanted:
        inst = vol.instances(name)
        if inst.n == 0:
            continue
        objects = ndimage.find_objects(inst.labels)
        for k, local in enumerate(objects, start=1):
            # the instance's box in the volume, grown by the margin
            box = tuple(slice(max(0, w.start + s.start - margin), min(n, w.start + s.stop + margin))
                        for w, s, n in zip(inst.window, local, shape))
            ids = np.zeros([b.stop - b.start for b in box], np.int32)
            # the instance labels on the grown box (instances live on inst.window)
            src = tuple(slice(max(b.start, w.start), min(b.stop, w.stop)) for b, w in zip(box, inst.window))
            ids[tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(src, box))] = \
                inst.labels[tuple(slice(s.start - w.start, s.stop - w.start) for s, w in zip(src, inst.window))]
            own = ids == k
            near = ndimage.binary_dilation(own, structure, iterations=margin) & ((ids == 0) | own)
            p_all = np.asarray(probs.data[(slice(None), *box)], np.float32)
            p = _region_probability(p_all, names, name)[near]
            extent = p >= low
            uncertain = extent & (p < high)
            n_extent = int(extent.sum())
            rows.append({
                "cell_id": vol.cell_id, "class": name, "instance": k, "voxel_count": int(own.sum()),
                "volume_um3": float(own.sum() * vv),
                "volume_expected_um3": float(p.sum(dtype=np.float64) * vv),
                "volume_low_um3": float((p >= high).sum() * vv),
                "volume_high_um3": float(n_extent * vv),
                "volume_sd_um3": float(math.sqrt(float((p * (1 - p)).sum(dtype=np.float64))) * vv),
                "entropy_mean": float(_entropy(p_all[:, own]).mean()),
                "uncertain_fraction": float(uncertain.sum() / n_extent) if n_extent else 1.0,
            })
    columns = ["cell_id", "class", "instance", "voxel_count", "volume_um3", "volume_expected_um3",
               "volume_low_um3", "volume_high_um3", "volume_sd_um3", "entropy_mean", "uncertain_fraction"]
    out = pd.DataFrame(rows, columns=columns)
    out.attrs.update(low=low, high=high, margin=margin)
    return out


def class_confidence(seg: xr.Dataset, *, high: float = CONFIDENT, cell_id: str | None = None) -> pd.DataFrame:
    """Confidence of each class of a segmentation, and of the whole labelled region.

    Parameters
    ----------
    seg : xarray.Dataset
        A model's segmentation with ``labels`` and ``probabilities``.
    high : float
        A voxel is uncertain where its largest class probability is below this.
    cell_id : str, optional
        Written in the ``cell_id`` column (default the Dataset's attr, else "0").

    Returns
    -------
    pandas.DataFrame
        One row per class (voxels labelled with it, exclusive) and a row
        ``class="all"`` for every labelled (non-background) voxel: ``cell_id``,
        ``class``, ``voxel_count``, ``entropy_mean`` (normalised, 0–1),
        ``uncertain_voxel_fraction``.
    """
    probs = _probabilities(seg)
    labels = np.asarray(seg["labels"].values)
    classes = {int(k): v for k, v in seg["labels"].attrs.get("classes", {}).items()}
    if cell_id is None:
        cell_id = str(seg.attrs.get("cell_id", seg["labels"].attrs.get("cell_id", "0")))
    values = sorted(classes)
    size = max(values, default=0) + 2  # one bin per label value, and one for "all"
    count, entropy_sum, unsure_sum = np.zeros(size), np.zeros(size), np.zeros(size)
    # slab by slab: the probabilities of a large volume (K × its voxels) need not fit in memory
    step = max(1, int(2 ** 24 // max(1, labels[0].size * probs.shape[0])))
    for z in range(0, labels.shape[0], step):
        p = np.asarray(probs.data[:, z:z + step], np.float32)
        lab = labels[z:z + step]
        h = _entropy(p).ravel()
        u = (p.max(axis=0) < high).ravel()
        bins = np.where(np.isin(lab, values), lab, size - 1).ravel().astype(np.int64)
        # background (0) and unnamed values fall in the last bin, which is not reported
        count += np.bincount(bins, minlength=size)
        entropy_sum += np.bincount(bins, h, minlength=size)
        unsure_sum += np.bincount(bins, u, minlength=size)
    rows = []
    for value, name in sorted(classes.items()):
        n = count[value]
        rows.append({"cell_id": cell_id, "class": name, "voxel_count": int(n),
                     "entropy_mean": float(entropy_sum[value] / n) if n else math.nan,
                     "uncertain_voxel_fraction": float(unsure_sum[value] / n) if n else math.nan})
    fg = [v for v in values if v > 0]
    n = count[fg].sum()
    rows.append({"cell_id": cell_id, "class": "all", "voxel_count": int(n),
                 "entropy_mean": float(entropy_sum[fg].sum() / n) if n else math.nan,
                 "uncertain_voxel_fraction": float(unsure_sum[fg].sum() / n) if n else math.nan})
    return pd.DataFrame(rows)


def review(cells: pd.DataFrame, objects: pd.DataFrame | None = None) -> pd.DataFrame:
    """Cells and objects in the order a person should check them: most likely wrong first.

    Parameters
    ----------
    cells : pandas.DataFrame
        One row per cell with ``cell_id``, ``ood_score`` (:func:`sxtlab.domain.ood_scores`),
        ``ood_reasons`` and ``uncertain_voxel_fraction`` (:func:`class_confidence`,
        class ``all``).
    objects : pandas.DataFrame, optional
        :func:`instance_uncertainty` rows of the cells (``uncertain_fraction``).

    Returns
    -------
    pandas.DataFrame
        Columns ``review_score``, ``flagged`` (``review_score >= 1``), ``level``
        (``"cell"`` or ``"object"``), ``cell_id``, ``class``, ``instance`` (objects),
        ``reason``: flagged cells first, then flagged objects, then the rest, each
        by ``review_score`` (descending). A cell's score is the
        larger of ``ood_score / OOD_FLAG`` and ``uncertain_voxel_fraction /
        CELL_UNCERTAIN_FLAG``; an object's ``uncertain_fraction / UNCERTAIN_FLAG``;
        so 1 is the flag threshold of each.
    """
    ood = cells["ood_score"].astype(float).fillna(0.0) / OOD_FLAG
    unsure = cells["uncertain_voxel_fraction"].astype(float).fillna(0.0) / CELL_UNCERTAIN_FLAG
    reasons = []
    for o, u, why, frac in zip(ood, unsure, cells.get("ood_reasons", pd.Series([""] * len(cells))),
                               cells["uncertain_voxel_fraction"]):
        parts = []
        if o >= 1:
            parts.append(f"unlike the training data: {why}")
        if u >= 1:
            parts.append(f"{frac:.0%} of the labelled voxels uncertain")
        reasons.append("; ".join(parts))
    frames = [pd.DataFrame({"review_score": np.maximum(ood, unsure).to_numpy(), "level": "cell",
                            "cell_id": cells["cell_id"].astype(str).to_numpy(), "class": "", "instance": 0,
                            "reason": reasons})]
    if objects is not None and len(objects):
        score = objects["uncertain_fraction"].astype(float) / UNCERTAIN_FLAG
        reason = [f"{f:.0%} of its plausible volume uncertain ({lo:.3g}-{hi:.3g} µm³)" if s >= 1 else ""
                  for s, f, lo, hi in zip(score, objects["uncertain_fraction"], objects["volume_low_um3"],
                                          objects["volume_high_um3"])]
        frames.append(pd.DataFrame({"review_score": score.to_numpy(), "level": "object",
                                    "cell_id": objects["cell_id"].astype(str).to_numpy(),
                                    "class": objects["class"].to_numpy(),
                                    "instance": objects["instance"].to_numpy(), "reason": reason}))
    out = pd.concat(frames, ignore_index=True)
    out.insert(1, "flagged", out["review_score"] >= 1)
    # Flagged cells first: a cell unlike the training data or uncertain throughout makes
    # every object in it suspect; then flagged objects; then the rest, each by score.
    rank = np.where(out["flagged"], np.where(out["level"] == "cell", 0, 1), 2)
    out = out.assign(_rank=rank).sort_values(["_rank", "review_score"], ascending=[True, False], kind="stable")
    return out.drop(columns="_rank").reset_index(drop=True)


def coverage(uncertainty: pd.DataFrame, seg: xr.Dataset, truth: xr.DataArray, *,
             connectivity: int = 1) -> pd.DataFrame:
    """Whether each instance's volume interval holds the volume of the true object it found.

    Each predicted instance is matched to the true instance of its class that it
    overlaps most (none: a false object, true volume 0); the interval
    ``[volume_low_um3, volume_high_um3]`` covers the truth when it holds that
    object's true volume.

    Parameters
    ----------
    uncertainty : pandas.DataFrame
        :func:`instance_uncertainty` of ``seg``.
    seg : xarray.Dataset
        The segmentation it was computed from.
    truth : xarray.DataArray
        True labels of the same shape (taken voxel by voxel), class names in
        ``attrs["classes"]`` (a phantom's ``labels``).

    Returns
    -------
    pandas.DataFrame
        ``uncertainty`` with ``true_instance`` (the matched true object's number as
        :func:`sxtlab.measure.instances` numbers the truth's; 0 for a false object),
        ``true_volume_um3`` and ``covered`` added; the share of ``covered`` is the
        interval's measured coverage. Where the model splits one true object into
        pieces, each piece is matched to the whole object and its interval cannot
        hold it: group by ``true_instance`` to tell a split from a wrong outline.
    """
    from .volume import segmentation

    if tuple(truth.shape) != tuple(seg["labels"].shape):
        raise FormatError(f"the truth's shape {tuple(truth.shape)} differs from the segmentation's "
                          f"{tuple(seg['labels'].shape)}")
    # voxel by voxel: a file's origin may differ from the phantom's (MRC keeps none)
    truth = seg["labels"].copy(data=np.asarray(truth.values)).assign_attrs(classes=truth.attrs["classes"])
    pred = _prepare(seg, intensity=None, connectivity=connectivity)
    true = _prepare(segmentation(seg["lac"], truth), intensity=None, connectivity=connectivity)
    vv = pred.voxel_volume
    matched, volumes = [], []
    for row in uncertainty.itertuples(index=False):
        p, t = pred.instances(row[1]), true.instances(row[1])
        if p.n == 0 or t.n == 0:
            matched.append(0)
            volumes.append(0.0)
            continue
        ids = np.zeros(pred.labels.shape, np.int32)
        ids[t.window] = t.labels
        mine = np.zeros(pred.labels.shape, bool)
        mine[p.window] = p.labels == row[2]
        overlap = np.bincount(ids[mine], minlength=t.n + 1)
        overlap[0] = 0
        k = int(overlap.argmax()) if overlap.any() else 0
        matched.append(k)
        volumes.append(float((t.labels == k).sum() * vv) if k else 0.0)
    out = uncertainty.copy()
    out["true_instance"] = matched
    out["true_volume_um3"] = volumes
    out["covered"] = (out["true_volume_um3"] >= out["volume_low_um3"]) & (out["true_volume_um3"] <= out["volume_high_um3"])
    return out
