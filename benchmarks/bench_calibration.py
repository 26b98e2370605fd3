"""Do a model's probabilities mean what they say? Reliability and ECE on held-out cells.

    python benchmarks/bench_calibration.py                          # the shipped default model
    python benchmarks/bench_calibration.py --model DIR --label new  # another model folder

Held-out cells: :func:`sxtlab.phantom.varied_cell` with seeds 5001-5004 (never trained
on: training uses seeds below 1000), 96³ at the model's voxel size. For every annotated
voxel the top-label confidence is binned (15 bins); a calibrated model is right in a
share of each bin's voxels equal to their mean confidence. Writes a reliability diagram
(``benchmarks/results/calibration_<label>.png``) and appends the expected calibration
error (Guo et al. 2017) with the per-bin table to ``benchmarks/results/calibration.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import sxtlab  # noqa: E402
from sxtlab import phantom  # noqa: E402
from sxtlab.metrics import expected_calibration_error, reliability  # noqa: E402
from sxtlab.task import Task  # noqa: E402

SEEDS = [5001, 5002, 5003, 5004]
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="'default' or a model folder")
    parser.add_argument("--label", default="default", help="name of the model in the results")
    parser.add_argument("--size", type=int, default=96, help="voxels per side of the held-out fields")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = sxtlab.models.load_model(args.model)
    task = Task(model.classes)
    probs, truths, rows = [], [], []
    t0 = time.perf_counter()
    for seed in SEEDS:
        ds = phantom.varied_cell(seed, (args.size,) * 3, model.voxel_size)
        seg = model.predict(ds["lac"], progress=False)
        p = seg["probabilities"].values
        t = task.remap(ds["labels"]).values
        probs.append(p.reshape(p.shape[0], -1))
        truths.append(t.ravel())
        rows.append({"seed": seed, "ece": expected_calibration_error(p, t)})
    p = np.concatenate(probs, axis=1)[:, :, None, None]
    t = np.concatenate(truths)[:, None, None]
    table = reliability(p, t)
    ece = expected_calibration_error(p, t)
    seconds = time.perf_counter() - t0

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, label="calibrated")
    ax.plot(table["confidence"], table["accuracy"], "o-", label=f"{args.label} (ECE {ece:.3f})")
    ax.set(xlabel="confidence (top-label probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title="Reliability on held-out varied cells")
    ax.legend(loc="upper left")
    fig.tight_layout()
    png = RESULTS / f"calibration_{args.label}.png"
    fig.savefig(png, dpi=100)

    per_cell = pd.DataFrame(rows)
    lines = [f"\n## {args.label} ({datetime.date.today()})\n",
             f"Model `{args.model}` (weights sha256 `{model.weights_sha256[:12]}`), cells "
             f"`phantom.varied_cell` seeds {SEEDS} at {args.size}³ × {model.voxel_size[0]} µm; "
             f"{seconds:.0f} s with {args.threads} torch thread(s), load average {os.getloadavg()[0]:.1f}. "
             f"Figure: `{png.name}`.\n",
             f"**Expected calibration error, all voxels: {ece:.4f}**; per cell: "
             + ", ".join(f"{r.seed}: {r.ece:.4f}" for r in per_cell.itertuples()) + "\n",
             "| confidence bin | mean confidence | accuracy | voxels |", "|---|---|---|---|"]
    lines += [f"| {r.bin_lo:.2f}–{r.bin_hi:.2f} | {r.confidence:.3f} | {r.accuracy:.3f} | {r.voxels} |"
              for r in table.itertuples()]
    out = RESULTS / "calibration.md"
    if not out.exists():
        out.write_text("# Calibration of model probabilities\n\nWritten by `benchmarks/bench_calibration.py`.\n")
    with out.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
