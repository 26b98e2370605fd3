"""Retrain sxtlab's shipped default model reproducibly, resumable across sittings.

    python scripts/train_default_model.py --work /tmp/default-run            # writes /tmp/default-run/model
    python scripts/train_default_model.py --work /tmp/default-run --out /tmp/m
    # shipping is a deliberate copy: model.json, weights.safetensors and history.csv into
    # sxtlab/models/default/, whose MODEL_CARD.md a training run never touches
    # killed or stopped? the same command resumes from the cached cells and the checkpoints
    # a later sitting on a fresh machine: continue from the shipped weights
    python scripts/train_default_model.py --work /tmp/more --init default --iterations 1000 2000
    # keep a model's stage 1, train a new stage 2 of MONAI's UNet layout on 64³ windows of
    # 117 cells (the stage-1 step count is then unused): the default of 2026-12-03 14:00
    python scripts/train_default_model.py --work /tmp/s2 --stage1-from default --cells 117 \
        --iterations 1 18000 --stage2-convs 1 --stage2-layout strided --stage2-patch 64 --threads 1
    # a new stage 2 that takes the LAC alone (stage 1 only gates its windows): candidate 16
    python scripts/train_default_model.py --work /tmp/c16 --stage1-from default --cells 117 \
        --iterations 9000 18000 --factor 2 --stage1-patch 64 --stage1-layout strided --stage1-plain-norm \
        --stage2-convs 2 --stage2-layout strided --stage2-patch 64 --stage2-plain-norm --context none --threads 2
    # its second sitting: the same stage 1 kept, stage 2 continued from the first sitting's
    python scripts/train_default_model.py --work /tmp/c16b --stage1-from default --init /tmp/c16/model \
        --cells 117 --iterations 1 12000 --stage2-patch 64 --context none --threads 2
    # both stages anew, stage 1 at 100 nm in MONAI's layout, both with plain instance norm
    python scripts/train_default_model.py --work /tmp/c9 --cells 117 --iterations 9000 18000 \
        --factor 2 --stage1-patch 64 --stage1-layout strided --stage1-plain-norm \
        --stage2-convs 1 --stage2-layout strided --stage2-patch 64 --stage2-plain-norm --threads 2
    # stage 1 alone, for an ablation (stage 2 gets one step; score with
    # benchmarks/bench_generalisation.py --parts stage1)
    python scripts/train_default_model.py --work /tmp/s1 --out /tmp/s1/model --cells 117 --iterations 3000 1

Training data: :func:`sxtlab.phantom.varied_cell` cells (every class's LAC over its
whole literature range, the nucleus darker or brighter than the cytoplasm, texture,
round, elongated and budding cells, nuclei of 3-24 % of the cell, lobed or round,
neighbouring cells, capillary walls in air or medium, FBP and SIRT reconstructions,
tilt ranges ±55° to full rotation, 500-40 000 photons), each simulated at a voxel size
drawn in 25-60 nm and resampled to the model's 50 nm, as inference resamples a user's
volume. Cached by seed and generator version: cells of an older version are kept
beside the new ones, never mistaken for them.
Seeds 1-N train (101-103 skipped), 101-103 validate; held-out evaluation (other seeds and a second,
independent generator) is ``benchmarks/bench_generalisation.py``.

The cells are cached in ``--work`` (``cells/``), the stages' checkpoints in
``--work/checkpoints``; the total CPU seconds of the process over all sittings are
kept in ``--work/cpu_seconds.json`` and go into the model card.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from sxtlab import phantom
from sxtlab.cascade import CONTEXT_MODES
from sxtlab.models import load_model
from sxtlab.train import CascadeConfig, TrainConfig, train_cascade
from sxtlab.unet import UNetConfig
from sxtlab.volume import label_volume, segmentation, volume

CLASSES = ["cell", "nucleus", "mitochondria", "lipid_body", "vacuole"]
VOXEL_SIZE_UM = 0.05
#: Physical extent of every training field (µm): 132 voxels at the model's 50 nm, room
#: for stage 1's 32³ coarse patch (128 voxels at factor 4).
FIELD_UM = 6.6
#: Voxel sizes the cells are simulated at (µm), drawn log-uniformly.
SIMULATED_VOXEL_UM = (0.025, 0.06)
VALIDATION_SEEDS = [101, 102, 103]


def training_seeds(n: int) -> list[int]:
    """Seeds of the first ``n`` training cells: 1, 2, … skipping the validation seeds."""
    return [s for s in range(1, n + len(VALIDATION_SEEDS) + 1) if s not in VALIDATION_SEEDS][:n]


def _cell_path(seed: int, cache: Path) -> Path:
    # the generator's version in the name: a new version draws other cells from a seed
    return cache / f"cell-{seed}-v{phantom.GENERATOR_VERSION}.npz"


def _simulate(seed: int, cache: Path) -> Path:
    """Simulate one cell into the cache unless it is there (atomically: a killed run leaves
    no partial cell); returns its file."""
    path = _cell_path(seed, cache)
    if not path.exists():
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF1E1D]))
        vs = float(np.exp(rng.uniform(*np.log(SIMULATED_VOXEL_UM))))
        n = int(round(FIELD_UM / vs))
        ds = phantom.varied_cell(seed, shape=(n, n, n), voxel_size=vs)
        record = {"seed": seed, "simulated_voxel_um": vs, "variation": ds.attrs["variation"],
                  "acquisition": ds.attrs["acquisition"], "classes": ds["labels"].attrs["classes"]}
        cache.mkdir(parents=True, exist_ok=True)
        # the process id in the name: two runs sharing a cache may simulate the same cell
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial.npz")
        np.savez(tmp, lac=ds["lac"].sxt.resample(VOXEL_SIZE_UM).values,
                 labels=ds["labels"].sxt.resample(VOXEL_SIZE_UM).values, record=json.dumps(record))
        tmp.replace(path)
    return path


def make_cell(seed: int, cache: Path) -> xr.Dataset:
    """A varied cell simulated at its own voxel size, resampled to the model's; cached."""
    with np.load(_simulate(seed, cache)) as f:
        record = json.loads(str(f["record"]))
        img = volume(f["lac"], VOXEL_SIZE_UM, cell_id=f"varied-{seed}")
        return segmentation(img, label_volume(f["labels"], img, record["classes"]))


