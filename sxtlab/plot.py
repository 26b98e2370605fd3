"""Figures for papers from sxtlab's measurement tables and training histories.

=========================  =====================================================
:func:`per_class`          a value per class across conditions (box or violin,
                           one point per cell): LAC, volume, sphericity, ...
:func:`volume_fractions`   each class's share of the cell volume, per cell
:func:`sizes`              size distributions of organelle instances, per class
:func:`distances`          distance distributions between classes, per pair
:func:`history`            training loss and validation Dice of a training run
:func:`axis_label`         ``"volume_um3"`` → ``"volume [µm³]"``, for every axis
=========================  =====================================================

Every function takes a tidy :class:`pandas.DataFrame` (:mod:`sxtlab.measure`,
:func:`sxtlab.train.train_cascade`) and returns a :class:`matplotlib.figure.Figure`
made without :mod:`matplotlib.pyplot`, so figures made in a loop are freed and
nothing global changes; pass ``ax=`` (one Axes per panel) to draw into a figure of
your own. Axis labels carry units, derived from the column names by
:func:`axis_label`. Classes keep their vocabulary colour
(:func:`sxtlab.classes.colour`, colour-blind safe); conditions differ by marker,
hatching and line style as well as position, so figures survive grayscale print.

Drawn artists carry a ``gid`` naming what they show, e.g. ``"box:lipid_body:control"``,
``"points:lipid_body:control"``, ``"ecdf:lipid_body:control"``,
``"dice:nucleus:stage 2"``; find them with ``fig.findobj(lambda a: a.get_gid() == ...)``.

Examples
--------
>>> from sxtlab import measure, plot                                    # doctest: +SKIP
>>> table = measure.population(cells, table="instances")                # doctest: +SKIP
>>> fig = plot.per_class(table, "lac_mean_per_um", by="condition")      # doctest: +SKIP
>>> fig.savefig("lac.pdf")                                              # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .classes import VOCABULARY, UnknownClassError, canonical_name, colour
from .stats import (CELL_COLUMNS, Aggregate, cell_columns, is_cut, levels, per_cell, require_columns,
                    whole_objects)
from ._figure import NotebookFigure

__all__ = ["axis_label", "per_class", "volume_fractions", "sizes", "distances", "history"]

RGB = tuple[float, float, float]
AxesArg = Axes | Sequence[Axes] | None

# -- axis labels --------------------------------------------------------------------
# Unit suffixes of sxtlab's column names, longest first ("_per_um" before "_um").
_UNITS = (
    ("_voxels_per_um", "voxel·µm⁻¹"),
    ("_per_um", "µm⁻¹"),
    ("_voxels2", "voxel²"),
    ("_voxels", "voxels"),
    ("_um3", "µm³"),
    ("_um2", "µm²"),
    ("_um", "µm"),
    ("_s", "s"),
)
# Quantities whose words are not the column's words with spaces.
_NAMES = {
    "lr": "learning rate",
    "train_loss": "training loss",
    "mean_dice": "mean validation Dice",
    "step": "training step",
    "elapsed": "elapsed time",
    "count": "instances per cell",
    "n_instances": "instances per cell",
    "axis_major_length": "major axis length",
    "axis_intermediate_length": "intermediate axis length",
    "axis_minor_length": "minor axis length",
}
# Image statistics: lac_<stat>_per_um, gray_<stat>.
_IMAGE = {"lac": "LAC", "gray": "gray value"}
_STATISTIC = {"mean": "mean {}", "median": "median {}", "std": "SD of {}", "min": "minimum {}",
              "max": "maximum {}", "integrated": "integrated {}"}


def axis_label(column: str) -> str:
    """Axis label with unit for a measurement column, from sxtlab's naming of columns.

    The unit is read from the suffix (``_um``, ``_um2``, ``_um3``, ``_per_um``,
    ``_voxels``, ``_voxels2``, ``_s``), the quantity from the rest; unknown names
    keep their words.

    Examples
    --------
    >>> axis_label("volume_um3")
    'volume [µm³]'
    >>> axis_label("lac_mean_per_um")
    'mean LAC [µm⁻¹]'
    >>> axis_label("gray_mean")
    'mean gray value'
    >>> axis_label("distance_um")
    'distance [µm]'
    >>> axis_label("dice_lipid_body")
    'Dice (lipid body)'
    """
    name, unit = str(column), None
    for suffix, symbol in _UNITS:
        if name.endswith(suffix) and len(name) > len(suffix):
            name, unit = name[: -len(suffix)], symbol
            break
    head, _, statistic = name.partition("_")
    if name in _NAMES:
        words = _NAMES[name]
    elif head in _IMAGE and statistic in _STATISTIC:
        words = _STATISTIC[statistic].format(_IMAGE[head])
    elif name.startswith("dice_"):
        words = f"Dice ({_display(name[5:])})"
    else:
        words = name.replace("_", " ")
    return f"{words} [{unit}]" if unit else words


# -- shared drawing helpers -----------------------------------------------------------
def _display(name: object) -> str:
    return str(name).replace("_", " ")


def _class_colour(name: str) -> RGB:
    """Vocabulary colour, or gray for a name outside it (a custom class)."""
    try:
        return colour(name)
    except UnknownClassError:
        return (0.5, 0.5, 0.5)


def _darken(rgb: RGB, amount: float) -> RGB:
    return tuple(float(c) * (1.0 - amount) for c in rgb)  # type: ignore[return-value]


def _line_colour(rgb: RGB) -> RGB:
    """A class colour dark enough to read as a thin line on white (yellow is not; the others are)."""
    luminance = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
    return _darken(rgb, 1.0 - 0.6 / luminance) if luminance > 0.7 else rgb


@dataclass(frozen=True)
class _Style:
    """How one condition looks, whatever the class colour."""

    marker: str
    hatch: str
    linestyle: str | tuple
    shade: float  # darkening of the class colour for lines


_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_HATCHES = ("", "////", "....", "xxxx", "\\\\\\\\", "++++", "oooo")
_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2)))


def _styles(conditions: Sequence) -> dict:
    n = len(conditions)
    return {c: _Style(_MARKERS[i % 7], _HATCHES[i % 7], _LINESTYLES[i % 7], 0.45 * i / max(n - 1, 1))
            for i, c in enumerate(conditions)}


def _class_order(present: Sequence[str], classes: Sequence[str] | None) -> list[str]:
    """Classes to draw: ``classes`` as given, else those present in vocabulary order."""
    present = [str(c) for c in pd.unique(pd.Series(present, dtype=object))]
    if classes is not None:
        chosen = [classes] if isinstance(classes, str) else list(classes)
        missing = [c for c in chosen if c not in present]
        if missing:
            raise ValueError(f"classes {missing} have no values in the table; it has {present}")
        return chosen

    def rank(name: str) -> int:
        try:
            return list(VOCABULARY).index(canonical_name(name))
        except UnknownClassError:
            return len(VOCABULARY)

    return sorted(present, key=rank)  # stable: ties (cell, cytoplasm) keep their order


def _with_values(table: pd.DataFrame, value: str, by: str | None, *columns: str) -> pd.DataFrame:
    """The rows of ``table`` that have a ``value``, after checking the columns a figure needs."""
    require_columns(table, [value, *columns, *([by] if by is not None else [])])
    data = table[table[value].notna()]
    if data.empty:
        raise ValueError(f"{value!r} has no values to plot (all {len(table)} rows are missing)")
    return data


def _conditions(data: pd.DataFrame, by: str | None, order: Sequence | None) -> list:
    return [None] if by is None else levels(data[by], order)


def _rows(data: pd.DataFrame, by: str | None, condition: object) -> pd.DataFrame:
    return data if by is None else data[data[by] == condition]


def _log_scale(axis: Axis, values: np.ndarray) -> None:
    """A log axis labelled in plain numbers (0.02, not 2×10⁻²), at 1, 2, 5 × 10ⁿ over up to
    two decades of ``values``, at powers of 10 beyond (so that labels never crowd)."""
    getattr(axis.axes, f"set_{axis.axis_name}scale")("log")
    positive = values[values > 0]
    decades = np.log10(positive.max() / positive.min()) if len(positive) else 0.0
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 2 else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _figure_axes(ax: AxesArg, n: int, panel: tuple[float, float], what: str,
                 ncols: int = 3) -> tuple[Figure, list[Axes]]:
    """A new figure of ``n`` panels (``panel`` inches each), or the caller's ``n`` Axes."""
    if ax is None:
        ncols = min(n, ncols)
        nrows = math.ceil(n / ncols)
        fig = NotebookFigure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
        grid = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for unused in grid[n:]:
            unused.remove()
        return fig, list(grid[:n])
    axes = [ax] if isinstance(ax, Axes) else list(ax)
    if len(axes) != n or not all(isinstance(a, Axes) for a in axes):
        need = "one Axes" if n == 1 else f"a sequence of {n} Axes"
        raise ValueError(f"this figure has {n} panel{'s' * (n > 1)} ({what}): ax must be {need}, got {ax!r}")
    return axes[0].figure.figure, axes  # the root figure, also for Axes in a SubFigure


