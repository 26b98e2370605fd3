"""Cascade inference speed: where the time goes, before and after, MONAI, Zarr-backed memory.

The table issue 18 asks for, end to end, for one or more models (run it alone on the
machine; it appends a section to ``benchmarks/results/inference.md``)::

    python benchmarks/bench_inference.py --model default --model /path/to/model --threads 2

Parts (``--part``, repeatable; default all but ``window``):

* ``profile`` — per model, on the 256³ field: CPU seconds of stage 1, the context,
  the stage-2 network (its convolutions apart) and everything else (input cutting,
  context upsampling, blending), per window and as GFLOP/s against a conv3d rate
  measured in the same run; and one window's network time per batch size, memory
  layout, bfloat16 autocast and ``torch.compile``.
* ``speed`` — the 256³ field (a 3 µm held-out cell, seed 5001) in memory: *before*
  (the algorithm of commit c854904, rebuilt here from the library's primitives: one
  block, every window with its own context upsampling, one window per network
  call), *after* (``model.predict`` with its defaults), and MONAI's
  ``sliding_window_inference`` with the same stage-2 network on the same stage-2
  inputs; interleaved in one process, wall and CPU time, Dice against the truth.
* ``zarr`` — the same cell in fields of ``--zarr-sizes`` (default 512), written as
  OME-Zarr and predicted with ``out=`` in a fresh subprocess each: time and peak
  resident memory (``VmHWM``).
* ``window`` — Dice on held-out cells (seeds ≥ 5000, never trained on) and time
  against the stage-2 window and step.
* ``stage1`` — peak resident memory and CPU time of one stage-1 window against its
  edge (``--stage1-edges``), run alone and as a pair with itself (as every lone
  window ran before stage 1 stopped pairing them), in a fresh subprocess each.

``--quick`` runs every part on small fields to check the script.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from timing import Clock  # a sibling module of the benchmarks
import torch

HERE = Path(__file__).parent
WORK = HERE / "_work" / "inference"
RESULTS = HERE / "results" / "inference.md"
#: Held-out cell of the speed and memory fields (training used seeds < 1000).
FIELD_SEED = 5001
FIELD_CELL_RADIUS = 3.0          # µm: a 256³ field at 50 nm is 12.8 µm wide
VOXEL = 0.05
#: Held-out cells of the window/step part: (seed, generator, voxels per side).
WINDOW_CELLS = [(5002, "cell", 128), (5003, "cell", 128), (5004, "varied_cell", 128), (5005, "varied_cell", 128)]


# --- helpers --------------------------------------------------------------------------
def load(name: str):
    import sxtlab
    from sxtlab.cascade import CascadeModel

    return sxtlab.models.load_model(name) if name == "default" else CascadeModel.load(name)


def machine(threads: int) -> dict:
    flags = ""
    name = platform.processor()
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line
    return {"cpu": name, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "amx": "amx_bf16" in flags, "torch": torch.__version__, "threads": threads,
            "python": platform.python_version()}


def load_avg() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())




def conv_rate(repeats: int = 3) -> dict:
    """GFLOP/s of one 3×3×3 convolution, 32 → 32 channels on 2 × 48³ (oneDNN), best of ``repeats``."""
    conv = torch.nn.Conv3d(32, 32, 3, padding=1, bias=False).eval()
    x = torch.randn(2, 32, 48, 48, 48)
    flop = 2 * 27 * 32 * 32 * x[0, 0].numel() * len(x)
    best = {"wall": np.inf, "cpu": np.inf}
    with torch.inference_mode():
        conv(x)
        for _ in range(repeats):
            with Clock() as c:
                conv(x)
            best = {"wall": min(best["wall"], c.wall), "cpu": min(best["cpu"], c.cpu)}
    return {"gflops_wall": flop / best["wall"] / 1e9, "gflops_cpu_s": flop / best["cpu"] / 1e9}


def field(size: int, quick: bool):
    """A held-out cell of radius 3 µm in a field of ``size``³ voxels at 50 nm (cached)."""
    import pickle

    from sxtlab import phantom

    # pickled: the benchmark's own cache, written and read by this script only
    path = WORK / f"field_{size}{'_quick' if quick else ''}.pickle"
    if path.exists():
        return pickle.loads(path.read_bytes())
    ds = phantom.cell(seed=FIELD_SEED, shape=(size,) * 3, voxel_size=VOXEL, acquisition=phantom.Acquisition(),
                      cell_radius_um=min(FIELD_CELL_RADIUS, 0.4 * size * VOXEL))[["lac", "labels"]]
    WORK.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(ds))
    return ds


def scores(model, labels: np.ndarray, truth) -> dict:
    from sxtlab.metrics import dice
    from sxtlab.task import Task

    t = Task(model.classes).remap(truth).values
    d = dice(labels, t, range(1, model.n_classes))
    whole = dice((labels > 0).astype(np.uint8), (t > 0).astype(np.uint8), [1])[1]
    return {"whole_cell": round(float(whole), 4), **{c: round(float(d[i + 1]), 4) for i, c in enumerate(model.classes)}}


def before(model, lac) -> tuple[np.ndarray, dict]:
    """Probabilities as commit c854904 computed them in memory (the baseline).

    One block over the whole volume; each window's context upsampled on its own;
    one window per network call (which ATen runs in its native slow_conv3d).
    """
    from sxtlab.cascade import SKIP_BACKGROUND, TRUST_BACKGROUND
    from sxtlab.inference import WindowGrid, blend_block, crop_padded

    norm = model.normalisation.apply(np.asarray(lac, np.float32))
    ctx = model.context_for(norm)
    grid = WindowGrid.make(norm.shape, model.stage2_patch, 0.5)
    patch = grid.patch

    def fetch(s):
        return np.concatenate([crop_padded(norm, s, patch)[None], ctx.channels(s, patch)])

    def net(x):
        with torch.inference_mode():
            return torch.softmax(model.stage2(x), dim=1)

    block = tuple(slice(0, n) for n in norm.shape)
    coarse = ctx.probabilities_at((0, 0, 0), norm.shape)
    out, counts = blend_block(grid, block, fetch, net, model.n_classes,
                              skip=lambda s: ctx.background_min(s, patch) >= SKIP_BACKGROUND, fallback=coarse)
    sure = coarse[0] >= TRUST_BACKGROUND
    out[:, sure] = coarse[:, sure]
    return out, counts


# --- parts ----------------------------------------------------------------------------
def _cumtime(stats: pstats.Stats, func: str, file: str = "") -> float:
    return sum(ct for (f, _, fn), (_, _, _, ct, _) in stats.stats.items()  # type: ignore[attr-defined]
               if fn == func and f.endswith(file))


def part_profile(model, ds, rate: dict) -> dict:
    """CPU seconds by component of one in-memory prediction with the defaults.

    Stage 1 with its context (block mean, network, smoothing) is timed whole; the
    stage-2 loop runs under cProfile with a CPU clock, which splits it into the
    network (its convolutions apart), the context upsampling and the rest (cutting
    window inputs, blending, stage 1's fallback and trust).
    """
    from sxtlab.cascade import BATCH_SIZE

    lac = np.asarray(ds["lac"].values, np.float32)
    with Clock() as c1:
        norm = model.normalisation.apply(lac)
        ctx = model.context_for(norm)
    stage2 = model.stage2_blocks(lambda r: norm[r], norm.shape, ctx)
    prof = cProfile.Profile(time.process_time)
    with Clock() as c2:
        prof.enable()
        for _ in stage2:
            pass
        prof.disable()
    st = pstats.Stats(prof)
    run = stage2.counts["windows"] - stage2.counts["skipped"]
    gflop = model.stage2.flops_per_voxel() * np.prod(model.stage2_patch) / 1e9
    network = _cumtime(st, "predict", "cascade.py")
    conv = _cumtime(st, "_conv_forward")
    upsample = _cumtime(st, "channels", "cascade.py") + _cumtime(st, "probabilities_at", "cascade.py")
    total = _cumtime(st, "_next", "cascade.py")
    passes = run + (1 if run % BATCH_SIZE == 1 else 0)   # a lone last window runs as a pair
    return {"windows": stage2.counts["windows"], "run": run,
            "stage1_context_cpu_s": round(c1.cpu, 2), "stage2_cpu_s": round(c2.cpu, 2),
            "stage2_wall_s": round(c2.wall, 2), "network_cpu_s": round(network, 2), "conv_cpu_s": round(conv, 2),
            "upsampling_cpu_s": round(upsample, 2), "other_cpu_s": round(total - network - upsample, 2),
            "gflop_per_window": round(gflop, 2), "network_ms_per_window": round(1000 * network / max(run, 1), 1),
            "network_gflops": round(gflop * passes / max(network, 1e-9), 1),
            "conv_gflops": round(rate["gflops_cpu_s"], 1)}


def part_arithmetic(model, repeats: int = 3) -> list[dict]:
    """CPU ms per window of the stage-2 network alone, by batch, layout, precision, compile."""
    net = model.stage2
    p = model.stage2_patch
    gflop = net.flops_per_voxel() * np.prod(p) / 1e9
    rows = []

    def measure(name: str, f, batch: int) -> None:
        x = torch.randn(batch, net.config.in_channels, *p)
        with torch.inference_mode():
            with Clock() as first:
                f(x)
            best = np.inf
            for _ in range(repeats):
                with Clock() as c:
                    f(x)
                best = min(best, c.cpu)
        rows.append({"variant": name, "batch": batch, "ms_per_window": round(1000 * best / batch, 1),
                     "gflops": round(gflop * batch / best, 1), "first_call_s": round(first.wall, 1)})

    for b in (1, 2, 4, 8):
        measure("float32", net, b)
    cl = lambda x: net.to(memory_format=torch.channels_last_3d)(x.to(memory_format=torch.channels_last_3d))  # noqa: E731
    measure("channels_last_3d", cl, 4)
    net.to(memory_format=torch.contiguous_format)

    def bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net(x)

    measure("bfloat16 autocast", bf16, 4)
    try:
        compiled = torch.compile(net)
        measure("torch.compile", compiled, 4)
    except Exception as err:  # the benchmark records why it could not run
        rows.append({"variant": f"torch.compile failed: {type(err).__name__}: {str(err)[:120]}", "batch": 4})
    return rows


def part_speed(model, ds) -> list[dict]:
    """Before, after and MONAI on the same field, interleaved in this process."""
    from monai.inferers import sliding_window_inference

    from sxtlab.cascade import BATCH_SIZE

    rows = []
    with Clock() as c:
        probs, counts = before(model, ds["lac"].values)
    rows.append({"method": "before (c854904: 1 window per call, per-window context)", "wall_s": round(c.wall, 1),
                 "cpu_s": round(c.cpu, 1), "windows_run": counts["windows"] - counts["skipped"],
                 **scores(model, probs.argmax(0).astype(np.uint8), ds["labels"])})
    del probs
    with Clock() as c:
        seg = model.predict(ds["lac"], progress=False, clean=False)
    rows.append({"method": f"after (predict, defaults: batch {BATCH_SIZE})", "wall_s": round(c.wall, 1),
                 "cpu_s": round(c.cpu, 1), "windows_run": seg.attrs["windows"] - seg.attrs["windows_skipped"],
                 **scores(model, seg["labels"].values, ds["labels"])})
    del seg
    # MONAI: the same stage-2 network on the same stage-2 inputs (built by sxtlab's
    # stage 1, inside the timing as the cascade's are), every window, Gaussian blending.
    with Clock() as c:
        norm = model.normalisation.apply(np.asarray(ds["lac"].values, np.float32))
        ctx = model.context_for(norm)
        x = torch.from_numpy(np.concatenate([norm[None], ctx.channels((0, 0, 0), norm.shape)])[None])
        del norm
        with torch.inference_mode():
            y = sliding_window_inference(x, roi_size=model.stage2_patch, sw_batch_size=BATCH_SIZE,
                                         predictor=lambda t: torch.softmax(model.stage2(t), dim=1), overlap=0.5,
                                         mode="gaussian", sigma_scale=0.125, padding_mode="replicate")
        labels = y[0].argmax(0).numpy().astype(np.uint8)
    rows.append({"method": f"MONAI sliding_window_inference (sw_batch_size {BATCH_SIZE}, every window)",
                 "wall_s": round(c.wall, 1), "cpu_s": round(c.cpu, 1), "windows_run": "all",
                 **scores(model, labels, ds["labels"])})
    return rows


def _status_mib(field_name: str) -> int:
    """``VmHWM``/``VmRSS`` of this process, MiB (VmHWM starts afresh at exec, ru_maxrss does not)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return round(int(line.split()[1]) / 1024)
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def zarr_child(src: str, model_name: str, out: str, threads: int) -> None:
    torch.set_num_threads(threads)
    from sxtlab.io import read_volume

    model = load(model_name)
    vol = read_volume(src)
    base = _status_mib("VmRSS")
    with Clock() as c:
        seg = model.predict(vol, out=out, progress=False)
    run = seg.attrs["windows"] - seg.attrs["windows_skipped"]
    print(json.dumps({"wall_s": round(c.wall, 1), "cpu_s": round(c.cpu, 1), "windows_run": f"{run} / {seg.attrs['windows']}",
                      "rss_before_mib": base,
                      "peak_rss_mib": _status_mib("VmHWM"),
                      "output_mib": round(seg["probabilities"].size * 4 / 2**20)}))


def child(*args: str) -> dict:
    """The JSON row that this script, run afresh with ``args``, prints last (peak memory is per process)."""
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{args[0]} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stage1_child(model_name: str, edge: int, alone: bool, threads: int) -> None:
    torch.set_num_threads(threads)
    from sxtlab.cascade import _softmax_predictor

    model = load(model_name)
    x = torch.randn(1, 1, edge, edge, edge)
    net = _softmax_predictor(model.stage1, pair_lone=not alone)
    base = _status_mib("VmRSS")
    with Clock() as c:
        net(x)
    print(json.dumps({"edge": edge, "run": "alone" if alone else "as a pair", "cpu_s": round(c.cpu, 1),
                      "rss_before_mib": base, "peak_rss_mib": _status_mib("VmHWM"),
                      "window_mib": _status_mib("VmHWM") - base}))


def part_stage1(model_name: str, edges: list[int], threads: int) -> list[dict]:
    """One stage-1 window per edge, alone and paired, each in a fresh subprocess (``VmHWM``)."""
    return [child("--stage1-child", model_name, str(edge), str(int(alone)), str(threads))
            for edge in edges for alone in (False, True)]


def part_zarr_source(size: int, quick: bool) -> Path:
    """The OME-Zarr of the ``size``³ field (written from the simulated field once)."""
    from sxtlab.io import write_volume

    src = WORK / f"field_{size}{'_quick' if quick else ''}.ome.zarr"
    if not src.exists():
        write_volume(field(size, quick)["lac"], src)
    return src


def part_zarr(model_name: str, size: int, quick: bool, threads: int) -> dict:
    from sxtlab.io import write_volume

    src = WORK / f"field_{size}{'_quick' if quick else ''}.ome.zarr"
    if not src.exists() and size > 512:
        # Simulating a 1024³ acquisition whole takes too long and too much memory: the
        # 512³ field is mirrored out to ``size`` (its medium, and mirrored parts of its cell).
        import dask.array as da

        from sxtlab.io import read_volume
        from sxtlab.volume import volume

        small = read_volume(part_zarr_source(512, quick))
        pad = [((size - n) // 2, size - n - (size - n) // 2) for n in small.shape]
        data = da.pad(small.data, pad, mode="reflect").rechunk(128)
        write_volume(volume(data, small.attrs["voxel_size_um"]), src)
    elif not src.exists():
        part_zarr_source(size, quick)
    out = WORK / f"seg_{size}_{os.getpid()}.ome.zarr"   # one per run: runs may overlap
    shutil.rmtree(out, ignore_errors=True)
    try:
        return {"size": f"{size}³", **child("--zarr-child", str(src), model_name, str(out), str(threads))}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def part_window(model, quick: bool, rows_wanted: str = "all") -> list[dict]:
    """Dice and time against the stage-2 window and step on held-out cells."""
    from sxtlab import phantom

    cells = []
    for seed, kind, n in WINDOW_CELLS[:1] if quick else WINDOW_CELLS:
        n = 48 if quick else n
        gen = phantom.varied_cell if kind == "varied_cell" else phantom.cell
        cells.append(gen(seed=seed, shape=(n,) * 3, voxel_size=VOXEL))
    base = model.stage2_patch[0]
    div = model.stage2.config.divisor
    settings = [{"window": w, "step": st} for w in sorted({base, base + 2 * div, 2 * base}) for st in (0.5, 0.75)]
    if rows_wanted == "gates":
        settings = []
    settings += [{"window": base, "step": 0.5, "skip_sure": t} for t in (0.99, 0.95, 0.9)]
    settings += [{"window": base, "step": 0.5, "precision": "bfloat16"}]
    rows = []
    for kw in settings:
        dice, cpu, run = [], 0.0, 0
        for ds in cells:
            with Clock() as c:
                seg = model.predict(ds["lac"], progress=False, **kw)
            cpu += c.cpu
            run += seg.attrs["windows"] - seg.attrs["windows_skipped"]
            dice.append(scores(model, seg["labels"].values, ds["labels"]))
        mean = {k: round(float(np.mean([d[k] for d in dice])), 4) for k in dice[0]}
        rows.append({"window": kw["window"], "step": kw["step"], "skip_sure": kw.get("skip_sure", "off"),
                     "precision": kw.get("precision", "float32"), "cpu_s": round(cpu, 1), "windows_run": run, **mean})
    return rows


# --- report ---------------------------------------------------------------------------
def table(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="'default' or a model folder (repeatable)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 where the machine is shared)")
    parser.add_argument("--part", action="append", choices=["profile", "speed", "zarr", "window", "stage1"])
    parser.add_argument("--size", type=int, default=256, help="field edge of the profile and speed parts")
    parser.add_argument("--zarr-sizes", type=int, nargs="*", default=[512])
    parser.add_argument("--stage1-edges", type=int, nargs="*", default=[32, 64, 96, 128],
                        help="stage1 part: window edges in coarse voxels (multiples of stage 1's divisor)")
    parser.add_argument("--window-rows", choices=["all", "gates"], default="all",
                        help="window part: every window and step, or only skip_sure and bfloat16")
    parser.add_argument("--quick", action="store_true", help="small fields: check the script")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--zarr-child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--stage1-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.zarr_child:
        zarr_child(*args.zarr_child[:3], int(args.zarr_child[3]))
        return
    if args.stage1_child:
        name, edge, alone, threads = args.stage1_child
        stage1_child(name, int(edge), bool(int(alone)), int(threads))
        return
    torch.set_num_threads(args.threads)
    models = args.model or ["default"]
    parts = args.part or ["profile", "speed", "zarr"]
    size = 64 if args.quick else args.size
    command = "python " + " ".join([f"benchmarks/{Path(__file__).name}", *sys.argv[1:]])
    text = [f"## Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
            f"`{command}`", "", f"Machine: {json.dumps(machine(args.threads))}; load average at the start "
            f"{load_avg()} (1/5/15 min).", ""]
    rate = conv_rate()
    text += [f"conv3d reference (32→32 channels, 3³ kernel, 2 × 48³, oneDNN, {args.threads} thread(s)): "
             f"{rate['gflops_cpu_s']:.1f} GFLOP per CPU second, {rate['gflops_wall']:.1f} GFLOP/s wall.", ""]

    def flush(lines: list[str]) -> None:
        text.extend(lines)
        print("\n".join(lines), flush=True)

    flush([])
    ds = field(size, args.quick) if {"profile", "speed"} & set(parts) else None
    for name in models:
        model = load(name)
        flush([f"### Model `{name}` (stage 2 {model.stage2.config.widths}, window {list(model.stage2_patch)}, "
               f"sha256 `{model.weights_sha256[:12]}`)", ""])
        if "profile" in parts:
            prof = part_profile(model, ds, rate)
            flush([f"Profile, {size}³ field in memory, CPU seconds (load {load_avg()}):", "", table([prof]), "",
                   "Stage-2 network alone, CPU ms per window:", "", table(part_arithmetic(model)), ""])
        if "speed" in parts:
            flush([f"Speed, {size}³ field with a {FIELD_CELL_RADIUS} µm held-out cell (seed {FIELD_SEED}), "
                   f"in memory, in this order in one process (load {load_avg()}):", "",
                   table(part_speed(model, ds)), ""])
        if "zarr" in parts:
            rows = [part_zarr(name, 128 if args.quick else n, args.quick, args.threads) for n in args.zarr_sizes]
            flush([f"Zarr-backed (`predict(read_volume(src), out=...)`, block 128, fresh subprocess each; "
                   f"load {load_avg()}):", "", table(rows), ""])
        if "stage1" in parts:
            edges = [16, 32] if args.quick else args.stage1_edges
            flush([f"One stage-1 window against its edge (coarse voxels; fresh subprocess each, `VmHWM`; "
                   f"load {load_avg()}):", "", table(part_stage1(name, edges, args.threads)), ""])
        if "window" in parts:
            flush([f"Stage-2 window and step on held-out cells {[c[:2] for c in WINDOW_CELLS]} "
                   f"(mean Dice; load {load_avg()}):", "", table(part_window(model, args.quick, args.window_rows)), ""])
    flush([f"Load average at the end {load_avg()}.", ""])
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        head = "" if args.out.exists() else "# Inference speed (`benchmarks/bench_inference.py`)\n\n"
        with args.out.open("a") as f:
            f.write(head + "\n".join(text) + "\n")


if __name__ == "__main__":
    main()
