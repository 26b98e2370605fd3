"""OME-Zarr (OME-NGFF 0.5 written by default, 0.4 by option; 0.4/0.5/0.6 read): round trips, pyramid,
conformance, units, errors."""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

import sxtlab
from sxtlab import Calibration, FormatError, OutputExistsError, VoxelSizeUnknownError
from sxtlab.classes import UnknownClassError
from sxtlab.io import read_segmentation, read_volume, write_volume
from sxtlab.io import _omezarr


@pytest.fixture
def image() -> xr.DataArray:
    rng = np.random.default_rng(0)
    return sxtlab.volume(rng.random((6, 136, 130), dtype=np.float32), voxel_size=(0.05, 0.03, 0.03),
                         origin_um=(1.0, -2.0, 3.5), source="cell.mrc", cell_id="c1")


@pytest.fixture
def seg(image: xr.DataArray) -> xr.Dataset:
    rng = np.random.default_rng(1)
    values = rng.integers(0, 3, image.shape).astype(np.uint8)
    values[:, :10] = sxtlab.UNANNOTATED
    labels = sxtlab.label_volume(values, image, {"1": "nucleus", "2": "Lipid droplets"})
    probs = xr.DataArray(rng.random((3,) + image.shape, dtype=np.float32),
                         dims=("class", "z", "y", "x"), coords={"class": [0, 1, 2]}, attrs={"model": "m"})
    return sxtlab.segmentation(image, labels, probs, model="cascade-v1", stage=2)


def _attrs(path: Path, group: str = "") -> dict:
    """A group's attributes, NGFF keys and sxtlab's side by side (0.5: ``ome`` unwrapped)."""
    if (path / group / ".zattrs").exists():
        return json.loads((path / group / ".zattrs").read_text())
    attrs = json.loads((path / group / "zarr.json").read_text())["attributes"]
    return {**{k: v for k, v in attrs["ome"].items() if k != "version"},
            **{k: v for k, v in attrs.items() if k != "ome"}}


def _write_ngff(path: Path, data: np.ndarray, axes: list, transforms: list[dict], **attrs) -> Path:
    """A minimal foreign OME-Zarr 0.4 image, written with zarr only."""
    g = zarr.open_group(path, mode="w", zarr_format=2)
    g.create_array("0", data=data, chunks=data.shape)
    g.attrs["multiscales"] = [{"version": "0.4", "axes": axes,
                               "datasets": [{"path": "0", "coordinateTransformations": transforms}]}]
    g.attrs.update(attrs)
    return path


ZYX = [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]


# --- round trips ---------------------------------------------------------------------
def test_image_round_trip_is_exact_and_lazy(image, tmp_path):
    out = write_volume(image, tmp_path / "cell.ome.zarr")
    back = read_volume(out)
    assert isinstance(back.data, da.Array)
    xr.testing.assert_identical(back.compute(), image)
    ms = _attrs(out)["multiscales"][0]
    assert json.loads((out / "zarr.json").read_text())["attributes"]["ome"]["version"] == "0.5"
    assert [a["unit"] for a in ms["axes"]] == ["micrometer"] * 3
    first = ms["datasets"][0]["coordinateTransformations"]
    assert first == [{"type": "scale", "scale": [0.05, 0.03, 0.03]},
                     {"type": "translation", "translation": [1.0, -2.0, 3.5]}]
    # sxtlab's own metadata beside, not inside, the NGFF keys
    assert _attrs(out)["sxtlab"]["attrs"]["cell_id"] == "c1"
    assert "sxtlab" not in ms


def test_gray_with_calibration_round_trip(tmp_path):
    gray = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)
    v = sxtlab.volume(gray, voxel_size=0.04, calibration=Calibration(2e-4, 0.05))
    back = read_volume(write_volume(v, tmp_path / "g.ome.zarr"))
    assert back.dtype == np.float32  # images are stored as float32 (uint16 fits exactly)
    np.testing.assert_array_equal(back.values, gray)
    assert back.attrs == v.attrs
    assert back.sxt.calibration == Calibration(2e-4, 0.05)
    np.testing.assert_allclose(back.sxt.to_lac().values, v.sxt.to_lac().values)


