"""The cascade: sliding window (case 16), stage-1 context, training, prediction, files."""

from __future__ import annotations

import copy
import json
import re
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
import xarray as xr

import sxtlab
from sxtlab import phantom
from sxtlab.cascade import (SKIP_BACKGROUND, TRUST_BACKGROUND, CascadeModel, Context, Normalisation, block_labels,
                            block_mean, interpolate_to_grid)
from sxtlab.classes import UNANNOTATED
from sxtlab.errors import FormatError
from sxtlab.inference import WindowGrid, blend_block, importance_map, sliding_window, window_starts
from sxtlab.metrics import dice, temper
from sxtlab.train import CascadeConfig, TrainConfig, train_cascade
from sxtlab.unet import UNet3D, UNetConfig
from sxtlab.volume import label_volume, segmentation, volume


# --- sliding window ---------------------------------------------------------------
def test_case16_sliding_window_covers_and_blends_exactly(field_case) -> None:
    folder, exp = field_case("16")
    vol = np.load(folder / exp["input"])
    params = exp["params"]
    patch = tuple(params["patch_zyx"])
    step = patch[1] - params["overlap_voxels"]
    assert window_starts(vol.shape[1], patch[1], step) == exp["notes"]["yx_patch_starts_full_tiling"]
    for blend in params["blend"]:
        out = sliding_window(vol[None], lambda x: x, patch, step=step, blend=blend)[0]
        assert out.shape == tuple(exp["expect"]["output_shape_zyx"])
        assert not np.isnan(out).any()
        assert np.count_nonzero(out == 0) == 0
        assert np.abs(out - vol).max() <= exp["expect"]["max_abs_error_vs_input"]


def test_every_voxel_gets_weight_and_small_inputs_are_cropped_back() -> None:
    ones = sliding_window(np.zeros((1, 5, 70, 33), np.float32), lambda x: torch.ones_like(x), 16,
                          step=0.5)
    assert ones.shape == (1, 5, 70, 33) and np.all(ones == 1)
    w = importance_map((64, 64, 64))
    assert w.min() > 0 and w.max() == 1
    grid = WindowGrid.make((40, 150, 150), 64, 0.5)
    assert grid.step == (32, 32, 32) and grid.starts(1) == [0, 32, 64, 86]


def test_skipped_windows_blend_in_the_fallback_with_their_weights() -> None:
    grid = WindowGrid.make((16, 16, 32), 16, 0.5)
    block = (slice(0, 16), slice(0, 16), slice(0, 32))
    fallback = np.full((1, 16, 16, 32), 3.0, np.float32)

    def run(skip):
        return blend_block(grid, block, lambda st: np.zeros((1, 16, 16, 16), np.float32),
                           lambda x: torch.ones_like(x), 1, skip=skip, fallback=fallback)

    everything, counts = run(lambda st: True)
    assert counts == {"windows": 3, "skipped": 3}
    np.testing.assert_allclose(everything, 3, rtol=1e-6)
    # only the first window is run: its ones blend with the fallback's threes by weight
    first, counts = run(lambda st: st[2] != 0)
    assert counts["skipped"] == 2
    assert first[0, 8, 8, 2] == pytest.approx(1) and first[0, 8, 8, 30] == pytest.approx(3)
    assert 1 < first[0, 8, 8, 12] < 3
    with pytest.raises(ValueError, match=r"skip needs a fallback of shape \(1, 16, 16, 32\)"):
        blend_block(grid, block, lambda st: None, lambda x: x, 1, skip=lambda st: True, fallback=fallback[:, :8])


# --- stage-1 context --------------------------------------------------------------
def test_block_mean_pads_and_works_lazily() -> None:
    import dask.array as da

    x = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    low = block_mean(x, (2, 2, 2))
    assert low.shape == (3, 3, 4)
    assert low[0, 0, 0] == x[:2, :2, :2].mean()
    np.testing.assert_allclose(block_mean(da.from_array(x, chunks=3), (2, 2, 2)).compute(), low)


