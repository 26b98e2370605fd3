"""A model for others: what a model folder holds, and a BioImage.IO package of it.

:func:`describe_model` prints what ``sxtlab model info`` shows: classes, voxel size,
normalisation, the two networks, the training data, the validation Dice and the
weights' checksum (verified when the model is loaded).

:func:`export_bioimageio` writes the cascade as **two BioImage.IO model packages
(format 0.5)**, one per stage, in one folder with a README that describes how they
chain::

    PKG/
        README.md                the cascade, step by step
        stage1/rdf.yaml          BioImage.IO model description (JSON, which is YAML)
        stage1/stage1.pt         TorchScript: normalised coarse LAC -> probabilities
        stage1/test_input.npy    (1, 1, z, y, x) coarse LAC in µm⁻¹
        stage1/test_output.npy   (1, K, z, y, x) sxtlab's own stage-1 prediction
        stage1/README.md
        stage2/...               the same for stage 2: [LAC, stage-1 context] -> probabilities

Why two packages and not one network: BioImage.IO describes one network per model,
with standard pre- and post-processing; the cascade's glue (a block mean by the
model's factor, stage 1 on the whole coarse volume, its probabilities upsampled by
repetition and smoothed, stacked with the LAC for stage 2) is not among those steps,
so each network is a model of its own, the normalisation of the LAC is each one's
declared ``scale_linear`` preprocessing, and the glue is documented. Each package's
test tensors are sxtlab's own results on a phantom cell (stage 1: the coarse
probabilities :meth:`~sxtlab.cascade.CascadeModel.stage1_probabilities` gives; stage
2: the network's output on the first window, its input built by sxtlab's
:class:`~sxtlab.cascade.Context`), so that a consumer running the TorchScript
weights checks them against sxtlab: they agree within :data:`TOLERANCE`.

The TorchScript files are written by ``torch.jit.trace`` of each network with a
softmax, from the weights the model folder holds; sxtlab itself never loads them
(its model files hold no code, see :mod:`sxtlab._modelfile`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cascade import SKIP_BACKGROUND, TRUST_BACKGROUND, CascadeModel, Context, block_mean
from .io import atomic_output

__all__ = ["describe_model", "export_bioimageio", "trained_on", "TOLERANCE", "BIOIMAGEIO_FORMAT"]

#: Largest absolute difference of a probability between the exported weights and
#: sxtlab's own prediction on the test tensors (float32 arithmetic in another order).
TOLERANCE = 1e-4
#: The BioImage.IO model description format written.
BIOIMAGEIO_FORMAT = "0.5.4"


def describe_model(model: CascadeModel, path: str | os.PathLike | None = None) -> str:
    """What a model holds, as ``sxtlab model info`` prints it.

    Examples
    --------
    >>> import sxtlab
    >>> print(describe_model(sxtlab.load_model("default")))  # doctest: +ELLIPSIS
    model ...
      classes: cell, nucleus, mitochondria, lipid_body, vacuole (and background 0)
    ...
    """
    info = model.info
    vs = "unknown" if model.voxel_size is None else " × ".join(f"{v:g}" for v in model.voxel_size) + " µm"
    norm = model.normalisation
    lines = [f"model {path or info.get('name', '(unnamed)')}",
             f"  classes: {', '.join(model.classes)} (and background 0)",
             f"  voxel size: {vs} (inputs at another voxel size are resampled)",
             f"  input: {norm.units} normalised as (value − {norm.offset:g}) / {norm.scale:g}",
             f"  stage 1: block mean by {model.factor}, {_net(model.stage1)}, patch {model.stage1_patch}",
             "  stage 2: " + ("input alone (stage 1 gates its windows)" if model.context == "none" else
                               f"[input, stage-1 {model.context} (smoothed σ {model.smooth_sigma:g})]")
             + f", {_net(model.stage2)}, patch {model.stage2_patch}"]
    trained = info.get("trained_on")
    if trained:
        lines.append(f"  trained on: {trained_on(trained)}")
    if info.get("sparse"):
        sparse = info["sparse"]
        lines.append(f"  trained on sparse annotation: {sparse.get('annotated_voxels', '?')} annotated voxels")
    if info.get("stage1_from"):
        lines.append(f"  stage 1 kept from: {info['stage1_from']}")
    if info.get("fine_tuned_from"):
        lines.append(f"  fine-tuned from: {info['fine_tuned_from']}")
    dice = info.get("validation_mean_dice")
    if dice:
        held = ", ".join(info.get("validated_on") or []) or "held-out data"
        lines.append(f"  validation mean Dice ({held}): " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
    if info.get("train_seconds") is not None:
        lines.append(f"  its last training run took {info['train_seconds']:.0f} s")
    if info.get("train_cpu_seconds") is not None:
        lines.append(f"  training CPU time, all runs (the training script's ledger): {info['train_cpu_seconds']:,} s")
    lines.append(f"  weights sha256: {model.weights_sha256} (checked when loaded)")
    return "\n".join(lines)


def trained_on(record: Any) -> str:
    """A model's ``info["trained_on"]`` in one readable line.

    Lists of integers (phantom seeds) become runs, long lists of names their count and
    ends, dicts ``key value`` pairs separated by semicolons.

    Examples
    --------
    >>> trained_on({"generator": "sxtlab.phantom.varied_cell", "seeds": [1, 2, 3, 5, 7, 8]})
    'generator sxtlab.phantom.varied_cell; seeds 1–3, 5, 7–8'
    >>> trained_on([f"cell{i}" for i in range(10)])
    '10 volumes: cell0, cell1, cell2, …, cell9'
    """
    if isinstance(record, dict):
        return "; ".join(f"{key} {trained_on(value)}" for key, value in record.items())
    if isinstance(record, list) and record and all(type(v) is int for v in record):
        values = sorted(set(record))
        runs, start = [], values[0]
        for prev, cur in zip(values, values[1:] + [None]):
            if cur is None or cur != prev + 1:
                runs.append(str(start) if start == prev else f"{start}–{prev}")
                start = cur
        return ", ".join(runs)
    if isinstance(record, list) and len(record) > 6:
        return f"{len(record)} volumes: {', '.join(map(str, record[:3]))}, …, {record[-1]}"
    return record if isinstance(record, str) else json.dumps(record)


def _net(net: torch.nn.Module) -> str:
    cfg = net.config
    params = sum(p.numel() for p in net.parameters())
    return f"3-D U-Net depth {cfg.depth}, width {cfg.base_width}, {cfg.norm} norm, {params:,} parameters"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Probabilities(torch.nn.Module):
    """A stage's network with the softmax sxtlab applies (probabilities out), at the
    model's temperature for stage 2 (:func:`sxtlab.metrics.temper`: the same as
    dividing the logits)."""

    def __init__(self, net: torch.nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x) / self.temperature, dim=1)


def _test_cell(model: CascadeModel) -> np.ndarray:
    """Normalised LAC of a phantom cell on the model's grid, each edge a multiple of a
    stage-2 patch and of the stage-1 factor × divisor."""
    from . import phantom

    vs = model.voxel_size or (0.05, 0.05, 0.05)
    unit = [int(np.lcm(p, f * model.stage1.config.divisor)) for p, f in zip(model.stage2_patch, model.factor)]
    shape = tuple(_exact_edge(u, v, f) for u, v, f in zip(unit, vs, model.factor))
    cell = phantom.cell(seed=7, shape=shape, voxel_size=vs, acquisition=phantom.Acquisition(seed=7))
    lac = np.asarray(cell["lac"].values, np.float32)
    if model.normalisation.units != "1/um":
        # A model of gray values (trained on one uncalibrated volume): the cell's
        # contrast in the range its normalisation expects, not LAC.
        return ((lac - lac.mean()) / lac.std()).astype(np.float32)
    return model.normalisation.apply(lac).astype(np.float32)


def _divides_back(n: int, scale: float) -> bool:
    """Whether ``n · scale / scale == n`` in floating point.

    bioimageio.spec checks an output axis that references an input axis that way:
    with 0.05 µm voxels a 48-voxel edge gives 48.00000000000001 and fails, while
    other sizes give the integer back exactly.
    """
    return (scale * n) / scale == n


def _exact_edge(unit: int, voxel: float, factor: int) -> int:
    """The first multiple of ``unit`` from 64 voxels that divides back at both stages' scales."""
    k = max(1, int(np.ceil(64 / unit)))
    for m in range(k, k + 64):
        n = unit * m
        if _divides_back(n, voxel) and _divides_back(n // factor, voxel * factor):
            return n
    return unit * k


def _axes(channel_names: list[str], sizes: Any, scale: tuple[float, ...] | None) -> list[dict[str, Any]]:
    axes: list[dict[str, Any]] = [{"type": "batch"}, {"type": "channel", "channel_names": channel_names}]
    for i, d in enumerate("zyx"):
        axis: dict[str, Any] = {"id": d, "type": "space", "size": sizes[i]}
        if scale is not None:
            # rounded: a voxel size carried through resampling (0.05000000000000001) makes
            # bioimageio.spec's size check of the outputs against the inputs fail by 1e-14
            axis.update(unit="micrometer", scale=float(f"{float(scale[i]):.10g}"))
        axes.append(axis)
    return axes


def _stage_rdf(model: CascadeModel, stage: int, folder: Path, name: str, x: np.ndarray, y: np.ndarray,
               net: torch.nn.Module, doc: str, temperature: float = 1.0) -> None:
    """Write one stage's package into ``folder``: TorchScript, test tensors, docs, rdf.yaml."""
    folder.mkdir(parents=True)
    wrapped = _Probabilities(net, temperature).eval()
    example = torch.from_numpy(x)
    with torch.no_grad(), warnings.catch_warnings():
        # The network's own input checks become constants in the trace; the package
        # states the sizes it takes (a multiple of the divisor) instead.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapped, example, check_trace=False)
    weights = folder / f"stage{stage}.pt"
    traced.save(str(weights))
    # Test tensors: the input before preprocessing (LAC in µm⁻¹), sxtlab's own output.
    norm = model.normalisation
    raw = x.copy()
    raw[:, 0] = raw[:, 0] * norm.scale + norm.offset
    np.save(folder / "test_input.npy", raw.astype(np.float32))
    np.save(folder / "test_output.npy", y.astype(np.float32))
    (folder / "README.md").write_text(doc, encoding="utf-8")

    div = net.config.divisor
    vs = model.voxel_size
    what = "LAC (µm⁻¹)" if norm.units == "1/um" else "gray values as in training"
    in_scale = tuple(v * f for v, f in zip(vs, model.factor)) if (vs and stage == 1) else vs
    k = model.n_classes
    channels = ["lac"] if stage == 1 or model.context == "none" else ["lac"] + [f"stage1_{c}" for c in model.classes]
    min_size = [div * int(np.ceil(8 / div))] * 3
    # LAC -> the network's input; stage 2's context channels pass unchanged (gain 1, offset 0).
    gain = [1 / norm.scale] + [1.0] * (len(channels) - 1)
    offset = [-norm.offset / norm.scale] + [0.0] * (len(channels) - 1)
    preprocessing = [{"id": "scale_linear", "kwargs": {"axis": "channel", "gain": gain, "offset": offset}}]
    if len(channels) == 1:
        preprocessing = [{"id": "scale_linear", "kwargs": {"gain": gain[0], "offset": offset[0]}}]
    classes = ["background", *model.classes]
    rdf = {
        "format_version": BIOIMAGEIO_FORMAT,
        "type": "model",
        "name": name,
        "description": (f"Stage {stage} of 2 of sxtlab's cascaded 3-D U-Net for organelles in soft X-ray "
                        f"tomography ({', '.join(model.classes)}); see the README for how the stages chain."),
        "authors": [{"name": "sxtlab developers"}],
        "cite": [{"text": "sxtlab: organelle segmentation and measurement for soft X-ray tomography",
                  "url": "https://github.com/sxtlab/sxtlab"}],
        "license": "MIT",
        "tags": ["soft x-ray tomography", "sxt", "3d", "semantic-segmentation", "unet", "cascade", "pytorch"],
        "documentation": "README.md",
        "inputs": [{
            "id": "input",
            "description": (f"{what} block-mean downsampled by {list(model.factor)} (README, step 1)"
                            if stage == 1 else f"{what} at full resolution (README, step 4)" if len(channels) == 1
                            else f"channel 0: {what}; 1..: stage 1's smoothed, upsampled "
                            "probabilities (README, step 3)"),
            "axes": _axes(channels, [{"min": m, "step": div} for m in min_size], in_scale),
            "test_tensor": {"source": "test_input.npy", "sha256": _sha256(folder / "test_input.npy")},
            "data": {"type": "float32"},
            "preprocessing": preprocessing,
        }],
        "outputs": [{
            "id": "probabilities",
            "description": "softmax probabilities of background and each class (label value = channel)",
            "axes": _axes(classes, [{"tensor_id": "input", "axis_id": d} for d in "zyx"], in_scale),
            "test_tensor": {"source": "test_output.npy", "sha256": _sha256(folder / "test_output.npy")},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": {"torchscript": {"source": weights.name, "sha256": _sha256(weights),
                                    "pytorch_version": torch.__version__.split("+")[0]}},
        "config": {"sxtlab": {"stage": stage, "of": 2, "cascade": model.metadata() | {"info": None},
                              "tolerance": TOLERANCE, "out_channels": k}},
    }
    # JSON is YAML: no YAML writer needed.
    (folder / "rdf.yaml").write_text(json.dumps(rdf, indent=1), encoding="utf-8")


def _readme(model: CascadeModel, description: str) -> str:
    f, s = model.factor, model.smooth_sigma
    if model.context == "none":
        fed = ("not fed to stage 2: sxtlab skips the windows where they call every voxel background "
               f"(p ≥ {SKIP_BACKGROUND:g}) and keeps background where p ≥ {TRUST_BACKGROUND:g}")
        stage2_input = "[LAC] (normalised by its preprocessing)"
    else:
        fed = f"channels 1..{model.n_classes - 1} (background dropped)"
        stage2_input = "[LAC, context] (channel 0 normalised by its preprocessing)"
    return f"""# sxtlab cascade, exported for BioImage.IO

{description}

Two BioImage.IO model packages (format {BIOIMAGEIO_FORMAT}), one per stage; run them in
this order on a reconstruction in {"LAC (µm⁻¹)" if model.normalisation.units == "1/um" else
"the gray values the model was trained on (it takes no LAC)"} at the model's voxel size
({"unknown: the voxels of its training volume" if model.voxel_size is None else
" × ".join(f"{v:g}" for v in model.voxel_size) + " µm"}):

1. **Coarse volume**: block mean of the input by {list(f)} (z, y, x); trim each edge to a
   multiple of the factor.
2. **stage1/**: the whole coarse volume in one pass (padded to a multiple of
   {model.stage1.config.divisor} per edge): probabilities of background and
   {', '.join(model.classes)} (channel = label value). Its preprocessing normalises the
   input as (value − {model.normalisation.offset:g}) / {model.normalisation.scale:g}.
3. **Context**: stage 1's probabilities smoothed on the coarse grid by a Gaussian of
   σ {s:g} full-resolution voxels (σ/factor coarse voxels, edges 'nearest'), then
   {"their arg-max one-hot, repeated" if model.context == "onehot" else
    "interpolated linearly (voxel centres)"} to the full grid; {fed}.
   `sxtlab.cascade.Context` is the reference.
4. **stage2/**: windows of {list(model.stage2_patch)} voxels at half-window steps, input
   {stage2_input}, blended with a Gaussian
   importance map (σ = patch/8) into probabilities; the label of a voxel is the
   arg-max.

sxtlab does all of this with `sxtlab segment` or `CascadeModel.predict`.

# Validation

The test tensors are sxtlab's own results on a simulated cell (phantom seed 7 with a
simulated acquisition): stage 1's coarse probabilities of the whole cell, and stage
2's network output on its first window. The TorchScript weights reproduce them within
{TOLERANCE:g} (largest absolute difference of a probability); sxtlab's tests check it.
The model's own validation: {json.dumps(model.info.get("validation_mean_dice", "see the sxtlab model"))}.
"""


def export_bioimageio(model: CascadeModel, path: str | os.PathLike, *, overwrite: bool = False,
                      name: str = "sxtlab cascade") -> Path:
    """Write the model as BioImage.IO 0.5 packages, one per stage (see the module notes).

    Parameters
    ----------
    model : CascadeModel
        E.g. ``sxtlab.load_model("default")``.
    path : path-like
        Folder to create (atomically, exclusively).
    overwrite : bool
        Replace an existing folder.
    name : str
        Model name (letters, digits, spaces, ``_-.()``); the stages are named
        ``"<name> stage 1"`` and ``"<name> stage 2"``.

    Returns
    -------
    pathlib.Path
        ``path``; ``path/stage1/rdf.yaml`` and ``path/stage2/rdf.yaml`` describe the
        packages.

    Raises
    ------
    sxtlab.OutputExistsError
        If ``path`` exists and ``overwrite`` is false.

    Examples
    --------
    >>> export_bioimageio(sxtlab.load_model("default"), "default-bioimageio")  # doctest: +SKIP
    """
    model.stage1.eval()
    model.stage2.eval()
    norm = _test_cell(model)
    # Stage 1: sxtlab's own coarse probabilities of the cell.
    low = np.asarray(block_mean(norm, model.factor), np.float32)
    p1 = model.stage1_probabilities(norm).astype(np.float32)
    # Stage 2: the first window, its input as sxtlab builds it, its output sxtlab's network's.
    ctx = Context(p1, model.factor, mode=model.context, smooth_sigma=model.smooth_sigma)
    # the training patch, or the next size the spec's float check accepts
    div = model.stage2.config.divisor
    patch = tuple(next(n for n in range(p, p + 64 * div, div) if _divides_back(n, v))
                  for p, v in zip(model.stage2_patch, model.voxel_size or (1.0, 1.0, 1.0)))
    x2 = np.ascontiguousarray(np.concatenate([norm[None, :patch[0], :patch[1], :patch[2]],
                                             ctx.channels((0, 0, 0), patch)])[None], np.float32)
    with torch.inference_mode():
        y2 = _Probabilities(model.stage2, model.temperature)(torch.from_numpy(x2)).numpy()
    trained = model.info.get("trained_on")
    description = (f"Segments {', '.join(model.classes)} in soft X-ray tomograms; trained on "
                   f"{trained_on(trained) if trained else 'data recorded in the sxtlab model'}.")

    def write(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "README.md").write_text(_readme(model, description), encoding="utf-8")
        doc = _readme(model, description)
        _stage_rdf(model, 1, tmp / "stage1", f"{name} stage 1", low[None, None], p1[None], model.stage1, doc)
        _stage_rdf(model, 2, tmp / "stage2", f"{name} stage 2", x2, y2, model.stage2, doc, model.temperature)

    return atomic_output(Path(path), write, overwrite=overwrite)
