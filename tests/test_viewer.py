"""Tests of sxtlab.viewer: what the slice viewer and the static figure display.

Headless (matplotlib Agg, no browser): widgets are driven by setting their
``.value``, and the drawn artists' arrays are compared with the volume.
"""

from __future__ import annotations

import sys
import threading

import matplotlib

matplotlib.use("Agg")

import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.backend_bases import MouseEvent  # noqa: E402

import sxtlab  # noqa: E402
from sxtlab.classes import colour  # noqa: E402
from sxtlab.errors import FormatError  # noqa: E402
from sxtlab.viewer import SliceViewer, show_slices  # noqa: E402

SHAPE = (6, 10, 14)
VOXEL = (0.05, 0.03, 0.02)  # anisotropic on purpose: a squashed slice shows in the extents


@pytest.fixture
def image():
    # every voxel distinct, so a slice can only match the right slice
    data = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) / 1000
    return sxtlab.volume(data, VOXEL, origin_um=(1.0, 2.0, 3.0))


@pytest.fixture
def labels(image):
    lab = np.zeros(SHAPE, np.uint8)
    lab[:, 2:8, 3:11] = 1  # cell
    lab[:, 4:6, 5:8] = 2  # nucleus
    lab[0] = sxtlab.UNANNOTATED
    return sxtlab.label_volume(lab, image, {1: "cell", 2: "nucleus"})


def extent_um(v, row, col):
    """Expected imshow extent (left, right, bottom, top): voxel edges, row 0 on top."""
    r, c = v[row].values, v[col].values
    dr, dc = VOXEL["zyx".index(row)], VOXEL["zyx".index(col)]
    return (c[0] - dc / 2, c[-1] + dc / 2, r[-1] + dr / 2, r[0] - dr / 2)


def test_xy_slice_follows_slider(image, labels):
    viewer = SliceViewer(image, labels, backend="static")
    assert viewer.slider is viewer.sliders["z"]
    np.testing.assert_array_equal(viewer.panels["xy"].image.get_array(), image.values[3])
    viewer.slider.value = 1
    np.testing.assert_array_equal(viewer.panels["xy"].image.get_array(), image.values[1])
    assert viewer.panels["xy"].ax.get_title() == "xy at z = 1.05 µm"
    assert viewer.sliders["z"].label == "1.05 µm"  # the readout is the position in µm
    assert "slice 2 of 6" in viewer.readout.value
    assert viewer.position() == pytest.approx({"z": 1.05, "y": 2.15, "x": 3.14})


def test_overlay_colours_toggle_and_opacity(image, labels):
    viewer = SliceViewer(image, labels, backend="static", positions={"z": 1.1})
    rgba = viewer.panels["xy"].overlay.get_array()
    assert rgba.shape == (10, 14, 4)
    np.testing.assert_allclose(rgba[5, 6], (*colour("nucleus"), 0.4), rtol=1e-6)
    np.testing.assert_allclose(rgba[3, 4], (*colour("cell"), 0.4), rtol=1e-6)
    assert rgba[0, 0, 3] == 0  # background is transparent

    viewer.class_toggles["nucleus"].value = False
    rgba = viewer.panels["xy"].overlay.get_array()
    assert rgba[5, 6, 3] == 0
    np.testing.assert_allclose(rgba[3, 4], (*colour("cell"), 0.4), rtol=1e-6)

    viewer.opacity.value = 0.8
    rgba = viewer.panels["xy"].overlay.get_array()
    assert rgba[3, 4, 3] == pytest.approx(0.8)
    assert rgba[5, 6, 3] == 0
    legend = [t.get_text() for t in viewer.figure.legends[0].get_texts()]
    assert legend == ["cell"]


def test_unannotated_voxels_are_transparent(image, labels):
    viewer = SliceViewer(image, labels, backend="static", positions={"z": 1.0})
    assert viewer.sliders["z"].value == 0
    assert not viewer.panels["xy"].overlay.get_array()[..., 3].any()
    text = viewer._describe(viewer.panels["xy"], image.x.values[6], image.y.values[5])
    assert text.endswith("unannotated")


@pytest.mark.parametrize("plane, row, col, normal", [("xz", "z", "x", "y"), ("yz", "z", "y", "x")])
def test_plane_switch_sets_extent_in_um(image, labels, plane, row, col, normal):
    viewer = SliceViewer(image, labels, backend="static")
    viewer.plane.value = plane
    panel = viewer.panels[plane]
    np.testing.assert_allclose(panel.image.get_extent(), extent_um(image, row, col))
    np.testing.assert_allclose(panel.overlay.get_extent(), extent_um(image, row, col))
    assert panel.ax.get_xlabel() == f"{col} [µm]" and panel.ax.get_ylabel() == f"{row} [µm]"
    assert viewer.slider is viewer.sliders[normal]
    viewer.slider.value = 2
    expected = image.isel({normal: 2}).transpose(row, col).values
    np.testing.assert_array_equal(panel.image.get_array(), expected)
    assert [d for d, s in viewer.sliders.items() if s.layout.display != "none"] == [normal]


