"""Retrain sxtlab's shipped default model reproducibly (about 45 minutes on 2 CPU cores).

    python scripts/train_default_model.py               # writes sxtlab/models/default/
    python scripts/train_default_model.py --out /tmp/m  # elsewhere

Training data: phantom cells (:func:`sxtlab.phantom.cell`) at 0.05 µm voxels with
simulated acquisitions that vary the tilt range (missing wedge) and the photon
count: seeds 1-8 as 96³ fields filled by the cell, and seeds 11-13 as 160³-192³
fields of medium holding cells of 1.6-3.2 µm radius, as whole-cell fields of view
are (validation: seed 9 at 96³, seed 15 at 160³). Evaluation on held-out seeds is
``benchmarks/bench_default_model.py``; its results go into the model card.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sxtlab import phantom
from sxtlab.train import CascadeConfig, TrainConfig, train_cascade
from sxtlab.unet import UNetConfig

CLASSES = ["cell", "nucleus", "mitochondria", "lipid_body", "vacuole"]
VOXEL_SIZE_UM = 0.05
#: (seed, edge in voxels, cell radius µm or None for the generator's default)
TRAIN_CELLS = [(s, 96, None) for s in range(1, 9)] + [(11, 160, 2.8), (12, 160, 1.6), (13, 192, 3.2)]
VALIDATION_CELLS = [(9, 96, None), (15, 160, 2.4)]
#: acquisitions cycled over the training cells: tilt range (°) and photons per pixel
ACQUISITIONS = [{"tilt_range_deg": 65, "photons": 2000.0}, {"tilt_range_deg": 90, "photons": 2000.0},
                {"tilt_range_deg": 55, "photons": 1000.0}, {"tilt_range_deg": 65, "photons": 4000.0}]


def make_cell(seed: int, edge: int, radius_um: float | None, i: int):
    ds = phantom.cell(seed=seed, shape=(edge,) * 3, voxel_size=VOXEL_SIZE_UM, cell_radius_um=radius_um,
                      acquisition=phantom.Acquisition(**ACQUISITIONS[i % len(ACQUISITIONS)], seed=seed))
    return ds[["lac", "labels"]]


def config(iterations: tuple[int, int]) -> CascadeConfig:
    # Stage 1 sees a 96³ cell whole (24³ after 4× downsampling, edge-padded with
    # medium) and most of a 160³ field, so a small network is enough; stage 2 must find
    # faint boundaries (the nucleus differs from the cytoplasm by 0.015-0.04 µm⁻¹
    # against a noise of ~0.045) and gets twice the width. Both take their input at
    # the head too (UNetConfig.input_to_head): a 32³ window of uniform medium or
    # cytoplasm is otherwise featureless after instance norm.
    stage1 = TrainConfig(patch_size=(32, 32, 32), batch_size=2, iterations=iterations[0], lr=1e-2,
                         val_every=250, patience=0)
    stage2 = TrainConfig(patch_size=(32, 32, 32), batch_size=2, iterations=iterations[1], lr=1e-2,
                         val_every=250, patience=0)
    return CascadeConfig(factor=4, stage1=stage1, stage2=stage2,
                         stage1_unet=UNetConfig(depth=3, base_width=8, input_to_head=True),
                         stage2_unet=UNetConfig(depth=3, base_width=16, input_to_head=True), seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "sxtlab/models/default")
    parser.add_argument("--iterations", type=int, nargs=2, default=(1000, 2500), metavar=("STAGE1", "STAGE2"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    t0 = time.perf_counter()
    train = [make_cell(*c, i) for i, c in enumerate(TRAIN_CELLS)]
    val = [make_cell(*c, i) for i, c in enumerate(VALIDATION_CELLS, start=1)]
    cfg = config(tuple(args.iterations))
    model, history = train_cascade(train, CLASSES, cfg, validation=val)
    model.info.update({
        "name": "default",
        "trained_on": {"generator": "sxtlab.phantom", "cells": TRAIN_CELLS, "validation_cells": VALIDATION_CELLS,
                       "cells_are": "(seed, edge in voxels, cell radius µm)", "voxel_size_um": VOXEL_SIZE_UM,
                       "acquisitions": ACQUISITIONS},
        "train_seconds": round(time.perf_counter() - t0),
    })
    model.save(args.out, overwrite=True)
    history.to_csv(args.out / "history.csv", index=False)
    print(json.dumps(model.info.get("validation_mean_dice"), indent=1))
    print(f"saved {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
