"""Ablations of stage 2: one change at a time to the network alone, trained and scored alike.

Every variant is "run A" (``benchmarks/results/generalisation.md``, 2026-12-03) with one
change: a U-Net trained by :func:`sxtlab.train.train_stage` on LAC only (no stage 1) on
the 117 varied training cells of ``scripts/train_default_model.py`` (seeds 1-120 but
101-103, which validate), two 64³ windows per step, AdamW 1e-2 with polynomial decay,
batch Dice without background plus cross-entropy, intensity augmentation, one torch
thread. ``eval`` scores it on seeds 5000-5003 of both generators under the four
acquisitions of ``bench_generalisation.py``, resampled to the model's 50 nm, by
:func:`sxtlab.inference.sliding_window` with 64³ windows, arg-max labels (no cleaning).

    python benchmarks/ablate_stage2.py train strided --work /tmp/abl --iterations 18000
    python benchmarks/ablate_stage2.py eval strided --work /tmp/abl
    python benchmarks/ablate_stage2.py summary --work /tmp/abl pooled strided strided-plain
    # a second seed of an arm (initial weights and window sampling), in WORK/strided-seed1
    python benchmarks/ablate_stage2.py train strided --seed 1 --work /tmp/abl
    python benchmarks/ablate_stage2.py summary strided --seed 0 1 --work /tmp/abl
    # the cascade's ablation: its stage-2 network without stage 1, scored beside the
    # cascade on the same cells with the cascade's resampling and cleaning (load_single)
    python benchmarks/ablate_stage2.py train strided-plain-2conv --work /tmp/abl --threads 2
    python benchmarks/bench_generalisation.py --cells 8 --model path/to/model \\
        --single strided-plain-2conv=/tmp/abl/strided-plain-2conv

Training resumes from ``WORK/RUN/net.pt`` (kill it and run the same command); ``RUN``
is the variant, or ``VARIANT-seedN`` for seed N > 0 (the results of 2026-12-03 call
``strided --seed 1`` ``strided-s2``). CPU seconds over all sittings go to
``WORK/RUN/cpu.json``. The cells are cached in
``--cells`` (default ``WORK/cells``), as ``train_default_model.py`` caches them.
``python benchmarks/ablate_stage2.py list`` names the variants.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import resource
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import torch
import xarray as xr

from sxtlab.cascade import Normalisation, interpolate_to_grid
from sxtlab.classes import UNANNOTATED, LabelSets
from sxtlab.clean import clean_labels
from sxtlab.inference import sliding_window
from sxtlab.metrics import dice
from sxtlab.models import load_model
from sxtlab.task import Task
from sxtlab.train import Augmentation, Sample, TrainConfig, _prepare, _set_table, train_stage
from sxtlab.unet import UNet3D, UNetConfig
from sxtlab.volume import label_volume, segmentation

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
_spec = importlib.util.spec_from_file_location("train_default_model", HERE.parent / "scripts/train_default_model.py")
tdm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tdm)

CLASSES = tdm.CLASSES
K = len(CLASSES) + 1
#: Run A's network: sxtlab's pooled U-Net, one convolution per level, strided stem.
POOLED = UNetConfig(in_channels=1, out_channels=K, depth=4, base_width=16, convs_per_level=1, stem_stride=2)
STRIDED = replace(POOLED, stem_stride=1, layout="strided")
#: Candidate 15's stage 2 with the LAC as its only input: the cascade's ablation.
STRIDED_PLAIN_2 = replace(STRIDED, convs_per_level=2, norm_affine=False)


class PeerNet(torch.nn.Module):
    """The MONAI peer's network (``monai_peer._net``), with the ``config`` train_stage reads."""

    def __init__(self, **changes) -> None:
        super().__init__()
        import monai_peer

        self.net = monai_peer._net({"classes": CLASSES, "channels": (16, 32, 64, 128), "strides": (2, 2, 2),
                                    "norm": "instance", **changes})
        self.config = POOLED

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def plain_norm(net: torch.nn.Module) -> torch.nn.Module:
    """The peer's normalisation on an sxtlab U-Net: instance norm without scale and shift,
    every convolution with a bias (zero at the start).

    The biases before an instance norm are cancelled by it (their gradient is zero), so
    this is ``UNetConfig(norm_affine=False)``; kept in this form because the recorded
    run was trained so and its weights load only into it.
    """
    for mod in net.modules():
        if isinstance(mod, torch.nn.InstanceNorm3d):
            mod.affine = False
            mod.weight = mod.bias = None
        elif isinstance(mod, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)) and mod.bias is None:
            mod.bias = torch.nn.Parameter(torch.zeros(mod.out_channels))
    return net


@contextlib.contextmanager
def peer_optimiser() -> Iterator[None]:
    """The peer's optimiser inside train_stage: Adam 1e-3 at a constant rate.

    A patch rather than a TrainConfig field: the ablation found no gain from it, so
    sxtlab's trainer keeps one optimiser.
    """
    lambda_lr = torch.optim.lr_scheduler.LambdaLR
    with mock.patch("torch.optim.AdamW", lambda params, lr, weight_decay: torch.optim.Adam(params, lr=1e-3)), \
            mock.patch("torch.optim.lr_scheduler.LambdaLR", lambda opt, f: lambda_lr(opt, lambda i: 1.0)):
        yield