def _shown_ticklabels(ax: Axes) -> list:
    """The x tick labels drawn: with text, inside the view (locators also return ticks beyond it)."""
    lo, hi = sorted(ax.get_xlim())
    return [t for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]


def _fit_ticklabels(axes: Sequence[Axes], *, top: bool = False) -> None:
    """Slant x tick labels, just enough, where laid out as drawn neighbours would overlap.

    Parallel slanted labels clear each other when the spacing of their ticks times
    the sine of the angle exceeds the text height. One layout pass for all ``axes``
    (of one figure): a constrained-layout draw is the slow part.
    """
    axes[0].figure.figure.draw_without_rendering()  # text extents are now final
    for ax in axes:
        boxes = sorted((t.get_window_extent() for t in _shown_ticklabels(ax)), key=lambda b: b.x0)
        if not any(a.x1 + 2 > b.x0 for a, b in zip(boxes, boxes[1:])):
            continue
        spacing = min(b.x0 + b.width / 2 - a.x0 - a.width / 2 for a, b in zip(boxes, boxes[1:]))
        height = max(b.height for b in boxes)
        needed = math.degrees(math.asin(min(1.0, 1.2 * height / max(spacing, 1e-9))))
        angle = next(a for a in (30, 45, 60, 90) if a >= needed)
        # Anchored at the tick, rising away from the axes (down-left below, up-right on top).
        for t in ax.get_xticklabels():
            t.set(rotation=angle, horizontalalignment="left" if top else "right", rotation_mode="anchor")


