"""Learning from sparse plane annotations: folds, instance selection, tiny training."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import sxtlab
from sxtlab.sparse import (annotated_planes, fit_sparse, interpolate_annotation, plane_folds,
                           segment_sparse, select_annotated_instances, sparse_config)
from sxtlab.cascade import CascadeModel
from sxtlab.train import dice_ce_loss

PLANES = {"z": [2, 9, 16, 23], "y": [3, 10, 17], "x": [1, 8, 15, 22]}


def plane_labels(shape=(26, 21, 24), planes=PLANES, seed=0) -> np.ndarray:
    """Random 0/1 labels on whole planes of three orientations, 255 elsewhere."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, shape).astype(np.uint8)
    lab = np.full(shape, 255, np.uint8)
    for axis, dim in enumerate("zyx"):
        for p in planes[dim]:
            sl = [slice(None)] * 3
            sl[axis] = p
            lab[tuple(sl)] = truth[tuple(sl)]
    return lab


def test_annotated_planes_finds_the_planes_of_each_orientation():
    assert annotated_planes(plane_labels()) == PLANES


@pytest.mark.parametrize("n_folds,margin", [(2, 0), (3, 2), (4, 1)])
def test_plane_folds_never_share_voxels_and_keep_a_margin(n_folds, margin):
    lab = plane_labels()
    folds = plane_folds(lab, n_folds, margin=margin)
    assert len(folds) == n_folds
    held_count = {d: np.zeros(26, int) for d in "zyx"}
    for fold in folds:
        train, test = fold.train_labels, fold.test_mask
        # Scored voxels are exactly the annotated voxels of the held-out planes ...
        expected = np.zeros(lab.shape, bool)
        for axis, dim in enumerate("zyx"):
            for p in fold.held_out[dim]:
                held_count[dim][p] += 1
                sl = [slice(None)] * 3
                sl[axis] = p
                expected[tuple(sl)] = True
        np.testing.assert_array_equal(test, expected & (lab != 255))
        # ... no training label lies on them or within `margin` voxels of them ...
        assert (train[test] == 255).all()
        train_idx = np.argwhere(train != 255)
        for axis, dim in enumerate("zyx"):
            for p in fold.held_out[dim]:
                assert np.abs(train_idx[:, axis] - p).min() > margin
        # ... and training labels are the original ones where kept.
        kept = train != 255
        np.testing.assert_array_equal(train[kept], lab[kept])
        assert kept.any() and test.any()
    # Every plane is held out exactly once over the folds.
    for dim, planes in PLANES.items():
        assert (held_count[dim][planes] == 1).all()


def test_plane_folds_keep_dataarray_attrs():
    lab = plane_labels()
    da = xr.DataArray(lab, dims=("z", "y", "x"), attrs={"classes": {"1": "cell"}})
    fold = plane_folds(da, 2)[0]
    assert isinstance(fold.train_labels, xr.DataArray)
    assert fold.train_labels.attrs["classes"] == {"1": "cell"}
    assert fold.train_labels.attrs["held_out_planes"] == fold.held_out


def test_plane_folds_refuses_dense_or_bad_input():
    with pytest.raises(ValueError, match="no annotated plane"):
        plane_folds(np.full((8, 8, 8), 255, np.uint8), 2)
    with pytest.raises(ValueError, match="n_folds"):
        plane_folds(plane_labels(), 5)
    with pytest.raises(ValueError, match="margin"):
        plane_folds(plane_labels(), 2, margin=-1)


def blobs():
    """Three balls: A and B touch through a neck, C is apart. Mask and sparse labels."""
    z, y, x = np.mgrid[:20, :20, :48]
    a = (z - 10) ** 2 + (y - 10) ** 2 + (x - 9) ** 2 <= 49
    b = (z - 10) ** 2 + (y - 10) ** 2 + (x - 23) ** 2 <= 49
    neck = (np.abs(z - 10) <= 1) & (np.abs(y - 10) <= 1) & (x >= 14) & (x <= 18)
    c = (z - 10) ** 2 + (y - 10) ** 2 + (x - 39) ** 2 <= 36
    mask = a | b | neck | c
    lab = np.full(mask.shape, 255, np.uint8)
    lab[10, :, :] = 0                      # one plane through all three: mostly void ...
    lab[10][a[10]] = 1                     # ... with A marked as the object,
    lab[10][c[10]] = 255                   # C not annotated at all;
    lab[:, :, 23] = np.where(b[:, :, 23], 0, lab[:, :, 23])  # B marked void on a crossing plane
    return mask, lab, a, b, c


def test_select_keeps_exactly_the_annotated_instance():
    mask, lab, a, b, c = blobs()
    out = select_annotated_instances(mask, lab, respect_annotation=False, fill_holes=False)
    assert out[a].all()                    # the whole marked ball, also off the plane
    assert not out[c].any()                # not marked at all
    # B is dropped; only where it meets the neck (x ≤ 18) may the split go either way.
    x = np.arange(mask.shape[2])
    assert not out[b & (x > 18)].any()
    assert (out & b).sum() <= 10
    assert not (out & ~mask).any()


def test_select_from_probabilities_and_annotation_overrides():
    mask, lab, a, _, _ = blobs()
    prob = np.where(mask, 0.8, 0.1).astype(np.float32)
    prob[10, 10, 9] = 0.2                  # a hole inside A: filled
    out = select_annotated_instances(prob, lab, respect_annotation=False)
    assert out[10, 10, 9]
    lab2 = lab.copy()
    lab2[10, 2, 2] = 1                     # annotated object outside every prediction
    out2 = select_annotated_instances(prob, lab2)
    assert out2[10, 2, 2]
    # Nothing marked: nothing kept.
    assert not select_annotated_instances(prob, np.where(lab == 1, 255, lab).astype(np.uint8)).any()
    with pytest.raises(ValueError, match="shape"):
        select_annotated_instances(prob, lab[:-1])


