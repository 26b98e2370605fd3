"""Slice views of SXT volumes with label overlays: a notebook widget and a static figure.

:class:`SliceViewer`
    An ipywidgets viewer for JupyterLab: one plane (xy, xz, yz) or three
    orthogonal views of a volume, a slider per axis, the label overlay in the
    vocabulary's class colours with a toggle per class and an opacity slider,
    optional reference labels drawn as outlines, and a readout of positions (µm)
    and values (LAC). With ``ipympl`` the figure is a live canvas and the readout
    follows the cursor; without it, the figure is re-rendered into an image widget.
:func:`show_slices`
    The same views as a static :class:`matplotlib.figure.Figure`, for papers and
    non-interactive runs.

Both read only the displayed slices, so dask-backed volumes are never loaded
whole. Axes are in µm (voxel indices, labelled ``[voxel]``, when the voxel size is
unknown) and images are drawn with their physical extent, so anisotropic voxels
are not squashed. Rows run down the screen (row 0 at the top), in every plane,
as in Fiji's orthogonal views; in the three-view layout the ``yz`` view stands
right of ``xy`` and is transposed (``z`` across) so that both share ``y``.

Label value 0 (background) and :data:`~sxtlab.classes.UNANNOTATED` (255) are
drawn transparent.

Examples
--------
>>> import numpy as np, sxtlab
>>> from sxtlab.viewer import show_slices
>>> lac = sxtlab.volume(np.random.rand(8, 16, 16).astype("f4"), voxel_size=(0.05, 0.03, 0.03))
>>> fig = show_slices(lac)
>>> fig.axes[0].get_xlabel()
'x [µm]'
"""

from __future__ import annotations

import base64
import io
import sys
import warnings
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import matplotlib
import numpy as np
import PIL.Image
import xarray as xr
from matplotlib import rcsetup
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure, SubFigure
from matplotlib.font_manager import FontProperties
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

from ._figure import NotebookFigure
from .classes import BACKGROUND, UNANNOTATED, VOCABULARY, canonical_name, class_map, colour
from .errors import FormatError
from .volume import DIMS, check_same_grid

if TYPE_CHECKING:
    import ipywidgets

__all__ = ["PLANES", "SliceViewer", "show_slices"]

#: The three orthogonal planes, named by their two in-plane axes.
PLANES = ("xy", "xz", "yz")
_NORMAL = {"xy": "z", "xz": "y", "yz": "x"}
# (row, column) axes of each plane on its own: z runs down the screen.
_AXES = {"xy": ("y", "x"), "xz": ("z", "x"), "yz": ("z", "y")}
# In the three-view layout yz stands right of xy and shares its rows (y), so z runs across.
_ORTHO_AXES = {"xy": ("y", "x"), "xz": ("z", "x"), "yz": ("y", "z")}
_MICROMETRE_UNITS = {"um", "µm", "micrometer", "micrometre"}

Positions = Mapping[str, float | None] | Sequence[float | None] | None


# -- geometry -----------------------------------------------------------------------
@dataclass(frozen=True)
class _Grid:
    """Voxel centres and steps of a (z, y, x) volume, in µm or in voxels."""

    centres: dict[str, np.ndarray]
    step: dict[str, float]
    physical: bool

    @classmethod
    def of(cls, da: xr.DataArray) -> _Grid:
        vs = da.attrs.get("voxel_size_um")
        # attrs can be lost through operations; coords in µm still tell the truth
        physical = vs is not None or all(
            d in da.coords and da[d].attrs.get("units") in _MICROMETRE_UNITS for d in DIMS)
        centres, step = {}, {}
        for i, d in enumerate(DIMS):
            n = da.sizes[d]
            if d in da.coords:
                c = np.asarray(da[d].values, dtype=float)
            else:
                c = np.arange(n, dtype=float) * (float(vs[i]) if vs is not None else 1.0)
            if n >= 2:
                s = float(c[1] - c[0])
            else:
                s = float(vs[i]) if vs is not None else 1.0
            centres[d], step[d] = c, s
        return cls(centres, step, physical)

    @property
    def unit(self) -> str:
        return "µm" if self.physical else "voxel"

    def size(self, d: str) -> int:
        return len(self.centres[d])

    def edges(self, d: str) -> tuple[float, float]:
        """Outer edges of the first and last voxel along ``d``."""
        c, s = self.centres[d], self.step[d]
        return float(c[0] - s / 2), float(c[-1] + s / 2)

    def length(self, d: str) -> float:
        lo, hi = self.edges(d)
        return abs(hi - lo)

    def extent(self, row: str, col: str) -> tuple[float, float, float, float]:
        """``imshow`` extent ``(left, right, bottom, top)`` with row 0 at the top."""
        (c0, c1), (r0, r1) = self.edges(col), self.edges(row)
        return c0, c1, r1, r0

    def index(self, d: str, pos: float, *, clip: bool = False) -> int:
        """Index of the voxel whose centre is nearest to ``pos`` (µm, or voxels)."""
        c, s = self.centres[d], self.step[d]
        i = int(np.rint((pos - c[0]) / s))
        if not clip and not 0 <= i < len(c):
            lo, hi = sorted(self.edges(d))
            raise ValueError(
                f"position {d} = {pos:g} {self.unit} lies outside the volume, which spans "
                f"{d} = {lo:g} to {hi:g} {self.unit}")
        return min(max(i, 0), len(c) - 1)

    def decimals(self, d: str) -> int:
        """Fewest decimals that write the step within 1 %, so positions read cleanly."""
        s = abs(self.step[d])
        return next((k for k in range(7) if abs(round(s, k) - s) <= 0.01 * s), 6)

    def label(self, d: str, i: int) -> str:
        """``"0.150 µm"`` (or ``"4"`` in voxels) for voxel ``i`` along ``d``."""
        if not self.physical:
            return f"{i}"
        return f"{self.centres[d][i]:.{self.decimals(d)}f} µm"

    def indices(self, positions: Positions) -> dict[str, int]:
        """Voxel indices ``{d: i}`` for positions in µm (voxels when unknown); centre by default."""
        if positions is None:
            positions = {}
        elif not isinstance(positions, Mapping):
            positions = list(positions)
            if len(positions) != 3:
                raise ValueError(f"positions must be (z, y, x) or a mapping like {{'z': 1.2}}, got {positions!r}")
            positions = dict(zip(DIMS, positions))
        unknown = set(positions) - set(DIMS)
        if unknown:
            raise ValueError(f"positions take the axes {DIMS}, got {sorted(unknown)}")
        return {d: self.size(d) // 2 if positions.get(d) is None else self.index(d, float(positions[d]))
                for d in DIMS}


