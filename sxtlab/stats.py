"""Compare measurements between populations of cells (conditions, strains, treatments).

The independent units of an imaging experiment are the *cells*, not the organelles
in them: the lipid bodies of one cell share its history, so testing instances as if
they were independent inflates n and makes p-values far too small (pseudo-
replication; Lazic 2010, BMC Neurosci. 11:5). Every comparison here therefore first
reduces a per-instance table to one value per cell and class (:func:`per_cell`),
and counts cells.

=====================  ========================================================
:func:`whole_objects`  the rows of objects that the volume's edge does not cut
:func:`per_cell`       one value per cell (and class) from a per-instance table
:func:`compare`        summaries per condition, a rank test, effect size, and
                       multiple-testing correction, as one tidy table
=====================  ========================================================

Tests and effect sizes
----------------------
Two conditions: the Mann–Whitney U test (:func:`scipy.stats.mannwhitneyu`,
two-sided) with the rank-biserial correlation r = P(B > A) − P(A > B) for a random
cell of each (Kerby 2014; Cureton 1956), from −1 to 1. More conditions: the
Kruskal–Wallis H test (:func:`scipy.stats.kruskal`) with ε² = H / (n − 1)
(Tomczak & Tomczak 2014; Kelley 1935), from 0 to 1. p-values of all comparisons
made by one call are adjusted together: Benjamini–Hochberg false discovery rate
(1995; :func:`scipy.stats.false_discovery_control`), Benjamini–Yekutieli (2001),
or Holm's (1979) family-wise step-down procedure.

References
----------
Benjamini Y, Hochberg Y (1995). Controlling the false discovery rate. J. R. Stat.
Soc. B 57, 289–300. Benjamini Y, Yekutieli D (2001). Ann. Stat. 29, 1165–1188.
Cureton EE (1956). Rank-biserial correlation. Psychometrika 21, 287–290.
Holm S (1979). A simple sequentially rejective multiple test procedure. Scand. J.
Stat. 6, 65–70. Kelley TL (1935). An unbiased correlation ratio measure. PNAS 21,
554–559. Kerby DS (2014). The simple difference formula: an approach to teaching
nonparametric correlation. Compr. Psychol. 3, 11.IT.3.1. Lazic SE (2010). The
problem of pseudoreplication in neuroscientific studies. BMC Neurosci. 11, 5.
Tomczak M, Tomczak E (2014). The need to report effect size estimates revisited.
Trends Sport Sci. 21(1), 19–25.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats as _st

from .errors import SxtlabError

__all__ = ["MissingColumnError", "is_cut", "whole_objects", "per_cell", "compare"]

#: Columns that identify a cell in sxtlab's tables: the volume (``cell_id``) and the
#: cell within it (``cell``; a volume may hold several cells).
CELL_COLUMNS: tuple[str, ...] = ("cell_id", "cell")
_AGGREGATES = ("median", "mean", "sum", "min", "max")
Aggregate = Literal["median", "mean", "sum", "min", "max"] | Callable[[pd.Series], float]


class MissingColumnError(SxtlabError, KeyError):
    """A table lacks a column that a function needs; the message lists those it has."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


def _as_list(columns: str | Iterable[str] | None) -> list[str]:
    if columns is None:
        return []
    return [columns] if isinstance(columns, str) else list(columns)


def require_columns(table: pd.DataFrame, columns: Iterable[str], what: str = "table") -> None:
    """Raise :class:`MissingColumnError` naming the missing columns and those available.

    A near miss (``lac_mean`` for ``lac_mean_per_um``, or ``gray_mean`` in an
    uncalibrated table) is suggested.
    """
    missing = [c for c in columns if c not in table.columns]
    if not missing:
        return
    available = [str(c) for c in table.columns]
    hints = []
    for c in missing:
        near = difflib.get_close_matches(str(c), available, n=3, cutoff=0.6)
        if str(c).startswith("lac_") and f"gray_{str(c)[4:].removesuffix('_per_um')}" in available:
            near.insert(0, f"gray_{str(c)[4:].removesuffix('_per_um')}")  # an uncalibrated table
        if near:
            hints.append(f"For {c!r} did you mean {' or '.join(map(repr, dict.fromkeys(near)))}?")
    hint = (" " + "; ".join(hints)) if hints else ""
    raise MissingColumnError(
        f"{what} has no column {', '.join(map(repr, missing))}.{hint} "
        f"Available columns: {', '.join(available) or 'none'}"
    )