def make_cells(seeds: list[int], cache: Path, *, jobs: int | None = None,
               desc: str = "cells") -> list[xr.Dataset]:
    """:func:`make_cell` of each seed; the cells not yet cached are simulated in ``jobs``
    processes first (default: the CPUs available; one cell's simulation keeps one core
    busy: 117 cells take about 17 minutes on one core of the 2-core machine, half that on two)."""
    jobs = len(os.sched_getaffinity(0)) if jobs is None else jobs
    missing = [s for s in seeds if not _cell_path(s, cache).exists()]
    if jobs > 1 and len(missing) > 1:
        # spawn, not fork: the parent's torch and OpenMP threads do not survive a fork
        with ProcessPoolExecutor(min(jobs, len(missing)), mp_context=multiprocessing.get_context("spawn")) as pool:
            done = pool.map(_simulate, missing, [cache] * len(missing))
            for _ in tqdm(done, total=len(missing), desc=f"{desc}: simulating"):
                pass
    return [make_cell(s, cache) for s in tqdm(seeds, desc=desc)]


def config(iterations: tuple[int, int], stage2_convs: int = 2, stage2_stride: int = 1,
           stage2_patch: int = 48, stage2_layout: str = "pooled",
           stage2_norm_affine: bool = True, stage1_layout: str = "pooled",
           stage1_norm_affine: bool = True, seed: int = 0, factor: int = 4,
           stage1_patch: int = 32, stage1_folds: int = 0, context: str = "probabilities") -> CascadeConfig:
    # Stage 1 sees a 6.6 µm field whole (32³ at 200 nm voxels, 64³ at 100 nm): it must
    # find the nucleus, a large object of low contrast, so it gets four levels (a
    # receptive field of the whole patch) and, pooled, the absolute intensity at its
    # head. At 200 nm it called no mitochondria and about half of each nucleus on
    # held-out cells; at 100 nm more of both (generalisation.md, 2026-12-04). Stage 2 refines
    # 48³ windows (2.4 µm) at full resolution with stage 1's probabilities; with the
    # input at its head too (and lr 3e-3) it learnt no mitochondria in 1000 steps
    # (validation Dice 0), so it is trained as the previous default's stage 2 was.
    # The strided layout ends in a transposed convolution and has no head to take the
    # input (UNetConfig), so it goes without.
    stage1 = TrainConfig(patch_size=(stage1_patch,) * 3, batch_size=2, iterations=iterations[0], lr=3e-3,
                         val_every=250, patience=0, seed=seed)
    stage2 = TrainConfig(patch_size=(stage2_patch,) * 3, batch_size=2, iterations=iterations[1], lr=1e-2,
                         val_every=500, val_step=1.0, patience=0, seed=seed)
    return CascadeConfig(factor=factor, stage1=stage1, stage2=stage2,
                         stage1_unet=UNetConfig(depth=4, base_width=16, layout=stage1_layout,
                                                input_to_head=stage1_layout == "pooled",
                                                norm_affine=stage1_norm_affine),
                         stage2_unet=UNetConfig(depth=4, base_width=16,
                                                convs_per_level=stage2_convs, stem_stride=stage2_stride,
                                                layout=stage2_layout, norm_affine=stage2_norm_affine),
                         stage1_folds=stage1_folds, context=context, seed=seed)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _stage1_cpu_seconds(model) -> float:
    """CPU seconds spent on ``model``'s stage 1.

    Model files record them as ``train_cpu_seconds_by_stage`` since 2026-12-03. An
    older file gives only its total, which is then counted whole: an upper bound,
    said so on stderr.
    """
    by_stage = model.info.get("train_cpu_seconds_by_stage", {})
    if "stage 1" in by_stage:
        return float(by_stage["stage 1"])
    total = float(model.info.get("train_cpu_seconds", 0))
    print(f"the kept stage 1's own CPU time is not recorded; counting its model's whole {total:.0f} CPU s",
          file=sys.stderr)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="model folder to create (default WORK/model); an existing one only with --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--work", type=Path, required=True, help="cache of cells and checkpoints (resumable)")
    parser.add_argument("--cells", type=int, default=24, help="training cells (seeds 1..N, validation seeds skipped)")
    parser.add_argument("--iterations", type=int, nargs=2, default=(1500, 2000), metavar=("STAGE1", "STAGE2"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=None,
                        help="processes simulating the cells not yet cached (default: the CPUs available)")
    parser.add_argument("--stage2-convs", type=int, default=2,
                        help="convolutions per level of stage 2 (1 halves a step's cost: twice the steps per CPU second)")
    parser.add_argument("--stage2-stride", type=int, default=1, choices=(1, 2),
                        help="2: stage 2 starts with a strided convolution (UNetConfig.stem_stride)")
    parser.add_argument("--stage2-patch", type=int, default=48, help="stage 2's training window edge (voxels)")
    parser.add_argument("--stage2-layout", default="pooled", choices=("pooled", "strided"),
                        help="stage 2's U-Net layout (UNetConfig.layout)")
    parser.add_argument("--stage2-plain-norm", action="store_true",
                        help="stage 2's instance norm without scale and shift (UNetConfig.norm_affine=False)")
    parser.add_argument("--stage1-layout", default="pooled", choices=("pooled", "strided"),
                        help="stage 1's U-Net layout (pooled takes the input at its head, strided cannot)")
    parser.add_argument("--stage1-plain-norm", action="store_true",
                        help="stage 1's instance norm without scale and shift")
    parser.add_argument("--factor", type=int, default=4,
                        help="stage 1's downsampling factor (4: 200 nm voxels; 2: 100 nm)")
    parser.add_argument("--stage1-patch", type=int, default=32,
                        help="stage 1's training patch edge in coarse voxels (32 at factor 4, 64 at 2: the whole field)")
    parser.add_argument("--stage1-folds", type=int, default=0,
                        help="train stage 2 on out-of-fold stage-1 context from this many extra stage-1 models "
                             "(>= 2; each as costly as stage 1), so that it learns to correct stage 1's errors on "
                             "cells stage 1 never saw rather than to trust it (default 0: in-sample context)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the networks' initialisation and the patches drawn (a second seed of an ablation)")
    parser.add_argument("--context", default="probabilities", choices=CONTEXT_MODES,
                        help="what stage 2 takes of stage 1 (CascadeConfig.context): 'none' trains stage 2 "
                             "on the LAC alone, stage 1 only gating its windows")
    parser.add_argument("--stage1-from", default=None,
                        help="keep this model's stage 1 ('default' or a folder) and train only a new stage 2")
    parser.add_argument("--init", default=None,
                        help="continue from this model's weights ('default' or a folder), e.g. in a later "
                             "sitting; with --stage1-from only its stage 2")
    args = parser.parse_args()
    if args.cells < 1:
        parser.error(f"--cells must be at least 1, got {args.cells}")
    args.out = args.out or args.work / "model"
    # before the hours of training, not after: a finished sitting run again, or an --out
    # left pointing at the shipped model (which once replaced its folder, model card and all)
    if args.out.exists() and not args.overwrite:
        parser.error(f"--out {args.out} exists; choose another folder or pass --overwrite to replace it")
    torch.set_num_threads(args.threads)
    # a session's end or `kill` stops a sitting with SIGTERM or SIGHUP: leave through the
    # `finally` below, so that the ledger counts the CPU time of the steps done (the run
    # resumes from its last checkpoint); candidate 16's first sitting lost half its count
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, lambda signum, _frame: sys.exit(128 + signum))
    torch.manual_seed(args.seed)
    ledger = args.work / "cpu_seconds.json"
    spent = json.loads(ledger.read_text())["cpu_seconds"] if ledger.exists() else 0.0
    t0 = time.perf_counter()
    seeds = training_seeds(args.cells)
    cache = args.work / "cells"
    train = make_cells(seeds, cache, jobs=args.jobs, desc="training cells")
    val = make_cells(VALIDATION_SEEDS, cache, jobs=args.jobs, desc="validation cells")
    cfg = config(tuple(args.iterations), stage2_convs=args.stage2_convs, stage2_stride=args.stage2_stride,
                 stage2_patch=args.stage2_patch, stage2_layout=args.stage2_layout,
                 stage2_norm_affine=not args.stage2_plain_norm, stage1_layout=args.stage1_layout,
                 stage1_norm_affine=not args.stage1_plain_norm, seed=args.seed, factor=args.factor,
                 stage1_patch=args.stage1_patch, stage1_folds=args.stage1_folds, context=args.context)
    init = load_model(args.init) if args.init else None
    stage1_from = load_model(args.stage1_from) if args.stage1_from else None
    # continuing a model (--init) inherits all of its training; keeping only its stage 1
    # (--stage1-from) that stage's share
    kept = None if stage1_from is None else _stage1_cpu_seconds(stage1_from)
    inherited = float(init.info.get("train_cpu_seconds", 0)) if init is not None else (kept or 0.0)
    if not ledger.exists():  # the first sitting on top of another model counts what it inherits
        spent += inherited
    try:
        model, history = train_cascade(train, CLASSES, cfg, validation=val, init=init, stage1_from=stage1_from,
                                       checkpoint_dir=args.work / "checkpoints", resume=True)
    finally:
        args.work.mkdir(parents=True, exist_ok=True)
        ledger.write_text(json.dumps({"cpu_seconds": spent + _cpu_seconds()}))
    cpu = spent + _cpu_seconds()
    model.info.update({
        "name": "default",
        "trained_on": {"generator": "sxtlab.phantom.varied_cell",
                       "generator_version": phantom.GENERATOR_VERSION, "seeds": seeds,
                       "validation_seeds": VALIDATION_SEEDS, "field_um": FIELD_UM,
                       "simulated_voxel_um": list(SIMULATED_VOXEL_UM), "voxel_size_um": VOXEL_SIZE_UM},
        "train_cpu_seconds": round(cpu),
    })
    if kept is not None:
        model.info["train_cpu_seconds_by_stage"] = {"stage 1": round(kept), "stage 2": round(cpu - kept)}
    model.save(args.out, overwrite=args.overwrite)
    history.to_csv(args.out / "history.csv", index=False)
    print(json.dumps(model.info.get("validation_mean_dice"), indent=1))
    print(f"saved {args.out}; this sitting {time.perf_counter() - t0:.0f} s, all sittings {cpu:.0f} CPU s")


if __name__ == "__main__":
    main()
