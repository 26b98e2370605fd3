"""Block-wise prediction: every window once, any block size or order, the same values; large stage-1 fields chunked."""

from __future__ import annotations

import inspect
from collections import Counter

import numpy as np
import pytest
import torch

from sxtlab import cascade
from sxtlab.cascade import BATCH_SIZE, CascadeModel, Normalisation
from sxtlab.inference import BlockPlan, RasterBlender, WindowGrid, blend_block, crop_padded
from sxtlab.unet import UNet3D, UNetConfig
from sxtlab.volume import volume


def _image(shape=(2, 37, 50, 29)) -> np.ndarray:
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def _net(x: torch.Tensor) -> torch.Tensor:
    # depends on the whole window (as instance norm does), so that a window cut or
    # blended at the wrong place shows
    return x * x.mean(dim=(2, 3, 4), keepdim=True) + torch.roll(x, 1, dims=2)


@pytest.mark.parametrize("block", [(16, 16, 16), (7, 50, 11), (100, 100, 100)])
@pytest.mark.parametrize("with_skip", [False, True])
def test_raster_blending_runs_every_window_once_and_equals_one_block(block, with_skip) -> None:
    image = _image()
    grid = WindowGrid.make(image.shape[1:], (12, 16, 8), (5, 8, 8))   # uneven steps, last window flush
    plan = BlockPlan.make(grid, block)
    fetched = Counter()

    def fetch(s):
        fetched[s] += 1
        return crop_padded(image, s, grid.patch)

    skip = (lambda s: (s[0] + s[1] + s[2]) % 3 == 0) if with_skip else None
    whole_block = tuple(slice(0, n) for n in image.shape[1:])
    fallback = np.full(image.shape, 0.5, np.float32)
    expected, _ = blend_block(grid, whole_block, lambda s: crop_padded(image, s, grid.patch), _net, 2,
                              skip=skip, fallback=fallback if skip else None, batch_size=3)
    blender = RasterBlender(plan, _net, 2, batch_size=3)
    out = np.full(image.shape, np.nan, np.float32)
    total = Counter()
    for index in plan.indices():
        b = plan.slices(index)
        probs, counts = blender.blend(index, fetch, skip=skip,
                                      fallback=fallback[(slice(None), *b)] if skip else None)
        out[(slice(None), *b)] = probs
        total.update(counts)
    every = set(grid.windows())
    run = {s for s in every if not (skip and skip(s))}
    assert total == {"windows": len(every), "skipped": len(every) - len(run)}
    assert set(fetched) == run and max(fetched.values()) == 1   # no window ran twice
    assert blender.next_index is None and blender.pending_bytes == 0
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_raster_blender_refuses_blocks_out_of_order() -> None:
    plan = BlockPlan.make(WindowGrid.make((20, 20, 20), 8, 0.5), 10)
    blender = RasterBlender(plan, _net, 1)
    with pytest.raises(ValueError, match=r"raster order: expected \(0, 0, 0\), got \(0, 1, 0\)"):
        blender.blend((0, 1, 0), lambda s: np.zeros((1, 8, 8, 8), np.float32))


def test_block_plan_owns_each_window_once_and_bounds_its_region() -> None:
    grid = WindowGrid.make((150, 40, 9), 64, 48)   # starts 0, 48, 86 along z; one short axis
    plan = BlockPlan.make(grid, 64)
    owned = [s for i in plan.indices() for s in plan.owned(i)]
    assert sorted(owned) == sorted(grid.windows())
    assert plan.counts == (3, 1, 1) and plan.owned((2, 0, 0)) == []
    assert plan.region((1, 0, 0)) == ((86, 0, 0), (64, 64, 64))


@pytest.fixture(scope="module")
def model() -> CascadeModel:
    torch.manual_seed(0)
    s1 = UNet3D(UNetConfig(in_channels=1, out_channels=3, depth=2, base_width=4))
    s2 = UNet3D(UNetConfig(in_channels=3, out_channels=3, depth=2, base_width=4, input_to_head=True))
    return CascadeModel(s1, s2, ["cell", "nucleus"], factor=2, normalisation=Normalisation(0.2, 0.1),
                        voxel_size=(0.05,) * 3, stage1_patch=8, stage2_patch=12)


@pytest.fixture(scope="module")
def lac():
    rng = np.random.default_rng(1)
    z, y, x = np.mgrid[:30, :26, :34]
    cell = ((z - 15) ** 2 + (y - 13) ** 2 + (x - 17) ** 2 < 100).astype(np.float32)
    return volume((0.1 + 0.15 * cell + 0.02 * rng.standard_normal(cell.shape)).astype(np.float32), 0.05)