NO_AUGMENTATION = Augmentation(intensity_scale=0, intensity_shift=0, noise_std=0, zoom=0)


#: name: (what it changes, network builder, config change, training context, torch seed at --seed 0)
VARIANTS: dict[str, tuple[str, Callable[[], torch.nn.Module], Callable[[TrainConfig], TrainConfig],
                          Callable[[], contextlib.AbstractContextManager], int]] = {
    "pooled": ("run A itself", lambda: UNet3D(POOLED), lambda c: c, contextlib.nullcontext, 1),
    "adam": ("Adam 1e-3, constant rate", lambda: UNet3D(POOLED), lambda c: c, peer_optimiser, 1),
    "peerloss": ("Dice with background, per sample", lambda: UNet3D(POOLED),
                 lambda c: replace(c, dice_background=True, batch_dice=False), contextlib.nullcontext, 1),
    "noaug": ("no intensity, noise or zoom augmentation", lambda: UNet3D(POOLED),
              lambda c: replace(c, augmentation=NO_AUGMENTATION), contextlib.nullcontext, 1),
    "peerall": ("adam, peerloss and noaug together", lambda: UNet3D(POOLED),
                lambda c: replace(c, dice_background=True, batch_dice=False, augmentation=NO_AUGMENTATION),
                peer_optimiser, 1),
    "peernet": ("the peer's MONAI UNet", PeerNet, lambda c: c, contextlib.nullcontext, 1),
    "peernet-deep": ("the peer's UNet with a fourth level (deepest 4³)",
                     lambda: PeerNet(channels=(16, 32, 64, 128, 128), strides=(2, 2, 2, 2)),
                     lambda c: c, contextlib.nullcontext, 1),
    "peernet-leaky": ("the peer's UNet with leaky ReLU",
                      lambda: PeerNet(act=("leakyrelu", {"negative_slope": 0.01})),
                      lambda c: c, contextlib.nullcontext, 1),
    "strided": ("UNetConfig(layout='strided')", lambda: UNet3D(STRIDED), lambda c: c, contextlib.nullcontext, 1),
    "strided-plain": ("strided with the peer's normalisation (plain instance norm, biased convolutions)",
                      lambda: plain_norm(UNet3D(STRIDED)), lambda c: c, contextlib.nullcontext, 1),
    "strided-plain-2conv": ("strided, plain instance norm, two convolutions per level (stage 2 of "
                            "candidate 15 without stage 1)", lambda: UNet3D(STRIDED_PLAIN_2), lambda c: c,
                            contextlib.nullcontext, 1),
}


def _normalisation(run: Path) -> Normalisation:
    """The LAC normalisation of a run: the default model's when it first trained, kept in
    ``RUN/normalisation.json`` so that a later default does not change how it is scored."""
    path = run / "normalisation.json"
    if path.exists():
        return Normalisation(**json.loads(path.read_text()))
    norm = load_model("default").normalisation
    run.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(norm)))
    return norm


def _cpu_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def run_name(variant: str, seed: int) -> str:
    """Folder of a variant's run with ``seed`` (0: the variant's name alone)."""
    return variant if seed == 0 else f"{variant}-seed{seed}"


def train(variant: str, work: Path, cells: Path, iterations: int, seed: int = 0) -> None:
    _, build, change, context, torch_seed = VARIANTS[variant]
    norm = _normalisation(work)
    sets = LabelSets(K, range(K, UNANNOTATED))
    seeds = [s for s in range(1, 121) if s not in tdm.VALIDATION_SEEDS]
    tr = _prepare([tdm.make_cell(s, cells) for s in seeds], CLASSES, sets)
    va = _prepare([tdm.make_cell(s, cells) for s in tdm.VALIDATION_SEEDS], CLASSES, sets)
    train_s = [Sample(norm.apply(lac)[None], lab, None, n) for n, lac, lab in tr]
    val_s = [Sample(norm.apply(lac)[None], lab, None, n) for n, lac, lab in va]
    cfg = change(replace(tdm.config((4000, iterations), 1).stage2, patch_size=(64, 64, 64)))
    cfg = replace(cfg, seed=cfg.seed + seed)
    print(variant, f"seed {seed}", cfg, flush=True)
    torch.manual_seed(torch_seed + seed)
    net = build()
    ledger, cpu0 = work / "cpu.json", _cpu_seconds()
    try:
        with context():
            net, hist = train_stage(net, train_s, val_s, cfg, class_names=CLASSES, label_sets=_set_table(sets, K),
                                    checkpoint=work / "net.pt", resume=True, desc=variant)
        torch.save(net.state_dict(), work / "final.pt")
        hist.to_csv(work / "history.csv", index=False)
    finally:
        before = json.loads(ledger.read_text())["cpu_seconds"] if ledger.exists() else 0.0
        ledger.write_text(json.dumps({"cpu_seconds": before + _cpu_seconds() - cpu0}))