def _condition_legend(ax: Axes, styles: dict, title: str) -> None:
    """One entry per condition (marker and hatching), in one row above the axes."""
    handles, labels = [], []
    for condition, s in styles.items():
        point = Line2D([], [], marker=s.marker, linestyle="none", markerfacecolor="0.6",
                       markeredgecolor="black", markeredgewidth=0.5)
        handles.append((Patch(facecolor="white", edgecolor="0.3", hatch=s.hatch), point))
        labels.append(str(condition))
    ax.legend(handles, labels, title=title, handler_map={tuple: HandlerTuple(ndivide=None, pad=0.4)},
              loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=min(len(labels), 4), frameon=False,
              handlelength=2.6, borderaxespad=0.2, fontsize="small", title_fontsize="small")


# -- a value per class across conditions -------------------------------------------------
def per_class(
    table: pd.DataFrame,
    value: str = "lac_mean_per_um",
    *,
    by: str | None = "condition",
    classes: Sequence[str] | None = None,
    order: Sequence | None = None,
    kind: Literal["box", "violin"] = "box",
    aggregate: Aggregate | None = "median",
    cell: str | Sequence[str] = CELL_COLUMNS,
    log: bool = False,
    include_cut: bool = False,
    ax: Axes | None = None,
) -> Figure:
    """A measurement per class across conditions: box (or violin) plots with the points.

    Per class, one box per condition, side by side, filled with the class colour;
    conditions differ by hatching and marker (legend above). By default the table
    is first reduced to one value per cell and class (:func:`sxtlab.stats.per_cell`,
    the median of a cell's instances), so the points are cells, the units that
    :func:`sxtlab.stats.compare` tests.

    Parameters
    ----------
    table : pandas.DataFrame
        Required columns: ``value``, ``class``, ``by`` (unless None) and, when
        aggregating, a cell column (``cell_id`` and/or ``cell``). Instances
        (:func:`sxtlab.measure.instances`) or per-cell classes
        (:func:`sxtlab.measure.classes`) of a population.
    value : str
        Column to show, e.g. ``"lac_mean_per_um"`` (default), ``"gray_mean"``,
        ``"volume_um3"``, ``"sphericity"``.
    by : str or None
        Condition column; None for one group.
    classes : sequence of str, optional
        Classes in the order to show; default all with values, in vocabulary order.
    order : sequence, optional
        Conditions in the order to show (default: categories, else appearance).
    kind : {"box", "violin"}
        Box plots (median, quartiles, whiskers to 1.5 IQR) or violins (kernel
        density, with a line at the median; groups of fewer than two distinct
        values show points only).
    aggregate : {"median", "mean", "sum", "min", "max"}, callable or None
        How a cell's instances become its point (``"sum"`` for totals); None
        plots every row (instances are then not independent: do not read the
        spread as between-cell variability).
    cell : str or sequence of str
        Columns that identify a cell.
    log : bool
        Logarithmic value axis (sizes); values <= 0 are left out, with a warning.
    include_cut : bool
        Treat objects cut by the volume's edge (``touches_border``) as whole ones.
        By default they are left out of the boxes and the per-cell values
        (:func:`sxtlab.stats.whole_objects`); with ``aggregate=None`` they are
        drawn as hollow points beside them. A note above the axes counts them.
    ax : matplotlib.axes.Axes, optional
        Draw here instead of in a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        Artists: ``"box:<class>:<condition>"`` (a box Patch or violin body),
        ``"points:<class>:<condition>"`` (a PathCollection) per group with values
        and ``"cut:<class>:<condition>"`` (hollow points of cut objects).

    Raises
    ------
    sxtlab.stats.MissingColumnError
        If a column is missing (the message lists those available).
    ValueError
        If ``value`` has no values, ``classes`` or ``order`` name groups without
        values, or ``kind`` is unknown.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"cell_id": [1, 2, 3, 4], "condition": ["a", "a", "b", "b"],
    ...                   "class": "lipid_body", "lac_mean_per_um": [0.6, 0.62, 0.7, 0.71]})
    >>> fig = per_class(t)
    >>> fig.axes[0].get_ylabel()
    'mean LAC [µm⁻¹]'
    """
    if kind not in ("box", "violin"):
        raise ValueError(f"kind must be 'box' or 'violin', got {kind!r}")
    data = _with_values(table, value, by, "class")
    whole = whole_objects(data, include_cut)
    cut = data[is_cut(data) & (not include_cut)]
    if aggregate is not None:
        data = per_cell(data, value, by=by, within="class", aggregate=aggregate, cell=cell, include_cut=include_cut)
        cut = cut.iloc[:0]  # left out: a cut object is no measure of its cell
    else:
        data = whole
    if log and (data[value] <= 0).any():
        # Zeros are data (a cell without lipid bodies): say that they are not shown.
        warnings.warn(f"per_class: {int((data[value] <= 0).sum())} values of {value!r} <= 0 are not shown "
                      "on the log axis", UserWarning, stacklevel=2)
        data = data[data[value] > 0]
    names = _class_order(pd.concat([data["class"], cut["class"]]), classes)
    conditions = _conditions(pd.concat([data, cut]), by, order)
    styles = _styles(conditions)
    k = len(conditions)
    slot = 0.8 / k  # the conditions of one class share 80 % of its tick spacing
    fig, (ax,) = _figure_axes(ax, 1, (1.2 + len(names) * max(0.6, 0.38 * k), 3.4), "one axes")
    rng = np.random.default_rng(0)  # the same jitter every time the figure is made
    for i, name in enumerate(names):
        rgb = _class_colour(name)
        for j, condition in enumerate(conditions):
            rows = _rows(data, by, condition)
            x = rows.loc[rows["class"] == name, value].to_numpy(float)
            pos = i + (j - (k - 1) / 2) * slot
            gid = f"{name}:{condition}" if by is not None else name
            style = styles[condition]
            edge = _darken(rgb, 0.35)
            cut_rows = _rows(cut, by, condition)
            x_cut = cut_rows.loc[cut_rows["class"] == name, value].to_numpy(float)
            if len(x_cut):
                ax.scatter(np.full(len(x_cut), pos + 0.45 * slot), x_cut, s=14, marker=style.marker,
                           facecolor="none", edgecolor=edge, linewidths=0.8, zorder=3, gid=f"cut:{gid}")
            if not len(x):
                continue
            body = _box(ax, x, pos, 0.8 * slot, kind, rgb, edge, style.hatch)
            if body is not None:
                body.set_gid(f"box:{gid}")
            jitter = rng.uniform(-0.25, 0.25, len(x)) * slot
            # Many points would hide the box: smaller and translucent beyond ~30.
            size = 16 * min(1.0, math.sqrt(30 / len(x)))
            ax.scatter(pos + jitter, x, s=max(size, 4), marker=style.marker, facecolor=rgb, edgecolor="black",
                       linewidths=0.5, alpha=1.0 if len(x) <= 30 else 0.7, zorder=3, gid=f"points:{gid}")
    ax.set_xticks(range(len(names)), [_display(n) for n in names])
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel(axis_label(value))
    if log:
        _log_scale(ax.yaxis, data[value].to_numpy(float))
    ax.grid(axis="y", color="0.9", zorder=0)
    ax.set_axisbelow(True)
    if by is not None:
        if aggregate is None:
            unit = "instance" if {"instance", "instance_id"} & set(table.columns) else "row"
        elif (data["n_instances"] > 1).any():
            unit = f"cell ({_aggregate_name(aggregate)} of its instances)"
        else:  # already one row per cell and class: nothing was aggregated
            unit = "cell"
        _condition_legend(ax, styles, f"{by}; one point per {unit}")
    n_cut = whole.attrs["cut_left_out"]
    if n_cut:
        how = "hollow points, not in the boxes" if aggregate is None else "left out"
        ax.set_title(f"{n_cut} object{'s' * (n_cut != 1)} cut by the volume's edge: {how}", fontsize="small",
                     loc="left", color="0.3")
    _fit_ticklabels([ax])
    return fig


