"""The napari plugin, headless: npe2 validates the manifest and runs its reader, writer
and sample data contributions (no napari, no window)."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

import sxtlab
from sxtlab import phantom

npe2 = pytest.importorskip("npe2", reason="the napari plugin is tested through npe2 (sxtlab[napari])")
# npe2's own pydantic models warn of their deprecated field options when imported.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MANIFEST = Path(sxtlab.__file__).parent / "napari.yaml"


@pytest.fixture(scope="module")
def plugin():
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()  # every command's python_name imports
    pm = npe2.PluginManager.instance()
    if "sxtlab" in pm._manifests:
        pm.unregister("sxtlab")
    pm.register(manifest)
    yield manifest
    pm.unregister("sxtlab")


def test_manifest_contributes_reader_writer_samples_widget(plugin):
    c = plugin.contributions
    patterns = c.readers[0].filename_patterns
    for ext in ("*.mrc", "*.rec", "*.am", "*.hx", "*.tif", "*.zarr", "*.map.gz", "*.labels"):
        assert ext in patterns
    assert c.writers[0].filename_extensions == [".zarr"]
    assert {s.key for s in c.sample_data} == {"sample_12", "phantom"}
    assert c.widgets[0].autogenerate


def _layers(path):
    return npe2.read([str(path)], plugin_name="sxtlab", stack=False)


def test_reads_mrc_with_scale_in_micrometres(plugin, tmp_path):
    path = tmp_path / "cell.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
        mrc.voxel_size = (300.0, 320.0, 500.0)  # Å, (x, y, z)
    (data, meta, kind), = _layers(path)
    assert kind == "image" and np.asarray(data).shape == (4, 5, 6)
    assert meta["scale"] == pytest.approx((0.05, 0.032, 0.03)) and meta["units"] == ("micrometer",) * 3
    assert meta["axis_labels"] == ("z", "y", "x")


def test_reads_amira_project_and_ome_zarr_segmentation_with_label_names(plugin, tmp_path):
    with pytest.warns(sxtlab.SxtlabWarning, match="voxel size unknown"):  # the project records none
        layers = _layers(sxtlab.data.ncxt_sample_12_path())
    kinds = [k for _, _, k in layers]
    assert kinds == ["image", "labels"]
    labels = layers[1][1]
    # No voxel size: napari is told voxels, never µm.
    assert labels["scale"] == (1.0, 1.0, 1.0) and labels["units"] == ("pixel",) * 3
    assert labels["features"]["class"] == ["cell"] and labels["features"]["index"] == [1]

    cell = phantom.cell(seed=1, shape=(32, 32, 32), voxel_size=0.05)
    probs = np.stack([np.asarray(cell["labels"].values == k, np.float32) for k in range(3)])
    labels3 = sxtlab.label_volume(np.minimum(cell["labels"].values, 2), cell["lac"], {1: "cell", 2: "nucleus"})
    seg = sxtlab.segmentation(cell["lac"], labels3,
                              sxtlab.volume(probs[0], 0.05).expand_dims(dim={"class": 3}).copy(data=probs))
    out = sxtlab.write_volume(seg, tmp_path / "seg.ome.zarr")
    image, labels, probabilities = _layers(out)
    assert image[1]["scale"] == pytest.approx((0.05, 0.05, 0.05)) and image[2] == "image"
    assert labels[2] == "labels" and labels[1]["features"]["class"] == ["cell", "nucleus"]
    nucleus_rgba = [*sxtlab.classes.colour("nucleus"), 1.0]
    assert labels[1]["colormap"][2] == pytest.approx(nucleus_rgba)
    np.testing.assert_array_equal(np.asarray(labels[0]), labels3.values)
    assert probabilities[1]["channel_axis"] == 0
    assert probabilities[1]["name"] == ["seg p(background)", "seg p(cell)", "seg p(nucleus)"]


def test_writer_round_trips_through_npe2(plugin, tmp_path):
    cell = phantom.cell(seed=1, shape=(32, 32, 32), voxel_size=0.05)
    layers = sxtlab._napari.layers_of(cell.drop_vars("instances", errors="ignore")[["lac", "labels"]], "cell")
    out = tmp_path / "written.ome.zarr"
    assert npe2.write(str(out), [(d, m, k) for d, m, k in layers], plugin_name="sxtlab") == [str(out)]
    back = sxtlab.read_segmentation(out)
    np.testing.assert_array_equal(back["labels"].values, cell["labels"].values)
    assert back["labels"].sxt.classes == cell["labels"].sxt.classes
    assert back["lac"].sxt.voxel_size == (0.05, 0.05, 0.05)
    with pytest.raises(sxtlab.OutputExistsError):  # never replaced silently
        npe2.write(str(out), [(d, m, k) for d, m, k in layers], plugin_name="sxtlab")


def test_sample_data_and_widget_function(plugin):
    pm = npe2.PluginManager.instance()
    samples = dict(pm.iter_sample_data())["sxtlab"]
    assert [s.key for s in samples] == ["sample_12", "phantom"]
    with pytest.warns(sxtlab.SxtlabWarning, match="voxel size unknown"):
        layers = pm.get_command("sxtlab.sample_12").exec()
    assert [k for _, _, k in layers] == ["image", "labels"]
    # The widget's function on a layer's data: a labels layer with the model's classes.
    cell = phantom.cell(seed=1, shape=(32, 32, 32), voxel_size=0.05)
    (image,) = [layer for layer in sxtlab._napari.layers_of(cell["lac"], "cell")]
    # as a napari layer gives them: scale and translate as NumPy arrays
    meta = {**image[1], "scale": np.asarray(image[1]["scale"]), "translate": np.asarray(image[1]["translate"])}
    data, meta, kind = sxtlab._napari.segment_data(image[0], meta, values="as recorded")
    assert kind == "labels" and data.shape == (32, 32, 32)
    assert meta["features"]["class"] == sxtlab.load_model("default").classes
    assert meta["scale"] == pytest.approx((0.05, 0.05, 0.05))


def test_widget_annotations_are_objects_magicgui_can_use():
    import inspect
    import typing

    params = inspect.signature(sxtlab._napari.segment_layer).parameters
    values = params["values"].annotation
    assert typing.get_origin(values) is typing.Annotated
    assert typing.get_args(values)[1] == {"choices": sxtlab._napari.VALUES}
    assert params["image"].annotation == "napari.layers.Image"  # resolved by napari's magicgui hooks


def test_in_a_napari_viewer(plugin, tmp_path):
    """napari itself (where it and a display exist, e.g. under xvfb-run): open, segment, save."""
    import os

    napari = pytest.importorskip("napari", reason="napari itself is an optional extra (sxtlab[napari])")
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        pytest.skip("napari's viewer needs a display (run under xvfb-run)")
    cell = phantom.cell(seed=1, shape=(32, 32, 32), voxel_size=0.05)
    seg = sxtlab.load_model("default").predict(cell["lac"], progress=False)
    path = sxtlab.write_volume(seg, tmp_path / "seg.ome.zarr")
    viewer = napari.Viewer(show=False)
    try:
        viewer.open(str(path), plugin="sxtlab")
        labels = viewer.layers["seg labels"]
        assert tuple(labels.scale) == pytest.approx((0.05, 0.05, 0.05))
        assert [str(u) for u in labels.units] == ["micrometer"] * 3
        assert list(labels.features["class"]) == list(seg["labels"].sxt.classes.values())
        _, widget = viewer.window.add_plugin_dock_widget("sxtlab", "Segment organelles")
        widget.image.value = viewer.layers["seg lac"]
        widget()
        assert "sxtlab labels" in [layer.name for layer in viewer.layers]
        out = napari.save_layers(str(tmp_path / "saved.ome.zarr"),
                                 [viewer.layers["seg lac"], viewer.layers["seg labels"]], plugin="sxtlab")
        np.testing.assert_array_equal(sxtlab.read_segmentation(out[0])["labels"].values, seg["labels"].values)
    finally:
        viewer.close()
