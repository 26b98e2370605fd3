"""Dice of sxtlab models (and a MONAI peer) on held-out cells of two phantom generators.

Generators: ``sxtlab`` (``sxtlab.phantom.cell``, the narrow cell of tutorials and
tests, seeds >= 5000, never used in training), ``independent``
(``benchmarks/independent_phantom.py``, written for evaluation only) and, on request
(``--generators sxtlab,varied,independent``), ``varied`` (``sxtlab.phantom.varied_cell``,
the training cells' generator, with held-out seeds and the acquisitions below instead of
drawn ones: how well a model does on its own kind of cell, neighbours' organelles
included). Acquisitions, each generator with its own simulator (``varied`` that of
``sxtlab``):

============  ==========================================  =====================================
name          sxtlab.phantom.Acquisition                  independent_phantom preset
============  ==========================================  =====================================
standard      ±67°, 90 angles (1.5°), 2000 photons/px     ±65-70°, 1-2° step, 1.8-3.2e6 ph/µm²
wedge         ±57°, 77 angles (1.5°), 2000 photons/px     ±55-60°, same otherwise
coarse        standard, 48 nm voxels                      standard, 48 nm voxels
low_dose      standard, 700 photons/px                    standard × 0.12-0.20 photons
============  ==========================================  =====================================

Fields: ``--size`` voxels per side at 32 nm (default 128); coarse fields have the same
extent at 48 nm (128 → 85, rounded to 88). The same seeds (5000, 5001, ...) are used
under every acquisition.

    python benchmarks/bench_generalisation.py --cells 2                     # the default model
    python benchmarks/bench_generalisation.py --cells 2 --model default --model path/to/model_dir \\
        --monai /tmp/peer --note "after retraining"
    python benchmarks/bench_generalisation.py --cells 1 --size 64 --out /tmp/g.md   # quick smoke run
    # stage 1 alone beside the cascade (models whose stage 2 is untrained: --parts stage1)
    python benchmarks/bench_generalisation.py --cells 4 --model path/to/model --parts cascade,stage1
    # the cascade beside the same network trained without stage 1 (benchmarks/ablate_stage2.py)
    python benchmarks/bench_generalisation.py --cells 8 --model path/to/model \\
        --single strided-plain-2conv=/tmp/abl/strided-plain-2conv
    # the cascade averaged over the 8 axis mirrorings beside the plain one
    python benchmarks/bench_generalisation.py --cells 4 --model default --tta

Appends a dated section to ``benchmarks/results/generalisation.md`` (never erases
earlier ones): a per-cell table and the mean per (model, generator, acquisition), with
the machine's load average (``os.getloadavg()``) beside the times. Dice per class of
the model's task (``cell`` is the cytoplasm; nucleolus counts as nucleus) and of the
whole cell (all labels > 0), and where each class's voxels went
(:func:`sxtlab.metrics.confusion`: a dark nucleus called vacuole shows there).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

import sxtlab
from sxtlab import phantom
from sxtlab.metrics import confusion, dice, evaluate
from sxtlab.task import Task

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import independent_phantom  # noqa: E402

ACQUISITIONS = ("standard", "wedge", "coarse", "low_dose")
SXTLAB_ACQ = {
    "standard": dict(tilt_range_deg=67.0, n_angles=90, photons=2000.0),
    "wedge": dict(tilt_range_deg=57.0, n_angles=77, photons=2000.0),
    "coarse": dict(tilt_range_deg=67.0, n_angles=90, photons=2000.0),
    "low_dose": dict(tilt_range_deg=67.0, n_angles=90, photons=700.0),
}
FIRST_SEED = 5000


def field(acq: str, size: int) -> tuple[int, float]:
    """(voxels per side, voxel size µm) of an acquisition's field."""
    if acq == "coarse":
        return int(round(size * 32 / 48 / 8) * 8), 0.048
    return size, 0.032


GENERATORS = ("sxtlab", "varied", "independent")


def make_cell(generator: str, seed: int, acq: str, size: int):
    n, vs = field(acq, size)
    if generator == "sxtlab":
        return phantom.cell(seed=seed, shape=(n, n, n), voxel_size=vs,
                            acquisition=phantom.Acquisition(**SXTLAB_ACQ[acq]))
    if generator == "varied":
        return phantom.varied_cell(seed, (n, n, n), vs, acquisition=phantom.Acquisition(**SXTLAB_ACQ[acq]))
    if generator == "independent":
        return independent_phantom.cell(seed, (n, n, n), vs, acq)
    raise ValueError(f"unknown generator {generator!r}: expected one of {', '.join(GENERATORS)}")


