"""Task-based training: all partly annotated catalog entries against the complete ones only.

    python benchmarks/bench_task.py      # writes benchmarks/results/task.md

A phantom catalog (:func:`sxtlab.catalog.phantom_catalog`) holds cells of four studies:
one annotated every class, the others only what their question needed (lipid bodies;
mitochondria; nuclei and lipid bodies), under their own names. The task
``cell + mitochondria + lipid_body`` is trained twice with the same settings and
budget: (A) on every entry that annotates one of its classes, with the voxels where
an unannotated class could hide masked (``Task.train``), and (B) on the complete
entries only. Both are scored (Dice per class) on held-out phantom cells (seeds
never used for the catalog) with simulated acquisitions.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from sxtlab import phantom
from sxtlab.catalog import phantom_catalog
from sxtlab.metrics import evaluate
from sxtlab.task import Task
from sxtlab.train import CascadeConfig, TrainConfig
from sxtlab.unet import UNetConfig

CLASSES = ["cell", "mitochondria", "lipid_body"]
SHAPE, VOXEL = (64, 64, 64), 0.05
HELD_OUT = [(801, {}), (802, {"tilt_range_deg": 90}), (803, {"tilt_range_deg": 55, "photons": 1000.0})]


def config(iterations: tuple[int, int]) -> CascadeConfig:
    net = UNetConfig(depth=3, base_width=8)
    s1 = TrainConfig(patch_size=(16, 16, 16), batch_size=2, iterations=iterations[0], lr=1e-2,
                     val_every=iterations[0], patience=0)
    s2 = TrainConfig(patch_size=(32, 32, 32), batch_size=2, iterations=iterations[1], lr=1e-2,
                     val_every=iterations[1], patience=0)
    return CascadeConfig(factor=4, stage1=s1, stage2=s2, stage1_unet=net, stage2_unet=net, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=12, help="catalog cells (a quarter per study)")
    parser.add_argument("--iterations", type=int, nargs=2, default=(300, 600), metavar=("STAGE1", "STAGE2"))
    parser.add_argument("--equal-epochs", action="store_true",
                        help="scale each run's steps by its number of entries (the same passes over each cell) "
                             "instead of the same steps for both")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "task.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench_task_"))
    t0 = time.perf_counter()
    cat = phantom_catalog(work / "refs", args.cells, shape=SHAPE, voxel_size=VOXEL, seed=1)
    t_catalog = time.perf_counter() - t0
    task_all = Task(CLASSES, name="all entries")
    task_complete = Task(CLASSES, filters={"annotator": "complete"}, name="complete entries only")
    held_out = []
    for seed, acq in HELD_OUT:
        cell = phantom.cell(seed=seed, shape=SHAPE, voxel_size=VOXEL, acquisition=phantom.Acquisition(**acq))
        held_out.append((seed, acq, cell["lac"], task_all.remap(cell["labels"])))

    rows, notes = [], []
    smallest = len(task_complete.select(cat))
    for task in (task_all, task_complete):
        used = task.select(cat)
        scale = len(used) / smallest if args.equal_epochs else 1
        steps = tuple(int(round(n * scale)) for n in args.iterations)
        t1 = time.perf_counter()
        model, _ = task.train(cat, config(steps), progress=False)
        seconds = time.perf_counter() - t1
        notes.append(f"* **{task.name}**: {len(used)} entries ({', '.join(used['annotator'].value_counts().sort_index().index)}), "
                     f"{steps[0]} + {steps[1]} steps, trained in {seconds:.0f} s")
        for seed, acq, lac, truth in held_out:
            dice = evaluate(model.predict(lac, progress=False), truth)["dice"]
            rows.append({"training data": task.name, "held-out seed": seed,
                         "acquisition": ", ".join(f"{k}={v}" for k, v in acq.items()) or "default",
                         **{c: float(dice[c]) for c in CLASSES}})
    table = pd.DataFrame(rows)
    mean = table.groupby("training data", sort=False)[CLASSES].mean()
    shutil.rmtree(work, ignore_errors=True)

    def markdown(frame: pd.DataFrame) -> str:
        cells = frame.map(lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))
        lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells.values.tolist()])

    text = ["# Task-based training: all partly annotated entries against complete ones only", "",
            f"`python benchmarks/bench_task.py --cells {args.cells} --iterations {args.iterations[0]} "
            f"{args.iterations[1]}{' --equal-epochs' if args.equal_epochs else ''}`; 2 torch threads. Catalog: {args.cells} phantom cells "
            f"({SHAPE[0]}³ at {VOXEL} µm, simulated acquisition), a quarter per study of "
            "`sxtlab.catalog.PHANTOM_STUDIES`, built in "
            f"{t_catalog:.0f} s. Task `{' + '.join(CLASSES)}`; the same cascade settings for both, "
            + ("steps in proportion to the entries used." if args.equal_epochs else "the same steps."), "",
            *notes, "", "Dice per class on held-out phantom cells:", "", markdown(table), "",
            "Mean:", "", markdown(mean.reset_index()), ""]
    args.out.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