def test_block_size_and_batch_do_not_change_the_prediction(model, lac) -> None:
    ctx = model.context_for(model.normalisation.apply(lac.values))
    grid = WindowGrid.make(lac.shape, model.stage2_patch, 0.5)
    # a threshold that skips about half the windows of this untrained model
    skip = float(np.median([ctx.background_min(s, grid.patch) for s in grid.windows()]))
    kw = dict(progress=False, clean=False, skip_background=skip)
    one = model.predict(lac, block_size=1000, batch_size=1, **kw)
    assert one.attrs["windows"] == model.stage2_blocks(None, lac.shape, None).plan.grid.n_windows()
    assert 0 < one.attrs["windows_skipped"] < one.attrs["windows"]
    for block, batch in ((8, BATCH_SIZE), (13, 3), (1000, BATCH_SIZE)):
        seg = model.predict(lac, block_size=block, batch_size=batch, **kw)
        assert seg.attrs["windows"] == one.attrs["windows"]
        assert seg.attrs["windows_skipped"] == one.attrs["windows_skipped"]
        np.testing.assert_array_equal(seg["labels"].values, one["labels"].values)
        np.testing.assert_allclose(seg["probabilities"].values, one["probabilities"].values, atol=1e-5)


def test_lazy_blocks_in_any_order_equal_in_memory(model, lac) -> None:
    memory = model.predict(lac, block_size=10, progress=False, clean=False)
    lazy = model.predict_lazy(lac.chunk(10), block_size=10)
    # (stage 1's block mean through dask rounds differently in the last bit)
    np.testing.assert_array_equal(lazy["labels"].values, memory["labels"].values)   # computed once
    np.testing.assert_allclose(lazy["probabilities"].values, memory["probabilities"].values, atol=1e-6)   # twice

    norm = model.normalisation.apply(lac.values)
    ctx = model.context_for(norm)
    stage2 = model.stage2_blocks(lambda r: norm[r], lac.shape, ctx, block_size=10)
    order = stage2.plan.indices()
    got = {i: stage2.get(i) for i in reversed(order)}   # the last first: all others wait for it
    assert stage2.counts["windows"] == stage2.plan.grid.n_windows()
    again = stage2.get(order[0])                       # asked again: the raster starts over
    for i in order:
        b = stage2.plan.slices(i)
        np.testing.assert_array_equal(got[i], memory["probabilities"].values[(slice(None), *b)])
    np.testing.assert_array_equal(again, got[order[0]])