def test_anisotropic_round_trip(tmp_path):
    v = sxtlab.volume(np.ones((3, 4, 5), np.float32), voxel_size=(0.1, 0.025, 0.0325), origin_um=(0.3, 0.0, -1.25))
    back = read_volume(write_volume(v, tmp_path / "a.ome.zarr"))
    assert back.sxt.voxel_size == (0.1, 0.025, 0.0325)
    xr.testing.assert_identical(back.compute(), v)


def test_unknown_voxel_size_round_trips_without_guessing(tmp_path):
    v = sxtlab.volume(np.zeros((3, 4, 5), np.float32), voxel_size=None)
    out = write_volume(v, tmp_path / "u.ome.zarr")
    ms = _attrs(out)["multiscales"][0]
    assert all("unit" not in a for a in ms["axes"])  # no reader may take 1 for 1 µm
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recorded as unknown on purpose: nothing to warn about
        back = read_volume(out)
    assert back.attrs["voxel_size_um"] is None
    xr.testing.assert_identical(back.compute(), v)
    assert read_volume(out, voxel_size=0.03).sxt.voxel_size == (0.03, 0.03, 0.03)


def test_segmentation_round_trip(seg, tmp_path):
    out = write_volume(seg, tmp_path / "seg.ome.zarr")
    back = read_segmentation(out)
    assert all(isinstance(back[k].data, da.Array) for k in back.data_vars)
    xr.testing.assert_identical(back.compute(), seg)
    assert back["labels"].sxt.classes == {1: "nucleus", 2: "lipid_body"}
    assert back.attrs == {"model": "cascade-v1", "stage": 2}
    # the image alone through read_volume
    xr.testing.assert_identical(read_volume(out).compute(), seg["lac"])

    label = _attrs(out, "labels/labels")["image-label"]
    assert _attrs(out, "labels") == {"labels": ["labels"]}
    assert json.loads((out / "labels" / "zarr.json").read_text())["attributes"]["ome"]["version"] == "0.5"
    assert label["source"] == {"image": "../../"}
    assert {"label-value": 2, "name": "lipid_body"} in label["properties"]
    assert {"label-value": 255, "name": "unannotated"} in label["properties"]
    rgba = [int(round(c * 255)) for c in sxtlab.classes.colour("nucleus")] + [255]
    assert {"label-value": 1, "rgba": rgba} in label["colors"]
    assert _attrs(out, "probabilities")["multiscales"][0]["axes"][0] == {"name": "c", "type": "channel"}


def test_custom_colours_and_label_volume_alone_round_trip(seg, tmp_path):
    labels = seg["labels"].copy()
    labels.attrs["colours_rgba"] = {"1": [255, 0, 0, 128]}
    out = write_volume(labels, tmp_path / "labels.ome.zarr")
    colors = _attrs(out)["image-label"]["colors"]
    assert {"label-value": 1, "rgba": [255, 0, 0, 128]} in colors
    back = read_volume(out)
    assert back.dtype == np.uint8 and back.sxt.is_labels
    xr.testing.assert_identical(back.compute(), labels)


def test_dataset_without_labels_and_other_label_values(image, tmp_path):
    labels = sxtlab.label_volume(np.zeros(image.shape, np.uint16), image, {"0": "background", "3": "vacuole"})
    ds = sxtlab.segmentation(image, labels)
    back = read_segmentation(write_volume(ds, tmp_path / "s.ome.zarr"))
    xr.testing.assert_identical(back.compute(), ds)
    bg = [c for c in _attrs(tmp_path / "s.ome.zarr", "labels/labels")["image-label"]["colors"] if c["label-value"] == 0]
    assert bg == [{"label-value": 0, "rgba": [0, 0, 0, 0]}]  # background is transparent


