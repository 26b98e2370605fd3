"""How unlike a model's training data a volume is: input statistics and an out-of-distribution score.

A model segments well only the kind of volume it was trained on. Before its
answer is trusted, compare a few statistics of the input with those of the
training volumes:

==================  ==============================================================
``voxel_size_um``   geometric mean of dz, dy, dx (µm); a model resamples other
                    voxel sizes, but organelles then span other numbers of voxels
                    than it learnt, and far off (10 nm against 50 nm) it fails
``lac_p01_per_um``  1st, 50th and 95th percentile of the values (µm⁻¹ for a model
``lac_p50_per_um``  that takes LAC; gray values for one that takes gray): the LAC
``lac_p95_per_um``  histogram's location and extent. Not the 99th: in a field a
                    cell fills by a third, 8 % of lipid in the cell moves it
                    beyond the shipped model's training range, and a study must
                    not flag the biology it is meant to measure
``noise_per_um``    the noise level: the robust standard deviation (MAD × 1.4826)
                    of the difference of neighbouring voxels along x, over √2
==================  ==============================================================

:func:`input_statistics` measures a volume; :func:`reference_range` summarises
the training volumes (``sxtlab.train.train_cascade`` records it in the model as
``model.info["input_statistics"]``); :func:`ood_scores` says how far outside that
range a volume lies, feature by feature, in units of the training cells' spread.

Models trained before the range was recorded: :func:`model_reference` falls back
to what every model records, the voxel size and the intensity normalisation (the
mean and standard deviation of the training cells' foreground values), which
bound the median only. The shipped ``default`` model carries the full range
(computed from its recorded training cells by ``scripts/input_statistics.py``).

This module depends on NumPy and xarray only (it sits with :mod:`sxtlab.volume`),
so that the trainer can record statistics and the study can score volumes.

Examples
--------
>>> import numpy as np, sxtlab
>>> rng = np.random.default_rng(0)
>>> lac = sxtlab.volume(rng.normal(0.3, 0.05, (32, 32, 32)).astype(np.float32), 0.05)
>>> stats = input_statistics(lac)
>>> round(stats["noise_per_um"], 2), round(stats["lac_p50_per_um"], 2)
(0.05, 0.3)
>>> ref = reference_range([stats, {**stats, "noise_per_um": 0.06}])
>>> ood_scores({**stats, "voxel_size_um": 0.01}, ref)["ood_score"] > 5
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["FEATURES", "OOD_FLAG", "input_statistics", "reference_range", "model_reference", "ood_scores"]

#: Statistics of :func:`input_statistics` that are scored, in report order.
FEATURES = ("voxel_size_um", "lac_p01_per_um", "lac_p50_per_um", "lac_p95_per_um", "noise_per_um")
#: ``ood_score`` above which a volume is flagged (outside the training range by more
#: than twice the training cells' spread in some statistic).
OOD_FLAG = 2.0
#: Voxels sampled for the statistics (a regular stride over larger volumes).
_SAMPLE_VOXELS = 4_000_000
#: A voxel size within 10 % of the training range counts as inside; beyond, each
#: factor of 1.25 is one unit of score (10 nm against 50 nm scores 6.8).
_VOXEL_TOLERANCE = math.log(1.1)
_VOXEL_UNIT = math.log(1.25)
#: Smallest spread (relative to the range's scale) used as the unit of score, so that a
#: range from few training cells (or one) does not make every small departure huge.
_MIN_SPREAD = {"lac": 0.02, "noise": 0.1}


def _strided(data: np.ndarray) -> np.ndarray:
    step = max(1, int(math.ceil((data.size / _SAMPLE_VOXELS) ** (1 / 3))))
    return data[::step, ::step, ::step] if step > 1 else data


def input_statistics(volume: xr.DataArray | np.ndarray, voxel_size: Sequence[float] | float | None = None
                     ) -> dict[str, float]:
    """The statistics of one volume that :func:`ood_scores` compares.

    Parameters
    ----------
    volume : xarray.DataArray or ndarray, shape (z, y, x)
        Values in the units the model takes (LAC in µm⁻¹, or gray); dask-backed
        volumes are sampled with a regular stride (about 4 million voxels).
    voxel_size : float or (dz, dy, dx), optional
        µm; default the DataArray's ``voxel_size_um`` attr (NaN if unknown).

    Returns
    -------
    dict
        The :data:`FEATURES`, floats (the ``_per_um`` names hold gray values for
        gray input).

    Raises
    ------
    ValueError
        If the volume is not 3-D or holds no finite value.
    """
    if voxel_size is None and isinstance(volume, xr.DataArray):
        voxel_size = volume.attrs.get("voxel_size_um")
    data = volume.data if isinstance(volume, xr.DataArray) else volume
    if getattr(data, "ndim", 0) != 3:
        raise ValueError(f"input_statistics expects a 3-D volume (z, y, x), got shape {getattr(data, 'shape', '?')}")
    sample = np.asarray(_strided(data), np.float64)  # dask: only the strided voxels are read
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        raise ValueError("input_statistics: the volume holds no finite value")
    p01, p50, p95 = np.percentile(finite, [1, 50, 95])
    # Noise: neighbouring voxels differ by noise·√2 where the signal is smooth, which is
    # most of a cell and its medium; the median absolute deviation ignores the edges.
    diff = np.diff(sample, axis=2)
    diff = diff[np.isfinite(diff)]
    noise = 1.4826 * float(np.median(np.abs(diff - np.median(diff)))) / math.sqrt(2) if diff.size else math.nan
    if voxel_size is None:
        vs = math.nan
    else:
        v = np.broadcast_to(np.asarray(voxel_size, float), (3,))
        vs = float(np.exp(np.log(v).mean()))
    return {"voxel_size_um": vs, "lac_p01_per_um": float(p01), "lac_p50_per_um": float(p50),
            "lac_p95_per_um": float(p95), "noise_per_um": noise}


def reference_range(statistics: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Summarise the statistics of training volumes: min, max, mean, std per feature.

    Parameters
    ----------
    statistics : iterable of dict
        :func:`input_statistics` of each training volume.

    Returns
    -------
    dict
        ``{feature: {"min", "max", "mean", "std", "n"}}`` (JSON-serialisable; std
        with ddof 0), the form stored in ``model.info["input_statistics"]``.
    """
    rows = list(statistics)
    if not rows:
        raise ValueError("reference_range needs the statistics of at least one volume")
    out: dict[str, dict[str, float]] = {}
    for f in FEATURES:
        x = np.array([r.get(f, math.nan) for r in rows], float)
        x = x[np.isfinite(x)]
        if x.size:
            out[f] = {"min": float(x.min()), "max": float(x.max()), "mean": float(x.mean()),
                      "std": float(x.std()), "n": int(x.size)}
    return out


