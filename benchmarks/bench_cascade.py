"""Benchmark of the cascade: quality, speed against MONAI, memory of Zarr-backed inference.

Run by hand (CPU, minutes to an hour); results go to ``benchmarks/results/cascade.md``::

    python benchmarks/bench_cascade.py                 # all parts
    python benchmarks/bench_cascade.py --part quality  # or speed, memory
    python benchmarks/bench_cascade.py --quick         # tiny budgets: checks the script

Parts
-----
quality
    Phantom cells (:func:`sxtlab.phantom.cell`, simulated acquisition; four 96³ fields
    at 50 nm and three of 160³–192³ holding cells 1.6–3.2 µm in radius) train (a) the
    cascade and (b) a single-stage U-Net of the same size on full-resolution patches
    without stage-1 channels, with the same stage-2 budget; both and (c) a LAC
    multi-Otsu threshold baseline are scored (Dice per class) on held-out cells whose
    seeds were never trained on, under varied acquisitions (tilt range, photons) and one
    at another voxel size (50 nm, resampled by the model; 40 nm).
speed
    A 256³ field (12.8 µm at 50 nm) with a held-out cell of radius 3 µm: the whole
    cascade (stage 1, context, stage 2 with background windows skipped) against MONAI's
    ``sliding_window_inference`` running the same stage-2 network with the same patch,
    overlap (0.5) and Gaussian blending on precomputed stage-2 inputs, in the same
    process; Dice of both.
memory
    Zarr-backed inference (``predict(volume, out=...)``) of the speed test's cell
    simulated in a 256³ and in a 512³ field (about the same stage-2 work, 8× the
    volume), in subprocesses: peak resident memory (``VmHWM``) and peak
    Python-traced memory (``tracemalloc``).

Needs MONAI for ``speed`` (``pip install --no-deps monai``; sxtlab itself does not
depend on it). Threads: ``torch.set_num_threads(2)`` (the target machine has 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "_work"

SHAPE, VOXEL = (96, 96, 96), 0.05
CLASSES = ["cell", "nucleus", "nucleolus", "mitochondria", "lipid_body", "vacuole"]
# Training and validation cells: (seed, shape, cell radius µm; None = 0.36 × the field).
# Fields and cells of several sizes, as inference meets them: stage 1 learns to be sure
# of medium far from a cell (where whole stage-2 windows can be skipped), and of large
# cells in a field of mostly medium.
TRAIN_CELLS = [(101, SHAPE, None), (102, SHAPE, None), (103, SHAPE, None), (104, SHAPE, None),
               (111, (160, 160, 160), 2.8), (112, (160, 160, 160), 1.6), (113, (192, 192, 192), 3.2)]
VAL_CELLS = [(105, SHAPE, None), (115, (160, 160, 160), 2.4)]
# held-out cells: (seed, shape, voxel size µm, acquisition settings)
TEST_CELLS = [
    (901, SHAPE, VOXEL, {}),                                          # as in training
    (902, SHAPE, VOXEL, {"tilt_range_deg": 90}),                     # full tilt (capillary)
    (903, SHAPE, VOXEL, {"tilt_range_deg": 55, "photons": 1000.0}),  # larger wedge, noisier
    (904, (120, 120, 120), 0.04, {}),                                 # other voxel size
]
SPEED_SEED = 951
#: radius (µm) of the cell in the speed and memory fields; SXT fields of view hold a
#: cell of a few µm in medium (a 256³ field at 50 nm is 12.8 µm wide)
FIELD_CELL_RADIUS = 3.0


def _threads(n: int = 2) -> None:
    import torch

    torch.set_num_threads(n)


def _cell(seed: int, shape=SHAPE, voxel: float = VOXEL, acq: dict | None = None, radius: float | None = None):
    from sxtlab import phantom

    ds = phantom.cell(seed=seed, shape=shape, voxel_size=voxel, acquisition=phantom.Acquisition(**(acq or {})),
                      cell_radius_um=radius)
    return ds[["lac", "labels"]]


def _config(quick: bool):
    from sxtlab.train import CascadeConfig, TrainConfig
    from sxtlab.unet import UNetConfig

    net = UNetConfig(depth=3, base_width=8, input_to_head=True)
    # stage 1 sees a 96³ field whole (24³, edge-padded with medium) and most of a 160³ one
    s1 = TrainConfig(patch_size=(32, 32, 32), batch_size=2, iterations=4 if quick else 600, lr=1e-2,
                     val_every=2 if quick else 150, patience=3, seed=0)
    s2 = TrainConfig(patch_size=(32, 32, 32), batch_size=2, iterations=4 if quick else 800, lr=1e-2,
                     val_every=2 if quick else 200, patience=3, seed=0)
    return CascadeConfig(factor=4, stage1=s1, stage2=s2, stage1_unet=net, stage2_unet=net, seed=0)


# --- (c) LAC threshold baseline -------------------------------------------------------
def otsu_baseline(lac: np.ndarray) -> np.ndarray:
    """Multi-Otsu (4 classes) on LAC, mapped to phantom labels by LAC order.

    Medium/vacuoles < cytoplasm/nucleus < nucleolus/mitochondria < lipid bodies: the
    cell is the filled, largest connected region above the first threshold; inside
    it, bins map to cell (1), mitochondria (4), lipid body (5), and the lowest bin to
    vacuole (6). The nucleus and nucleolus have no LAC class of their own.
    """
    from scipy import ndimage
    from skimage.filters import threshold_multiotsu

    t = threshold_multiotsu(lac, classes=4)
    bins = np.digitize(lac, t)
    fg = ndimage.binary_opening(bins >= 1, iterations=1)
    lab, n = ndimage.label(fg)
    if n:
        fg = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    cell = ndimage.binary_fill_holes(fg)
    out = np.zeros(lac.shape, np.uint8)
    out[cell] = np.array([6, 1, 4, 5], np.uint8)[bins[cell]]
    return out


def _dice_table(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from sxtlab.metrics import dice

    d = dice(pred, truth, range(1, len(CLASSES) + 1))
    out = {c: round(d[i + 1], 4) for i, c in enumerate(CLASSES)}
    out["whole_cell"] = round(dice((pred > 0).astype(np.uint8), (truth > 0).astype(np.uint8), [1])[1], 4)
    return out


# --- (b) single-stage U-Net -------------------------------------------------------------
def train_single(samples, val, cfg, progress: bool):
    import torch

    from sxtlab.cascade import Normalisation
    from sxtlab.train import Sample, train_stage
    from sxtlab.unet import UNet3D

    fg = np.concatenate([s.lac.values[s.labels.values > 0] for s in samples])
    norm = Normalisation.fit(fg)

    def sample(ds):
        return Sample(norm.apply(ds.lac.values)[None], ds.labels.values.astype(np.uint8))

    torch.manual_seed(cfg.seed + 1)   # as the cascade's stage 2
    net = UNet3D(replace(cfg.stage2_unet, in_channels=1, out_channels=len(CLASSES) + 1))
    net, hist = train_stage(net, [sample(s) for s in samples], [sample(s) for s in val], cfg.stage2,
                            class_names=CLASSES, progress=progress, desc="single-stage")
    return net, norm, hist


def predict_single(net, norm, lac, patch):
    import torch

    from sxtlab.inference import sliding_window

    def predict(x):
        with torch.inference_mode():
            return torch.softmax(net(x), dim=1)

    return sliding_window(norm.apply(lac)[None], predict, patch, out_channels=len(CLASSES) + 1).argmax(0)


# --- parts ---------------------------------------------------------------------------
def part_quality(quick: bool, progress: bool) -> dict:
    import torch

    from sxtlab.train import train_cascade

    cfg = _config(quick)

    def cells(spec):
        if quick:   # the first and the last cell, halved (dict.fromkeys: ordered, no repeat)
            return [_cell(seed, tuple(n // 2 for n in shp), radius=None if r is None else r / 2)
                    for seed, shp, r in dict.fromkeys((spec[0], spec[-1]))]
        return [_cell(seed, shp, radius=r) for seed, shp, r in spec]

    t0 = time.perf_counter()
    train, val = cells(TRAIN_CELLS), cells(VAL_CELLS)
    t_data = time.perf_counter() - t0

    t0 = time.perf_counter()
    model, hist = train_cascade(train, CLASSES, cfg, validation=val, progress=progress)
    t_cascade = time.perf_counter() - t0
    model.save(WORK / "cascade_model", overwrite=True)
    hist.to_csv(WORK / "cascade_history.csv", index=False)

    t0 = time.perf_counter()
    single, norm, hist_b = train_single(train, val, cfg, progress)
    t_single = time.perf_counter() - t0
    torch.save(single.state_dict(), WORK / "single_stage.pt")
    hist_b.to_csv(WORK / "single_history.csv", index=False)

    rows = []
    for seed, shp, vs, acq in TEST_CELLS:
        if quick:
            shp = tuple(s // 2 for s in shp)
        ds = _cell(seed, shp, vs, acq)
        truth = ds.labels.values
        t0 = time.perf_counter()
        seg = model.predict(ds.lac, progress=False)
        t_a = time.perf_counter() - t0
        lac = ds.lac
        if not np.allclose(vs, VOXEL):
            lac = lac.sxt.resample(VOXEL)    # the single-stage net also needs the training grid
        pb = predict_single(single, norm, lac.values, cfg.stage2.patch_size)
        if pb.shape != truth.shape:
            from sxtlab.cascade import _interp_axis, _linear_index  # nearest would do; reuse linear on one-hot

            onehot = (pb[None] == np.arange(len(CLASSES) + 1)[:, None, None, None]).astype(np.float32)
            for axis, d in enumerate("zyx"):
                u = (ds[d].values - lac[d].values[0]) / VOXEL
                onehot = _interp_axis(onehot, axis + 1, *_linear_index(u, lac.sizes[d]))
            pb = onehot.argmax(0)
        pc = otsu_baseline(ds.lac.values)
        cond = f"seed {seed}, {shp[0]}³ at {vs * 1000:.0f} nm, " + (", ".join(f"{k}={v}" for k, v in acq.items())
                                                                     or "tilt ±65°, 2000 photons")
        for name, pred in (("(a) cascade", seg.labels.values), ("(b) single-stage", pb), ("(c) multi-Otsu", pc)):
            rows.append({"condition": cond, "method": name, **_dice_table(pred, truth)})
        rows[-3]["predict_s"] = round(t_a, 1)
    return {"times_s": {"data": round(t_data, 1), "train_cascade": round(t_cascade, 1),
                        "train_single_stage": round(t_single, 1)},
            "config": cfg.to_dict(), "normalisation": model.metadata()["normalisation"],
            "train_cells": TRAIN_CELLS, "val_cells": VAL_CELLS, "rows": rows,
            "history_last": hist.groupby("stage").tail(1).to_dict("records"),
            "single_history_last": hist_b.tail(1).to_dict("records")}


def part_speed(quick: bool, size: int, model_dir: Path) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    from sxtlab.cascade import CascadeModel

    model = CascadeModel.load(model_dir)
    shape = (64, 64, 64) if quick else (size,) * 3
    ds = _cell(SPEED_SEED, shape, radius=1.2 if quick else FIELD_CELL_RADIUS)
    truth = ds.labels.values
    lac = ds.lac
    out: dict = {"shape": list(shape), "patch": list(model.stage2_patch), "overlap": 0.5}

    t0 = time.perf_counter()
    seg = model.predict(lac, progress=False)
    out["cascade_s"] = round(time.perf_counter() - t0, 1)
    out["cascade_windows"], out["cascade_windows_skipped"] = seg.attrs["windows"], seg.attrs["windows_skipped"]
    out["cascade_dice"] = _dice_table(seg.labels.values, truth)

    # MONAI on the same stage-2 network and the same stage-2 inputs (not in MONAI's
    # time: built by sxtlab's own stage 1, as the cascade does inside its timing;
    # timed apart to show what stage 1 and its context cost the cascade)
    t0 = time.perf_counter()
    norm = model.normalisation.apply(lac.values.astype(np.float32))
    ctx = model.context_for(norm)
    out["stage1_context_s"] = round(time.perf_counter() - t0, 1)
    inputs = np.concatenate([norm[None], ctx.channels((0, 0, 0), norm.shape)])[None]
    x = torch.from_numpy(inputs)
    net = model.stage2

    def predictor(t):
        return torch.softmax(net(t), dim=1)

    t0 = time.perf_counter()
    with torch.inference_mode():
        y = sliding_window_inference(x, roi_size=model.stage2_patch, sw_batch_size=1, predictor=predictor,
                                     overlap=0.5, mode="gaussian", sigma_scale=0.125, padding_mode="replicate")
    out["monai_s"] = round(time.perf_counter() - t0, 1)
    out["monai_dice"] = _dice_table(y[0].argmax(0).numpy().astype(np.uint8), truth)
    out["speedup"] = round(out["monai_s"] / out["cascade_s"], 2)
    out["stage2_gflop_per_window"] = round(net.flops_per_voxel() * np.prod(model.stage2_patch) / 1e9, 2)
    return out


def _proc_status_mib(field: str) -> int:
    """A memory figure of this process from ``/proc/self/status`` (Linux), MiB.

    ``VmHWM`` (peak resident memory) starts afresh at exec, whereas
    ``getrusage(...).ru_maxrss`` keeps the parent's peak from before the fork, which
    here would count the parent's simulated field.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024)
    raise RuntimeError(f"/proc/self/status has no {field}")