def _nice_length(span: float) -> float:
    """A 1-2-5 length near a fifth of ``span``, for the scale bar."""
    target = span / 5
    exp = 10.0 ** np.floor(np.log10(target))
    return next(m * exp for m in (5, 2, 1) if m * exp <= target)


def _figsize(planes: Sequence[str], grid: _Grid) -> tuple[float, float]:
    """Figure size (inches) that gives the panels their physical aspect.

    The margins leave room for tick labels, titles, the colour bar and the legend.
    """
    if _is_ortho(planes):
        w = grid.length("x") + grid.length("z")
        h = grid.length("y") + grid.length("z")
        scale = min(6.5 / w, 5.5 / h)
        return max(4.5, scale * w + 2.2), max(3.5, scale * h + 2.2)
    widths = [grid.length(_AXES[p][1]) for p in planes]
    height = max(grid.length(_AXES[p][0]) for p in planes)
    single = len(planes) == 1
    scale = min((6.0 if single else 9.0) / sum(widths), (4.5 if single else 3.5) / height)
    return max(4.5, scale * sum(widths) + 0.8 * len(planes) + 1.1), max(3.0, scale * height + 2.0)


def _is_ortho(planes: Sequence[str]) -> bool:
    return len(planes) == 3 and set(planes) == set(PLANES)


# -- inputs -------------------------------------------------------------------------
def _zyx(da: xr.DataArray, what: str) -> xr.DataArray:
    if da.ndim != 3 or set(da.dims) != set(DIMS):
        raise FormatError(f"{what}: expected a 3-D volume with dims {DIMS}, got dims {da.dims}")
    return da.transpose(*DIMS)  # lazy for dask: nothing is read


def _check_labels(labels: Any, image: xr.DataArray, what: str) -> tuple[xr.DataArray, dict[int, str]] | None:
    """A label volume on the image's grid and its ``{value: canonical name}`` map."""
    if labels is None:
        return None
    if not isinstance(labels, xr.DataArray):
        raise TypeError(f"{what} must be an xarray.DataArray label volume (sxtlab.label_volume), "
                        f"got {type(labels).__name__}")
    labels = _zyx(labels, what)
    if not np.issubdtype(labels.dtype, np.integer):
        raise FormatError(f"{what} must hold integers, got dtype {labels.dtype}")
    if "classes" not in labels.attrs:
        raise FormatError(f"{what} have no 'classes' attr naming their values (e.g. {{'1': 'cell'}})")
    check_same_grid(image, labels, what)
    return labels, class_map(labels.attrs["classes"])


def _inputs(volume: xr.DataArray | xr.Dataset, labels: xr.DataArray | None, reference: xr.DataArray | None):
    """Split a segmentation Dataset or an image plus labels; check grids and dims."""
    if isinstance(volume, xr.Dataset):
        if "lac" not in volume:
            raise FormatError(f"a segmentation Dataset needs a 'lac' variable; this one has "
                              f"{list(volume.data_vars)}")
        image = volume["lac"]
        if labels is None and "labels" in volume:
            labels = volume["labels"]
    elif isinstance(volume, xr.DataArray):
        image = volume
    else:
        raise TypeError(f"expected an xarray.DataArray volume with dims {DIMS} or a segmentation Dataset, "
                        f"got {type(volume).__name__}; wrap an array with sxtlab.volume(data, voxel_size)")
    image = _zyx(image, "volume")
    return image, _check_labels(labels, image, "labels"), _check_labels(reference, image, "reference labels")


def _overlay_names(*maps: dict[int, str] | None) -> list[str]:
    """Classes that can be overlaid, in vocabulary order (background never is)."""
    present = {n for m in maps if m for v, n in m.items() if v not in (BACKGROUND, UNANNOTATED)}
    return [n for n in VOCABULARY if n in present and n != "background"]


