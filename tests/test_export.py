"""`sxtlab model info` and `sxtlab model export`: a model others can run (BioImage.IO 0.5)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import sxtlab
from sxtlab.cli import main
from sxtlab.export import TOLERANCE


def test_model_info_prints_what_the_model_holds(capsys):
    assert main(["model", "info", "default"]) == 0
    out = capsys.readouterr().out
    model = sxtlab.load_model("default")
    assert "classes: cell, nucleus, mitochondria, lipid_body, vacuole (and background 0)" in out
    assert "voxel size: 0.05 × 0.05 × 0.05 µm" in out
    assert f'trained on: generator {model.info["trained_on"]["generator"]}; ' in out  # the training data
    dice = model.info["validation_mean_dice"]  # the shipped model's, whichever it is
    assert "validation mean Dice (" + ", ".join(model.info["validated_on"]) + "): " + ", ".join(
        f"{k} {v:.3f}" for k, v in dice.items()) in out
    assert f"weights sha256: {model.weights_sha256}" in out
    assert model.weights_sha256 == json.loads((sxtlab.models.model_path("default") / "model.json").read_text()
                                              )["weights"]["sha256"]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "default-bioimageio"
    assert main(["model", "export", "default", "-o", str(out)]) == 0
    return out


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_exported_weights_reproduce_sxtlab_on_the_test_tensors(package, stage):
    rdf = json.loads((package / stage / "rdf.yaml").read_text())
    assert rdf["format_version"].startswith("0.5") and rdf["type"] == "model"
    x = np.load(package / stage / "test_input.npy")
    y = np.load(package / stage / "test_output.npy")
    # The declared preprocessing (scale_linear), then the TorchScript weights.
    kw = rdf["inputs"][0]["preprocessing"][0]["kwargs"]
    gain, offset = np.atleast_1d(kw["gain"]), np.atleast_1d(kw["offset"])
    x = x * gain[None, :, None, None, None] + offset[None, :, None, None, None]
    net = torch.jit.load(str(package / stage / rdf["weights"]["torchscript"]["source"]))
    with torch.inference_mode():
        got = net(torch.from_numpy(x.astype(np.float32))).numpy()
    assert got.shape == y.shape and np.abs(got - y).max() < TOLERANCE
    # y is sxtlab's own prediction, not the exported net's echo: recompute it here.
    model = sxtlab.load_model("default")
    with torch.inference_mode():
        # stage 2's output is tempered as sxtlab tempers it (stage 1's is context: never)
        temperature = model.temperature if stage == "stage2" else 1.0
        own = torch.softmax(getattr(model, stage)(torch.from_numpy(x.astype(np.float32))) / temperature, 1).numpy()
    assert np.abs(own - y).max() < TOLERANCE
    assert y.sum(axis=1) == pytest.approx(1.0, abs=1e-5) and y.shape[1] == len(model.classes) + 1
    # The traced weights take other sizes that the package allows (multiples of the divisor).
    d = getattr(model, stage).config.divisor
    bigger = np.pad(x, [(0, 0), (0, 0), (0, d), (0, 0), (0, d)], mode="edge").astype(np.float32)
    with torch.inference_mode():
        net_out = net(torch.from_numpy(bigger)).numpy()
        ref = torch.softmax(getattr(model, stage)(torch.from_numpy(bigger)) / temperature, 1).numpy()
    assert np.abs(net_out - ref).max() < TOLERANCE


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_bioimageio_spec_validates_the_packages(package, stage):
    spec = pytest.importorskip("bioimageio.spec", reason="bioimageio.spec validates the export where installed")
    descr = spec.load_description(package / stage / "rdf.yaml", perform_io_checks=True)
    assert descr.validation_summary.status in ("valid-format", "passed"), descr.validation_summary


def test_export_refuses_an_existing_output(package, capsys):
    assert main(["model", "export", "default", "-o", str(package)]) == 3
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_bioimageio_core_runs_the_packages_test(package, stage):
    """bioimageio.core's own test: preprocessing, the weights, the test tensors (where it installs)."""
    core = pytest.importorskip("bioimageio.core", reason="bioimageio.core runs the packages where installed")
    summary = core.test_model(package / stage / "rdf.yaml")
    assert summary.status == "passed", [(d.name, [e.msg for e in d.errors]) for d in summary.details
                                        if d.status != "passed"]