def cell_columns(table: pd.DataFrame, cell: str | Sequence[str] = CELL_COLUMNS) -> list[str]:
    """The columns of ``cell`` that ``table`` has (at least one is required)."""
    wanted = _as_list(cell)
    present = [c for c in wanted if c in table.columns]
    if not present:
        require_columns(table, wanted[:1], "table (to identify cells)")
    return present


def levels(values: pd.Series, order: Sequence | None = None) -> list:
    """Groups of ``values`` in display order: ``order``, the categories, or first appearance.

    Raises
    ------
    ValueError
        If ``order`` names a group that ``values`` does not hold.
    """
    present = list(pd.unique(values.dropna()))
    if order is not None:
        unknown = [o for o in order if o not in present]
        if unknown:
            raise ValueError(f"order names {unknown}, which are not in {values.name!r}; it holds {present}")
        return list(order)
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [c for c in values.cat.categories if c in present]
    return present


def is_cut(table: pd.DataFrame) -> np.ndarray:
    """Whether each row is an object that the volume's edge cuts (``touches_border``).

    Returns
    -------
    numpy.ndarray of bool, shape (len(table),)
        False everywhere for a table without a ``touches_border`` column.
    """
    if "touches_border" not in table:
        return np.zeros(len(table), bool)
    return table["touches_border"].fillna(False).astype(bool).to_numpy()


def whole_objects(table: pd.DataFrame, include_cut: bool = False) -> pd.DataFrame:
    """The rows of objects that the volume's edge does not cut, for summaries.

    An object that reaches the edge of the volume (``touches_border``, from
    :func:`sxtlab.measure.instances`) was imaged only in part: its volume, shape and
    position are of the part, so it biases every size summary downwards. Summaries
    (:func:`per_cell`, :func:`compare`, :func:`sxtlab.plot.per_class`,
    :func:`sxtlab.plot.sizes`) therefore leave such rows out unless asked.

    Parameters
    ----------
    table : pandas.DataFrame
        Any table; one without a ``touches_border`` column comes back whole.
    include_cut : bool
        Keep the cut objects too.

    Returns
    -------
    pandas.DataFrame
        The rows kept; ``attrs["cut_left_out"]`` counts the rows left out.
    """
    cut = is_cut(table) & (not include_cut)
    out = table[~cut].copy()
    out.attrs["cut_left_out"] = int(cut.sum())
    return out


def per_cell(
    table: pd.DataFrame,
    value: str | Sequence[str] = "lac_mean_per_um",
    *,
    by: str | None = "condition",
    within: str | Sequence[str] | None = "class",
    aggregate: Aggregate = "median",
    cell: str | Sequence[str] = CELL_COLUMNS,
    include_cut: bool = False,
) -> pd.DataFrame:
    """Reduce a table to one value per cell (and per class): cells are the replicates.

    Organelles of one cell are not independent observations, so a test on
    instances overstates the evidence (pseudo-replication; Lazic 2010). This
    aggregates the instances of each class in each cell, e.g. the median LAC of a
    cell's lipid bodies or (``aggregate="sum"``) their total volume. A table that
    already has one row per cell and class (:func:`sxtlab.measure.classes`) comes
    back unchanged but for column order.

    Parameters
    ----------
    table : pandas.DataFrame
        Required columns: ``value``, ``by`` and ``within`` (if given) and at least
        one of ``cell`` (default ``cell_id`` and ``cell``, as in
        :func:`sxtlab.measure.population` tables).
    value : str or sequence of str
        Measurement column(s), e.g. ``"lac_mean_per_um"``, ``"volume_um3"``.
    by : str or None
        Condition column, carried along; it must be constant within a cell.
    within : str or sequence of str or None
        Columns that split a cell's rows into separate values, ``"class"`` by
        default, ``["class", "target_class"]`` for :func:`sxtlab.measure.distances`.
    aggregate : {"median", "mean", "sum", "min", "max"} or callable
        How instances become a cell's value (``"sum"``: the total); NaN values
        are skipped, and a cell whose values are all NaN gets NaN. A callable
        takes a :class:`pandas.Series` and returns a number.
    cell : str or sequence of str
        Columns that together identify a cell.
    include_cut : bool
        Also aggregate objects cut by the volume's edge (``touches_border``), which
        are left out by default (:func:`whole_objects`).

    Returns
    -------
    pandas.DataFrame
        One row per cell and ``within`` group: the cell columns, ``by``, ``within``,
        each ``value`` aggregated, and ``n_instances`` (rows aggregated, NaN
        values included). Rows whose ``by`` or ``within`` is missing are left out;
        ``attrs["cut_left_out"]`` counts the cut objects left out.

    Raises
    ------
    MissingColumnError
        If a column is missing (the message lists those available).
    ValueError
        If ``aggregate`` is unknown or a cell has more than one ``by`` value.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"cell_id": ["a", "a", "b"], "condition": ["x", "x", "y"],
    ...                   "class": "lipid_body", "volume_um3": [1.0, 3.0, 2.0]})
    >>> per_cell(t, "volume_um3", aggregate="sum")[["cell_id", "volume_um3", "n_instances"]]
      cell_id  volume_um3  n_instances
    0       a         4.0            2
    1       b         2.0            1
    """
    values = _as_list(value)
    groups = _as_list(within)
    table = whole_objects(table, include_cut)
    cut = table.attrs["cut_left_out"]
    cells = cell_columns(table, cell)
    extra = [by] if by is not None else []
    require_columns(table, [*values, *extra, *groups])
    if isinstance(aggregate, str) and aggregate not in _AGGREGATES:
        raise ValueError(f"aggregate must be one of {_AGGREGATES} or a callable, got {aggregate!r}")
    if by is not None:
        mixed = table.groupby(cells, observed=True, sort=False)[by].nunique()
        mixed = mixed[mixed > 1]
        if len(mixed):
            raise ValueError(f"cells with more than one {by!r}: {list(mixed.index[:5])}; each cell must "
                             "belong to one condition")
    keys = [*cells, *extra, *groups]
    grouped = table.groupby(keys, observed=True, sort=False)
    # A cell whose values are all missing has no total: NaN, not pandas' 0 for an empty sum.
    out = grouped[values].sum(min_count=1) if aggregate == "sum" else grouped[values].agg(aggregate)
    out["n_instances"] = grouped.size()
    out = out.reset_index()
    out.attrs["cut_left_out"] = cut
    return out


