"""Dice of the shipped default model on held-out phantom cells (seeds it never saw).

    python benchmarks/bench_default_model.py          # writes benchmarks/results/default_model.md

Cells vary the acquisition (tilt range, photons) and one is at another voxel size
(resampled by the model and back). The model card (sxtlab/models/default/MODEL_CARD.md)
quotes these numbers.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import sxtlab
from sxtlab import phantom
from sxtlab.metrics import dice, evaluate
from sxtlab.task import Task

#: (seed, voxels per side, voxel size µm, acquisition, cell radius µm or None)
HELD_OUT = [
    (901, 96, 0.05, {"tilt_range_deg": 65}),
    (902, 96, 0.05, {"tilt_range_deg": 90}),
    (903, 96, 0.05, {"tilt_range_deg": 55, "photons": 1000.0}),
    (904, 96, 0.05, {"tilt_range_deg": 65, "photons": 4000.0}),
    (905, 128, 0.05, {"tilt_range_deg": 65}),
    (906, 120, 0.04, {"tilt_range_deg": 65}),
    (907, 192, 0.05, {"tilt_range_deg": 65}, 3.0),   # a cell in a field of medium, as real fields are
]


def _markdown(table: pd.DataFrame) -> str:
    # pandas' to_markdown needs the optional 'tabulate' package; this table is simple
    cells = table.map(lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.values.tolist()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "default_model.md")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 where the machine is shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = sxtlab.models.load_model(args.model)
    task = Task(model.classes)
    rows = []
    for seed, n, vs, acq, *radius in HELD_OUT:
        cell = phantom.cell(seed=seed, shape=(n, n, n), voxel_size=vs, acquisition=phantom.Acquisition(**acq),
                            cell_radius_um=radius[0] if radius else None)
        t0 = time.perf_counter()
        seg = model.predict(cell["lac"], progress=False)
        seconds = time.perf_counter() - t0
        truth = task.remap(cell["labels"])
        scores = evaluate(seg, truth)["dice"]
        whole = dice((seg["labels"].values > 0).astype(np.uint8), (truth.values > 0).astype(np.uint8), [1])[1]
        rows.append({"seed": seed, "shape": f"{n}³", "voxel_um": vs, **{f"acq_{k}": v for k, v in acq.items()},
                     "whole_cell": whole, **scores.to_dict(), "predict_s": round(seconds, 1)})
    table = pd.DataFrame(rows)
    mean = table[["whole_cell", *model.classes]].mean()
    text = ["# Default model on held-out phantom cells", "",
            f"Model `{args.model}` (weights sha256 `{model.weights_sha256[:12]}`), classes {model.classes}; "
            "cells with seeds never used in training, simulated acquisition (photon noise, blur, missing wedge). "
            "Dice per label (`cell` is the cytoplasm label, organelles excluded; the truth's nucleolus counts "
            f"as nucleus) and of the whole cell (all labels > 0); {args.threads} torch thread(s), load average "
            f"{os.getloadavg()[0]:.1f} at the end.", "",
            _markdown(table), "",
            "Mean Dice: " + ", ".join(f"{c} {v:.3f}" for c, v in mean.items()), ""]
    args.out.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