def test_ortho_views_and_crosshairs(image, labels):
    viewer = SliceViewer(image, labels, backend="static", plane="ortho")
    assert set(viewer.panels) == {"xy", "xz", "yz"}
    viewer.sliders["x"].value = 9
    # yz stands right of xy sharing y, so it is drawn transposed (y down, z across)
    np.testing.assert_array_equal(viewer.panels["yz"].image.get_array(), image.values[:, :, 9].T)
    np.testing.assert_allclose(viewer.panels["yz"].image.get_extent(), extent_um(image, "y", "z"))
    for panel in viewer.panels.values():  # crosshairs must not stretch the view beyond the slice
        extent = panel.image.get_extent()
        np.testing.assert_allclose((*panel.ax.get_xlim(), *panel.ax.get_ylim()), extent)
    vline, _ = viewer.panels["xy"].crosshair
    assert vline.get_xdata()[0] == pytest.approx(image.x.values[9])
    z, y, x = (viewer.sliders[d].value for d in "zyx")
    assert f"LAC {image.values[z, y, x]:.3g} µm⁻¹" in viewer.readout.value


def test_reference_drawn_as_outlines(image, labels):
    ref = labels.copy(data=np.where(labels.values == 2, 1, labels.values).astype(np.uint8))
    viewer = SliceViewer(image, labels, reference=ref, backend="static")
    outlines = viewer.panels["xy"].outlines
    assert len(outlines) == 1  # the reference has only "cell" here
    vertices = np.concatenate([p.vertices for p in outlines[0].get_paths()])
    # the contour runs along the cell's voxel borders: x between its first and last voxel ± one
    x = image.x.values
    assert vertices[:, 0].min() == pytest.approx((x[2] + x[3]) / 2)
    assert vertices[:, 0].max() == pytest.approx((x[10] + x[11]) / 2)
    viewer.class_toggles["cell"].value = False
    assert viewer.panels["xy"].outlines == []
    assert "reference: cell" in viewer._describe(viewer.panels["xy"], x[5], image.y.values[5])


def test_segmentation_dataset_input(image, labels):
    viewer = SliceViewer(sxtlab.segmentation(image, labels), backend="static")
    assert set(viewer.class_toggles) == {"cell", "nucleus"}
    np.testing.assert_array_equal(viewer.panels["xy"].image.get_array(), image.values[3])


def test_labels_on_another_grid_rejected(image):
    other = sxtlab.volume(np.zeros(SHAPE, np.float32), (0.05, 0.03, 0.03))
    lab = sxtlab.label_volume(np.zeros(SHAPE, np.uint8), other, {1: "cell"})
    with pytest.raises(FormatError, match="voxel size"):
        SliceViewer(image, lab, backend="static")
    with pytest.raises(FormatError, match="voxel size"):
        show_slices(image, reference=lab)


def test_invalid_input(image, labels):
    with pytest.raises(ValueError, match="plane must be one of"):
        SliceViewer(image, plane="zx", backend="static")
    with pytest.raises(ValueError, match="alpha"):
        show_slices(image, labels, alpha=1.5)
    with pytest.raises(ValueError, match="outside the volume"):
        show_slices(image, positions={"z": 0.0})
    with pytest.raises(ValueError, match=r"\['vacuole'\] are not in the labels"):
        show_slices(image, labels, classes=["vacuoles"])
    with pytest.raises(TypeError, match="sxtlab.volume"):
        SliceViewer(np.zeros(SHAPE), backend="static")
    with pytest.raises(FormatError, match="dims"):
        show_slices(image.isel(z=0))


def test_dask_volume_reads_only_the_shown_slice(image, labels):
    read = []
    lock = threading.Lock()

    def count(block, block_info=None):
        with lock:
            read.append(block_info[0]["chunk-location"][0])
        return block

    lazy = da.from_array(image.values, chunks=(1, *SHAPE[1:])).map_blocks(
        count, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))
    volume = image.copy(data=lazy)
    viewer = SliceViewer(volume, labels, backend="static")
    assert read == [3]
    viewer.slider.value = 4
    assert read == [3, 4]
    viewer.class_toggles["cell"].value = False
    viewer.opacity.value = 0.7
    viewer._describe(viewer.panels["xy"], 3.1, 2.1)
    assert read == [3, 4]  # overlays and readouts use the slice already read
    np.testing.assert_array_equal(viewer.panels["xy"].image.get_array(), image.values[4])