def _selected(classes: Iterable[str] | None, names: list[str]) -> list[str]:
    if classes is None:
        return list(names)
    if isinstance(classes, str):
        classes = [classes]
    chosen = [canonical_name(c) for c in classes]
    missing = [c for c in chosen if c not in names]
    if missing:
        raise ValueError(f"classes {missing} are not in the labels, which have {names or 'no classes'}")
    return chosen


def _value_label(da: xr.DataArray) -> str:
    units = da.attrs.get("units")
    if units == "1/um":
        return "LAC [µm⁻¹]"
    if units == "gray":
        return "gray value"
    name = da.attrs.get("long_name") or da.name or "value"
    return f"{name} [{units}]" if units else str(name)


def _value_text(da: xr.DataArray, value: float) -> str:
    units = da.attrs.get("units")
    if units == "1/um":
        return f"LAC {value:.3g} µm⁻¹"
    return f"{'gray' if units == 'gray' else 'value'} {value:.4g}"


# -- slices and overlays ------------------------------------------------------------
def _take(da: xr.DataArray, plane: str, index: int) -> np.ndarray:
    """The (row, column) slice of ``plane`` at ``index``; reads only that slice from dask."""
    row, col = _AXES[plane]
    return np.asarray(da.isel({_NORMAL[plane]: index}).transpose(row, col).values)


def _robust_clim(slices: Iterable[np.ndarray]) -> tuple[float, float]:
    """0.5–99.5 percentiles of the displayed slices: one hot voxel must not wash out the rest."""
    values = np.concatenate([np.ravel(s).astype(float) for s in slices])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if hi <= lo:
        lo, hi = lo - 0.5, lo + 0.5
    return lo, hi


def _lut(classes: dict[int, str], shown: Collection[str], alpha: float) -> np.ndarray:
    """RGBA per label value (last row transparent for values beyond the table)."""
    lut = np.zeros((max([UNANNOTATED, *classes]) + 2, 4), np.float32)
    for value, name in classes.items():
        if name in shown and value not in (BACKGROUND, UNANNOTATED) and value >= 0:
            lut[value, :3] = colour(name)
            lut[value, 3] = alpha
    return lut


def _rgba(labels2d: np.ndarray, lut: np.ndarray) -> np.ndarray:
    last = len(lut) - 1
    return lut[np.where((labels2d >= 0) & (labels2d < last), labels2d, last)]


def _display_name(name: str) -> str:
    return name.replace("_", " ")


def _legend_handles(fill: Iterable[str], outline: Iterable[str]) -> list[Any]:
    handles: list[Any] = [Patch(facecolor=colour(n), edgecolor="none", label=_display_name(n)) for n in fill]
    handles += [Line2D([], [], color=colour(n), lw=1.5, label=f"{_display_name(n)} (reference)")
                for n in outline]
    return handles


class _Panel:
    """One axes showing one plane: image, label overlay, reference outlines, scale bar."""

    def __init__(self, ax: Axes, plane: str, row: str, col: str, grid: _Grid, *, cmap: str,
                 norm: Normalize, crosshairs: bool, scale_bar: bool) -> None:
        self.ax, self.plane, self.row, self.col, self.grid = ax, plane, row, col, grid
        self.normal = _NORMAL[plane]
        # slices are taken in _AXES orientation; the ortho layout shows yz transposed
        self.transposed = (row, col) != _AXES[plane]
        extent = grid.extent(row, col)
        shape = (grid.size(row), grid.size(col))
        self.image = ax.imshow(np.zeros(shape, np.float32), cmap=cmap, norm=norm, extent=extent,
                               origin="upper")
        # nearest: blending neighbouring class colours would invent classes
        self.overlay = ax.imshow(np.zeros((*shape, 4), np.float32), extent=extent, origin="upper",
                                 interpolation="nearest")
        ax.set_xlabel(f"{col} [{grid.unit}]")
        ax.set_ylabel(f"{row} [{grid.unit}]")
        ax.set_aspect("equal")
        self.outlines: list[Any] = []
        self.crosshair = (
            ax.axvline(0.0, color="w", lw=0.6, ls="--", alpha=0.6),
            ax.axhline(0.0, color="w", lw=0.6, ls="--", alpha=0.6),
        ) if crosshairs else None
        if scale_bar and grid.physical:
            self._add_scale_bar()
        # pin the view to the slice: crosshairs and contours would otherwise stretch it
        ax.set_xlim(extent[:2])
        ax.set_ylim(extent[2:])

    def _add_scale_bar(self) -> None:
        length = _nice_length(self.grid.length(self.col))
        bar = AnchoredSizeBar(self.ax.transData, length, f"{length:g} µm", "lower right", pad=0.3,
                              borderpad=0.4, sep=3, color="white", frameon=True,
                              size_vertical=0.015 * self.grid.length(self.row),
                              fontproperties=FontProperties(size=8))
        # a dim box keeps the white bar legible on bright cells and dark medium alike
        bar.patch.set(facecolor="black", alpha=0.45, edgecolor="none")
        self.ax.add_artist(bar)

    def _orient(self, a: np.ndarray) -> np.ndarray:
        return np.swapaxes(a, 0, 1) if self.transposed else a

    def show(self, image2d: np.ndarray, index: int) -> None:
        self.image.set_data(self._orient(image2d))
        self.ax.set_title(f"{self.plane} at {self.normal} = {self.grid.label(self.normal, index)}"
                          + ("" if self.grid.physical else " [voxel]"), fontsize=10)

    def show_overlay(self, labels2d: np.ndarray | None, lut: np.ndarray | None) -> None:
        if labels2d is None or lut is None:
            self.overlay.set_visible(False)
            return
        self.overlay.set_visible(True)
        self.overlay.set_data(_rgba(self._orient(labels2d), lut))

    def show_outlines(self, labels2d: np.ndarray | None, classes: dict[int, str] | None,
                      shown: Collection[str]) -> None:
        """Redraw the reference outlines (contours at the voxel borders) of the shown classes."""
        for artist in self.outlines:
            artist.remove()
        self.outlines = []
        if labels2d is None or classes is None:
            return
        lab = self._orient(labels2d)
        if min(lab.shape) < 2:  # a contour needs a 2 x 2 grid at least
            return
        xs, ys = self.grid.centres[self.col], self.grid.centres[self.row]
        for value, name in classes.items():
            if name not in shown or value in (BACKGROUND, UNANNOTATED):
                continue
            mask = lab == value
            if mask.any() and not mask.all():
                self.outlines.append(self.ax.contour(xs, ys, mask.astype(np.float32), levels=[0.5],
                                                     colors=[colour(name)], linewidths=1.5))

    def set_crosshair(self, index: Mapping[str, int]) -> None:
        if self.crosshair is not None:
            vline, hline = self.crosshair
            x = self.grid.centres[self.col][index[self.col]]
            y = self.grid.centres[self.row][index[self.row]]
            vline.set_xdata([x, x])
            hline.set_ydata([y, y])