def _aggregate_name(aggregate: Aggregate) -> str:
    return {"sum": "total"}.get(aggregate, aggregate) if isinstance(aggregate, str) else \
        getattr(aggregate, "__name__", "aggregate")


def _box(ax: Axes, x: np.ndarray, pos: float, width: float, kind: str, rgb: RGB, edge: RGB,
         hatch: str) -> Patch | None:
    """One box or violin at ``pos``; returns its body (None: too few values for a violin)."""
    fill = (*rgb, 0.4)
    if kind == "box":
        parts = ax.boxplot([x], positions=[pos], widths=[width], patch_artist=True, showfliers=False,
                           manage_ticks=False, medianprops={"color": "black", "linewidth": 1.5, "zorder": 4},
                           boxprops={"facecolor": fill, "edgecolor": edge, "hatch": hatch, "linewidth": 1},
                           whiskerprops={"color": edge}, capprops={"color": edge})
        return parts["boxes"][0]
    if len(np.unique(x)) < 2:  # a kernel density needs spread
        return None
    body = ax.violinplot([x], positions=[pos], widths=[width], showextrema=False)["bodies"][0]
    body.set(facecolor=fill, edgecolor=edge, hatch=hatch, linewidth=1, alpha=None)
    ax.hlines(np.median(x), pos - width / 4, pos + width / 4, color="black", linewidth=1.5, zorder=4)
    return body