def test_static_figure_units_and_legend(image, labels):
    fig = show_slices(image, labels, positions={"z": 1.1, "x": 3.1})
    axes = {ax.get_title().split()[0]: ax for ax in fig.axes if ax.get_title()}
    assert set(axes) == {"xy", "xz", "yz"}
    assert axes["xy"].get_xlabel() == "x [µm]" and axes["xy"].get_ylabel() == "y [µm]"
    assert axes["xz"].get_ylabel() == "z [µm]"
    assert axes["xy"].get_title() == "xy at z = 1.10 µm"
    assert axes["yz"].get_title() == "yz at x = 3.10 µm"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["cell", "nucleus"]
    assert any(ax.get_ylabel() == "LAC [µm⁻¹]" for ax in fig.axes)  # the colour bar
    image_xy = axes["xy"].images[0].get_array()
    np.testing.assert_array_equal(image_xy, image.values[2])
    # shows itself as a notebook cell's value even where pyplot's inline backend is off
    assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"


def test_static_figure_reference_legend_and_given_axes(image, labels):
    fig = show_slices(image, labels, reference=labels, classes=["nucleus"], planes="xz")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["nucleus", "nucleus (reference)"]
    from matplotlib.figure import Figure

    own = Figure()
    ax1, ax2 = own.subplots(1, 2)
    assert show_slices(image, planes=("xy", "yz"), ax=[ax1, ax2]) is own
    assert ax2.get_xlabel() == "y [µm]"
    with pytest.raises(ValueError, match="expected 2 axes"):
        show_slices(image, planes=("xy", "yz"), ax=ax1)


def test_unknown_voxel_size_gives_voxel_axes(labels):
    data = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    gray = sxtlab.volume(data, None, units="gray")
    fig = show_slices(gray, planes=("xy", "xz"))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "x [voxel]" and ax.get_ylabel() == "y [voxel]"
    np.testing.assert_allclose(ax.images[0].get_extent(), (-0.5, 13.5, 9.5, -0.5))
    assert any(a.get_ylabel() == "gray value" for a in fig.axes)
    viewer = SliceViewer(gray, backend="static")
    assert viewer.panels["xy"].ax.get_xlabel() == "x [voxel]"
    assert viewer.sliders["z"].label == "3"
    assert not viewer.class_toggles and viewer.opacity.disabled


def test_cursor_readout(image, labels):
    viewer = SliceViewer(image, labels, backend="static")
    ax = viewer.panels["xy"].ax
    viewer.figure.canvas.draw()
    px, py = ax.transData.transform((image.x.values[6], image.y.values[5]))
    viewer.figure.canvas.callbacks.process("motion_notify_event",
                                           MouseEvent("motion_notify_event", viewer.figure.canvas, px, py))
    text = viewer.readout.value
    assert "x = 3.12 µm, y = 2.15 µm, z = 1.15 µm" in text
    assert f"LAC {image.values[3, 5, 6]:.3g} µm⁻¹" in text and "nucleus" in text
    viewer.figure.canvas.callbacks.process("motion_notify_event",
                                           MouseEvent("motion_notify_event", viewer.figure.canvas, 1, 1))
    assert viewer.readout.value.startswith("xy slice 4 of 6")


def test_display_bundle_and_png(image, labels, tmp_path):
    viewer = SliceViewer(image, labels, backend="static")
    bundle = viewer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "image/png" in bundle  # what front ends without widgets show
    assert viewer._png_widget.value[:8] == b"\x89PNG\r\n\x1a\n"
    before = viewer._png_widget.value
    viewer.slider.value = 0
    assert viewer._png_widget.value != before  # the static view is re-rendered
    assert "classes: cell, nucleus" in repr(viewer)
    viewer.close()


def test_ipympl_canvas(image, labels):
    pytest.importorskip("ipympl")
    viewer = SliceViewer(image, labels, backend="ipympl")
    assert viewer.figure.canvas in viewer.widget.children
    viewer.slider.value = 5
    np.testing.assert_array_equal(viewer.panels["xy"].image.get_array(), image.values[5])
    assert "point at the image" in viewer.readout.value


def test_the_viewer_leaves_matplotlib_as_it_found_it(image, labels, tmp_path, monkeypatch):
    # ipympl's __init__ makes itself the backend (matplotlib.use), as the real one does
    package = tmp_path / "ipympl"
    package.mkdir()
    (package / "__init__.py").write_text("import matplotlib\nmatplotlib.use('svg')\nmatplotlib.interactive(False)\n")
    (package / "backend_nbagg.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("ipympl", "ipympl.backend_nbagg"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import matplotlib.pyplot as plt

    # From agg, whatever an earlier test left: where the real ipympl is installed, a
    # viewer test before this one may have left its module as the backend, which this
    # test's stand-in would replace.
    plt.switch_backend("agg")
    was_interactive = matplotlib.is_interactive()
    matplotlib.interactive(True)
    try:
        SliceViewer(image, labels)  # "auto": imports ipympl, then finds no kernel
        assert "ipympl" in sys.modules
        assert matplotlib.get_backend().lower() == "agg" and matplotlib.is_interactive()
        assert plt.get_backend().lower() == "agg"
    finally:
        matplotlib.interactive(was_interactive)
        for name in ("ipympl", "ipympl.backend_nbagg"):
            sys.modules.pop(name, None)