def test_zarr_output_runs_every_window_once_and_equals_in_memory(model, lac, tmp_path) -> None:
    from sxtlab.io import read_volume, write_volume

    memory = model.predict(lac, progress=False, clean=False)
    lazy_in = read_volume(write_volume(lac, tmp_path / "in.ome.zarr"), chunks=10)
    out = model.predict(lazy_in, out=tmp_path / "seg.ome.zarr", block_size=10, progress=False)
    assert out.attrs["windows"] == WindowGrid.make(lac.shape, model.stage2_patch, 0.5).n_windows()
    np.testing.assert_array_equal(out["labels"].values, memory["labels"].values)
    np.testing.assert_allclose(out["probabilities"].values, memory["probabilities"].values, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temporary left


def test_defaults_and_window_option(model, lac) -> None:
    params = inspect.signature(CascadeModel.predict).parameters
    assert params["batch_size"].default == BATCH_SIZE == 4
    assert params["window"].default is None and params["step"].default == 0.5
    assert params["block_size"].default == 128
    assert model.stage2_window() == model.stage2_patch == (12, 12, 12)
    assert model.stage2_window(16) == (16, 16, 16)
    with pytest.raises(ValueError, match="multiples of 2"):
        model.stage2_window(15)
    seg = model.predict(lac, window=16, progress=False, clean=False)
    assert seg.attrs["windows"] == WindowGrid.make(lac.shape, 16, 0.5).n_windows()
    assert params["skip_sure"].default is None and params["precision"].default == "float32"


def test_windows_stage1_is_sure_of_take_its_answer(model, lac) -> None:
    ctx = model.context_for(model.normalisation.apply(lac.values))
    stage1 = ctx.probabilities_at((0, 0, 0), lac.shape)
    # at 0 every window counts as sure: none runs, and stage 1's answer is the result
    seg = model.predict(lac, skip_sure=0.0, trust_background=None, progress=False, clean=False)
    assert seg.attrs["windows_skipped"] == seg.attrs["windows"]
    np.testing.assert_allclose(seg["probabilities"].values, stage1, atol=1e-6)
    # above 1 none is
    off = model.predict(lac, skip_sure=None, progress=False, clean=False)
    above = model.predict(lac, skip_sure=1.01, progress=False, clean=False)
    assert above.attrs["windows_skipped"] == off.attrs["windows_skipped"]
    np.testing.assert_array_equal(above["probabilities"].values, off["probabilities"].values)


@pytest.fixture
def chunked_stage1(monkeypatch):
    """Thresholds that chunk this small volume's stage-1 field (15 × 13 × 17 coarse voxels) and window it."""
    monkeypatch.setattr(cascade, "COARSE_IN_MEMORY", 10 ** 3)
    monkeypatch.setattr(cascade, "COARSE_CHUNK", 6)
    monkeypatch.setattr(cascade, "STAGE1_MAX_EDGE", 8)   # windows of 8 at step 4: 36 of them


def test_stage1_field_is_chunked_above_the_threshold(model, lac, tmp_path, chunked_stage1, monkeypatch) -> None:
    import dask.array as da
    import zarr

    norm = model.normalisation.apply(lac.values)
    chunked = model.stage1_probabilities(norm, store=tmp_path)
    assert isinstance(chunked, zarr.Array)
    assert chunked.shape == (3, 15, 13, 17) and chunked.chunks == (3, 6, 6, 6)
    whole = model.stage1_probabilities(norm)                    # without a store: one array
    assert isinstance(whole, np.ndarray)
    np.testing.assert_allclose(chunked[:], whole, atol=1e-6)
    lazy = model.stage1_probabilities(da.from_array(norm, chunks=10), store=tmp_path / "lazy")
    np.testing.assert_allclose(lazy[:], whole, atol=1e-6)
    monkeypatch.setattr(cascade, "COARSE_IN_MEMORY", 15 * 13 * 17)   # at the threshold: in memory
    assert isinstance(model.stage1_probabilities(norm, store=tmp_path / "at"), np.ndarray)


def test_stage1_runs_its_windows_alone(model, lac) -> None:
    # a pair would double the activations of stage 1's large windows
    batches = []
    hook = model.stage1.register_forward_pre_hook(lambda net, args: batches.append(args[0].shape[0]))
    try:
        model.stage1_probabilities(model.normalisation.apply(lac.values))
    finally:
        hook.remove()
    assert batches == [1]


def test_zarr_output_with_a_chunked_stage1_field_equals_in_memory(model, lac, tmp_path, chunked_stage1,
                                                                   monkeypatch) -> None:
    import zarr

    from sxtlab.io import read_volume, write_volume

    memory = model.predict(lac, progress=False, clean=False)
    lazy_in = read_volume(write_volume(lac, tmp_path / "in.ome.zarr"), chunks=10)
    seen = []
    stage1 = model.stage1_probabilities

    def spy(*args, **kwargs):
        probs = stage1(*args, **kwargs)
        seen.append((type(probs), sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))))
        return probs

    monkeypatch.setattr(model, "stage1_probabilities", spy)
    out = model.predict(lazy_in, out=tmp_path / "seg.ome.zarr", block_size=10, progress=False)
    [(kind, temporary)] = seen
    assert kind is zarr.Array and len(temporary) == 1   # stage 1 wrote into the temporary folder
    assert out.attrs["windows"] == memory.attrs["windows"]
    assert out.attrs["windows_skipped"] == memory.attrs["windows_skipped"]
    np.testing.assert_array_equal(out["labels"].values, memory["labels"].values)
    np.testing.assert_allclose(out["probabilities"].values, memory["probabilities"].values, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # removed


def test_temporary_folder_is_removed_after_a_failure(model, lac, tmp_path, chunked_stage1, monkeypatch) -> None:
    from sxtlab.io import read_volume, write_volume

    lazy_in = read_volume(write_volume(lac, tmp_path / "in.ome.zarr"), chunks=10)
    held = []

    def fail(self):
        [folder] = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
        held.extend(sorted(p.name for p in folder.iterdir()))
        raise RuntimeError("stage 2 failed")

    monkeypatch.setattr(cascade.Stage2Blocks, "_next", fail)
    with pytest.raises(RuntimeError, match="stage 2 failed"):
        model.predict(lazy_in, out=tmp_path / "seg.ome.zarr", block_size=10, progress=False)
    assert held == ["lac", "probabilities", "smoothed", "stage2"]   # stage 1's chunked field, then stage 2's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ome.zarr"]