def _memory_child(src: str, model_dir: str, out: str, block: int, threads: int) -> None:
    import tracemalloc

    _threads(threads)
    from sxtlab.cascade import CascadeModel
    from sxtlab.io import read_volume

    tracemalloc.start()
    model = CascadeModel.load(model_dir)
    vol = read_volume(src)
    base = _proc_status_mib("VmRSS")
    t0 = time.perf_counter()
    seg = model.predict(vol, out=out, block_size=block, progress=False)
    dt = time.perf_counter() - t0
    print(json.dumps({
        "shape": list(vol.shape), "chunks": list(vol.data.chunksize), "block_size": block, "seconds": round(dt, 1),
        "rss_before_predict_mib": base,
        "peak_rss_mib": _proc_status_mib("VmHWM"),
        "peak_traced_mib": round(tracemalloc.get_traced_memory()[1] / 2**20),
        "input_mib": round(vol.size * 4 / 2**20),
        "output_mib": round((seg["probabilities"].size * 4 + seg["labels"].size) / 2**20),
    }))


def part_memory(quick: bool, block: int, threads: int, model_dir: Path) -> dict:
    """The speed test's held-out cell in a 256³ and a 512³ field: about the same stage-2 work.

    Each field is simulated whole (the same cell, seed and radius, centred), so its
    medium carries the reconstruction's noise and streaks as a real field of view
    does. Each size's result is saved as soon as it is measured.
    """
    from sxtlab.io import write_volume

    results = {}
    for size in ((64, 128) if quick else (256, 512)):
        ds = _cell(SPEED_SEED, (size,) * 3, radius=1.2 if quick else FIELD_CELL_RADIUS)
        src = WORK / f"field_{size}.ome.zarr"
        write_volume(ds.lac, src, overwrite=True)
        del ds
        out = WORK / f"seg_{size}.ome.zarr"
        shutil.rmtree(out, ignore_errors=True)   # the previous run's, in the benchmark's own folder
        proc = subprocess.run([sys.executable, __file__, "--memory-child", str(src), str(model_dir),
                               str(out), str(block), str(threads)], capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"memory child failed: {proc.stderr[-2000:]}")
        results[f"{size}^3"] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps({f"memory {size}^3": results[f"{size}^3"]}), flush=True)
    return results