# --- pyramid ---------------------------------------------------------------------------
def test_pyramid_levels_scales_and_block_reductions(seg, tmp_path):
    out = write_volume(seg, tmp_path / "p.ome.zarr")
    ms = _attrs(out)["multiscales"][0]
    # 130-136 voxels in y, x with 64-voxel chunks: 136 -> 68 -> 34 fits one chunk
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    np.testing.assert_allclose(scales, [[0.05, 0.03, 0.03], [0.05, 0.06, 0.06], [0.05, 0.12, 0.12]])
    for group in ("labels/labels", "probabilities"):
        other = _attrs(out, group)["multiscales"][0]["datasets"]
        assert len(other) == 3
    assert zarr.open_group(out, mode="r")["1"].shape == (6, 68, 65)  # z (6 planes) is not halved

    # Each level is reduced from the one before (as ome-zarr and bioformats2raw do).
    expected, labels, probs = seg["lac"], seg["labels"], seg["probabilities"]
    for level in (1, 2):
        expected = expected.sxt.downsample((1, 2, 2))
        labels = labels.sxt.downsample((1, 2, 2))
        probs = probs.coarsen(y=2, x=2, boundary="trim").mean()
        lv = read_segmentation(out, level=level)
        assert lv["lac"].sxt.voxel_size == pytest.approx(expected.sxt.voxel_size)
        for d in "zyx":  # translation + i * scale are the block centres
            np.testing.assert_allclose(lv[d].values, expected[d].values, rtol=0, atol=1e-12)
        np.testing.assert_allclose(lv["lac"].values, expected.values, rtol=1e-6)
        np.testing.assert_array_equal(lv["labels"].values, labels.values)  # block mode, ties to the lower
        np.testing.assert_allclose(lv["probabilities"].values, probs.values, rtol=1e-6)


def test_pyramid_halves_z_when_large_and_not_coarser(tmp_path):
    v = sxtlab.volume(np.zeros((40, 40, 40), np.float32), voxel_size=0.05)
    ms = _attrs(write_volume(v, tmp_path / "iso.ome.zarr", chunks=16))["multiscales"][0]
    assert [d["coordinateTransformations"][0]["scale"][0] for d in ms["datasets"]] == pytest.approx([0.05, 0.1, 0.2])
    coarse_z = sxtlab.volume(np.zeros((40, 40, 40), np.float32), voxel_size=(0.1, 0.05, 0.05))
    ms = _attrs(write_volume(coarse_z, tmp_path / "an.ome.zarr", chunks=16))["multiscales"][0]
    # z waits one level until y, x catch up with its coarser voxel
    assert [d["coordinateTransformations"][0]["scale"][0] for d in ms["datasets"]] == pytest.approx([0.1, 0.1, 0.2])


def test_levels_and_chunks_options(image, tmp_path):
    out = write_volume(image, tmp_path / "one.ome.zarr", levels=1, chunks=(4, 32, 32))
    assert len(_attrs(out)["multiscales"][0]["datasets"]) == 1
    assert zarr.open_group(out, mode="r")["0"].chunks == (4, 32, 32)
    assert zarr.open_group(out, mode="r")["0"].metadata.dimension_names == ("z", "y", "x")  # NGFF 0.5
    old = write_volume(image, tmp_path / "old.ome.zarr", levels=1, chunks=(4, 32, 32), ngff_version="0.4")
    assert zarr.open_group(old, mode="r")["0"].metadata.dimension_separator == "/"  # NGFF 0.4 requires "/"
    with pytest.raises(ValueError, match=r"ngff_version must be one of \['0.4', '0.5'\], got '0.3'"):
        write_volume(image, tmp_path / "v03.ome.zarr", ngff_version="0.3")
    with pytest.raises(ValueError, match="levels=20"):
        write_volume(image, tmp_path / "many.ome.zarr", levels=20)
    with pytest.raises(ValueError, match="levels must be a positive integer"):
        write_volume(image, tmp_path / "zero.ome.zarr", levels=0)
    assert not (tmp_path / "many.ome.zarr").exists()


# --- conformance -----------------------------------------------------------------------
@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_ome_zarr_reader_and_models_accept_our_output(seg, tmp_path, version):
    import importlib

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    models = importlib.import_module(f"ome_zarr_models.v0{version[-1]}")
    out = write_volume(seg, tmp_path / "seg.ome.zarr", ngff_version=version)
    assert (out / ("zarr.json" if version == "0.5" else ".zattrs")).exists()
    nodes = list(Reader(parse_url(str(out)))())
    image_node = next(n for n in nodes if any(isinstance(s, Multiscales) for s in n.specs)
                      and not any(isinstance(s, Label) for s in n.specs))
    label_node = next(n for n in nodes if any(isinstance(s, Label) for s in n.specs))
    for node in (image_node, label_node):
        ct = node.metadata["coordinateTransformations"][0]
        assert ct[0] == {"type": "scale", "scale": [0.05, 0.03, 0.03]}
        assert ct[1] == {"type": "translation", "translation": [1.0, -2.0, 3.5]}
        assert [a["unit"] for a in node.metadata["axes"]] == ["micrometer"] * 3
        assert len(node.data) == 3
    assert label_node.metadata["properties"][1] == {"name": "nucleus"}
    assert label_node.metadata["properties"][2] == {"name": "lipid_body"}
    assert label_node.metadata["color"][1] == pytest.approx(
        [round(c * 255) / 255 for c in sxtlab.classes.colour("nucleus")] + [1.0])
    np.testing.assert_array_equal(np.asarray(label_node.data[0]), seg["labels"].values)

    # The schema models of the OME-NGFF version validate every group we write.
    models.Image.from_zarr(zarr.open_group(out, mode="r"))
    models.ImageLabel.from_zarr(zarr.open_group(out / "labels" / "labels", mode="r"))
    models.Image.from_zarr(zarr.open_group(out / "probabilities", mode="r"))
    # and sxtlab reads both back exactly
    xr.testing.assert_identical(read_segmentation(out).compute(), seg)