@dataclass
class _Result:
    test: str
    comparison: str
    statistic: float = np.nan
    p_value: float = np.nan
    effect_size: float = np.nan
    effect_size_measure: str = ""
    note: str = ""


def _test(samples: dict[object, np.ndarray], test: str) -> _Result:
    """One rank test between the groups of ``samples`` (in order), with its effect size."""
    names = [str(k) for k in samples]
    arrays = list(samples.values())
    kind = ("mannwhitneyu" if len(arrays) == 2 else "kruskal") if test == "auto" else test
    if kind == "mannwhitneyu":
        res = _Result("Mann-Whitney U", f"{names[1]} vs {names[0]}", effect_size_measure="rank-biserial r")
    else:
        res = _Result("Kruskal-Wallis H", ", ".join(names), effect_size_measure="epsilon-squared")
    small = [f"{k} ({len(a)})" for k, a in zip(names, arrays) if len(a) < 2]
    if small:
        res.note = f"fewer than 2 cells in {', '.join(small)}"
        return res
    pooled = np.concatenate(arrays)
    if kind == "mannwhitneyu":
        a, b = arrays
        r = _st.mannwhitneyu(a, b, alternative="two-sided")
        res.statistic, res.p_value = float(r.statistic), float(r.pvalue)
        # U counts pairs with a > b (ties 1/2), so 1 - 2U/(n_a n_b) = P(b > a) - P(a > b)
        # (Kerby 2014): positive when the second condition's values are larger.
        res.effect_size = 1.0 - 2.0 * res.statistic / (len(a) * len(b))
        return res
    if np.all(pooled == pooled[0]):
        # H is 0/0 when every value ties (scipy returns NaN with a RuntimeWarning).
        res.note = "all values are identical"
        return res
    r = _st.kruskal(*arrays)
    res.statistic, res.p_value = float(r.statistic), float(r.pvalue)
    res.effect_size = res.statistic / (len(pooled) - 1)  # ε² = H / ((n² − 1)/(n + 1))
    return res


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values: max over j ≤ i of (m − j + 1) p_(j), capped at 1."""
    m = len(p)
    order = np.argsort(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def _adjust(p: np.ndarray, correction: str | None) -> np.ndarray:
    """Adjusted p-values over the finite entries of ``p`` (NaN stays NaN)."""
    out = np.full(len(p), np.nan)
    finite = np.isfinite(p)
    if correction is None:
        out[finite] = p[finite]
    elif finite.any():
        out[finite] = (_holm(p[finite]) if correction == "holm"
                       else _st.false_discovery_control(p[finite], method=correction))
    return out


def compare(
    table: pd.DataFrame,
    value: str | Sequence[str] = "lac_mean_per_um",
    by: str = "condition",
    within: str | Sequence[str] | None = "class",
    test: Literal["auto", "mannwhitneyu", "kruskal"] = "auto",
    *,
    aggregate: Aggregate = "median",
    correction: Literal["bh", "by", "holm"] | None = "bh",
    order: Sequence | None = None,
    cell: str | Sequence[str] = CELL_COLUMNS,
    include_cut: bool = False,
) -> pd.DataFrame:
    """Compare a measurement between conditions, per class, with cells as the replicates.

    For every measurement in ``value`` and every group of ``within`` (each class),
    the table is first reduced to one value per cell (:func:`per_cell` with
    ``aggregate``: the median of a cell's instances by default), because
    organelles of one cell are not independent; then each condition is summarised
    and the conditions are compared by a rank test. All p-values of the call form
    one family for the multiple-testing correction.

    Parameters
    ----------
    table : pandas.DataFrame
        Per-instance (:func:`sxtlab.measure.instances`), per-class
        (:func:`sxtlab.measure.classes`) or distance table of a population
        (:func:`sxtlab.measure.population`). Required columns: ``value``, ``by``,
        ``within`` (if given) and at least one of ``cell``.
    value : str or sequence of str
        Measurement column(s), e.g. ``"lac_mean_per_um"`` (``"gray_mean"`` for an
        uncalibrated table), ``"volume_fraction"``, ``"distance_um"``.
    by : str
        Column of the conditions to compare (at least two values).
    within : str or sequence of str or None
        Compare separately within each group of these columns: ``"class"``
        (default), ``["class", "target_class"]`` for distances, or None.
    test : {"auto", "mannwhitneyu", "kruskal"}
        ``"auto"``: Mann–Whitney U for two conditions, Kruskal–Wallis for more.
        ``"mannwhitneyu"`` needs exactly two conditions.
    aggregate : {"median", "mean", "sum", "min", "max"} or callable
        How a cell's instances become its value (see :func:`per_cell`); use
        ``"sum"`` for totals such as a cell's lipid volume.
    correction : {"bh", "by", "holm"} or None
        Multiple-testing adjustment over all comparisons of the call:
        Benjamini–Hochberg (default) or Benjamini–Yekutieli false discovery rate
        (:func:`scipy.stats.false_discovery_control`), Holm's family-wise error
        rate, or None (``p_adjusted`` equals ``p_value``).
    order : sequence, optional
        Conditions in the order to report (and which comes first in the
        Mann–Whitney effect size); default the categories of a categorical
        ``by``, else order of appearance. Conditions not listed are left out.
    cell : str or sequence of str
        Columns that together identify a cell (default ``cell_id`` and ``cell``).
    include_cut : bool
        Also use objects cut by the volume's edge (``touches_border``), which are
        left out by default (:func:`whole_objects`).

    Returns
    -------
    pandas.DataFrame
        One row per measurement, ``within`` group and condition (tidy: the test
        columns repeat on the rows of one comparison; ``drop_duplicates`` on
        ``["measurement", *within]`` gives one row per test). Columns:

        ``measurement``, the ``within`` columns, ``by``
            what is compared (``measurement`` is the value column's name, so its
            unit is in it);
        ``n_cells``, ``n_instances``
            cells with a value, and the non-missing rows of the input they came from;
        ``mean``, ``std`` (sample, ddof 1), ``median``, ``q1``, ``q3``, ``iqr``
            of the per-cell values, in the measurement's unit (quartiles by linear
            interpolation, :func:`numpy.percentile`);
        ``test``, ``comparison``, ``statistic``
            ``"Mann-Whitney U"`` (U of the first condition, as scipy reports it;
            ``comparison`` ``"B vs A"``) or ``"Kruskal-Wallis H"``;
        ``p_value``, ``p_adjusted``
            two-sided p-value (scipy's) and its adjustment (see ``correction``);
        ``effect_size``, ``effect_size_measure``
            rank-biserial r = P(B > A) − P(A > B) (Kerby 2014; positive when the
            second condition is larger, ±1 for complete separation), or ε² = H/(n−1)
            (Tomczak & Tomczak 2014);
        ``note``
            why a p-value is NaN: a condition with fewer than 2 cells (that
            comparison only, never an error) or values that all tie.

        ``attrs`` record ``aggregate``, ``correction``, ``cell``, ``tests``
        (how many p-values were adjusted together) and ``cut_left_out`` (rows of
        cut objects left out).

    Raises
    ------
    MissingColumnError
        If a column is missing (the message lists those available).
    ValueError
        If ``by`` holds fewer than two conditions, ``test="mannwhitneyu"`` meets
        more than two, or ``test``, ``correction`` or ``aggregate`` is unknown.

    Notes
    -----
    Rank tests assume nothing about the distribution but that cells are
    independent; with fewer than about 4 cells per condition the Mann–Whitney
    p-value cannot go below 0.03 (exact test), so report the effect size too. For
    pairwise follow-up after a Kruskal–Wallis test, compare two conditions at a
    time with ``order=[a, b]``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> t = pd.DataFrame({"cell_id": np.repeat(np.arange(12), 5),
    ...                   "condition": np.repeat(["control", "treated"], 30),
    ...                   "class": "lipid_body",
    ...                   "lac_mean_per_um": np.repeat([0.6, 0.8], 30) + rng.normal(0, 0.02, 60)})
    >>> res = compare(t)
    >>> res[["condition", "n_cells", "n_instances", "effect_size"]]
      condition  n_cells  n_instances  effect_size
    0   control        6           30          1.0
    1   treated        6           30          1.0
    >>> float(res["p_value"].iloc[0].round(4))
    0.0022
    """
    if test not in ("auto", "mannwhitneyu", "kruskal"):
        raise ValueError(f"test must be 'auto', 'mannwhitneyu' or 'kruskal', got {test!r}")
    if correction not in ("bh", "by", "holm", None):
        raise ValueError(f"correction must be 'bh', 'by', 'holm' or None, got {correction!r}")
    values = _as_list(value)
    groups = _as_list(within)
    table = whole_objects(table, include_cut)
    cut = table.attrs["cut_left_out"]
    cells = cell_columns(table, cell)
    require_columns(table, [*values, by, *groups])
    conditions = levels(table[by], order)
    if len(conditions) < 2:
        raise ValueError(f"compare needs at least two conditions in {by!r}; found {conditions or 'none'}")
    if test == "mannwhitneyu" and len(conditions) != 2:
        raise ValueError(f"test='mannwhitneyu' compares two conditions; {by!r} has {len(conditions)}: "
                         f"{conditions}. Use test='kruskal' (or 'auto'), or order=[a, b] for one pair")
    table = table[table[by].isin(conditions)]
    per = per_cell(table, values, by=by, within=groups, aggregate=aggregate, cell=cells)
    # Instances that carry a value, counted per condition and group (NaN rows are not data).
    counts = table[[by, *groups]].assign(**{v: table[v].notna() for v in values})
    counts = counts.groupby([*groups, by], observed=True)[values].sum()
    n_instances = {m: {k if isinstance(k, tuple) else (k,): int(n) for k, n in counts[m].items()} for m in values}

    summaries, results = [], []
    for measurement in values:
        parts = per.groupby(groups, observed=True, sort=False) if groups else [((), per)]
        for key, part in parts:
            key = key if isinstance(key, tuple) else (key,)
            samples = {c: part.loc[part[by] == c, measurement].dropna().to_numpy(float) for c in conditions}
            results.append(_test(samples, test))
            for c, x in samples.items():
                q1, med, q3 = np.percentile(x, [25, 50, 75]) if len(x) else (np.nan,) * 3
                summaries.append({
                    "measurement": measurement, **dict(zip(groups, key)), by: c,
                    "n_cells": len(x), "n_instances": n_instances[measurement].get((*key, c), 0),
                    "mean": x.mean() if len(x) else np.nan,
                    "std": x.std(ddof=1) if len(x) > 1 else np.nan,
                    "median": med, "q1": q1, "q3": q3, "iqr": q3 - q1,
                    "_test": len(results) - 1,
                })
    adjusted = _adjust(np.array([r.p_value for r in results]), correction)
    tests = pd.DataFrame([vars(r) for r in results]).assign(p_adjusted=adjusted)
    tests = tests[["test", "comparison", "statistic", "p_value", "p_adjusted", "effect_size",
                   "effect_size_measure", "note"]]
    out = pd.DataFrame(summaries)
    out = pd.concat([out.drop(columns="_test"), tests.iloc[out["_test"]].reset_index(drop=True)], axis=1)
    out.attrs = {"aggregate": aggregate if isinstance(aggregate, str) else getattr(aggregate, "__name__", "custom"),
                 "correction": correction, "cell": cells, "tests": int(np.isfinite(adjusted).sum()),
                 "cut_left_out": cut}
    return out