def _layout(fig: Figure | SubFigure, planes: Sequence[str], grid: _Grid) -> dict[str, tuple[Axes, str, str]]:
    """Axes per plane with their (row, column) axes; width/height ratios follow µm extents."""
    if _is_ortho(planes):
        gs = fig.add_gridspec(2, 2, width_ratios=[grid.length("x"), grid.length("z")],
                              height_ratios=[grid.length("y"), grid.length("z")])
        cells = {"xy": gs[0, 0], "yz": gs[0, 1], "xz": gs[1, 0]}
        return {p: (fig.add_subplot(cells[p]), *_ORTHO_AXES[p]) for p in PLANES}
    gs = fig.add_gridspec(1, len(planes), width_ratios=[grid.length(_AXES[p][1]) for p in planes])
    return {p: (fig.add_subplot(gs[0, i]), *_AXES[p]) for i, p in enumerate(planes)}


def _add_legend(fig: Figure | SubFigure, axes: Sequence[Axes], handles: list[Any]) -> Any:
    if not handles:
        return None
    if isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine):
        return fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4),
                          frameon=False, fontsize=9)
    # in a figure laid out by the caller there is no reserved margin: stay inside the first axes
    return axes[0].legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.8)


def _check_planes(planes: Sequence[str] | str) -> tuple[str, ...]:
    planes = (planes,) if isinstance(planes, str) else tuple(planes)
    bad = [p for p in planes if p not in PLANES]
    if not planes or bad or len(set(planes)) != len(planes):
        raise ValueError(f"planes must be distinct names among {PLANES}, got {planes!r}")
    return planes


def _check_alpha(alpha: float) -> float:
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha (label opacity) must lie in [0, 1], got {alpha!r}")
    return float(alpha)