def model_reference(model: Any) -> tuple[dict[str, dict[str, float]], str]:
    """The training range of a model: recorded, or what its normalisation implies.

    Parameters
    ----------
    model : sxtlab.cascade.CascadeModel
        Any object with ``info`` (dict), ``voxel_size`` and ``normalisation``.

    Returns
    -------
    reference : dict
        As :func:`reference_range`.
    source : str
        ``"recorded"`` (``model.info["input_statistics"]``) or ``"normalisation"``:
        the voxel size and a median within mean ± 2 std of the training cells'
        foreground values (their normalisation); the noise and the tails are then
        not scored.
    """
    recorded = (getattr(model, "info", None) or {}).get("input_statistics")
    if isinstance(recorded, Mapping) and recorded:
        return {k: dict(v) for k, v in recorded.items() if k in FEATURES}, "recorded"
    ref: dict[str, dict[str, float]] = {}
    if getattr(model, "voxel_size", None) is not None:
        vs = float(np.exp(np.log(np.asarray(model.voxel_size, float)).mean()))
        ref["voxel_size_um"] = {"min": vs, "max": vs, "mean": vs, "std": 0.0, "n": 1}
    norm = getattr(model, "normalisation", None)
    if norm is not None:
        lo, hi = norm.offset - 2 * norm.scale, norm.offset + 2 * norm.scale
        ref["lac_p50_per_um"] = {"min": lo, "max": hi, "mean": norm.offset, "std": norm.scale, "n": 1}
    return ref, "normalisation"


def _spread(feature: str, r: Mapping[str, float]) -> float:
    scale = max(abs(r["max"]), abs(r["min"]), abs(r["max"] - r["min"]), 1e-6)
    floor = _MIN_SPREAD["noise" if feature.startswith("noise") else "lac"] * scale
    return max(float(r.get("std", 0.0)), floor)


def ood_scores(statistics: Mapping[str, float], reference: Mapping[str, Mapping[str, float]]
               ) -> dict[str, Any]:
    """How far outside the training range each statistic of a volume lies.

    Parameters
    ----------
    statistics : dict
        :func:`input_statistics` of the volume.
    reference : dict
        :func:`reference_range` of the training volumes (or :func:`model_reference`).

    Returns
    -------
    dict
        ``ood_<feature>`` for each feature the reference has: 0 inside the
        training range, else the distance beyond it in units of the training cells'
        standard deviation (at least 2 % of the range's scale, 10 % for the noise);
        for the voxel size, factors of 1.25 beyond a 10 % tolerance.
        ``ood_score``: the largest of them (NaN if none could be scored);
        ``ood_flag``: ``ood_score > OOD_FLAG``; ``ood_reasons``: the features
        beyond the flag, e.g. ``"voxel_size_um 0.01 (training 0.05)"``.
    """
    out: dict[str, Any] = {}
    reasons = []
    for f in FEATURES:
        r = reference.get(f)
        x = statistics.get(f, math.nan)
        if r is None or x is None or not np.isfinite(x):
            continue
        if f == "voxel_size_um":
            if x <= 0:
                continue
            d = max(math.log(r["min"] / x), math.log(x / r["max"]), 0.0)
            score = max(0.0, d - _VOXEL_TOLERANCE) / _VOXEL_UNIT
        else:
            s = _spread(f, r)
            score = max(0.0, (x - r["max"]) / s, (r["min"] - x) / s)
        out[f"ood_{f}"] = float(score)
        if score > OOD_FLAG:
            span = f"{r['min']:.3g}" if r["min"] == r["max"] else f"{r['min']:.3g}-{r['max']:.3g}"
            reasons.append(f"{f} {x:.3g} (training {span})")
    scores = [v for k, v in out.items()]
    out["ood_score"] = float(max(scores)) if scores else math.nan
    out["ood_flag"] = bool(scores and max(scores) > OOD_FLAG)
    out["ood_reasons"] = "; ".join(reasons)
    return out
