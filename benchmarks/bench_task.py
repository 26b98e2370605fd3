"""Task-based training: all partly annotated catalog entries against the complete ones only.

    python benchmarks/bench_task.py --complete-every 8 --seeds 0 1 2   # writes benchmarks/results/task.md

A phantom catalog (:func:`sxtlab.task.phantom_catalog`) holds cells of four studies:
one annotated every class, the others only what their question needed (lipid bodies;
mitochondria; nuclei and lipid bodies), under their own names. ``--complete-every N``
makes the complete study one cell in N (the partial studies share the rest in turn),
as in an archive where few cells were segmented for everything. The task
``cell + mitochondria + lipid_body`` is trained with the same settings and budget
(A) on every entry that annotates one of its classes, the voxels where an
unannotated class could hide labelled with the set of classes they may be
(``Task.train``, marginal loss), and (B) on the complete
entries only, once per training seed. Both are scored (Dice per class) on held-out
phantom cells (seeds never used for the catalog) with varied simulated acquisitions;
the report pairs the two arms by seed and held-out cell.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from sxtlab import phantom
from sxtlab.task import PHANTOM_STUDIES, phantom_catalog
from sxtlab.metrics import evaluate
from sxtlab.task import Task
from sxtlab.train import CascadeConfig, TrainConfig
from sxtlab.unet import UNetConfig

CLASSES = ["cell", "mitochondria", "lipid_body"]
SHAPE, VOXEL = (64, 64, 64), 0.05
HELD_OUT = [(801, {}), (802, {"tilt_range_deg": 90}), (803, {"tilt_range_deg": 55, "photons": 1000.0}),
            (804, {}), (805, {"photons": 1000.0}), (806, {"tilt_range_deg": 60})]


def studies(complete_every: int) -> list:
    """Study of each cell in turn: the complete study once, the partial ones fill the rest."""
    complete, partial = PHANTOM_STUDIES[0], PHANTOM_STUDIES[1:]
    return [complete, *(partial[i % len(partial)] for i in range(complete_every - 1))]


def config(iterations: tuple[int, int], seed: int) -> CascadeConfig:
    net = UNetConfig(depth=3, base_width=8)
    s1 = TrainConfig(patch_size=(16, 16, 16), batch_size=2, iterations=iterations[0], lr=1e-2,
                     val_every=iterations[0], patience=0)
    s2 = TrainConfig(patch_size=(32, 32, 32), batch_size=2, iterations=iterations[1], lr=1e-2,
                     val_every=iterations[1], patience=0)
    return CascadeConfig(factor=4, stage1=replace(s1, seed=seed), stage2=replace(s2, seed=seed),
                         stage1_unet=net, stage2_unet=net, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=16, help="catalog cells")
    parser.add_argument("--complete-every", type=int, default=4, metavar="N",
                        help="one cell in N is annotated completely (4: each study a quarter)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds per arm")
    parser.add_argument("--iterations", type=int, nargs=2, default=(300, 600), metavar=("STAGE1", "STAGE2"))
    parser.add_argument("--equal-epochs", action="store_true",
                        help="scale each run's steps by its number of entries (the same passes over each cell) "
                             "instead of the same steps for both")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "task.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_task_"))
    t0 = time.perf_counter()
    cat = phantom_catalog(work / "refs", args.cells, shape=SHAPE, voxel_size=VOXEL, seed=1,
                          studies=studies(args.complete_every), progress=False)
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
        seconds = []
        for seed in args.seeds:
            t1 = time.perf_counter()
            model, _ = task.train(cat, config(steps, seed), progress=False)
            seconds.append(time.perf_counter() - t1)
            for cell_seed, acq, lac, truth in held_out:
                dice = evaluate(model.predict(lac, progress=False), truth)["dice"]
                rows.append({"training data": task.name, "training seed": seed, "held-out seed": cell_seed,
                             "acquisition": ", ".join(f"{k}={v}" for k, v in acq.items()) or "default",
                             **{c: float(dice[c]) for c in CLASSES}})
        counts = used["annotator"].value_counts().sort_index()
        notes.append(f"* **{task.name}**: {len(used)} entries ({', '.join(f'{k} {v}' for k, v in counts.items())}), "
                     f"{steps[0]} + {steps[1]} steps, {sum(seconds) / len(seconds):.0f} s per training")
    table = pd.DataFrame(rows)
    by_seed = table.groupby(["training data", "training seed"], sort=False)[CLASSES].mean()
    mean = by_seed.groupby("training data", sort=False).agg(["mean", "std"])
    mean.columns = [f"{c} {stat}" for c, stat in mean.columns]
    # Paired by training seed and held-out cell: the same initialisation and test cell.
    key = ["training seed", "held-out seed"]
    a = table[table["training data"] == task_all.name].set_index(key)[CLASSES]
    b = table[table["training data"] == task_complete.name].set_index(key)[CLASSES]
    diff = a - b
    paired = pd.DataFrame({"class": CLASSES, "mean A − B": diff.mean().values,
                           "A ≥ B (pairs)": [f"{int((diff[c] >= 0).sum())} of {len(diff)}" for c in CLASSES]})
    shutil.rmtree(work, ignore_errors=True)

    def markdown(frame: pd.DataFrame) -> str:
        cells = frame.map(lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))
        lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells.values.tolist()])

    command = (f"python benchmarks/bench_task.py --cells {args.cells} --complete-every {args.complete_every} "
               f"--seeds {' '.join(map(str, args.seeds))} --iterations {args.iterations[0]} {args.iterations[1]}"
               + (" --equal-epochs" if args.equal_epochs else ""))
    text = ["# Task-based training: all partly annotated entries against complete ones only", "",
            f"`{command}`; {args.threads} torch thread(s). Catalog: {args.cells} phantom cells "
            f"({SHAPE[0]}³ at {VOXEL} µm, simulated acquisition), one in {args.complete_every} annotated "
            "completely, the others by the partial studies of `sxtlab.catalog.PHANTOM_STUDIES` in turn; built in "
            f"{t_catalog:.0f} s. Task `{' + '.join(CLASSES)}`; the same cascade settings for both, "
            + ("steps in proportion to the entries used." if args.equal_epochs else "the same steps."), "",
            *notes, "", f"Mean Dice over the {len(held_out)} held-out cells, then mean and standard deviation "
            f"over {len(args.seeds)} training seed(s):", "", markdown(mean.reset_index()), "",
            "Paired difference, (A) all entries − (B) complete entries only, per training seed and held-out cell:",
            "", markdown(paired), "", "Dice per class on each held-out phantom cell:", "", markdown(table), ""]
    args.out.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