def _markdown(table: pd.DataFrame) -> str:
    cells = table.map(lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.values.tolist()]
    return "\n".join(lines)


def _stage1_alone(model, lac):
    """Stage 1's answer alone: its coarse probabilities interpolated to the input grid, arg-max.

    What stage 2 receives as context, before the smoothing the model applies; the same
    resampling to and from the model's voxel size as :meth:`CascadeModel.predict`.
    """
    from sxtlab.cascade import Context, interpolate_to_grid
    from sxtlab.volume import label_volume, segmentation

    resampled = lac.sxt.resample(model.voxel_size)
    norm = model.normalisation.apply(np.asarray(resampled.values, np.float32))
    coarse = Context(model.stage1_probabilities(norm), model.factor, smooth_sigma=0)
    p = interpolate_to_grid(coarse.probabilities_at((0, 0, 0), norm.shape), resampled, lac)
    labels = label_volume(p.argmax(axis=0).astype(np.uint8), lac,
                          {str(i): c for i, c in enumerate(model.classes, start=1)})
    return segmentation(lac, labels)


def _load(spec: str, stage1: bool = False, tta: bool = False):
    if spec.startswith("single:"):
        import ablate_stage2

        variant, run = spec[len("single:"):].split("=", 1)
        classes, predict = ablate_stage2.load_single(variant, Path(run))
        return f"{Path(run).name} (no stage 1)", SimpleNamespace(classes=classes), predict
    if spec.startswith("monai:"):
        import monai_peer

        peer = monai_peer.load(spec[len("monai:"):])
        return f"monai:{Path(peer.path).parent.name}", peer, lambda lac: monai_peer.predict(peer, lac)
    model = sxtlab.models.load_model(spec)
    name = spec if spec in sxtlab.models.SHIPPED else Path(spec).name
    name += f" ({model.weights_sha256[:8]})"
    if stage1:
        return f"{name} stage 1 alone", model, lambda lac: _stage1_alone(model, lac)
    if tta:
        return f"{name} +tta", model, lambda lac: model.predict(lac, progress=False, tta=True)
    return name, model, lambda lac: model.predict(lac, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="shipped name or model folder (repeatable; default 'default')")
    parser.add_argument("--monai", action="append", default=[], help="MONAI peer checkpoint (folder or .pt; repeatable)")
    parser.add_argument("--single", action="append", default=[], metavar="VARIANT=RUN",
                        help="a network trained without stage 1 by ablate_stage2.py (its variant and run "
                             "folder; repeatable), scored with the cascade's resampling and cleaning")
    parser.add_argument("--cells", type=int, default=2, help="cells per generator and acquisition (default 2)")
    parser.add_argument("--size", type=int, default=128, help="voxels per side at 32 nm (default 128)")
    parser.add_argument("--generators", default="sxtlab,independent",
                        help=f"comma-separated, of {', '.join(GENERATORS)} (default sxtlab,independent)")
    parser.add_argument("--acquisitions", default=",".join(ACQUISITIONS),
                        help=f"comma-separated, of {', '.join(ACQUISITIONS)} (default all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--parts", default="cascade",
                        help="what of each sxtlab model to score: 'cascade', 'stage1' (its coarse arg-max "
                             "alone, on the input grid) or both, comma-separated")
    parser.add_argument("--tta", action="store_true",
                        help="also score each sxtlab model's cascade averaged over the 8 axis mirrorings (8x slower)")
    parser.add_argument("--note", default="", help="a line of context for the results section")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "generalisation.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    specs = (args.model or ["default"]) + [f"monai:{m}" for m in args.monai] + [f"single:{m}" for m in args.single]
    if any("=" not in m for m in args.single):
        parser.error(f"--single takes VARIANT=RUN_FOLDER, got {args.single}")
    if set(args.generators.split(",")) - set(GENERATORS):
        parser.error(f"--generators takes {', '.join(GENERATORS)}, got {args.generators!r}")
    if set(args.acquisitions.split(",")) - set(ACQUISITIONS):
        parser.error(f"--acquisitions takes {', '.join(ACQUISITIONS)}, got {args.acquisitions!r}")
    if args.cells < 1 or args.size < 16 or args.threads < 1:
        parser.error(f"--cells and --threads must be >= 1 and --size >= 16, got {args.cells}, {args.threads}, {args.size}")
    parts = args.parts.split(",")
    if not parts or set(parts) - {"cascade", "stage1"}:
        parser.error(f"--parts takes 'cascade' and/or 'stage1', got {args.parts!r}")
    models = [_load(s) for s in specs if "cascade" in parts or s.startswith(("monai:", "single:"))]
    if args.tta and "cascade" not in parts:
        parser.error("--tta scores the cascade: add 'cascade' to --parts")
    if args.tta:
        models += [_load(s, tta=True) for s in specs if not s.startswith(("monai:", "single:"))]
    if "stage1" in parts:
        models += [_load(s, stage1=True) for s in specs if not s.startswith(("monai:", "single:"))]
    started = dt.datetime.now(dt.timezone.utc)
    load_start = os.getloadavg()
    rows, confused = [], []
    for gen in args.generators.split(","):
        for acq in args.acquisitions.split(","):
            for seed in range(FIRST_SEED, FIRST_SEED + args.cells):
                t0 = time.perf_counter()
                c = make_cell(gen, seed, acq, args.size)
                gen_s = time.perf_counter() - t0
                n = c["lac"].shape[0]
                for name, model, predict in models:
                    load1 = os.getloadavg()[0]
                    t0, c0 = time.perf_counter(), time.process_time()
                    seg = predict(c["lac"])
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    truth = Task(list(model.classes)).remap(c["labels"])
                    scores = evaluate(seg, truth)["dice"]
                    whole = dice((seg["labels"].values > 0).astype(np.uint8),
                                 (truth.values > 0).astype(np.uint8), [1])[1]
                    row = {"model": name, "generator": gen, "acquisition": acq, "seed": seed,
                           "field": f"{n}³×{c['lac'].sxt.voxel_size[0] * 1000:.0f}nm",
                           "whole_cell": whole, **scores.to_dict(), "gen_s": round(gen_s, 1),
                           "predict_s": round(wall, 1), "predict_cpu_s": round(cpu, 1), "load1": round(load1, 2)}
                    rows.append(row)
                    shares = confusion(seg, truth, normalize=True).drop(index="background")
                    for true_class, share in shares.dropna(how="all").iterrows():
                        confused.append({"model": name, "generator": gen, "truth": true_class, **share.to_dict()})
                    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                          flush=True)
    table = pd.DataFrame(rows)
    classes = [c for c in table.columns if c not in ("model", "generator", "acquisition", "seed", "field",
                                                     "gen_s", "predict_s", "predict_cpu_s", "load1")]
    mean = table.groupby(["model", "generator", "acquisition"], sort=False)[classes + ["predict_s"]].mean().reset_index()
    overall = table.groupby(["model", "generator"], sort=False)[classes].mean().reset_index()
    # where each class's voxels went, mean share per cell over every acquisition
    went = pd.DataFrame(confused).groupby(["model", "generator", "truth"], sort=False).mean().reset_index()
    went = went.loc[:, (went != 0).any()]  # drop columns no voxel went to (e.g. "other")
    load_end = os.getloadavg()
    text = [f"## {started:%Y-%m-%d %H:%M} UTC: {', '.join(n for n, _, _ in models)}", ""]
    if args.note:
        text += [args.note, ""]
    text += [f"Command: `python benchmarks/bench_generalisation.py {shlex.join(sys.argv[1:])}`; "
             f"{platform.machine()}, {os.cpu_count()} CPUs, torch {args.threads} thread(s); "
             f"load average (1, 5, 15 min) {tuple(round(v, 2) for v in load_start)} at the start, "
             f"{tuple(round(v, 2) for v in load_end)} at the end; `load1` per row is the 1-min load when "
             f"that prediction started. Total {(dt.datetime.now(dt.timezone.utc) - started).total_seconds() / 60:.1f} min. "
             f"Seeds {FIRST_SEED}-{FIRST_SEED + args.cells - 1} of each generator under each acquisition; "
             f"fields {args.size}³ × 32 nm, coarse {field('coarse', args.size)[0]}³ × 48 nm. "
             "NaN: the class is absent from both truth and prediction.", "",
             "Mean Dice per (model, generator, acquisition):", "", _markdown(mean), "",
             "Mean over the acquisitions:", "", _markdown(overall), "",
             "Where each true class's voxels went (mean share per cell over the acquisitions; "
             "rows: truth, columns: prediction):", "", _markdown(went), "",
             "Per cell:", "", _markdown(table), "", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    head = "" if args.out.exists() else (
        "# Generalisation: held-out cells of two phantom generators\n\n"
        "Produced by `benchmarks/bench_generalisation.py` (see its docstring for the acquisitions); sections are "
        "appended, newest last. `independent` is `benchmarks/independent_phantom.py`, a generator written for "
        "evaluation only (figure: `independent_phantom.png`).\n\n")
    with open(args.out, "a") as f:
        f.write(head + "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