def test_block_labels_keep_sparse_planes() -> None:
    lab = np.full((8, 8, 8), UNANNOTATED, np.uint8)
    lab[4] = 1                 # one annotated plane: 1 voxel in 8 of each block
    lab[4, :4] = 2
    low = block_labels(lab, (2, 2, 2), 3)
    assert (low[2] != UNANNOTATED).all() and (low[0] == UNANNOTATED).all()
    assert set(np.unique(low[2])) == {1, 2}


@pytest.mark.parametrize("mode", ["probabilities", "onehot"])
def test_context_windows_equal_whole_volume_upsampling(mode: str) -> None:
    rng = np.random.default_rng(0)
    p = rng.random((3, 5, 6, 7)).astype(np.float32)
    p /= p.sum(0)
    ctx = Context(p, (4, 4, 4), mode=mode, smooth_sigma=2.0)
    whole = ctx.channels((0, 0, 0), (20, 24, 28))
    assert whole.shape == (2, 20, 24, 28)
    np.testing.assert_array_equal(ctx.channels((3, 5, 9), (8, 9, 10)), whole[:, 3:11, 5:14, 9:19])
    # outside the volume the values stay those of the border
    np.testing.assert_array_equal(ctx.channels((-4, 0, 0), (4, 24, 28))[:, -1], whole[:, 0])
    full = ctx.probabilities_at((0, 0, 0), (20, 24, 28))
    np.testing.assert_allclose(full.sum(0), 1, atol=1e-5)
    # a lower bound of the interpolated values (they are convex combinations)
    assert ctx.background_min((0, 0, 0), (20, 24, 28)) <= full[0].min() + 1e-6
    assert ctx.background_min((2, 2, 2), (4, 4, 4)) <= full[0, 2:6, 2:6, 2:6].min() + 1e-6


def test_context_mode_none_gives_stage_2_no_channels_but_keeps_the_probabilities() -> None:
    rng = np.random.default_rng(2)
    p = rng.random((3, 5, 6, 7)).astype(np.float32)
    p /= p.sum(0)
    ctx = Context(p, (4, 4, 4), mode="none", smooth_sigma=2.0)
    assert ctx.n_channels == 0 and ctx.channels((3, 5, 9), (8, 9, 10)).shape == (0, 8, 9, 10)
    # the probabilities that gate stage 2's windows are those of the other modes
    np.testing.assert_array_equal(ctx.probabilities_at((0, 0, 0), (20, 24, 28)),
                                  Context(p, (4, 4, 4), smooth_sigma=2.0).probabilities_at((0, 0, 0), (20, 24, 28)))
    with pytest.raises(ValueError, match="context mode must be one of probabilities, onehot, none"):
        Context(p, (4, 4, 4), mode="nothing")


@pytest.mark.parametrize("mode", ["probabilities", "onehot"])
def test_chunked_context_and_its_crops_equal_the_whole_one(mode: str, tmp_path) -> None:
    import zarr

    rng = np.random.default_rng(1)
    p = rng.random((4, 13, 17, 11)).astype(np.float32)
    p /= p.sum(0)
    raw = zarr.open_array(str(tmp_path / "raw"), mode="w", shape=p.shape, chunks=(4, 5, 6, 4), dtype=np.float32)
    raw[:] = p
    whole = Context(p, (4, 3, 2), mode=mode, smooth_sigma=2.0)
    chunked = Context(raw, (4, 3, 2), mode=mode, smooth_sigma=2.0, store=tmp_path / "context")
    assert chunked.shape == whole.shape == (13, 17, 11) and chunked.n_channels == 3
    # smoothed chunk by chunk into the store (with the halo), never as one array
    assert isinstance(zarr.open_array(str(tmp_path / "context" / "smoothed")), zarr.Array)
    # boxes across chunk borders, at and beyond the volume's edges
    for box in (((0, 0, 0), (52, 51, 22)), ((3, 5, 1), (20, 9, 7)), ((-4, 2, 0), (10, 10, 30))):
        crop = chunked.crop(*box)
        inner = ([s + 1 for s in box[0]], [max(1, n - 2) for n in box[1]])
        for ctx in (chunked, crop):
            for b in (box, inner):
                np.testing.assert_array_equal(ctx.channels(*b), whole.channels(*b))
                np.testing.assert_array_equal(ctx.probabilities_at(*b), whole.probabilities_at(*b))
                assert ctx.background_min(*b) == whole.background_min(*b)
                assert ctx.sure_min(*b) == whole.sure_min(*b)
    with pytest.raises(ValueError, match="outside this cropped context"):
        chunked.crop((3, 5, 1), (4, 4, 4)).channels((0, 0, 0), (52, 51, 22))
    with pytest.raises(ValueError, match="needs a store"):
        Context(raw, (4, 3, 2))