def render_markdown(results: dict) -> str:
    """Markdown tables of a results JSON (for ``benchmarks/results/cascade.md``)."""
    lines = []
    m = results.get("machine", {})
    lines.append(f"Machine: {m.get('cpus')} CPUs, torch {m.get('torch')} with {m.get('threads')} threads, "
                 f"Python {m.get('python')}; load average at start {m.get('load_average_at_start')}.\n")
    q = results.get("quality")
    if q:
        cols = [*CLASSES, "whole_cell"]
        lines.append("| held-out cell | method | " + " | ".join(cols) + " |")
        lines.append("|---|---|" + "---|" * len(cols))
        for i, r in enumerate(q["rows"]):
            cond = r.get("condition", f"seed {TEST_CELLS[i // 3][0]}")   # older result files lack it
            lines.append(f"| {cond} | {r['method']} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
        mean = {}
        for r in q["rows"]:
            mean.setdefault(r["method"], []).append([r[c] for c in cols])
        for method, vals in mean.items():
            v = np.nanmean(np.array(vals, float), axis=0)
            lines.append(f"| **mean of 4** | {method} | " + " | ".join(f"**{x:.3f}**" for x in v) + " |")
        lines.append(f"\nTraining times (s): {q['times_s']}; LAC normalisation {q['normalisation']}.\n")
    sp = results.get("speed")
    if sp:
        lines.append("| 256³-field inference | seconds | windows run / total | " + " | ".join(CLASSES) + " |")
        lines.append("|---|---|---|" + "---|" * len(CLASSES))
        run = sp["cascade_windows"] - sp["cascade_windows_skipped"]
        lines.append(f"| sxtlab cascade (stage 1 + context + stage 2, skipping) | {sp['cascade_s']} | "
                     f"{run} / {sp['cascade_windows']} | " + " | ".join(f"{sp['cascade_dice'][c]:.3f}" for c in CLASSES)
                     + " |")
        lines.append(f"| MONAI sliding_window_inference, stage 2 only | {sp['monai_s']} | all | "
                     + " | ".join(f"{sp['monai_dice'][c]:.3f}" for c in CLASSES) + " |")
        lines.append(f"\nSpeed-up {sp['speedup']}×; stage 1 and its context alone take {sp.get('stage1_context_s')} s "
                     f"(shape {sp['shape']}, patch {sp['patch']}, overlap "
                     f"{sp['overlap']}, {sp['stage2_gflop_per_window']} GFLOP per stage-2 window).\n")
    mem = results.get("memory")
    if mem:
        lines.append("| Zarr-backed field | input MiB | output MiB | block | seconds | RSS before predict MiB | "
                     "peak RSS MiB | peak traced (NumPy/Python) MiB |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for k, r in mem.items():
            if isinstance(r, dict):
                lines.append(f"| {k} | {r['input_mib']} | {r['output_mib']} | {r['block_size']} | {r['seconds']} | "
                             f"{r['rss_before_predict_mib']} | {r['peak_rss_mib']} | {r['peak_traced_mib']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["all", "quality", "speed", "memory"], default="all")
    ap.add_argument("--quick", action="store_true", help="tiny budgets, to check the script")
    ap.add_argument("--block", type=int, default=128, help="output block edge for Zarr inference")
    ap.add_argument("--speed-size", type=int, default=256, help="edge of the speed test's field")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the target has 2 cores)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--memory-child", nargs=5, metavar=("SRC", "MODEL", "OUT", "BLOCK", "THREADS"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--report", action="store_true", help="print Markdown tables of the saved results")
    ap.add_argument("--model", type=Path, default=WORK / "cascade_model",
                    help="model for the speed and memory parts (default: the one the quality part trains)")
    ap.add_argument("--results", default=None, help="results file name in benchmarks/_work")
    args = ap.parse_args()
    if args.report:
        name = args.results or ("cascade_results_quick.json" if args.quick else "cascade_results.json")
        print(render_markdown(json.loads((WORK / name).read_text())))
        return
    if args.memory_child:
        src, model_dir, out, block, threads = args.memory_child
        _memory_child(src, model_dir, out, int(block), int(threads))
        return
    _threads(args.threads)
    WORK.mkdir(exist_ok=True)
    path = WORK / (args.results or ("cascade_results_quick.json" if args.quick else "cascade_results.json"))
    results = json.loads(path.read_text()) if path.exists() else {}
    import torch

    results["machine"] = {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                          "load_average_at_start": os.getloadavg()}
    parts = ["quality", "speed", "memory"] if args.part == "all" else [args.part]
    for part in parts:
        t0 = time.perf_counter()
        if part == "quality":
            results["quality"] = part_quality(args.quick, not args.no_progress)
        elif part == "speed":
            results["speed"] = part_speed(args.quick, args.speed_size, args.model)
        else:
            results["memory"] = part_memory(args.quick, args.block, args.threads, args.model)
        results[part]["load_average_after"] = os.getloadavg()
        results[part]["part_seconds"] = round(time.perf_counter() - t0, 1)
        path.write_text(json.dumps(results, indent=1, default=str))
        print(json.dumps({part: results[part]}, indent=1, default=str), flush=True)


if __name__ == "__main__":
    main()