def test_a_model_of_gray_values_is_exported_as_such(tmp_path):
    """A model trained on one uncalibrated volume (sxtlab train X.hx) takes gray values, not LAC."""
    from dataclasses import replace

    from sxtlab.export import export_bioimageio

    model = sxtlab.load_model("default")
    model.normalisation = replace(model.normalisation, offset=0.01, scale=0.001, units="gray")
    model.voxel_size = None
    out = export_bioimageio(model, tmp_path / "gray")
    rdf = json.loads((out / "stage1" / "rdf.yaml").read_text())
    assert rdf["inputs"][0]["description"].startswith("gray values as in training")
    assert all("unit" not in axis for axis in rdf["inputs"][0]["axes"])  # no voxel size: no µm
    assert "it takes no LAC" in (out / "README.md").read_text()
    x = np.load(out / "stage1" / "test_input.npy")
    assert abs(float(np.median((x - 0.01) / 0.001))) < 3  # normalised, the input is in the network's range


def test_the_exported_stage_applies_the_model_s_temperature():
    from sxtlab.export import _Probabilities
    from sxtlab.metrics import temper

    net = torch.nn.Conv3d(1, 3, 1)
    x = torch.randn(1, 1, 4, 4, 4)
    with torch.no_grad():
        plain = _Probabilities(net)(x)[0].numpy()
        warm = _Probabilities(net, 1.8)(x)[0].numpy()
    np.testing.assert_allclose(warm, temper(plain, 1.8), atol=1e-6)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_a_cascade_without_context_exports_a_one_channel_stage_2(tmp_path):
    """Context mode "none": stage 2's package takes the LAC alone, and says how stage 1 gates it."""
    from sxtlab.cascade import CascadeModel
    from sxtlab.export import describe_model, export_bioimageio
    from sxtlab.unet import UNet3D, UNetConfig

    shipped = sxtlab.load_model("default")
    k = shipped.n_classes
    torch.manual_seed(0)
    stage2 = UNet3D(UNetConfig(in_channels=1, out_channels=k, depth=2, base_width=4))
    model = CascadeModel(shipped.stage1, stage2, shipped.classes, factor=shipped.factor,
                         normalisation=shipped.normalisation, voxel_size=shipped.voxel_size,
                         stage1_patch=shipped.stage1_patch, stage2_patch=16, context="none")
    assert "stage 2: input alone (stage 1 gates its windows)" in describe_model(model)
    out = export_bioimageio(model, tmp_path / "none")
    rdf = json.loads((out / "stage2" / "rdf.yaml").read_text())
    channel = next(a for a in rdf["inputs"][0]["axes"] if a.get("type") == "channel")
    assert channel["channel_names"] == ["lac"]
    x, y = np.load(out / "stage2" / "test_input.npy"), np.load(out / "stage2" / "test_output.npy")
    assert x.shape[1] == 1 and y.shape[1] == k
    kw = rdf["inputs"][0]["preprocessing"][0]["kwargs"]
    net = torch.jit.load(str(out / "stage2" / rdf["weights"]["torchscript"]["source"]))
    with torch.inference_mode():
        got = net(torch.from_numpy((x * kw["gain"] + kw["offset"]).astype(np.float32))).numpy()
    assert np.abs(got - y).max() < TOLERANCE
    assert "not fed to stage 2" in (out / "README.md").read_text()


def test_the_description_says_where_a_model_came_from_and_what_it_cost():
    from sxtlab.export import describe_model

    model = copy.deepcopy(sxtlab.load_model("default"))
    model.info = {"stage1_from": "a" * 64, "fine_tuned_from": "b" * 64, "train_seconds": 1938.4,
                  "train_cpu_seconds": 24925}
    text = describe_model(model)
    assert f"  stage 1 kept from: {'a' * 64}\n  fine-tuned from: {'b' * 64}\n" in text
    assert "  its last training run took 1938 s\n" in text
    assert "  training CPU time, all runs (the training script's ledger): 24,925 s\n" in text
    model.info = {}
    assert "kept from" not in describe_model(model) and "CPU time" not in describe_model(model)