def test_ngff_zarr_reads_our_05_with_scale_in_micrometres(seg, tmp_path):
    ngff_zarr = pytest.importorskip("ngff_zarr", reason="ngff-zarr is an optional conformance check")
    out = write_volume(seg, tmp_path / "seg.ome.zarr")
    ms = ngff_zarr.from_ngff_zarr(str(out))
    assert ms.metadata.axes[0].unit == "micrometer"
    assert ms.images[0].scale == pytest.approx({"z": 0.05, "y": 0.03, "x": 0.03})
    assert ms.images[0].translation == pytest.approx({"z": 1.0, "y": -2.0, "x": 3.5})
    np.testing.assert_array_equal(np.asarray(ms.images[0].data), seg["lac"].values)
    labels = ngff_zarr.from_ngff_zarr(str(out / "labels" / "labels"))
    np.testing.assert_array_equal(np.asarray(labels.images[0].data), seg["labels"].values)


def test_large_levels_are_sharded_for_fewer_files_and_read_by_ome_zarr(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05 import Image

    rng = np.random.default_rng(4)
    v = sxtlab.volume(rng.random((70, 80, 90), dtype=np.float32), 0.05)
    out = write_volume(v, tmp_path / "big.ome.zarr", chunks=32)
    group = zarr.open_group(out, mode="r")
    assert group["0"].chunks == (32, 32, 32) and group["0"].shards == (64, 64, 64)  # 2³ chunks per file
    assert group["2"].shards is None  # (70, 20, 22): too small to gain from shards
    Image.from_zarr(group)
    np.testing.assert_array_equal(np.asarray(list(Reader(parse_url(str(out)))())[0].data[0]), v.values)
    xr.testing.assert_identical(read_volume(out).compute(), v)
    files = sum(1 for p in (out / "0").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert files == 2 * 2 * 2  # not the 3 × 3 × 3 chunks


def test_04_written_by_earlier_sxtlab_still_reads(seg, tmp_path):
    """A 0.4 file as sxtlab wrote before 0.5 (Zarr v2, versions in each multiscale)."""
    out = write_volume(seg, tmp_path / "old.ome.zarr", ngff_version="0.4")
    assert _attrs(out)["multiscales"][0]["version"] == "0.4"
    assert _attrs(out, "labels/labels")["image-label"]["version"] == "0.4"
    assert not (out / "zarr.json").exists()
    xr.testing.assert_identical(read_segmentation(out).compute(), seg)


def _write_ngff_06(path: Path, data: np.ndarray, *, sequence: bool) -> Path:
    """An NGFF 0.6 image with coordinate systems: voxels → intrinsic (voxel units),
    intrinsic → physical (nanometres), as RFC-5 writes them."""
    g = zarr.open_group(path, mode="w", zarr_format=3)
    g.create_array("0", data=data, chunks=data.shape, dimension_names=("z", "y", "x"))
    axes = lambda unit: [{"name": n, "type": "space", **({"unit": unit} if unit else {})} for n in "zyx"]
    to_physical = {"type": "scale", "scale": [50.0, 30.0, 30.0]}
    if sequence:
        to_physical = {"type": "sequence", "transformations": [
            to_physical, {"type": "translation", "translation": [1000.0, -2000.0, 3500.0]}]}
    g.attrs["ome"] = {"version": "0.6", "multiscales": [{
        "name": "cell",
        "coordinateSystems": [{"name": "physical", "axes": axes("nanometer")}, {"name": "intrinsic", "axes": axes(None)}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 1.0], "input": "0", "output": "intrinsic"}]}],
        "coordinateTransformations": [{**to_physical, "input": "intrinsic", "output": "physical"}],
    }]}
    return path