def test_constant_context_upsamples_to_constant() -> None:
    p = np.zeros((2, 3, 3, 3), np.float32)
    p[0], p[1] = 0.25, 0.75
    ctx = Context(p, (2, 3, 4))
    np.testing.assert_allclose(ctx.channels((0, 0, 0), (6, 9, 12)), 0.75, atol=1e-6)


# --- a small trained cascade --------------------------------------------------------
SHAPE, VS = (32, 32, 32), 0.12
CLASSES = ["cell", "nucleus"]


def _config(iterations: int = 20) -> CascadeConfig:
    net = UNetConfig(depth=2, base_width=8)

    def stage(n: int) -> TrainConfig:
        return TrainConfig(patch_size=(16, 16, 16), batch_size=2, iterations=n, val_every=n, lr=1e-2)

    # stage 1 works on 8× fewer voxels: twice the steps cost little
    return CascadeConfig(factor=2, stage1=stage(2 * iterations), stage2=stage(iterations), stage1_unet=net,
                         stage2_unet=net)


@pytest.fixture(scope="module")
def cells() -> list[xr.Dataset]:
    return [phantom.cell(seed=s, shape=SHAPE, voxel_size=VS) for s in (1, 2, 3)]


@pytest.fixture(scope="module")
def trained(cells) -> tuple[CascadeModel, object]:
    return train_cascade(cells[:2], CLASSES, _config(), validation=cells[2:], progress=False)


def _region_truth(ds: xr.Dataset) -> np.ndarray:
    """Phantom labels merged to cell (1) and nucleus (2), as the model learns them."""
    lab = ds["labels"].values
    out = np.where(lab > 0, 1, 0).astype(np.uint8)
    out[(lab == 2) | (lab == 3)] = 2
    return out


def test_trained_cascade_beats_chance_and_keeps_the_grid(trained) -> None:
    model, history = trained
    test = phantom.cell(seed=11, shape=SHAPE, voxel_size=VS)
    seg = model.predict(test["lac"], progress=False)
    assert set(seg.data_vars) == {"lac", "labels", "probabilities"}
    assert seg["labels"].shape == test["lac"].shape and seg["labels"].dtype == np.uint8
    assert seg["probabilities"].dims == ("class", "z", "y", "x")
    assert list(seg["class"].values) == ["background", *CLASSES]
    for d in "zyx":
        np.testing.assert_array_equal(seg[d].values, test[d].values)
    assert seg["lac"].attrs["voxel_size_um"] == test["lac"].attrs["voxel_size_um"]
    assert seg["labels"].attrs["classes"] == {"1": "cell", "2": "nucleus"}
    assert seg.attrs["model_classes"] == CLASSES and len(seg.attrs["model_weights_sha256"]) == 64
    np.testing.assert_allclose(seg["probabilities"].sum("class"), 1, atol=1e-4)
    truth = _region_truth(test)
    score = dice(seg["labels"].values, truth, [1])[1]
    # chance (a random labelling with the true class share) scores the class share,
    # here about 0.17; the nucleus, whose LAC may equal the cytoplasm's in these
    # noise-free phantoms, needs longer training (see benchmarks/bench_cascade.py)
    assert score > max(0.7, 3 * (truth == 1).mean()), score
    assert set(history["stage"]) == {"stage 1", "stage 2"}
    assert {"dice_cell", "dice_nucleus"} <= set(history.columns)