def test_ignored_voxels_contribute_nothing_to_the_loss():
    lab = torch.from_numpy(plane_labels((8, 12, 12), {"z": [1, 6], "y": [4], "x": [7]}).astype(np.int64))[None]
    logits = torch.randn(1, 2, 8, 12, 12, requires_grad=True)
    loss = dice_ce_loss(logits, lab)
    loss.backward()
    ignored = (lab == 255)[:, None].expand_as(logits)
    assert (logits.grad[ignored] == 0).all()
    assert (logits.grad[~ignored] != 0).any()
    # Whatever the network says at unannotated voxels leaves the loss unchanged.
    other = logits.detach().clone()
    other[ignored] = torch.randn(int(ignored.sum())) * 100
    assert torch.allclose(dice_ce_loss(other, lab), loss.detach())


def test_fit_sparse_needs_labels():
    image = sxtlab.volume(np.zeros((8, 8, 8), np.float32), None)
    with pytest.raises(ValueError, match="labels"):
        fit_sparse(xr.Dataset({"lac": image}))


def test_tiny_training_on_the_real_volume(shared, tmp_path):
    """A few steps on a crop of sample_12 (uncalibrated, no voxel size) end in a segmentation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = sxtlab.read_project(shared / "data" / "ncxt" / "sample_12.hx")
    crop = ds.isel(z=slice(18, 42), y=slice(6, 30), x=slice(18, 42))
    assert crop["lac"].attrs["units"] == "gray" and crop["lac"].attrs["voxel_size_um"] is None
    torch.manual_seed(0)
    model = fit_sparse(crop, "cell", config=sparse_config(iterations=(3, 3), patch=16, batch_size=1))
    assert model.classes == ["cell"] and model.voxel_size is None
    assert model.info["sparse"]["input_units"] == "gray"
    seg = segment_sparse(crop, model)
    assert seg["labels"].shape == crop["lac"].shape
    assert seg["labels"].attrs["classes"] == {"1": "cell"}
    assert seg["probabilities"].shape == (2, *crop["lac"].shape)
    # The annotation is respected where it exists.
    lab = crop["labels"].values
    assert (seg["labels"].values[lab == 1] == 1).all() and (seg["labels"].values[lab == 0] == 0).all()
    # A gray model stays one through save/load, and refuses LAC, which it never saw.
    loaded = CascadeModel.load(model.save(tmp_path / "gray_model"))
    assert loaded.normalisation == model.normalisation and loaded.normalisation.units == "gray"
    np.testing.assert_array_equal(loaded.predict(crop["lac"])["labels"].values,
                                  model.predict(crop["lac"])["labels"].values)
    lac = crop["lac"].copy()
    lac.attrs["units"] = "1/um"
    with pytest.raises(sxtlab.FormatError, match="uncalibrated gray values"):
        loaded.predict(lac)


def ball_on_planes(seed: int = 0):
    """A bright ball in noise, annotated (ball = 1, rest = 0) on every 6th plane of each axis."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:30, :30, :30]
    ball = (z - 15) ** 2 + (y - 14) ** 2 + (x - 16) ** 2 <= 81
    image = (ball * 1.0 + rng.normal(0, 0.1, ball.shape)).astype(np.float32) * 0.01  # any gray scale
    lab = np.full(ball.shape, 255, np.uint8)
    for axis in range(3):
        sl = [slice(None)] * 3
        sl[axis] = slice(3, 30, 6)
        lab[tuple(sl)] = ball[tuple(sl)]
    return image, lab, ball


def test_interpolate_annotation_completes_planes_along_edges():
    image, lab, ball = ball_on_planes()
    prob = interpolate_annotation(image, lab, beta=130.0)
    assert prob.shape == (2, *lab.shape) and prob.dtype == np.float32
    np.testing.assert_allclose(prob.sum(axis=0), 1.0, atol=1e-5)
    annotated = lab != 255
    np.testing.assert_array_equal(prob[1][annotated] > 0.5, lab[annotated] == 1)
    pred = prob[1] > 0.5
    dice = 2 * (pred & ball).sum() / (pred.sum() + ball.sum())
    assert dice > 0.97
    # "auto" validates β on the annotation's own planes and gives the same quality.
    auto = interpolate_annotation(image, lab, betas=(130.0, 8000.0))[1] > 0.5
    assert 2 * (auto & ball).sum() / (auto.sum() + ball.sum()) > 0.97
    with pytest.raises(ValueError, match="nothing is annotated"):
        interpolate_annotation(image, np.full(lab.shape, 255, np.uint8))


def test_segment_sparse_without_a_model_interpolates_and_selects():
    image, lab, ball = ball_on_planes()
    img = sxtlab.volume(image, None, units="gray")
    ds = xr.Dataset({"lac": img, "labels": sxtlab.label_volume(lab, img, {1: "cell"})})
    seg = segment_sparse(ds, None, beta=130.0)
    assert seg.attrs["sparse_probabilities"] == "interpolation" and seg.attrs["instance_selection"]
    assert seg["labels"].attrs["classes"] == {"1": "cell"}
    pred = seg["labels"].values == 1
    assert 2 * (pred & ball).sum() / (pred.sum() + ball.sum()) > 0.97
    with pytest.raises(ValueError, match="model"):
        segment_sparse(ds, None, interpolate=False)