# -- static figure ------------------------------------------------------------------
def show_slices(
    volume: xr.DataArray | xr.Dataset,
    labels: xr.DataArray | None = None,
    *,
    planes: Sequence[str] | str = PLANES,
    positions: Positions = None,
    classes: Iterable[str] | None = None,
    alpha: float = 0.4,
    reference: xr.DataArray | None = None,
    cmap: str = "gray",
    clim: tuple[float, float] | None = None,
    crosshairs: bool = True,
    scale_bar: bool = True,
    ax: Axes | Sequence[Axes] | None = None,
    fig: Figure | SubFigure | None = None,
) -> Figure | SubFigure:
    """Draw orthogonal slices of a volume with its label overlay as a static figure.

    Parameters
    ----------
    volume : xarray.DataArray or xarray.Dataset
        Image with dims ``(z, y, x)`` (LAC in µm⁻¹ or gray values), or a
        segmentation Dataset whose ``lac`` is shown and ``labels`` overlaid.
    labels : xarray.DataArray, optional
        Integer label volume on the image's grid with a ``classes`` attr; drawn
        filled in the class colours. Overrides a Dataset's ``labels``.
    planes : sequence of {"xy", "xz", "yz"}
        Planes to draw. All three give the orthogonal layout (``xz`` below ``xy``,
        ``yz`` right of it with ``z`` across); fewer are drawn in a row.
    positions : mapping or (z, y, x), optional
        Where the planes cut, in µm (voxel indices when the voxel size is
        unknown), e.g. ``{"z": 1.2}``; missing or ``None`` axes cut at the centre.
    classes : iterable of str, optional
        Class names (synonyms allowed) to overlay; default all in the labels.
    alpha : float
        Opacity of the filled overlay, 0 to 1.
    reference : xarray.DataArray, optional
        A second label volume (e.g. the annotation, to compare with a
        prediction in ``labels``) drawn as class-coloured outlines.
    cmap : str
        Colour map of the image.
    clim : (float, float), optional
        Colour limits; default the 0.5–99.5 percentiles of the drawn slices.
    crosshairs : bool
        In the three-view layout, mark where the other planes cut.
    scale_bar : bool
        Draw a scale bar (µm) in each panel; never drawn in voxel units.
    ax : Axes or sequence of Axes, optional
        Draw into these axes, one per plane (then the legend goes inside the first).
    fig : Figure or SubFigure, optional
        Draw into this (empty) figure; by default a new constrained-layout
        :class:`~matplotlib.figure.Figure`, not registered with pyplot.

    Returns
    -------
    matplotlib.figure.Figure or SubFigure
        The figure drawn into, with a colour bar (``"LAC [µm⁻¹]"`` or ``"gray
        value"``) and a legend naming the classes shown. In a notebook it
        displays as the cell's value; save it with ``fig.savefig(path)``.

    Raises
    ------
    FormatError
        If the volume is not 3-D ``(z, y, x)`` or the labels are not on its grid.
    ValueError
        If a plane, position, class or ``alpha`` is invalid, or both ``ax`` and
        ``fig`` are given.

    Examples
    --------
    >>> fig = show_slices(segmentation, positions={"z": 1.5}, classes=["nucleus"])  # doctest: +SKIP
    >>> fig.savefig("cell.png", dpi=300)  # doctest: +SKIP
    """
    image, lab, ref = _inputs(volume, labels, reference)
    planes = _check_planes(planes)
    alpha = _check_alpha(alpha)
    grid = _Grid.of(image)
    index = grid.indices(positions)
    names = _overlay_names(lab[1] if lab else None, ref[1] if ref else None)
    shown = _selected(classes, names)
    if ax is not None and fig is not None:
        raise ValueError("give either ax= or fig=, not both")
    if ax is not None:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
        if len(axes) != len(planes):
            raise ValueError(f"ax: expected {len(planes)} axes for planes {planes}, got {len(axes)}")
        fig = axes[0].figure
        layout = {p: (a, *_AXES[p]) for p, a in zip(planes, axes)}
    else:
        if fig is None:
            fig = NotebookFigure(figsize=_figsize(planes, grid), layout="constrained")
        layout = _layout(fig, planes, grid)

    slices = {p: _take(image, p, index[_NORMAL[p]]) for p in planes}
    norm = Normalize(*(clim if clim is not None else _robust_clim(slices.values())))
    ortho = _is_ortho(planes)
    panels = []
    for p, (a, row, col) in layout.items():
        panel = _Panel(a, p, row, col, grid, cmap=cmap, norm=norm, crosshairs=crosshairs and ortho,
                       scale_bar=scale_bar)
        i = index[_NORMAL[p]]
        panel.show(slices[p], i)
        panel.show_overlay(_take(lab[0], p, i) if lab else None, _lut(lab[1], shown, alpha) if lab else None)
        panel.show_outlines(_take(ref[0], p, i) if ref else None, ref[1] if ref else None, shown)
        panel.set_crosshair(index)
        panels.append(panel)
    axes_list = [p.ax for p in panels]
    fig.colorbar(panels[0].image, ax=axes_list, label=_value_label(image), shrink=0.8)
    fill = [n for n in shown if lab and n in lab[1].values()]
    outline = [n for n in shown if ref and n in ref[1].values()]
    _add_legend(fig, axes_list, _legend_handles(fill, outline))
    return fig


# -- interactive viewer -------------------------------------------------------------
def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


@contextmanager
def _matplotlib_state_kept() -> Iterator[None]:
    """Restore matplotlib's backend and interactive mode as they were on entry.

    ``import ipympl`` makes ipympl pyplot's backend (its ``__init__`` calls
    ``matplotlib.use``); the viewer only needs its canvas class, so a notebook's
    later pyplot figures must still go to the backend the user had (inline).
    """
    # The raw rcParam: reading rcParams["backend"] would resolve (and import) a
    # backend that nobody has chosen yet.
    backend = dict.__getitem__(matplotlib.rcParams, "backend")
    interactive = matplotlib.is_interactive()
    try:
        yield
    finally:
        if dict.__getitem__(matplotlib.rcParams, "backend") != backend:
            if backend is rcsetup._auto_backend_sentinel or "matplotlib.pyplot" not in sys.modules:
                dict.__setitem__(matplotlib.rcParams, "backend", backend)
            else:
                import matplotlib.pyplot as plt

                plt.switch_backend(backend)
        matplotlib.interactive(interactive)


def _pick_backend(backend: str) -> Literal["ipympl", "static"]:
    if backend not in ("auto", "ipympl", "static"):
        raise ValueError(f"backend must be 'auto', 'ipympl' or 'static', got {backend!r}")
    if backend == "static":
        return "static"
    try:
        with _matplotlib_state_kept():
            import ipympl.backend_nbagg  # noqa: F401
    except ImportError:
        if backend == "ipympl":
            raise ImportError("backend='ipympl' needs the ipympl package: pip install ipympl") from None
        return "static"
    # outside a kernel (scripts, tests, nbconvert) no front end draws a live canvas
    return "ipympl" if backend == "ipympl" or _in_kernel() else "static"