def volume_fractions(
    table: pd.DataFrame,
    *,
    by: str | None = "condition",
    classes: Sequence[str] | None = None,
    order: Sequence | None = None,
    kind: Literal["box", "violin"] = "box",
    cell: str | Sequence[str] = CELL_COLUMNS,
    ax: Axes | None = None,
) -> Figure:
    """Each class's share of the cell volume, one point per cell, across conditions.

    Parameters
    ----------
    table : pandas.DataFrame
        A per-cell class table (:func:`sxtlab.measure.classes`, through
        :func:`sxtlab.measure.population`). Required columns: ``volume_fraction``,
        ``class``, ``by`` (unless None) and a cell column. Rows outside every
        cell (NaN fraction) are left out.
    by, classes, order, kind, cell, ax
        As for :func:`per_class`; ``classes`` defaults to the organelles: every
        class but ``cell`` (whose fraction is 1 by definition) and ``cytoplasm``
        (the rest of the cell, which would set the scale).

    Returns
    -------
    matplotlib.figure.Figure
        As :func:`per_class`, value axis "volume fraction".

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"cell_id": [1, 1, 2, 2], "condition": "a",
    ...                   "class": ["cell", "lipid_body"] * 2, "volume_fraction": [1, 0.02, 1, 0.03]})
    >>> [t.get_text() for t in volume_fractions(t).axes[0].get_xticklabels()]
    ['lipid body']
    """
    require_columns(table, ["volume_fraction", "class"])
    if classes is None:
        classes = _class_order([c for c in table.loc[table["volume_fraction"].notna(), "class"]
                                if c not in ("cell", "cytoplasm")], None)
    # A class table has one row per cell and class, so "sum" keeps its value and
    # would also total per-instance fractions correctly.
    return per_class(table, "volume_fraction", by=by, classes=classes, order=order, kind=kind,
                     aggregate="sum", cell=cell, ax=ax)