@pytest.mark.parametrize("sequence", [False, True])
def test_reads_ngff_06_coordinate_systems(tmp_path, sequence):
    data = np.random.default_rng(5).random((4, 6, 8)).astype(np.float32)
    v = read_volume(_write_ngff_06(tmp_path / "c.ome.zarr", data, sequence=sequence))
    assert v.sxt.voxel_size == pytest.approx((0.05, 0.03, 0.03))
    assert v.sxt.origin_um == pytest.approx((1.0, -2.0, 3.5) if sequence else (0.0, 0.0, 0.0))
    np.testing.assert_array_equal(v.values, data)


def test_ngff_06_naming_an_unlisted_system_is_refused(tmp_path):
    path = _write_ngff_06(tmp_path / "c.ome.zarr", np.zeros((2, 2, 2), np.float32), sequence=False)
    g = zarr.open_group(path, mode="r+")
    ome = dict(g.attrs["ome"])
    ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["output"] = "stage"
    ome["multiscales"][0]["coordinateTransformations"] = []
    g.attrs["ome"] = ome
    with pytest.raises(FormatError, match=r"datasets\[0\] maps to coordinate system 'stage', which "
                                          r"multiscales\[0\].coordinateSystems does not list"):
        read_volume(path)


def test_instances_are_a_second_label_image_and_round_trip(seg, tmp_path):
    from ome_zarr_models.v05 import ImageLabel

    ids = np.zeros(seg["labels"].shape, np.uint16)
    ids[seg["labels"].values > 0] = 1
    ids[:, :, ids.shape[2] // 2:] *= 2  # one cell cut in two, as a watershed of touching cells does
    with_ids = seg.assign(instances=seg["labels"].copy(data=ids).assign_attrs(min_voxels=10))
    out = write_volume(with_ids, tmp_path / "cells.ome.zarr")
    assert _attrs(out, "labels")["labels"] == ["labels", "instances"]
    ImageLabel.from_zarr(zarr.open_group(out / "labels" / "instances", mode="r"))
    back = read_segmentation(out)
    np.testing.assert_array_equal(back["instances"].values, ids)
    np.testing.assert_array_equal(back["labels"].values, seg["labels"].values)
    assert back["instances"].attrs["min_voxels"] == 10
    assert back["instances"].dtype == np.uint16 and back["instances"].attrs["voxel_size_um"] == [0.05, 0.03, 0.03]
    bad = with_ids.assign(instances=with_ids["instances"].astype(np.float32))
    with pytest.raises(sxtlab.FormatError, match="'instances' must be integer ids"):
        write_volume(bad, tmp_path / "bad.ome.zarr")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ome_zarr.writer's own Scaler default
def test_reads_ngff_05_and_singleton_tc_axes_from_ome_zarr(tmp_path):
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    data = np.random.default_rng(2).random((8, 40, 40)).astype(np.float32)
    for fmt, axes, arr in ((FormatV05(), "zyx", data), (FormatV04(), "tczyx", data[None, None])):
        path = tmp_path / f"{fmt.version}-{axes}.ome.zarr"
        group = zarr.open_group(path, mode="w", zarr_format=fmt.zarr_format)
        units = {a: "nanometer" for a in "zyx"}
        scale = {"z": 50.0, "y": 30.0, "x": 30.0}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write_image(arr, group, axes=axes, fmt=fmt, scale=scale, axes_units=units, scale_factors=(2,))
        v = read_volume(path)
        assert v.dims == ("z", "y", "x") and v.attrs["units"] == "gray"
        assert v.sxt.voxel_size == pytest.approx((0.05, 0.03, 0.03), rel=1e-12)
        np.testing.assert_array_equal(v.values, data)
        assert read_volume(path, level=1).shape == (8, 20, 20)


# --- dask ------------------------------------------------------------------------------
def test_dask_dataset_is_written_chunk_by_chunk(tmp_path):
    rng = np.random.default_rng(3)
    shape, chunk = (32, 32, 32), 16
    calls: list[tuple[int, ...]] = []
    lock = threading.Lock()

    def inference(block: np.ndarray) -> np.ndarray:
        with lock:
            calls.append(block.shape)
        return block

    p = rng.random((3,) + shape, dtype=np.float32)
    probs = da.from_array(p, chunks=(3, chunk, chunk, chunk)).map_blocks(inference, meta=np.empty((0,) * 4, np.float32))
    lac = sxtlab.volume(da.from_array(p[0], chunks=chunk), voxel_size=0.04)
    labels = sxtlab.label_volume(probs.argmax(axis=0).astype(np.uint8), lac, {"1": "nucleus", "2": "vacuole"})
    ds = sxtlab.segmentation(lac, labels, xr.DataArray(probs, dims=("class", "z", "y", "x")))
    assert calls == []  # building the Dataset computes nothing

    out = write_volume(ds, tmp_path / "lazy.ome.zarr", chunks=chunk)
    # every block of the shared graph ran exactly once, never the whole array
    assert len(calls) == (32 // chunk) ** 3
    assert max(int(np.prod(s)) for s in calls) == 3 * chunk**3
    back = read_segmentation(out)
    np.testing.assert_array_equal(back["labels"].values, p.argmax(axis=0))
    np.testing.assert_array_equal(back["probabilities"].values, p)
    assert zarr.open_group(out, mode="r")["labels/labels/0"].nchunks_initialized == 8


def test_lazy_read_then_rewrite_in_place(image, tmp_path):
    out = write_volume(image, tmp_path / "c.ome.zarr")
    lazy = read_volume(out, chunks=(6, 64, 64))
    assert lazy.data.chunksize == (6, 64, 64)
    write_volume(lazy * 2, out, overwrite=True)  # reads the old folder while the new one is written
    np.testing.assert_allclose(read_volume(out).values, image.values * 2)


# --- units (field case 11 and its kin) -------------------------------------------------
def test_case_11_axis_units(field_case):
    folder, expected = field_case("11")
    for name, exp in expected["inputs"].items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            v = read_volume(folder / name)
        messages = [str(w.message) for w in caught]
        if "voxel_size_um_zyx" in exp:
            np.testing.assert_allclose(v.sxt.voxel_size, exp["voxel_size_um_zyx"], rtol=expected["rtol"])
            fg = float((v > 0).sum()) * v.sxt.voxel_volume_um3
            assert fg == pytest.approx(expected["foreground_volume_um3_for_a_and_b"], rel=expected["rtol"])
            assert bool(messages) == exp["warn"], messages
            for word in exp.get("warning_mentions", []):
                assert any(word in m for m in messages), messages
        else:
            assert exp["expect"] == "unit_unknown"
            assert v.attrs["voxel_size_um"] is None
            for word in exp["warning_or_error_mentions"]:
                assert any(word in m for m in messages), messages
            with pytest.raises(VoxelSizeUnknownError):
                v.sxt.voxel_volume_um3  # no µm³ unless the user states the unit
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                given = read_volume(folder / name, voxel_size=(0.05, 0.0325, 0.0325))
            assert given.sxt.voxel_size == (0.05, 0.0325, 0.0325)


def test_unit_in_the_transform_is_not_used(tmp_path):
    # copick#105: units written inside coordinateTransformations instead of on the axes
    axes = [{"name": n, "type": "space"} for n in "zyx"]
    path = _write_ngff(tmp_path / "t.ome.zarr", np.zeros((2, 3, 4), np.uint8), axes,
                       [{"type": "scale", "scale": [10.0, 8.0, 8.0], "unit": "angstrom"}])
    with pytest.warns(UserWarning, match=r"unit.*missing.*coordinateTransformations\[0\]\.unit = 'angstrom'"):
        v = read_volume(path)
    assert v.attrs["voxel_size_um"] is None


@pytest.mark.parametrize(("unit", "scale", "um", "warns"), [
    ("nanometer", [50.0, 32.5, 32.5], (0.05, 0.0325, 0.0325), None),
    ("angstrom", [500.0, 325.0, 325.0], (0.05, 0.0325, 0.0325), None),
    ("millimeter", [5e-5, 3.25e-5, 3.25e-5], (0.05, 0.0325, 0.0325), None),
    ("micrometer", [0.05, 0.0325, 0.0325], (0.05, 0.0325, 0.0325), None),
    ("nm", [50.0, 32.5, 32.5], (0.05, 0.0325, 0.0325), "'nm' is not an NGFF unit name"),
    ("microns", [0.05, 0.0325, 0.0325], (0.05, 0.0325, 0.0325), "'microns'"),
    ("pixel", [1.0, 1.0, 1.0], None, "'pixel' is not a length unit"),
])
def test_axis_units_convert_to_um(tmp_path, unit, scale, um, warns):
    axes = [{"name": n, "type": "space", "unit": unit} for n in "zyx"]
    path = _write_ngff(tmp_path / "u.ome.zarr", np.zeros((2, 3, 4), np.float32), axes,
                       [{"type": "scale", "scale": scale}, {"type": "translation", "translation": scale}])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        v = read_volume(path)
    messages = [str(w.message) for w in caught]
    if warns is None:
        assert messages == []
    else:
        assert any(warns in m for m in messages), messages
    if um is None:
        assert v.attrs["voxel_size_um"] is None
    else:
        np.testing.assert_allclose(v.sxt.voxel_size, um, rtol=1e-12)
        np.testing.assert_allclose(v.sxt.origin_um, um, rtol=1e-12)  # translation converts too


def test_axis_units_key_and_multiscale_transform(tmp_path):
    axes = [{"name": n, "type": "space", "units": "micrometer"} for n in "zyx"]
    path = _write_ngff(tmp_path / "k.ome.zarr", np.zeros((2, 3, 4), np.float32), axes,
                       [{"type": "scale", "scale": [1.0, 1.0, 1.0]}])
    g = zarr.open_group(path, mode="r+")
    ms = g.attrs["multiscales"]
    ms[0]["coordinateTransformations"] = [{"type": "scale", "scale": [0.1, 0.2, 0.2]},
                                          {"type": "translation", "translation": [1.0, 2.0, 3.0]}]
    g.attrs["multiscales"] = ms
    with pytest.warns(UserWarning, match=r"axes\[0,1,2\]\.units = .micrometer.: NGFF names this field 'unit'"):
        v = read_volume(path)
    assert v.sxt.voxel_size == pytest.approx((0.1, 0.2, 0.2))
    assert v.sxt.origin_um == pytest.approx((1.0, 2.0, 3.0))


def test_voxel_size_override_warns_when_it_differs(image, tmp_path):
    out = write_volume(image, tmp_path / "o.ome.zarr")
    with pytest.warns(UserWarning, match="voxel_size=.*replaces the file's"):
        v = read_volume(out, voxel_size=0.1)
    assert v.sxt.voxel_size == (0.1, 0.1, 0.1)
    # the origin keeps its place in voxels: 1.0 µm / 0.05 µm = 20 z-voxels
    assert v.sxt.origin_um == pytest.approx((2.0, -2.0 / 0.03 * 0.1, 3.5 / 0.03 * 0.1))


# --- errors ----------------------------------------------------------------------------
def test_not_a_zarr_and_no_multiscales(tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(FormatError, match=r"empty\.zarr: not a Zarr group"):
        read_volume(tmp_path / "empty.zarr")
    zarr.open_group(tmp_path / "plain.zarr", mode="w", zarr_format=2).attrs["foo"] = 1
    with pytest.raises(FormatError, match=r"plain\.zarr: no 'multiscales'.*found keys \['foo'\]"):
        read_volume(tmp_path / "plain.zarr")
    g = zarr.open_group(tmp_path / "b2r.zarr", mode="w", zarr_format=2)
    g.attrs["bioformats2raw.layout"] = 3
    with pytest.raises(FormatError, match=r"bioformats2raw.*\.\.\./0"):
        read_volume(tmp_path / "b2r.zarr")
    zarr.create_array(tmp_path / "arr.zarr", shape=(2, 2), dtype="u1", zarr_format=2)
    with pytest.raises(FormatError, match="is a Zarr array, not an OME-Zarr group"):
        read_volume(tmp_path / "arr.zarr")


def test_wrong_axes_are_named(tmp_path):
    yx = [{"name": n, "type": "space", "unit": "micrometer"} for n in "yx"]
    path = _write_ngff(tmp_path / "2d.ome.zarr", np.zeros((3, 4), np.float32), yx,
                       [{"type": "scale", "scale": [1.0, 1.0]}])
    with pytest.raises(FormatError, match=r"2d\.ome\.zarr: multiscales\[0\]\.axes are \['y', 'x'\]"):
        read_volume(path)
    czyx = [{"name": "c", "type": "channel"}] + ZYX
    path = _write_ngff(tmp_path / "c.ome.zarr", np.zeros((2, 3, 4, 5), np.float32), czyx,
                       [{"type": "scale", "scale": [1.0, 1.0, 1.0, 1.0]}])
    with pytest.raises(FormatError, match=r"axes are \['c', 'z', 'y', 'x'\] with shape \(2, 3, 4, 5\).*'c' has 2"):
        read_volume(path)
    path = _write_ngff(tmp_path / "noscale.ome.zarr", np.zeros((2, 3, 4), np.float32), ZYX, [])
    with pytest.raises(FormatError, match=r"datasets\[0\]\.coordinateTransformations has no 'scale'"):
        read_volume(path)


def test_inconsistent_labels_and_missing_labels(seg, image, tmp_path):
    out = write_volume(seg, tmp_path / "s.ome.zarr")
    g = zarr.open_group(out / "labels" / "labels", mode="r+")
    g.create_array("0", shape=(6, 136, 129), dtype="u1", overwrite=True)
    with pytest.raises(FormatError, match=r"labels/labels: the label image has shape \(6, 136, 129\).*\(6, 136, 130\)"):
        read_segmentation(out)
    plain = write_volume(image, tmp_path / "i.ome.zarr")
    with pytest.raises(FormatError, match=r"i\.ome\.zarr: no label image"):
        read_segmentation(plain)
    with pytest.raises(ValueError, match="level=5.*levels 0 to 2"):
        read_volume(plain, level=5)


def test_unknown_class_name_in_properties(seg, tmp_path):
    out = write_volume(seg, tmp_path / "s.ome.zarr")
    g = zarr.open_group(out / "labels" / "labels", mode="r+")
    ome = g.attrs["ome"]
    ome["image-label"]["properties"][0]["name"] = "golgi"
    g.attrs["ome"] = ome
    with pytest.raises(UnknownClassError, match=r"labels/labels: image-label\.properties.*'golgi'"):
        read_segmentation(out)


def test_write_refuses_what_ngff_cannot_hold(image, seg, tmp_path):
    with pytest.raises(FormatError, match=r"holds 'lac'.*\['extra', 'lac'\]"):
        write_volume(xr.Dataset({"lac": image, "extra": image}), tmp_path / "x.ome.zarr")
    bent = image.assign_coords(x=image.x.values ** 2)
    with pytest.raises(FormatError, match="coords along 'x' are not evenly spaced"):
        write_volume(bent, tmp_path / "b.ome.zarr")
    bare = xr.DataArray(np.zeros((2, 2, 2), np.float32), dims=("z", "y", "x"))
    with pytest.raises(FormatError, match="no 'voxel_size_um' attr"):
        write_volume(bare, tmp_path / "bare.ome.zarr")
    with pytest.raises(FormatError, match="dims"):
        write_volume(image.transpose("x", "y", "z"), tmp_path / "t.ome.zarr")
    flat = seg.assign(labels=seg["labels"].astype(np.float32))
    with pytest.raises(FormatError, match="labels must be integers"):
        write_volume(flat, tmp_path / "f.ome.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left behind


def test_overwrite_is_refused(image, tmp_path):
    out = write_volume(image, tmp_path / "c.ome.zarr")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write_volume(image * 0, out)
    np.testing.assert_array_equal(read_volume(out).values, image.values)
    write_volume(image * 0, out, overwrite=True)
    assert float(read_volume(out).max()) == 0.0


def test_jsonable_attrs(image, tmp_path):
    v = image.copy()
    v.attrs["extra"] = {"n": np.int64(3), "t": (1, 2), "a": np.arange(2)}
    back = read_volume(write_volume(v, tmp_path / "j.ome.zarr"))
    assert back.attrs["extra"] == {"n": 3, "t": [1, 2], "a": [0, 1]}
    v.attrs["bad"] = object()
    with pytest.raises(FormatError, match=r"bad\.ome\.zarr: lac attrs\['bad'\]: object values"):
        write_volume(v, tmp_path / "bad.ome.zarr")
    assert _omezarr.NGFF_VERSION == "0.5"
