"""Tests of sxtlab.plot: labels with units, one artist per class and condition, layout.

Headless (Agg); figures are made without pyplot. Artists are found by their gid.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sxtlab import plot  # noqa: E402
from sxtlab.classes import colour  # noqa: E402
from sxtlab.stats import MissingColumnError  # noqa: E402

CLASSES = ("lipid_body", "nucleus", "mitochondria")  # not in vocabulary order, on purpose


@pytest.fixture
def table() -> pd.DataFrame:
    """Instances of 2 conditions × 5 cells; treated lipid bodies have higher LAC."""
    rng = np.random.default_rng(0)
    rows = []
    for k, condition in enumerate(["control", "treated"]):
        for c in range(5):
            for name in CLASSES:
                for i in range(1 if name == "nucleus" else 4):
                    rows.append({"cell_id": f"{condition}-{c}", "cell": 1, "condition": condition,
                                 "class": name, "instance": i + 1,
                                 "lac_mean_per_um": 0.3 + 0.2 * k * (name == "lipid_body") + rng.normal(0, 0.01),
                                 "volume_um3": rng.lognormal(-3 + 3 * (name == "nucleus"), 0.8),
                                 "volume_fraction": rng.uniform(0.01, 0.1)})
    return pd.DataFrame(rows)


def gids(fig: Figure, prefix: str) -> list[str]:
    return sorted(a.get_gid() for a in fig.findobj(lambda a: str(a.get_gid()).startswith(prefix)))


def ticklabels_overlap(ax, draw: bool = True) -> bool:
    """Whether drawn x tick labels overlap: their boxes if level, their baselines' gap if slanted."""
    if draw:
        ax.figure.figure.draw_without_rendering()
    lo, hi = sorted(ax.get_xlim())
    texts = [t for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
    if len(texts) < 2:
        return False
    angle = texts[0].get_rotation()
    if angle == 0:
        boxes = sorted((t.get_window_extent() for t in texts), key=lambda b: b.x0)
        return any(a.x1 > b.x0 for a, b in zip(boxes, boxes[1:]))
    # parallel slanted labels: the gap between baselines, perpendicular to the text, vs its height
    height = max(t.get_fontsize() for t in texts) * ax.figure.figure.dpi / 72
    anchors = np.sort([ax.transData.transform((t.get_position()[0], 0))[0] for t in texts])
    return np.diff(anchors).min() * np.sin(np.radians(angle)) < height


@pytest.mark.parametrize("column, label", [
    ("volume_um3", "volume [µm³]"),
    ("lac_mean_per_um", "mean LAC [µm⁻¹]"),
    ("lac_std_per_um", "SD of LAC [µm⁻¹]"),
    ("gray_mean", "mean gray value"),
    ("gray_integrated_um3", "integrated gray value [µm³]"),
    ("distance_um", "distance [µm]"),
    ("surface_area_um2", "surface area [µm²]"),
    ("equivalent_diameter_um", "equivalent diameter [µm]"),
    ("axis_major_length_um", "major axis length [µm]"),
    ("integrated_absorption_um2", "integrated absorption [µm²]"),
    ("integrated_absorption_voxels_per_um", "integrated absorption [voxel·µm⁻¹]"),
    ("volume_voxels", "volume [voxels]"),
    ("surface_area_voxels2", "surface area [voxel²]"),
    ("volume_fraction", "volume fraction"),
    ("sphericity", "sphericity"),
    ("dice_lipid_body", "Dice (lipid body)"),
    ("train_loss", "training loss"),
    ("elapsed_s", "elapsed time [s]"),
])
def test_axis_label(column, label):
    assert plot.axis_label(column) == label


# -- per class ---------------------------------------------------------------------------
def test_per_class_one_box_and_point_group_per_class_and_condition(table):
    fig = plot.per_class(table)
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and fig.canvas.manager is None  # not registered with pyplot
    assert ax.get_ylabel() == "mean LAC [µm⁻¹]"
    # vocabulary order, display names
    assert [t.get_text() for t in ax.get_xticklabels()] == ["nucleus", "mitochondria", "lipid body"]
    expected = sorted(f"{n}:{c}" for n in CLASSES for c in ("control", "treated"))
    assert [g.removeprefix("box:") for g in gids(fig, "box:")] == expected
    assert [g.removeprefix("points:") for g in gids(fig, "points:")] == expected
    # one point per cell (per-cell aggregation), boxes filled with the class colour
    (points,) = fig.findobj(lambda a: a.get_gid() == "points:lipid_body:treated")
    assert len(points.get_offsets()) == 5
    assert np.allclose(points.get_offsets()[:, 1].min(), 0.45, atol=0.05)
    (box,) = fig.findobj(lambda a: a.get_gid() == "box:mitochondria:control")
    assert np.allclose(box.get_facecolor()[:3], colour("mitochondria"))
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["control", "treated"]
    assert legend.get_title().get_text() == "condition; one point per cell (median of its instances)"


def test_per_class_conditions_differ_by_marker_and_hatch(table):
    fig = plot.per_class(table)
    (a,) = fig.findobj(lambda x: x.get_gid() == "box:nucleus:control")
    (b,) = fig.findobj(lambda x: x.get_gid() == "box:nucleus:treated")
    assert a.get_hatch() != b.get_hatch()
    (p,) = fig.findobj(lambda x: x.get_gid() == "points:nucleus:control")
    (q,) = fig.findobj(lambda x: x.get_gid() == "points:nucleus:treated")
    assert not np.array_equal(p.get_paths()[0].vertices, q.get_paths()[0].vertices)
    # side by side within the class's slot: control left of treated
    assert p.get_offsets()[:, 0].max() < q.get_offsets()[:, 0].min()


def test_per_class_instances_violin_and_options(table):
    fig = plot.per_class(table, "volume_um3", kind="violin", aggregate=None, log=True, order=["treated", "control"],
                         classes=["lipid_body"])
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "volume [µm³]"
    (points,) = fig.findobj(lambda a: a.get_gid() == "points:lipid_body:control")
    assert len(points.get_offsets()) == 20  # every instance
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["treated", "control"]
    assert ax.get_legend().get_title().get_text().endswith("one point per instance")
    assert len(gids(fig, "box:")) == 2


def test_per_class_without_conditions_and_with_one_value(table):
    fig = plot.per_class(table[table["cell_id"] == "control-0"], by=None, kind="violin")
    assert gids(fig, "points:") == ["points:lipid_body", "points:mitochondria", "points:nucleus"]
    assert gids(fig, "box:") == []  # one value per class: no density to draw
    assert fig.axes[0].get_legend() is None


def test_per_class_log_leaves_out_zeros_with_a_warning(table):
    table.loc[0, "volume_um3"] = 0.0
    with pytest.warns(UserWarning, match="1 values of 'volume_um3' <= 0 are not shown"):
        plot.per_class(table, "volume_um3", aggregate=None, log=True)


def test_many_classes_and_conditions_do_not_overlap():
    names = ["cell", "cytoplasm", "nucleus", "nucleolus", "mitochondria", "lipid_body", "vacuole",
             "starch_granule"]
    rows = [{"cell_id": f"{k}{c}", "condition": f"condition {k}", "class": n, "volume_fraction": 0.1 * c}
            for k in "ABC" for c in range(3) for n in names]
    fig = plot.per_class(pd.DataFrame(rows), "volume_fraction")
    ax = fig.axes[0]
    assert not ticklabels_overlap(ax)
    assert len(gids(fig, "box:")) == 8 * 3
    assert ax.get_legend().get_window_extent().y0 >= ax.get_window_extent().y1 - 1  # above the data


def test_volume_fractions_leave_out_cell_and_cytoplasm(table):
    extra = table.drop_duplicates("cell_id").assign(**{"class": "cell", "volume_fraction": 1.0})
    fig = plot.volume_fractions(pd.concat([table, extra]))
    ax = fig.axes[0]
    assert ax.get_ylabel() == "volume fraction"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["nucleus", "mitochondria", "lipid body"]


def test_per_class_errors(table):
    with pytest.raises(MissingColumnError, match="'gray_mean'.*Available columns: cell_id"):
        plot.per_class(table, "gray_mean")
    with pytest.raises(ValueError, match="kind must be"):
        plot.per_class(table, kind="bar")
    with pytest.raises(ValueError, match="classes \\['vacuole'\\] have no values"):
        plot.per_class(table, classes=["vacuole"])
    with pytest.raises(ValueError, match="'lac_mean_per_um' has no values to plot \\(all 90 rows"):
        plot.per_class(table.assign(lac_mean_per_um=np.nan))


# -- distributions -------------------------------------------------------------------------
def test_sizes_one_panel_per_class_one_curve_per_condition(table):
    fig = plot.sizes(table)
    assert len(fig.axes) == 3
    for ax, name in zip(fig.axes, ["nucleus", "mitochondria", "lipid body"]):
        assert ax.get_xlabel() == "volume [µm³]"
        legend = ax.get_legend()
        assert legend.get_title().get_text() == name
        assert legend.get_window_extent().y0 >= ax.get_window_extent().y1 - 1  # never over a curve
    assert fig.axes[0].get_ylabel() == "cumulative fraction of instances"
    assert [t.get_text() for t in fig.axes[2].get_legend().get_texts()] == [
        "control: 20 instances, 5 cells", "treated: 20 instances, 5 cells"]
    assert gids(fig, "ecdf:lipid_body") == ["ecdf:lipid_body:control", "ecdf:lipid_body:treated"]
    (a,) = fig.findobj(lambda x: x.get_gid() == "ecdf:lipid_body:control")
    (b,) = fig.findobj(lambda x: x.get_gid() == "ecdf:lipid_body:treated")
    assert a.get_linestyle() != b.get_linestyle()
    assert np.allclose(to_rgb(a.get_color()), colour("lipid_body"))
    # "auto" log: lipid volumes (lognormal, σ 0.8) span more than a decade, nuclei (5 per condition) less
    assert fig.axes[2].get_xscale() == "log"


def test_sizes_histogram_and_axes_given(table):
    fig = Figure()
    axes = fig.subplots(1, 2)
    out = plot.sizes(table, "volume_um3", kind="hist", classes=["lipid_body", "mitochondria"], log=True, ax=axes)
    assert out is fig
    assert axes[0].get_legend().get_title().get_text() == "lipid body"
    assert axes[0].get_ylabel() == "fraction of instances per bin"
    assert len(gids(fig, "hist:")) == 4
    with pytest.raises(ValueError, match="3 panels \\(one per class\\): ax must be a sequence of 3 Axes"):
        plot.sizes(table, ax=axes)


def test_axes_in_a_subfigure_return_the_whole_figure(table):
    fig = Figure(layout="constrained")
    left, right = fig.subfigures(1, 2)
    ax = right.subplots()
    assert plot.per_class(table, "volume_um3", ax=ax) is fig
    assert ax.get_ylabel() == "volume [µm³]"
    with pytest.raises(ValueError, match="1 panel \\(one axes\\): ax must be one Axes"):
        plot.per_class(table, ax=[ax, ax])


def test_sizes_log_with_zeros_is_an_error(table):
    table.loc[0, "volume_um3"] = 0.0
    with pytest.raises(ValueError, match="1 values <= 0"):
        plot.sizes(table, log=True)


@pytest.fixture
def distance_table() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for k, condition in enumerate(["control", "treated"]):
        for c in range(4):
            for target, boundary in [("nucleus", False), ("cell", True)]:
                for i in range(5):
                    rows.append({"cell_id": f"{condition}{c}", "cell": 1, "condition": condition,
                                 "class": "lipid_body", "instance": i + 1, "target_class": target,
                                 "to_boundary": boundary, "distance_um": max(0.0, rng.normal(0.2 + 0.2 * k, 0.2))})
    return pd.DataFrame(rows)


def test_distances_one_panel_per_pair(distance_table):
    fig = plot.distances(distance_table)
    titles = [ax.get_legend().get_title().get_text() for ax in fig.axes]
    assert titles == ["lipid body → cell boundary", "lipid body → nucleus"]
    assert all(ax.get_xlabel() == "distance [µm]" for ax in fig.axes)
    assert gids(fig, "ecdf:lipid_body->nucleus") == ["ecdf:lipid_body->nucleus:control",
                                                     "ecdf:lipid_body->nucleus:treated"]
    one = plot.distances(distance_table, pairs=[("lipid_body", "nucleus")])
    assert len(one.axes) == 1
    with pytest.raises(ValueError, match="have no distances"):
        plot.distances(distance_table, pairs=[("mitochondria", "nucleus")])
    with pytest.raises(MissingColumnError, match="'target_class'"):
        plot.distances(distance_table.drop(columns="target_class"))


# -- training history ------------------------------------------------------------------------
def history_table(stages=("stage 1", "stage 2")) -> pd.DataFrame:
    rows = []
    for stage in stages:
        for step in range(50, 301, 50):
            dice = {"dice_nucleus": 0.5 + step / 1000, "dice_lipid_body": 0.2 + step / 600}
            rows.append({"stage": stage, "step": step, "train_loss": 1.0 / step ** 0.5, **dice,
                         "mean_dice": np.mean(list(dice.values())), "best": True})
    return pd.DataFrame(rows)


def test_history_loss_and_dice_per_class():
    fig = plot.history(history_table())
    loss, dice = fig.axes[:2]
    assert loss.get_ylabel() == "training loss" and loss.get_yscale() == "log"
    assert dice.get_ylabel() == "validation Dice"
    assert loss.get_xlabel() == "training step (stages end to end)"
    assert [t.get_text() for t in dice.get_legend().get_texts()] == ["nucleus", "lipid body", "mean", "best (kept)"]
    (line,) = fig.findobj(lambda a: a.get_gid() == "dice:lipid_body:stage 2")
    assert np.allclose(to_rgb(line.get_color()), colour("lipid_body"))
    assert line.get_xdata()[0] == 300 + 50  # stage 2 follows stage 1
    (best,) = fig.findobj(lambda a: a.get_gid() == "best:stage 1")
    assert best.get_xdata()[0] == 300  # the highest mean Dice
    (top,) = loss.child_axes  # stage names along the top
    assert [t.get_text() for t in top.get_xticklabels()] == ["stage 1", "stage 2"]


def test_history_without_validation_or_stages():
    fig = plot.history(history_table()[["step", "train_loss"]].iloc[:6], log_loss=False)
    assert len(fig.axes) == 1 and fig.axes[0].get_xlabel() == "training step"
    assert fig.axes[0].get_yscale() == "linear"
    with pytest.raises(MissingColumnError, match="history has no column 'train_loss'"):
        plot.history(pd.DataFrame({"step": [1]}))


def test_every_plot_renders(table, distance_table, tmp_path):
    figures = {"per_class": plot.per_class(table), "volume_fractions": plot.volume_fractions(table),
               "sizes": plot.sizes(table), "distances": plot.distances(distance_table),
               "history": plot.history(history_table(["stage 1", "stage 1 fold 0", "stage 1 fold 1", "stage 2"]))}
    for name, fig in figures.items():
        fig.savefig(tmp_path / f"plot_{name}.png", dpi=60)  # also lays the figure out
        assert (tmp_path / f"plot_{name}.png").stat().st_size > 1000
        for ax in fig.axes:
            for a in [ax, *ax.child_axes]:
                assert not ticklabels_overlap(a, draw=False), (name, [t.get_text() for t in a.get_xticklabels()])


def test_cut_objects_are_hollow_and_out_of_the_boxes():
    t = pd.DataFrame({"cell_id": "c0", "cell": 1, "class": ["cell", "cell", "cell", "lipid_body"],
                      "volume_um3": [40.0, 3.0, 50.0, 0.01], "touches_border": [False, True, False, False]})
    fig = plot.per_class(t, "volume_um3", by=None, aggregate=None)
    ax = fig.axes[0]
    gids = {a.get_gid(): a for a in ax.get_children() if a.get_gid()}
    assert sorted(gids["points:cell"].get_offsets()[:, 1]) == [40.0, 50.0]
    assert gids["cut:cell"].get_offsets()[:, 1].tolist() == [3.0]
    assert gids["cut:cell"].get_facecolor().size == 0  # hollow
    assert ax.get_title(loc="left") == "1 object cut by the volume's edge: hollow points, not in the boxes"
    every = plot.per_class(t, "volume_um3", by=None, aggregate=None, include_cut=True)
    assert not [a for a in every.axes[0].get_children() if str(a.get_gid()).startswith("cut:")]
    assert every.axes[0].get_title(loc="left") == ""
    panels = plot.sizes(t, by=None).axes
    assert panels[0].get_legend().get_title().get_text() == "cell (1 cut by the edge, left out)"
    assert panels[0].get_legend().get_texts()[0].get_text() == "2 instances, 1 cell"


def test_history_of_a_short_run_shows_every_class_or_says_why_not():
    # one validation per stage (a short run); the nucleus was never found
    h = pd.DataFrame({"stage": ["stage 1", "stage 1", "stage 2", "stage 2"], "step": [1, 2, 1, 2],
                      "train_loss": [1.0, 0.9, 0.8, 0.7], "dice_lipid_body": [np.nan, 0.4, np.nan, 0.5],
                      "dice_nucleus": [np.nan] * 4, "mean_dice": [np.nan, 0.4, np.nan, 0.5]})
    ax = plot.history(h).axes[1]
    line = next(a for a in ax.get_lines() if a.get_gid() == "dice:lipid_body:stage 1")
    assert line.get_marker() == "o"  # a single value is drawn
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == [
        "lipid body", "nucleus (no validation value)"]