# -- distributions of instances ---------------------------------------------------------
def _distributions(data: pd.DataFrame, value: str, panels: list[tuple[str, str, pd.DataFrame, RGB]], *,
                   by: str | None, order: Sequence | None, kind: str, log: bool | str, cell: str | Sequence[str],
                   ax: AxesArg, what: str) -> Figure:
    """One panel per (key, title, rows, colour): an ECDF or histogram per condition."""
    if kind not in ("ecdf", "hist"):
        raise ValueError(f"kind must be 'ecdf' or 'hist', got {kind!r}")
    if log is True:
        bad = int((data[value] <= 0).sum())
        if bad:
            raise ValueError(f"{value!r} has {bad} values <= 0, which a log axis cannot show; use log=False")
    cells = cell_columns(data, cell)
    conditions = _conditions(data, by, order)
    styles = _styles(conditions)
    fig, axes = _figure_axes(ax, len(panels), (3.0, 2.6), what)
    for a, (key, title, part, rgb) in zip(axes, panels):
        x_all = part[value].to_numpy(float)
        lo, hi = x_all.min(), x_all.max()
        # "auto": log where the values are positive and span a decade or more.
        logx = log is True or (log == "auto" and lo > 0 and hi >= 10 * lo)
        if kind == "hist":
            edges = np.geomspace(lo, hi * (1 + 1e-9), 21) if logx else np.histogram_bin_edges(x_all, bins="auto")
        for condition in conditions:
            rows = _rows(part, by, condition)
            x = rows[value].to_numpy(float)
            if not len(x):
                continue
            style = styles[condition]
            line = _darken(_line_colour(rgb), style.shade)
            n_cells = len(rows[cells].drop_duplicates())
            label = f"{condition}: " if by is not None else ""
            label += f"{len(x)} instance{'s' * (len(x) != 1)}, {n_cells} cell{'s' * (n_cells != 1)}"
            props = {"color": line, "linestyle": style.linestyle, "linewidth": 1.6, "label": label}
            if kind == "ecdf":
                artist = a.ecdf(x, **props)
            else:
                artist = a.hist(x, bins=edges, weights=np.full(len(x), 1 / len(x)), histtype="step",
                                **props)[2][0]
            artist.set_gid(f"{kind}:{key}:{condition}" if by is not None else f"{kind}:{key}")
        a.set_xlabel(axis_label(value))
        if logx:
            _log_scale(a.xaxis, x_all)
        a.set_ylim(0, 1.02 if kind == "ecdf" else None)
        a.grid(color="0.92")
        a.set_axisbelow(True)
        # Above the axes, headed by the panel's name, so that it never covers a curve.
        legend = a.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), title=title, fontsize="small",
                          frameon=False, handlelength=2.6, borderaxespad=0.2)
        legend.get_title().set(color=_darken(_line_colour(rgb), 0.2), fontsize="medium")
    unit = "of instances" if kind == "ecdf" else "of instances per bin"
    for a in axes:
        if a.get_subplotspec() is None or a.get_subplotspec().is_first_col():
            a.set_ylabel(f"{'cumulative fraction' if kind == 'ecdf' else 'fraction'} {unit}")
    _fit_ticklabels(axes)
    return fig


def sizes(
    table: pd.DataFrame,
    value: str = "volume_um3",
    *,
    by: str | None = "condition",
    classes: Sequence[str] | None = None,
    order: Sequence | None = None,
    kind: Literal["ecdf", "hist"] = "ecdf",
    log: bool | Literal["auto"] = "auto",
    cell: str | Sequence[str] = CELL_COLUMNS,
    include_cut: bool = False,
    ax: AxesArg = None,
) -> Figure:
    """Size distributions of organelle instances: one panel per class, one curve per condition.

    The instances of all cells of a condition are pooled, so the curves describe
    organelles; the legend gives how many instances in how many cells. To test a
    difference, compare cells (:func:`sxtlab.stats.compare`), not these curves.

    Parameters
    ----------
    table : pandas.DataFrame
        Instances (:func:`sxtlab.measure.instances` of a population). Required
        columns: ``value``, ``class``, ``by`` (unless None) and a cell column.
    value : str
        Size column: ``"volume_um3"`` (default), ``"equivalent_diameter_um"``,
        ``"surface_area_um2"``, ``"axis_major_length_um"``, ...
    by : str or None
        Condition column; None pools everything.
    classes : sequence of str, optional
        Classes (panels) to show; default all, in vocabulary order.
    order : sequence, optional
        Conditions in the order to show.
    kind : {"ecdf", "hist"}
        Empirical cumulative distribution (default: no bins to choose, medians and
        tails read off directly) or step histograms of the fraction of instances
        per bin (20 log-spaced bins with ``log``, else numpy's "auto").
    log : bool or "auto"
        Logarithmic size axis: ``"auto"`` (default) in panels whose values span a
        decade or more (organelle volumes often do), True in every panel.
    cell : str or sequence of str
        Columns that identify a cell (for the counts in the legend).
    include_cut : bool
        Also pool objects cut by the volume's edge (``touches_border``), whose sizes
        are of the part imaged; by default they are left out and each panel's title
        counts them (:func:`sxtlab.stats.whole_objects`).
    ax : Axes or sequence of Axes, optional
        One Axes per class shown.

    Returns
    -------
    matplotlib.figure.Figure
        Artists ``"<kind>:<class>:<condition>"`` (a Line2D for ECDFs, a Patch for
        histograms).

    Raises
    ------
    sxtlab.stats.MissingColumnError
        If a column is missing.
    ValueError
        If ``value`` has no values, ``log=True`` meets values <= 0, ``kind`` is
        unknown, or ``ax`` has the wrong number of Axes.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"cell_id": [1, 1, 2, 2], "condition": ["a", "a", "b", "b"],
    ...                   "class": "lipid_body", "volume_um3": [0.01, 0.02, 0.03, 0.05]})
    >>> sizes(t).axes[0].get_xlabel()
    'volume [µm³]'
    """
    every = _with_values(table, value, by, "class")
    data = whole_objects(every, include_cut)
    names = _class_order(data["class"], classes)
    cut = every.loc[is_cut(every) & (not include_cut), "class"].value_counts()

    def title(name: str) -> str:
        n = int(cut.get(name, 0))
        return _display(name) + (f" ({n} cut by the edge, left out)" if n else "")

    panels = [(n, title(n), data[data["class"] == n], _class_colour(n)) for n in names]
    return _distributions(data[data["class"].isin(names)], value, panels, by=by, order=order, kind=kind,
                          log=log, cell=cell, ax=ax, what="one per class")


