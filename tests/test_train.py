"""Training one stage: loss with ignore label, metrics, sampling, augmentation, resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sxtlab.classes import UNANNOTATED
from sxtlab.metrics import boundary_error, dice, evaluate
from sxtlab.train import Augmentation, Corruption, PatchSampler, Sample, TrainConfig, dice_ce_loss, train_stage
from sxtlab.unet import UNet3D, UNetConfig
from sxtlab.volume import label_volume, volume


# --- loss and metrics with an ignore label ----------------------------------------
def test_ignored_voxels_get_exactly_zero_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, 7, 8, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (2, 6, 7, 8), generator=g)
    target[:, :, :, 5:] = UNANNOTATED
    ignored = (target == UNANNOTATED).unsqueeze(1).expand_as(logits)
    loss = dice_ce_loss(logits, target)
    loss.backward()
    assert torch.all(logits.grad[ignored] == 0)
    assert torch.count_nonzero(logits.grad[~ignored]) > 0

    # whatever the network says on ignored voxels, the loss is bit-identical
    other = logits.detach().clone()
    other[ignored] = torch.randn(int(ignored.sum()), generator=g) * 100
    assert dice_ce_loss(other, target).item() == loss.item()


def test_all_ignored_gives_zero_loss_and_gradient() -> None:
    logits = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    loss = dice_ce_loss(logits, torch.full((1, 4, 4, 4), UNANNOTATED))
    loss.backward()
    assert loss.item() == 0 and torch.all(logits.grad == 0)


def test_perfect_prediction_has_low_loss() -> None:
    target = torch.randint(0, 3, (1, 8, 8, 8))
    good = torch.nn.functional.one_hot(target, 3).permute(0, 4, 1, 2, 3).float() * 20
    assert dice_ce_loss(good, target).item() < 1e-3 < dice_ce_loss(-good, target).item()


def test_single_class_targets_give_the_usual_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4, generator=gen)
    target = torch.randint(0, 3, (2, 4, 4, 4), generator=gen)
    target[0, 0] = UNANNOTATED
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=UNANNOTATED)
    sets = torch.tensor([[False, True, True]])   # declared but unused: changes nothing
    for kw in ({}, {"label_sets": sets}):
        assert dice_ce_loss(logits, target, dice_weight=0.0, **kw).item() == pytest.approx(ce.item(), rel=1e-6)


@pytest.mark.parametrize("batch_dice", [True, False])
@pytest.mark.parametrize("include_background", [False, True])
def test_dice_term_is_the_soft_dice_over_voxels_of_one_known_class(include_background: bool,
                                                                    batch_dice: bool) -> None:
    # the textbook form (Milletari et al. 2016) with one-hot targets, against the
    # loss's scatter-sum form, values and gradients; set and unannotated voxels left
    # out; per class over the batch, or per sample and class (MONAI's default)
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 5, 6, 7, generator=gen) * 2
    target = torch.randint(0, 4, (3, 5, 6, 7), generator=gen)
    target[0, :2] = UNANNOTATED
    target[1, :, :2] = 4          # label set {1, 2}
    target[2][target[2] == 3] = 2  # class 3 absent from sample 2
    sets = torch.tensor([[False, True, True, False]])
    known = (target < 4).unsqueeze(1).float()
    ours = logits.clone().requires_grad_()
    loss = dice_ce_loss(ours, target, label_sets=sets, ce_weight=0.0, include_background=include_background,
                        batch_dice=batch_dice)
    ref = logits.clone().requires_grad_()
    p = torch.softmax(torch.where(known.bool(), ref, 0.0), dim=1) * known
    g = torch.nn.functional.one_hot(torch.where(target < 4, target, 0), 4).permute(0, 4, 1, 2, 3) * known
    dims = (0, 2, 3, 4) if batch_dice else (2, 3, 4)
    d = (2 * (p * g).sum(dims) + 1e-5) / (p.sum(dims) + g.sum(dims) + 1e-5)
    expected = 1 - (d if include_background else d[..., 1:]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-5, atol=1e-7)


def test_per_sample_dice_is_the_mean_of_each_samples_dice() -> None:
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 4, 5, 6, generator=gen)
    target = torch.randint(0, 3, (2, 4, 5, 6), generator=gen)
    whole = dice_ce_loss(logits, target, ce_weight=0.0, batch_dice=False)
    alone = [dice_ce_loss(logits[i:i + 1], target[i:i + 1], ce_weight=0.0) for i in range(2)]
    assert whole.item() == pytest.approx(float(sum(alone)) / 2, rel=1e-6)
    assert whole.item() != pytest.approx(dice_ce_loss(logits, target, ce_weight=0.0).item(), rel=1e-3)


def test_label_set_voxels_cost_minus_log_of_their_summed_probability() -> None:
    # Shi et al. 2021's marginal loss: voxel 0 may be class 1 or 2, voxel 1 is class 0
    logits = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]]).T.reshape(1, 3, 1, 1, 2).requires_grad_()
    target = torch.tensor([3, 0]).reshape(1, 1, 1, 2)
    sets = torch.tensor([[False, True, True]])
    loss = dice_ce_loss(logits, target, label_sets=sets, dice_weight=0.0)
    p = torch.softmax(logits.detach().reshape(3, 2), dim=0)
    expected = -(torch.log(p[1, 0] + p[2, 0]) + torch.log(p[0, 1])) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # moving probability within the set leaves the loss unchanged: swap classes 1 and 2
    swapped = logits.detach().clone()
    swapped[:, [1, 2], ..., 0] = swapped[:, [2, 1], ..., 0]
    assert dice_ce_loss(swapped, target, label_sets=sets).item() == pytest.approx(
        dice_ce_loss(logits.detach(), target, label_sets=sets).item(), rel=1e-6)
    # ... while it pushes the voxel away from the class outside the set
    loss.backward()
    g = logits.grad[0, :, 0, 0, 0]
    assert g[0] > 0 and g[1] + g[2] < 0
    with pytest.raises(ValueError, match="target holds value 4: neither a class"):
        dice_ce_loss(logits, torch.tensor([4, 0]).reshape(1, 1, 1, 2), label_sets=sets)


def test_case18_dice_and_loss_ignore_the_unannotated_slab(field_case) -> None:
    folder, exp = field_case("18")
    gt, pred = np.load(folder / "gt.npy"), np.load(folder / "pred.npy")
    ignore = exp["ignore_label"]
    d = dice(pred, gt, [1], ignore=ignore)[1]
    assert d == pytest.approx(exp["dice_class1_excluding_ignore"], abs=exp["atol"])
    assert d != pytest.approx(exp["wrong_dice_if_ignore_treated_as_background"], abs=1e-3)
    # the ignore label need not be 255 nor the highest class present in a prediction
    assert dice(pred, gt, ignore=ignore) == {1: d}

    # a masked loss with pred == gt inside the valid voxels does not depend on the
    # prediction on ignore voxels
    t = torch.from_numpy(gt.astype(np.int64))[None]
    valid = t != ignore
    onehot = torch.nn.functional.one_hot(torch.where(valid, t, 0), 2).permute(0, 4, 1, 2, 3).float()
    rng = torch.Generator().manual_seed(18)
    losses = set()
    for fill in (torch.zeros(1, 2, *gt.shape), torch.randn(1, 2, *gt.shape, generator=rng) * 50,
                 torch.nn.functional.one_hot(torch.from_numpy(pred.astype(np.int64)), 2)
                 .permute(3, 0, 1, 2)[None].float() * 10):
        logits = torch.where(valid.unsqueeze(1), onehot * 10, fill)
        losses.add(dice_ce_loss(logits, t, ignore_index=ignore).item())
    assert len(losses) == 1


def test_dice_is_nan_for_absent_class_and_evaluate_matches_by_name() -> None:
    t = np.zeros((4, 4, 4), np.uint8)
    t[:2] = 1
    assert np.isnan(dice(t, t, [2])[2])
    img = volume(np.zeros(t.shape, np.float32), 0.05)
    truth = label_volume(t, img, {"1": "nucleus"})
    # prediction uses another value for the same class
    pred = label_volume((t * 2).astype(np.uint8), img, {"1": "cell", "2": "nucleus"})
    table = evaluate(pred, truth, boundary=True)
    assert isinstance(table, pd.DataFrame)
    assert table.loc["nucleus", "dice"] == 1.0
    assert table.loc["nucleus", "assd"] == 0.0


def test_evaluate_leaves_label_set_voxels_out_only_for_the_classes_of_their_set() -> None:
    from sxtlab.task import Task

    img = volume(np.zeros((1, 1, 4), np.float32), 0.05)
    entry = label_volume(np.array([[[0, 1, 1, 2]]], np.uint8), img, {1: "cell", 2: "lipid_body"})
    truth = Task(["cell", "mitochondria", "lipid_body"]).remap(entry)   # cytoplasm: cell or mitochondria
    assert truth.values.ravel().tolist() == [0, 254, 254, 3]
    pred = label_volume(np.array([[[0, 2, 3, 3]]], np.uint8), img, {1: "cell", 2: "mitochondria", 3: "lipid_body"})
    table = evaluate(pred, truth)
    # a mitochondrion in the cytoplasm may be right: not scored; a lipid body there is wrong
    assert table.loc["mitochondria", "n_true"] == table.loc["mitochondria", "n_pred"] == 0
    assert table.loc["lipid_body", "dice"] == pytest.approx(2 / 3)
    assert table.loc["cell", "n_pred"] == 0


def test_boundary_error_of_shifted_sphere_in_um() -> None:
    z, y, x = np.indices((30, 30, 30))
    a = ((z - 15) ** 2 + (y - 15) ** 2 + (x - 15) ** 2 < 8**2).astype(np.uint8)
    b = np.roll(a, 2, axis=2)
    err = boundary_error(b, a, 1, spacing=(0.05, 0.05, 0.03))
    assert 0 < err["assd"] < err["hd95"] <= err["hausdorff"] <= 2 * 0.03 + 1e-9
    # surfaces in unannotated truth are left out
    truth = a.copy()
    truth[:, :, :15] = UNANNOTATED
    part = boundary_error(b, truth, 1, spacing=0.03)
    assert part["hausdorff"] <= 2 * 0.03 + 1e-9


# --- sampling and augmentation ------------------------------------------------------
def _sample(shape=(24, 24, 24), seed=0) -> Sample:
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    lab[4:20, 4:20, 4:20] = 1
    lab[10:12, 10:12, 10:12] = 2          # 8 voxels of a rare class
    img = (lab * 0.5 + rng.normal(0, 0.1, shape)).astype(np.float32)[None]
    return Sample(img, lab, name=f"cube{seed}")


def test_class_balanced_sampling_finds_rare_class() -> None:
    cfg = TrainConfig(patch_size=(8, 8, 8), oversample=0.5, augmentation=Augmentation(zoom=0))
    sampler = PatchSampler([_sample()], 3, cfg)
    rng = np.random.default_rng(0)
    hits = np.mean([(sampler.patch(rng)[1] == 2).any() for _ in range(200)])
    # the class is 8 of 13 824 voxels; a uniform 8³ patch would contain it ~6% of the time
    assert hits > 0.3


def test_patches_centre_on_annotated_voxels_only() -> None:
    s = _sample()
    s.labels[:] = UNANNOTATED
    s.labels[12] = 1                       # one annotated plane (sparse annotation)
    s.labels[12, :3] = 0
    cfg = TrainConfig(patch_size=(4, 8, 8), oversample=0.0, augmentation=Augmentation(zoom=0))
    sampler = PatchSampler([s], 3, cfg)
    rng = np.random.default_rng(1)
    for _ in range(50):
        x, y = sampler.patch(rng)
        assert x.shape == (1, 4, 8, 8) and y.shape == (4, 8, 8)
        assert (y != UNANNOTATED).any()


def test_augmentation_keeps_shapes_and_label_values() -> None:
    aug = Augmentation(zoom=0.2, p_zoom=1.0)
    cfg = TrainConfig(patch_size=(8, 12, 12), batch_size=3, augmentation=aug)
    sampler = PatchSampler([_sample()], 3, cfg)
    x, y = sampler.batch(np.random.default_rng(2))
    assert x.shape == (3, 1, 8, 12, 12) and x.dtype == torch.float32
    assert y.shape == (3, 8, 12, 12) and y.dtype == torch.int64
    assert set(np.unique(y.numpy())) <= {0, 1, 2, UNANNOTATED}


def test_corruption_changes_a_copy_only() -> None:
    crop = np.zeros((2, 6, 6, 6), np.float32)
    crop[0, 2:4, 2:4, 2:4] = 1
    before = crop.copy()
    out = Corruption(p_morph=1.0, p_remove=1.0)(crop, np.random.default_rng(0))
    assert np.array_equal(crop, before)
    assert out.shape == crop.shape and not np.array_equal(out, crop)


# --- the training loop ------------------------------------------------------------
def _net() -> UNet3D:
    torch.manual_seed(0)
    return UNet3D(UNetConfig(depth=2, base_width=4, out_channels=3))


CFG = TrainConfig(patch_size=(16, 16, 16), batch_size=1, iterations=12, val_every=6, checkpoint_every=4,
                  patience=0, lr=5e-3)


def test_training_learns_and_records_history() -> None:
    train, val = [_sample(seed=0)], [_sample(seed=1)]
    cfg = TrainConfig(patch_size=(16, 16, 16), batch_size=2, iterations=30, val_every=15, patience=0, lr=1e-2)
    net, hist = train_stage(_net(), train, val, cfg, class_names=["cell", "nucleus"], progress=False)
    assert list(hist.step) == [15, 30]
    assert {"train_loss", "dice_cell", "dice_nucleus", "mean_dice", "best", "lr", "elapsed_s"} <= set(hist)
    assert hist.train_loss.iloc[-1] < hist.train_loss.iloc[0]
    assert hist.dice_cell.max() > 0.8          # chance level is the class's share, ~0.5
    assert not net.training


def test_label_set_voxels_teach_what_they_are_not() -> None:
    # the cube's body is known only to be "cell or nucleus" (code 3), as an entry's
    # cytoplasm is for a task with a class it did not annotate; the medium is known
    def partial(seed: int, value: int) -> Sample:
        s = _sample(seed=seed)
        return Sample(s.image, np.where(s.labels == 1, value, s.labels).astype(np.uint8), name=s.name)

    cfg = TrainConfig(patch_size=(16, 16, 16), batch_size=2, iterations=30, val_every=30, patience=0, lr=1e-2)
    val = _sample(seed=1)
    body = val.labels == 1
    called_cell = {}
    for how, value, sets in (("set", 3, np.array([[False, True, True]])), ("ignored", UNANNOTATED, None)):
        net, _ = train_stage(_net(), [partial(0, value)], [val], cfg, class_names=["cell", "nucleus"],
                             label_sets=sets, progress=False)
        with torch.inference_mode():
            pred = net(torch.from_numpy(val.image[None])).argmax(1)[0].numpy()
        called_cell[how] = np.mean(pred[body] != 0)
    # from the set the network learns that the body is not medium; ignoring it, it cannot
    assert called_cell["set"] > 0.9 and called_cell["ignored"] < 0.5, called_cell


def test_resume_continues_from_the_saved_step(tmp_path) -> None:
    train, val = [_sample(seed=0)], [_sample(seed=1)]
    names = ["cell", "nucleus"]
    ref, ref_hist = train_stage(_net(), train, val, CFG, class_names=names, progress=False)

    ck = tmp_path / "stage.pt"

    def interrupt(step: int, loss: float) -> None:
        if step == 10:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        train_stage(_net(), train, val, CFG, class_names=names, checkpoint=ck, on_step=interrupt,
                    progress=False)
    assert torch.load(ck, weights_only=True)["step"] == 8   # the last checkpoint before the cut

    seen: list[int] = []
    net, hist = train_stage(_net(), train, val, CFG, class_names=names, checkpoint=ck, resume=True,
                            on_step=lambda s, _: seen.append(s), progress=False)
    assert seen == [9, 10, 11, 12]
    assert list(hist.step) == list(ref_hist.step) == [6, 12]
    for (k, a), b in zip(ref.state_dict().items(), net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"weights {k} differ after resume")

    # a finished run resumes to the same result without training
    again, _ = train_stage(_net(), train, val, CFG, class_names=names, checkpoint=ck, resume=True,
                           on_step=lambda s, _: pytest.fail("trained again"), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))


def test_channel_mismatch_is_reported() -> None:
    with pytest.raises(ValueError, match="2 input channels, the network takes 1"):
        s = _sample()
        s2 = Sample(np.concatenate([s.image, s.image]), s.labels)
        train_stage(_net(), [s2], [], CFG, class_names=["cell", "nucleus"], progress=False)


def test_uncalibrated_gray_and_lac_samples_are_not_mixed() -> None:
    from sxtlab.errors import FormatError
    from sxtlab.train import fast_config, train_cascade
    from sxtlab.volume import segmentation

    lab = np.zeros((16, 16, 16), np.uint8)
    lab[4:12, 4:12, 4:12] = 1
    lac = volume(np.where(lab, 0.3, 0.1).astype(np.float32), voxel_size=0.05)
    gray = lac.copy()
    gray.attrs["units"] = "gray"
    cells = [segmentation(img, label_volume(lab, img, {1: "cell"})) for img in (lac, gray)]
    with pytest.raises(FormatError, match=r"samples \[1\] are uncalibrated gray values"):
        train_cascade(cells, ["cell"], fast_config((1, 1)), progress=False)


def test_training_script_refuses_an_existing_model_folder_before_training(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_default_model.py"
    shipped = tmp_path / "default"
    shipped.mkdir()
    (shipped / "MODEL_CARD.md").write_text("kept")
    run = subprocess.run([sys.executable, str(script), "--work", str(tmp_path / "run"), "--out", str(shipped)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert f"--out {shipped} exists; choose another folder or pass --overwrite" in run.stderr
    assert (shipped / "MODEL_CARD.md").read_text() == "kept" and not (tmp_path / "run").exists()