def test_skipping_background_windows_changes_little(trained, cells, monkeypatch) -> None:
    model, _ = trained
    # the cell in a wider field of medium, as whole-cell volumes are; a stage 1 that
    # is sure of the medium (a briefly trained one is not), so that the test is
    # about skipping, not about stage 1's training
    lac = volume(np.pad(cells[2]["lac"].values, 16, mode="edge"), VS)
    truth = np.pad(_region_truth(cells[2]), 16)
    coarse = block_labels(truth, (2, 2, 2), 3)
    sure = (coarse[None] == np.arange(3)[:, None, None, None]).astype(np.float32)
    monkeypatch.setattr(model, "stage1_probabilities", lambda *a, **k: sure)
    full = model.predict(lac, skip_background=None, step=16, progress=False)
    fast = model.predict(lac, step=16, progress=False)  # the default threshold
    assert full.attrs["windows_skipped"] == 0 and fast.attrs["windows_skipped"] > 0
    # skipped windows take stage 1's (here certain) background
    assert np.all(fast["labels"].values[:16, :16, :16] == 0)
    assert np.all(fast["probabilities"].values[0, :16, :16, :16] == 1)
    accuracy = {k: np.mean(seg["labels"].values == truth) for k, seg in (("full", full), ("fast", fast))}
    assert accuracy["fast"] >= accuracy["full"] - 0.01, accuracy
    # voxel by voxel, not only in skipped windows: where stage 1 is sure of background
    # its probabilities stand, wherever stage 2 ran; where it calls a voxel anything
    # else, no skipped window covers it and stage 2's answer is the one it gives
    # without skipping
    stage1 = model.context_for(None).probabilities_at((0, 0, 0), lac.shape)
    trusted, unsure = stage1[0] >= TRUST_BACKGROUND, stage1[0] < SKIP_BACKGROUND
    assert trusted.sum() > 16 ** 3 and unsure.sum() > 8 ** 3
    np.testing.assert_array_equal(fast["probabilities"].values[:, trusted], stage1[:, trusted].astype(np.float32))
    np.testing.assert_allclose(fast["probabilities"].values[:, unsure], full["probabilities"].values[:, unsure],
                               atol=1e-6)
    # without trust, stage 2's answer stands wherever it ran
    free = model.predict(lac, step=16, trust_background=None, progress=False)
    np.testing.assert_allclose(free["probabilities"].values[:, unsure], full["probabilities"].values[:, unsure],
                               atol=1e-6)
    assert free.attrs["windows_skipped"] == fast.attrs["windows_skipped"]


def test_save_load_gives_identical_predictions(trained, cells, tmp_path) -> None:
    model, _ = trained
    path = model.save(tmp_path / "model")
    meta = json.loads((path / "model.json").read_text())
    assert meta["classes"] == CLASSES and meta["factor"] == [2, 2, 2]
    assert meta["voxel_size_um"] == [VS] * 3 and meta["format_version"] == 1
    assert set(meta["normalisation"]) >= {"offset", "scale", "units"}
    assert meta["info"]["trained_on"] and "sxtlab_version" in meta
    loaded = CascadeModel.load(path, classes=CLASSES)
    a = model.predict(cells[2]["lac"], progress=False)
    b = loaded.predict(cells[2]["lac"], progress=False)
    np.testing.assert_array_equal(a["probabilities"].values, b["probabilities"].values)
    assert a.attrs["model_weights_sha256"] == b.attrs["model_weights_sha256"] == meta["weights"]["sha256"]