def distances(
    table: pd.DataFrame,
    value: str = "distance_um",
    *,
    by: str | None = "condition",
    pairs: Sequence[tuple[str, str]] | None = None,
    order: Sequence | None = None,
    kind: Literal["ecdf", "hist"] = "ecdf",
    log: bool | Literal["auto"] = False,
    cell: str | Sequence[str] = CELL_COLUMNS,
    ax: AxesArg = None,
) -> Figure:
    """Distance distributions between organelle classes: one panel per pair, one curve per condition.

    Each instance of a class contributes its distance to the nearest target
    (:func:`sxtlab.measure.distances`), pooled over the cells of a condition; the
    ECDF's height at 0 is the fraction of instances in contact.

    Parameters
    ----------
    table : pandas.DataFrame
        Distances of a population. Required columns: ``value``, ``class``,
        ``target_class``, ``by`` (unless None) and a cell column; ``to_boundary``
        (optional) names the panels of distances to a containing class's boundary.
    value : str
        ``"distance_um"`` (surface gap, default) or ``"centre_distance_um"``.
    by : str or None
        Condition column.
    pairs : sequence of (class, target_class), optional
        Panels to show; default every pair in the table, in vocabulary order.
    order, kind, log, cell
        As for :func:`sizes`; ``log`` is off by default because contacts are 0
        (``"auto"`` uses log only in panels without zeros).
    ax : Axes or sequence of Axes, optional
        One Axes per pair shown.

    Returns
    -------
    matplotlib.figure.Figure
        Artists ``"<kind>:<class>-><target>:<condition>"``.

    Raises
    ------
    sxtlab.stats.MissingColumnError, ValueError
        As :func:`sizes`; also if a pair has no distances.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"cell_id": [1, 2], "condition": ["a", "b"], "class": "lipid_body",
    ...                   "target_class": "nucleus", "distance_um": [0.0, 0.4]})
    >>> distances(t).axes[0].get_legend().get_title().get_text()
    'lipid body → nucleus'
    """
    data = _with_values(table, value, by, "class", "target_class")
    present = list(dict.fromkeys(zip(data["class"], data["target_class"])))
    if pairs is None:
        rank = {name: i for i, name in enumerate(_class_order([n for p in present for n in p], None))}
        pairs = sorted(present, key=lambda p: (rank[p[0]], rank[p[1]]))
    else:
        pairs = [tuple(p) for p in pairs]
        missing = [p for p in pairs if p not in present]
        if missing:
            raise ValueError(f"pairs {missing} have no distances in the table; it has {present}")
    panels = []
    for a, b in pairs:
        rows = data[(data["class"] == a) & (data["target_class"] == b)]
        boundary = "to_boundary" in rows and bool(rows["to_boundary"].any())
        title = f"{_display(a)} → {_display(b)}{' boundary' if boundary else ''}"
        panels.append((f"{a}->{b}", title, rows, _class_colour(a)))
    used = pd.concat([p[2] for p in panels])
    return _distributions(used, value, panels, by=by, order=order, kind=kind, log=log, cell=cell, ax=ax,
                          what="one per pair")