@dataclass
class _Slice:
    index: int
    image: np.ndarray
    labels: np.ndarray | None
    reference: np.ndarray | None


class SliceViewer:
    """Interactive slice viewer for a volume and its labels, for JupyterLab.

    The figure is built once per layout (one plane, or three orthogonal views);
    the sliders, class toggles and opacity slider update the drawn arrays in
    place (``set_data``), and only the displayed slices are read, so dask-backed
    volumes stay lazy. Positions are in µm (voxels when the voxel size is unknown).

    Parameters
    ----------
    volume : xarray.DataArray or xarray.Dataset
        Image with dims ``(z, y, x)`` in LAC (µm⁻¹) or gray values, or a
        segmentation Dataset (its ``lac`` is shown, its ``labels`` overlaid).
    labels : xarray.DataArray, optional
        Integer label volume with a ``classes`` attr on the image's grid (checked
        with :func:`sxtlab.volume.check_same_grid`); overrides a Dataset's labels.
    reference : xarray.DataArray, optional
        A second label volume drawn as outlines, e.g. the sparse annotation to
        compare with a prediction in ``labels``.
    plane : {"xy", "xz", "yz", "ortho"}
        Initial view; ``"ortho"`` shows all three planes.
    positions : mapping or (z, y, x), optional
        Initial cut positions in µm (voxels when unknown); default the centre.
    classes : iterable of str, optional
        Classes toggled on at first; default all.
    alpha : float
        Initial label opacity, 0 to 1.
    cmap : str
        Colour map of the image.
    clim : (float, float), optional
        Colour limits; default the 0.5–99.5 percentiles of the first slices shown,
        kept fixed so that the contrast does not jump while scrolling.
    backend : {"auto", "ipympl", "static"}
        ``"ipympl"`` draws a live canvas (needs ``ipympl`` in the kernel and in
        JupyterLab) whose readout follows the cursor; ``"static"`` re-renders a
        PNG into an image widget after each change. ``"auto"`` takes ipympl when
        it is installed and a kernel is running.

    Attributes
    ----------
    plane : ipywidgets.ToggleButtons
        ``"xy"``, ``"xz"``, ``"yz"`` or ``"ortho"``.
    sliders : dict of str to ipywidgets.SelectionSlider
        One per axis ``"z"``, ``"y"``, ``"x"``; ``.value`` is the voxel index and the
        readout its position in µm. Only the current plane's slider is shown, all
        three in the orthogonal view.
    opacity : ipywidgets.FloatSlider
        Label opacity.
    class_toggles : dict of str to ipywidgets.Checkbox
        One per class (canonical name) in the labels or the reference.
    readout : ipywidgets.Label
        Slice position, or the position (µm), value and class under the cursor.
    figure : matplotlib.figure.Figure
        The figure; ``figure.savefig(path)`` saves what is shown.
    panels : dict
        The drawn planes by name; each has ``.ax``, ``.image`` (the image
        artist), ``.overlay`` (the RGBA label artist) and ``.outlines``.
    widget : ipywidgets.VBox
        The whole viewer; display it (or the viewer itself) in a cell.

    Examples
    --------
    >>> viewer = SliceViewer(segmentation, plane="ortho")  # doctest: +SKIP
    >>> viewer  # displays in a notebook cell  # doctest: +SKIP
    >>> viewer.slider.value = 10          # go to slice 10 along the plane's normal  # doctest: +SKIP
    >>> viewer.class_toggles["nucleus"].value = False  # doctest: +SKIP
    """

    def __init__(
        self,
        volume: xr.DataArray | xr.Dataset,
        labels: xr.DataArray | None = None,
        *,
        reference: xr.DataArray | None = None,
        plane: str = "xy",
        positions: Positions = None,
        classes: Iterable[str] | None = None,
        alpha: float = 0.4,
        cmap: str = "gray",
        clim: tuple[float, float] | None = None,
        backend: str = "auto",
    ) -> None:
        import ipywidgets as widgets

        if plane not in (*PLANES, "ortho"):
            raise ValueError(f"plane must be one of {(*PLANES, 'ortho')}, got {plane!r}")
        self.volume, lab, ref = _inputs(volume, labels, reference)
        self.labels, self._label_classes = lab if lab else (None, None)
        self.reference, self._reference_classes = ref if ref else (None, None)
        self._grid = _Grid.of(self.volume)
        names = _overlay_names(self._label_classes, self._reference_classes)
        shown = _selected(classes, names)
        index = self._grid.indices(positions)
        self._backend = _pick_backend(backend)
        self._cmap = cmap
        self._clim = None if clim is None else (float(clim[0]), float(clim[1]))
        self._slices: dict[str, _Slice] = {}
        self._legend: Any = None
        self.panels: dict[str, _Panel] = {}

        live = self._backend == "ipympl"
        self.plane = widgets.ToggleButtons(
            options=[("xy", "xy"), ("xz", "xz"), ("yz", "yz"), ("3 views", "ortho")], value=plane,
            description="plane", style={"button_width": "64px"})
        # SelectionSlider: the value is the voxel index, the readout its position in µm;
        # without a live canvas every change re-renders a PNG, so update on release only
        self.sliders = {
            d: widgets.SelectionSlider(
                options=[(self._grid.label(d, i), i) for i in range(self._grid.size(d))], value=index[d],
                description=d, continuous_update=live, layout=widgets.Layout(width="420px"))
            for d in DIMS
        }
        self.opacity = widgets.FloatSlider(value=_check_alpha(alpha), min=0.0, max=1.0, step=0.05,
                                           description="opacity", continuous_update=live,
                                           disabled=not names)
        self.class_toggles = {n: widgets.Checkbox(value=n in shown, description=_display_name(n), indent=False,
                                                  layout=widgets.Layout(width="auto"))
                              for n in names}
        self.readout = widgets.Label()

        self.figure = NotebookFigure(layout="constrained", dpi=100)
        if live:
            from ipympl.backend_nbagg import Canvas, FigureManager

            canvas = Canvas(self.figure)
            with warnings.catch_warnings():
                # ipympl's Toolbar passes its canvas on to traitlets, which warns; harmless
                warnings.filterwarnings("ignore", "Passing unrecognized arguments", DeprecationWarning)
                with _matplotlib_state_kept():
                    FigureManager(canvas, 0)  # gives the canvas its pan/zoom toolbar
            canvas.header_visible = False
            canvas.footer_visible = False  # the readout label below says more
            self._png_widget = None
            view = canvas
        else:
            FigureCanvasAgg(self.figure)
            self._png_widget = widgets.Image(format="png")
            view = self._png_widget
        self.figure.canvas.mpl_connect("motion_notify_event", self._on_motion)

        self._build()

        for d, slider in self.sliders.items():
            slider.observe(lambda change, d=d: self._on_position(d), names="value")
        self.plane.observe(lambda change: self._build(), names="value")
        self.opacity.observe(lambda change: self._restyle(), names="value")
        for toggle in self.class_toggles.values():
            toggle.observe(lambda change: self._restyle(), names="value")

        toggles = [widgets.HBox([widgets.HTML(self._swatch(n)), t]) for n, t in self.class_toggles.items()]
        self.widget = widgets.VBox([
            widgets.HBox([self.plane, self.opacity]),
            widgets.HBox(list(self.sliders.values()), layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox(toggles, layout=widgets.Layout(flex_flow="row wrap")),
            view,
            self.readout,
        ])

    # -- public -------------------------------------------------------------------
    @property
    def slider(self) -> ipywidgets.SelectionSlider:
        """The slider along the current plane's normal (``z`` in the three-view layout)."""
        return self.sliders["z" if self.plane.value == "ortho" else _NORMAL[self.plane.value]]

    def position(self) -> dict[str, float]:
        """Current cut position ``{"z": ..., "y": ..., "x": ...}`` in µm (voxels when unknown)."""
        return {d: float(self._grid.centres[d][s.value]) for d, s in self.sliders.items()}

    def to_png(self) -> bytes:
        """The figure as shown, as PNG bytes."""
        # one Agg draw and a light PNG compression: savefig would draw twice and
        # compress hard, which the static view pays on every slider step
        canvas = self.figure.canvas  # Agg for the static view; ipympl's canvas derives from Agg
        canvas.draw()
        buf = io.BytesIO()
        PIL.Image.fromarray(np.asarray(canvas.buffer_rgba())).save(buf, format="png", compress_level=1)
        return buf.getvalue()

    def close(self) -> None:
        """Close the widgets (and their front-end views)."""
        def close(widget: Any) -> None:
            for child in getattr(widget, "children", ()):
                close(child)
            widget.close()

        close(self.widget)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle = dict(self.widget._repr_mimebundle_(include=include, exclude=exclude))
        # front ends without a widget manager (nbconvert, GitHub) fall back to the picture
        bundle["image/png"] = base64.b64encode(self.to_png()).decode("ascii")
        return bundle

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)

    def __repr__(self) -> str:
        classes = ", ".join(self.class_toggles) or "none"
        return (f"<SliceViewer {self.volume.name or 'volume'} {dict(self.volume.sizes)} "
                f"({_value_label(self.volume)}), classes: {classes}, plane {self.plane.value}>")

    # -- drawing ------------------------------------------------------------------
    def _planes(self) -> tuple[str, ...]:
        return PLANES if self.plane.value == "ortho" else (self.plane.value,)

    def _shown(self) -> list[str]:
        return [n for n, t in self.class_toggles.items() if t.value]

    def _build(self) -> None:
        """Lay out the figure for the current plane choice (the number and shape of axes change)."""
        fig = self.figure
        fig.clear()
        self._legend = None
        planes = self._planes()
        fig.set_size_inches(_figsize(planes, self._grid))
        for d, slider in self.sliders.items():
            slider.layout.display = None if any(_NORMAL[p] == d for p in planes) else "none"
        for p in planes:
            self._fetch(p)
        if self._clim is None:
            self._clim = _robust_clim(self._slices[p].image for p in planes)
        norm = Normalize(*self._clim)
        ortho = len(planes) == 3
        self.panels = {}
        for p, (ax, row, col) in _layout(fig, planes, self._grid).items():
            panel = _Panel(ax, p, row, col, self._grid, cmap=self._cmap, norm=norm, crosshairs=ortho,
                           scale_bar=True)
            ax.format_coord = lambda x, y, panel=panel: self._describe(panel, x, y)
            self.panels[p] = panel
        axes = [p.ax for p in self.panels.values()]
        fig.colorbar(next(iter(self.panels.values())).image, ax=axes, label=_value_label(self.volume),
                     shrink=0.8)
        for p in planes:
            self.panels[p].show(self._slices[p].image, self._slices[p].index)
        self._update_crosshairs()
        self._restyle(redraw=False)
        self.readout.value = self._position_text()
        self._redraw()

    def _fetch(self, plane: str) -> _Slice:
        """Read the plane's slice at the slider's index unless it is cached."""
        i = self.sliders[_NORMAL[plane]].value
        cached = self._slices.get(plane)
        if cached is None or cached.index != i:
            cached = _Slice(
                i, _take(self.volume, plane, i),
                None if self.labels is None else _take(self.labels, plane, i),
                None if self.reference is None else _take(self.reference, plane, i))
            self._slices[plane] = cached
        return cached

    def _restyle(self, *, redraw: bool = True) -> None:
        """Redraw overlays, outlines and legend from the cached slices (nothing is read)."""
        shown = self._shown()
        lut = None if self._label_classes is None else _lut(self._label_classes, shown, self.opacity.value)
        for p, panel in self.panels.items():
            s = self._slices[p]
            panel.show_overlay(s.labels, lut)
            panel.show_outlines(s.reference, self._reference_classes, shown)
        if self._legend is not None:
            self._legend.remove()
        fill = [n for n in shown if self._label_classes and n in self._label_classes.values()]
        outline = [n for n in shown if self._reference_classes and n in self._reference_classes.values()]
        self._legend = _add_legend(self.figure, [p.ax for p in self.panels.values()],
                                   _legend_handles(fill, outline))
        if redraw:
            self._redraw()

    def _update_crosshairs(self) -> None:
        index = {d: s.value for d, s in self.sliders.items()}
        for panel in self.panels.values():
            panel.set_crosshair(index)

    def _redraw(self) -> None:
        if self._png_widget is None:
            self.figure.canvas.draw_idle()
        else:
            self._png_widget.value = self.to_png()

    # -- events -------------------------------------------------------------------
    def _on_position(self, d: str) -> None:
        shown = self._shown()
        lut = None if self._label_classes is None else _lut(self._label_classes, shown, self.opacity.value)
        for p, panel in self.panels.items():
            if _NORMAL[p] == d:
                s = self._fetch(p)
                panel.show(s.image, s.index)
                panel.show_overlay(s.labels, lut)
                panel.show_outlines(s.reference, self._reference_classes, shown)
        self._update_crosshairs()
        self.readout.value = self._position_text()
        self._redraw()

    def _on_motion(self, event: Any) -> None:
        panel = next((p for p in self.panels.values() if p.ax is event.inaxes), None)
        if panel is None or event.xdata is None or event.ydata is None:
            self.readout.value = self._position_text()
        else:
            self.readout.value = self._describe(panel, event.xdata, event.ydata)

    # -- readout ------------------------------------------------------------------
    def _voxel_text(self, index: Mapping[str, int]) -> str:
        """Position, value and classes of one voxel, read from the cached slices."""
        g = self._grid
        # any displayed plane through the voxel holds it; pick one whose normal index matches
        plane = next(p for p in self._slices if self._slices[p].index == index[_NORMAL[p]]
                     and p in self.panels)
        s = self._slices[plane]
        row, col = _AXES[plane]
        r, c = index[row], index[col]
        parts = [", ".join(f"{d} = {g.label(d, index[d])}" for d in ("x", "y", "z"))
                 + ("" if g.physical else " [voxel]"),
                 _value_text(self.volume, float(s.image[r, c]))]
        if s.labels is not None:
            parts.append(self._class_text(int(s.labels[r, c]), self._label_classes))
        if s.reference is not None:
            parts.append("reference: " + self._class_text(int(s.reference[r, c]), self._reference_classes))
        return "  ·  ".join(parts)

    def _describe(self, panel: _Panel, x: float, y: float) -> str:
        """Text for the cursor at data coordinates (x, y) of a panel."""
        index = {d: s.value for d, s in self.sliders.items()}
        index[panel.col] = self._grid.index(panel.col, x, clip=True)
        index[panel.row] = self._grid.index(panel.row, y, clip=True)
        return self._voxel_text(index)

    def _position_text(self) -> str:
        planes = self._planes()
        if len(planes) == 3:
            # without a cursor, the voxel where the three planes cross is the one to read out
            return "crossing point: " + self._voxel_text({d: s.value for d, s in self.sliders.items()})
        d = _NORMAL[planes[0]]
        i = self.sliders[d].value
        hint = "; point at the image for values" if self._png_widget is None else ""
        return f"{planes[0]} slice {i + 1} of {self._grid.size(d)} at {d} = {self._grid.label(d, i)}{hint}"

    @staticmethod
    def _class_text(value: int, classes: dict[int, str] | None) -> str:
        if value == UNANNOTATED:
            return "unannotated"
        if value == BACKGROUND:
            return "background"
        name = (classes or {}).get(value)
        return _display_name(name) if name else f"label {value}"

    @staticmethod
    def _swatch(name: str) -> str:
        r, g, b = (int(round(255 * v)) for v in colour(name))
        return (f'<span style="display:inline-block;width:14px;height:14px;margin-top:8px;'
                f'background:rgb({r},{g},{b});border:1px solid #444"></span>')