def test_a_temperature_softens_the_probabilities_and_keeps_the_labels(trained, cells, tmp_path) -> None:
    model, _ = trained
    plain = model.predict(cells[2]["lac"], progress=False)
    model.temperature = 2.0
    try:
        warm = CascadeModel.load(model.save(tmp_path / "warm")).predict(cells[2]["lac"], progress=False)
    finally:
        model.temperature = 1.0
    np.testing.assert_array_equal(warm["labels"].values, plain["labels"].values)
    np.testing.assert_allclose(warm["probabilities"].values, temper(plain["probabilities"].values, 2.0), atol=1e-5)
    assert warm["probabilities"].max("class").mean() < plain["probabilities"].max("class").mean()
    with pytest.raises(ValueError, match="temperature must be a positive finite number, got 0"):
        CascadeModel(model.stage1, model.stage2, model.classes, factor=model.factor,
                     normalisation=model.normalisation, voxel_size=model.voxel_size,
                     stage1_patch=model.stage1_patch, stage2_patch=model.stage2_patch, temperature=0)


def test_model_files_from_before_input_to_head_load_and_predict_the_same(cells, tmp_path) -> None:
    # A file written before UNetConfig.input_to_head existed has no such key and a
    # head of one convolution; it must load into that architecture, not the new one.
    torch.manual_seed(0)
    old = UNetConfig(depth=2, base_width=4, input_to_head=False)
    model = CascadeModel(UNet3D(replace(old, in_channels=1, out_channels=3)),
                         UNet3D(replace(old, in_channels=3, out_channels=3)), CLASSES, factor=2,
                         normalisation=Normalisation(0.3, 0.1), voxel_size=VS, stage1_patch=(16,) * 3,
                         stage2_patch=(16,) * 3)
    path = model.save(tmp_path / "old")
    meta = json.loads((path / "model.json").read_text())
    for stage in ("stage1", "stage2"):
        del meta[stage]["unet"]["input_to_head"]
    (path / "model.json").write_text(json.dumps(meta))
    loaded = CascadeModel.load(path)
    assert not loaded.stage1.config.input_to_head and not loaded.stage2.config.input_to_head
    lac = cells[0]["lac"]
    np.testing.assert_array_equal(loaded.predict(lac, progress=False)["probabilities"].values,
                                  model.predict(lac, progress=False)["probabilities"].values)