# -- training history ---------------------------------------------------------------------
def history(
    history: pd.DataFrame,
    *,
    log_loss: bool = True,
    ax: AxesArg = None,
) -> Figure:
    """Training loss and per-class validation Dice against training step.

    Stages of a cascade (column ``stage``: ``"stage 1"``, folds, ``"stage 2"``)
    follow one another along the step axis, in the order they appear, on
    alternating shaded bands named at the top. The best validation of each stage
    (the weights kept) is starred.

    Parameters
    ----------
    history : pandas.DataFrame
        From :func:`sxtlab.train.train_cascade` or :func:`sxtlab.train.train_stage`.
        Required columns: ``step``, ``train_loss``; optional: ``stage``,
        ``dice_<class>`` (one per class), ``mean_dice``.
    log_loss : bool
        Logarithmic loss axis (when every loss is positive).
    ax : Axes or sequence of Axes, optional
        Two Axes (loss, Dice), or one when the history has no Dice columns.

    Returns
    -------
    matplotlib.figure.Figure
        Artists ``"loss:<stage>"``, ``"dice:<class>:<stage>"``,
        ``"mean_dice:<stage>"`` and ``"best:<stage>"`` (Line2D).

    Raises
    ------
    sxtlab.stats.MissingColumnError
        If ``step`` or ``train_loss`` is missing.

    Examples
    --------
    >>> import pandas as pd
    >>> h = pd.DataFrame({"step": [50, 100], "train_loss": [1.2, 0.8],
    ...                   "dice_nucleus": [0.6, 0.8], "mean_dice": [0.6, 0.8]})
    >>> [a.get_ylabel() for a in history(h).axes]
    ['training loss', 'validation Dice']
    """
    require_columns(history, ["step", "train_loss"], "history")
    dice = [c for c in history.columns if str(c).startswith("dice_")]
    has_dice = bool(dice) or "mean_dice" in history
    stages = levels(history["stage"]) if "stage" in history else [None]
    fig, axes = _figure_axes(ax, 2 if has_dice else 1, (4.0, 2.8),
                             "loss and Dice" if has_dice else "loss", ncols=2)
    # Steps restart in every stage: lay the stages end to end, in training order.
    offset, bands = 0.0, []
    for stage in stages:
        rows = history if stage is None else history[history["stage"] == stage]
        x = rows["step"].to_numpy(float) + offset
        bands.append((stage, offset, offset + rows["step"].max()))
        offset += rows["step"].max()
        suffix = "" if stage is None else f":{stage}"
        first = stage == stages[0]
        axes[0].plot(x, rows["train_loss"], color="0.2", linewidth=1.4, gid=f"loss{suffix}")
        if not has_dice:
            continue
        for c in dice:
            name = str(c)[5:]
            # Markers, so that a stage validated once (a short run) still shows its value;
            # a class never scored says so in the legend rather than showing no line.
            label = _display(name) + ("" if history[c].notna().any() else " (no validation value)")
            axes[1].plot(x, rows[c], color=_line_colour(_class_colour(name)), linewidth=1.4, marker="o",
                         markersize=3, label=label if first else None, gid=f"dice:{name}{suffix}")
        if "mean_dice" in rows and rows["mean_dice"].notna().any():
            axes[1].plot(x, rows["mean_dice"], color="black", linestyle="--", linewidth=1.4, marker="o",
                         markersize=3, label="mean" if first else None, gid=f"mean_dice{suffix}")
            best = int(np.nanargmax(rows["mean_dice"].to_numpy(float)))
            axes[1].plot(x[best], rows["mean_dice"].iloc[best], marker="*", markersize=11, color="black",
                         markeredgecolor="white", linestyle="none", zorder=4,
                         label="best (kept)" if first else None, gid=f"best{suffix}")
    axes[0].set_ylabel(axis_label("train_loss"))
    if log_loss and (history["train_loss"].dropna() > 0).all():
        _log_scale(axes[0].yaxis, history["train_loss"].to_numpy(float))
    if has_dice:
        axes[1].set_ylabel("validation Dice")
        axes[1].set_ylim(0, 1.02)
        axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize="small")
    xlabel = axis_label("step") + ("" if len(stages) == 1 else " (stages end to end)")
    tops = []
    for a in axes:
        a.set_xlabel(xlabel)
        a.set_xlim(0, offset)
        a.grid(color="0.92")
        a.set_axisbelow(True)
        if len(stages) > 1:
            for i, (_, start, end) in enumerate(bands):
                if i % 2:
                    a.axvspan(start, end, color="0.93", zorder=0, linewidth=0)
            top = a.secondary_xaxis("top")
            top.set_xticks([(s + e) / 2 for _, s, e in bands], [str(s) for s, _, _ in bands],
                           fontsize="small")
            top.tick_params(length=0)
            tops.append(top)
    if tops:
        _fit_ticklabels(tops, top=True)
    return fig