def _trained(variant: str, run: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], Normalisation]:
    """A run's final network as a ``(B, 1, z, y, x) → (B, K, z, y, x)`` softmax predictor, and
    the normalisation it trained with."""
    net = VARIANTS[variant][1]()
    net.load_state_dict(torch.load(run / "final.pt", weights_only=True))
    net.eval()

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.softmax(net(x), 1)

    return probabilities, _normalisation(run)


def evaluate(variant: str, work: Path) -> pd.DataFrame:
    import bench_generalisation as bg

    predict, norm = _trained(variant, work)
    task, rows = Task(CLASSES), []
    for gen in ("sxtlab", "independent"):
        for acq in bg.ACQUISITIONS:
            for seed in range(bg.FIRST_SEED, bg.FIRST_SEED + 4):
                ds = bg.make_cell(gen, seed, acq, 128)
                lac = ds["lac"].sxt.resample(tdm.VOXEL_SIZE_UM)
                truth = task.remap(ds["labels"].sxt.resample(tdm.VOXEL_SIZE_UM)).values
                x = norm.apply(lac.values)[None].astype(np.float32)
                labels = sliding_window(x, predict, (64, 64, 64), out_channels=K).argmax(0)
                d = dice(labels, truth, range(1, K))
                whole = dice((labels > 0).astype(np.uint8), (truth > 0).astype(np.uint8), [1])[1]
                rows.append({"variant": variant, "generator": gen, "acquisition": acq, "seed": seed,
                             "whole_cell": float(whole), **{c: float(d[i + 1]) for i, c in enumerate(CLASSES)}})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(work / "eval.csv", index=False)
    return table


def load_single(variant: str, run: Path) -> tuple[list[str], Callable[[xr.DataArray], xr.Dataset]]:
    """A trained variant as a segmenter scored like a cascade: (classes, predict).

    ``predict(lac)`` takes the path of :meth:`sxtlab.CascadeModel.predict` without stage 1:
    the volume resampled to the model's 50 nm, normalised as the default model does, the
    network run by :func:`sxtlab.inference.sliding_window` (64³ windows, step ½, Gaussian
    blending), its probabilities interpolated back to the input grid, arg-max labels
    cleaned by :func:`sxtlab.clean.clean_labels`. ``bench_generalisation.py --single``
    scores it beside the cascade on the same cells.
    """
    probabilities, norm = _trained(variant, run)

    def predict(lac: xr.DataArray) -> xr.Dataset:
        resampled = lac.sxt.resample(tdm.VOXEL_SIZE_UM)
        x = norm.apply(np.asarray(resampled.values, np.float32))[None]
        p = interpolate_to_grid(sliding_window(x, probabilities, (64, 64, 64), out_channels=K), resampled, lac)
        labels = label_volume(p.argmax(axis=0).astype(np.uint8), lac,
                              {str(i): c for i, c in enumerate(CLASSES, start=1)})
        return segmentation(lac, clean_labels(labels, voxel_size=lac.attrs["voxel_size_um"]))

    return list(CLASSES), predict


def summary(work: Path, runs: list[str]) -> str:
    """Markdown rows: mean Dice over the acquisitions per run (:func:`run_name`) and generator."""
    cols = ["whole_cell", *CLASSES]
    lines = ["| run (CPU s) | generator | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for v in runs:
        table = pd.read_csv(work / v / "eval.csv")
        cpu = json.loads((work / v / "cpu.json").read_text())["cpu_seconds"]
        for gen, part in table.groupby("generator", sort=False):
            means = part[cols].mean()
            lines.append(f"| {v} ({cpu:.0f}) | {gen} | " + " | ".join(f"{means[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("train", "eval", "summary", "list"))
    parser.add_argument("variants", nargs="*")
    parser.add_argument("--work", type=Path, default=Path("ablations"))
    parser.add_argument("--cells", type=Path, help="cell cache (default WORK/cells)")
    parser.add_argument("--iterations", type=int, default=18000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, nargs="+", default=[0],
                        help="seeds of the runs (0: the variant's own; N shifts weights and window sampling)")
    args = parser.parse_args()
    if args.command == "list":
        for name, (what, *_) in VARIANTS.items():
            print(f"{name:14s} {what}")
        return
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"give variants from {sorted(VARIANTS)}" + (f"; unknown: {unknown}" if unknown else ""))
    runs = [(v, s, run_name(v, s)) for v in args.variants for s in args.seed]
    if args.command == "summary":
        print(summary(args.work, [name for _, _, name in runs]))
        return
    torch.set_num_threads(args.threads)
    for variant, seed, name in runs:
        (args.work / name).mkdir(parents=True, exist_ok=True)
        if args.command == "train":
            train(variant, args.work / name, args.cells or args.work / "cells", args.iterations, seed)
        else:
            evaluate(variant, args.work / name)


if __name__ == "__main__":
    main()