def test_load_refuses_what_is_not_this_model(trained, tmp_path) -> None:
    model, _ = trained
    path = model.save(tmp_path / "model")
    with pytest.raises(FormatError, match=r"classes \['cell', 'nucleus'\], expected \['nucleus', 'cell'\]"):
        CascadeModel.load(path, classes=["nucleus", "cell"])
    other = tmp_path / "other"
    other.mkdir()
    torch.save({"x": torch.zeros(1)}, other / "model.pt")
    with pytest.raises(FormatError, match="not an sxtlab model"):
        CascadeModel.load(other)
    (other / "model.json").write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        CascadeModel.load(other)
    meta = json.loads((path / "model.json").read_text())
    (path / "model.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(FormatError, match="format version 99.*upgrade sxtlab"):
        CascadeModel.load(path)
    (path / "model.json").write_text(json.dumps(meta))
    (path / "weights.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(FormatError, match="checksum"):
        CascadeModel.load(path)
    with pytest.raises(FileNotFoundError):
        CascadeModel.load(tmp_path / "missing")


def test_zarr_backed_prediction_is_blockwise_and_equal(trained, cells, tmp_path) -> None:
    from sxtlab.io import read_volume, write_volume

    model, _ = trained
    lac = cells[2]["lac"]
    src = write_volume(lac, tmp_path / "cell.ome.zarr")
    lazy_in = read_volume(src, chunks=10)
    assert not isinstance(lazy_in.data, np.ndarray)
    memory = model.predict(lac, progress=False, clean=False)  # blockwise labels are the arg-max
    out = model.predict(lazy_in, out=tmp_path / "seg.ome.zarr", block_size=16, progress=False)
    np.testing.assert_array_equal(out["labels"].values, memory["labels"].values)
    np.testing.assert_allclose(out["probabilities"].values, memory["probabilities"].values, atol=1e-6)
    assert out["labels"].attrs["classes"] == {"1": "cell", "2": "nucleus"}
    for d in "zyx":
        np.testing.assert_allclose(out[d].values, lac[d].values)


def test_predict_cleans_the_labels_unless_told_not_to(trained, cells) -> None:
    from sxtlab.clean import clean_labels

    model, _ = trained
    raw = model.predict(cells[2]["lac"], progress=False, clean=False)
    seg = model.predict(cells[2]["lac"], progress=False)
    np.testing.assert_array_equal(seg["probabilities"].values, raw["probabilities"].values)
    expected = clean_labels(raw["labels"])
    np.testing.assert_array_equal(seg["labels"].values, expected.values)
    assert seg["labels"].attrs["cleaned"] == expected.attrs["cleaned"]
    assert "cleaned" not in raw["labels"].attrs


def test_other_voxel_size_is_resampled_and_mapped_back(trained) -> None:
    model, _ = trained
    test = phantom.cell(seed=12, shape=(28, 28, 28), voxel_size=0.144)
    with pytest.warns(UserWarning, match="resampling the volume"):
        seg = model.predict(test["lac"], progress=False)
    assert seg["labels"].shape == (28, 28, 28)
    np.testing.assert_array_equal(seg["x"].values, test["x"].values)
    assert dice(seg["labels"].values, _region_truth(test), [1])[1] > 0.6


def test_interpolate_to_grid_is_exact_for_a_linear_field_and_clamps_at_the_edges() -> None:
    # a field linear in z and y (µm) on a 50 nm grid, read at the centres of a 32 nm grid
    # whose first and last centres lie outside the coarse grid's
    source = volume(np.zeros((10, 8, 4), np.float32), 0.05)
    target = volume(np.zeros((17, 12, 6), np.float32), 0.032, origin_um=(-0.02, 0.0, 0.0))
    z, y = source["z"].values, source["y"].values
    field = np.stack([np.broadcast_to((3 * z[:, None] - y[None, :])[..., None], source.shape),
                      np.ones(source.shape)]).astype(np.float32)
    out = interpolate_to_grid(field, source, target)
    assert out.shape == (2, 17, 12, 6) and out.dtype == np.float32 and out.flags.c_contiguous
    tz = np.clip(target["z"].values, z[0], z[-1])
    ty = np.clip(target["y"].values, y[0], y[-1])
    np.testing.assert_allclose(out[0, :, :, 0], 3 * tz[:, None] - ty[None, :], atol=1e-6)
    np.testing.assert_allclose(out[1], 1.0)


def test_unknown_voxel_size_trains_and_predicts_without_resampling() -> None:
    rng = np.random.default_rng(5)
    samples = []
    for i in range(3):
        lab = np.zeros((16, 16, 16), np.uint8)
        c = 8 + rng.integers(-2, 3)
        lab[c - 5:c + 5, 3:13, 3:13] = 1
        lab[c - 2:c + 2, 6:10, 6:10] = 2
        lab[:, :, 14:] = UNANNOTATED      # an unannotated slab
        img = volume(np.choose(np.minimum(lab, 3), [0.1, 0.25, 0.35, 0.1]).astype(np.float32), None)
        samples.append(segmentation(img, label_volume(lab, img, {"1": "cell", "2": "nucleus"})))
    cfg = _config(iterations=2)
    cfg.stage1 = TrainConfig(patch_size=(8, 8, 8), iterations=2, batch_size=1)
    cfg.stage2 = TrainConfig(patch_size=(16, 16, 16), iterations=2, batch_size=1)
    cfg.context, cfg.stage1_folds = "onehot", 2
    model, history = train_cascade(samples, None, cfg, progress=False)
    assert model.voxel_size is None and model.classes == ["cell", "nucleus"]
    assert model.metadata()["voxel_size_um"] == "unknown"
    assert set(history["stage"]) == {"stage 1", "stage 1 fold 0", "stage 1 fold 1", "stage 2"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seg = model.predict(volume(np.full((20, 16, 16), 0.2, np.float32), None), progress=False)
    assert seg["labels"].shape == (20, 16, 16) and seg.attrs["model_voxel_size_um"] == "unknown"


def test_a_cascade_without_context_trains_stage_2_on_the_lac_alone(cells, tmp_path) -> None:
    cfg = _config(iterations=4)
    cfg.context, cfg.stage1_folds = "none", 2   # no stage-1 predictions to fold: no fold models
    model, history = train_cascade(cells[:2], CLASSES, cfg, validation=cells[2:], progress=False)
    assert model.context == "none" and model.stage2.config.in_channels == 1
    assert set(history["stage"]) == {"stage 1", "stage 2"}
    seg = model.predict(cells[2]["lac"], progress=False)
    assert seg["labels"].shape == cells[2]["lac"].shape
    np.testing.assert_allclose(seg["probabilities"].sum("class"), 1, atol=1e-5)
    back = CascadeModel.load(model.save(tmp_path / "model"))
    assert back.context == "none" and back.stage2.config.in_channels == 1
    np.testing.assert_array_equal(back.predict(cells[2]["lac"], progress=False)["labels"], seg["labels"])
    with pytest.raises(ValueError, match=r"stage 2 must map 3 channels \(LAC \+ 2 context\)"):
        CascadeModel(model.stage1, model.stage2, CLASSES, factor=2, normalisation=model.normalisation,
                     voxel_size=VS, stage1_patch=16, stage2_patch=16)
    with pytest.raises(ValueError, match="CascadeConfig.context must be one of"):
        CascadeConfig(context="nothing")


def test_invalid_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="positive scale"):
        Normalisation(0.2, 0.0)
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:6, 2:6, 2:6] = 1

    def sample(vs: float) -> xr.Dataset:
        img = volume(np.where(lab, 0.3, 0.1).astype(np.float32), vs)
        return segmentation(img, label_volume(lab, img, {"1": "cell"}))

    with pytest.raises(ValueError, match=r"different voxel sizes \[\[0.05, 0.05, 0.05\], \[0.08"):
        train_cascade([sample(0.05), sample(0.08)], ["cell"], _config(1), progress=False)
    with pytest.raises(ValueError, match="no classes to learn"):
        train_cascade([sample(0.05)], [], _config(1), progress=False)
    model = train_cascade([sample(0.05)] * 2, ["cell"], _config(1), progress=False)[0]
    with pytest.raises(FormatError, match=r"dims \('z', 'y', 'x'\), got \('x', 'y', 'z'\)"):
        model.predict(sample(0.05)["lac"].transpose("x", "y", "z"))
    with pytest.raises(ValueError, match="resample it first"):
        model.predict(sample(0.1)["lac"].chunk(4))


def test_prediction_does_not_import_the_trainer() -> None:
    import subprocess
    import sys

    code = ("import sys, sxtlab.cascade; "
            "assert 'sxtlab.train' not in sys.modules, 'sxtlab.cascade imported sxtlab.train'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_volume_smaller_than_stage_1_s_depth_is_padded_not_refused():
    from sxtlab.cascade import stage1_window

    # a 24³ field at factor 4 is 6³ coarse voxels: a depth-4 U-Net (divisor 8) needs 16³
    assert stage1_window((6, 6, 6), 8, (32, 32, 32)) == (16, 16, 16)
    assert stage1_window((40, 6, 70), 8, (32, 32, 32)) == (40, 16, 72)
    model = sxtlab.models.load_model("default")
    lac = sxtlab.volume(np.full((24, 24, 24), 0.25, np.float32), voxel_size=model.voxel_size)
    seg = model.predict(lac, progress=False)
    assert seg["labels"].shape == (24, 24, 24)


@pytest.mark.parametrize("stage2", [UNetConfig(depth=2, base_width=4, stem_stride=2),
                                    UNetConfig(depth=3, base_width=4, convs_per_level=1, layout="strided")],
                         ids=["strided-stem", "strided-layout"])
def test_a_new_stage_2_trains_on_a_kept_stage_1(trained, cells, stage2, tmp_path) -> None:
    source = trained[0]
    cfg = replace(_config(4), stage2_unet=stage2, factor=4, normalisation=None)
    model, history = train_cascade(cells[:2], None, cfg, validation=cells[2:], stage1_from=source, progress=False)
    # stage 1, its factor, patch and normalisation are the source's, bit for bit
    for a, b in zip(model.stage1.state_dict().values(), source.stage1.state_dict().values()):
        assert torch.equal(a, b)
    assert (model.factor, model.stage1_patch, model.normalisation) == (source.factor, source.stage1_patch,
                                                                       source.normalisation)
    assert model.classes == source.classes
    assert set(history["stage"]) == {"stage 2"} and model.info["stage1_from"] == source.weights_sha256
    seg = model.predict(cells[2]["lac"], progress=False)
    assert seg["labels"].shape == SHAPE
    # the stage-2 layout travels through the model file
    loaded = CascadeModel.load(model.save(tmp_path / "model"))
    assert loaded.stage2.config == model.stage2.config
    assert (model.stage2.config.layout, model.stage2.config.stem_stride) == (stage2.layout, stage2.stem_stride)
    np.testing.assert_array_equal(loaded.predict(cells[2]["lac"], progress=False)["probabilities"].values,
                                  seg["probabilities"].values)
    with pytest.raises(ValueError, match=r"on a stage 1 for \['cell', 'nucleus'\]"):
        train_cascade(cells[:2], ["cell"], cfg, stage1_from=source, progress=False)


def test_a_later_sitting_continues_stage_2_on_the_kept_stage_1(trained, cells) -> None:
    source = trained[0]
    cfg = replace(_config(4), stage2_unet=UNetConfig(depth=2, base_width=4), factor=4, normalisation=None)
    first, _ = train_cascade(cells[:2], None, cfg, validation=cells[2:], stage1_from=source, progress=False)
    # a second sitting with another stage-2 architecture asked for: init's stands
    later_cfg = replace(cfg, stage2_unet=UNetConfig(depth=3, base_width=8))
    later, history = train_cascade(cells[:2], None, later_cfg, validation=cells[2:], stage1_from=source,
                                   init=first, progress=False)
    for a, b in zip(later.stage1.state_dict().values(), source.stage1.state_dict().values()):
        assert torch.equal(a, b)
    assert later.stage2.config == first.stage2.config
    assert not all(torch.equal(a, b) for a, b in zip(later.stage2.state_dict().values(),
                                                     first.stage2.state_dict().values()))
    assert set(history["stage"]) == {"stage 2"}
    assert (later.info["stage1_from"], later.info["fine_tuned_from"]) == (source.weights_sha256,
                                                                        first.weights_sha256)
    other = copy.deepcopy(first)
    other.factor = tuple(2 * f for f in source.factor)
    with pytest.raises(ValueError, match=re.escape(f"init) has factor {other.factor!r}, the kept stage 1 "
                                                   f"(stage1_from) {source.factor!r}: they must agree")):
        train_cascade(cells[:2], None, cfg, stage1_from=source, init=other, progress=False)
    other = copy.deepcopy(first)
    other.classes = ["cell"]
    with pytest.raises(ValueError, match=r"cannot fine-tune a model for \['cell'\] into one for "):
        train_cascade(cells[:2], None, cfg, stage1_from=source, init=other, progress=False)
