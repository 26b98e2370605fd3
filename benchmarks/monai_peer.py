"""A plain MONAI U-Net peer for sxtlab's models: train for a CPU-time budget, predict.

Benchmark-only (MONAI is not a dependency of sxtlab). The network, loss and optimiser
are MONAI defaults for 3-D segmentation: ``UNet(spatial_dims=3, channels=(16, 32,
64, 128), strides=(2, 2, 2), norm=instance)``, ``DiceCELoss(softmax=True,
to_onehot_y=True)``, Adam 1e-3, batch 2 of 64³ patches (half centred on a voxel of a
random class present, half anywhere; random flips and in-plane quarter turns).
Inputs are normalised on the same fixed LAC scale as sxtlab's default model
(``(lac - offset) / scale`` from its ``model.json``), never per image. Prediction:
``monai.inferers.sliding_window_inference`` (roi 64³, overlap 0.25, Gaussian
blending), after resampling the volume to the training voxel size (and back).

Training is resumable: ``DIR/checkpoint.pt`` holds the weights, optimiser, step and
CPU seconds used; running again with a larger ``--cpu-seconds`` continues. ``--steps``
stops at a step count instead: CPU seconds differ between machines, so a budget
measured on one is repeated on another as the steps it bought there.
``DIR/config.json`` records the configuration.

    # train 60 s of CPU on two sxtlab phantom cells (seeds 11, 12; 96³ × 50 nm, standard acquisition)
    python benchmarks/monai_peer.py train --out /tmp/peer --cpu-seconds 60 --phantom-seeds 11,12
    # or on the default model's training cells (scripts/train_default_model.py's cache)
    python benchmarks/monai_peer.py train --out /tmp/peer --cpu-seconds 4300 --default-cells /work/runs/c11
    # or for as many steps as 17 650 CPU s bought on another machine
    python benchmarks/monai_peer.py train --out /tmp/peer --steps 93058 --default-cells /work/runs/c11
    # or on saved cells (xarray Datasets with lac, labels: NetCDF or Zarr)
    python benchmarks/monai_peer.py train --out /tmp/peer --cpu-seconds 1800 --files a.zarr b.zarr
    # predict a saved cell or a phantom and print Dice
    python benchmarks/monai_peer.py predict --ckpt /tmp/peer --phantom-seeds 5000

Python: ``train(cells, out_dir, cpu_seconds)``, ``load(ckpt)``, ``predict(peer, lac)``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from scipy import ndimage

import sxtlab
from sxtlab.task import Task
from sxtlab.volume import label_volume, segmentation

CLASSES = ["cell", "nucleus", "mitochondria", "lipid_body", "vacuole"]
PATCH = 64


def default_normalisation() -> dict:
    meta = json.loads((sxtlab.models.model_path("default") / "model.json").read_text())
    n = meta["normalisation"]
    return {"offset": float(n["offset"]), "scale": float(n["scale"])}


def _net(config: dict) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=len(config["classes"]) + 1,
                channels=tuple(config["channels"]), strides=tuple(config["strides"]),
                norm=config["norm"], act=config.get("act", "PRELU"))  # MONAI's default activation


def _prepare(ds: xr.Dataset, classes, norm: dict) -> tuple[np.ndarray, np.ndarray]:
    x = ((ds["lac"].values.astype(np.float32) - norm["offset"]) / norm["scale"]).astype(np.float32)
    y = Task(list(classes)).remap(ds["labels"]).values
    bad = y > len(classes)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} voxels are unannotated or partly annotated; the peer needs full labels")
    return x, y.astype(np.int64)


def _pad(a: np.ndarray, size: int, value: float) -> np.ndarray:
    pad = [(0, max(0, size - n)) for n in a.shape]
    return np.pad(a, pad, constant_values=value) if any(p[1] for p in pad) else a


def _patch(x, y, where: dict, rng: np.random.Generator):
    """A 64³ patch; ``where`` maps each class present to the flat indices of its voxels."""
    if rng.random() < 0.5 and where:
        idx = where[sorted(where)[int(rng.integers(len(where)))]]
        centre = np.unravel_index(idx[int(rng.integers(idx.size))], y.shape)
        lo = [int(np.clip(k - PATCH // 2 + rng.integers(-8, 9), 0, n - PATCH)) for k, n in zip(centre, y.shape)]
    else:
        lo = [int(rng.integers(0, n - PATCH + 1)) for n in y.shape]
    sl = tuple(slice(a, a + PATCH) for a in lo)
    px, py = x[sl], y[sl]
    for ax in range(3):
        if rng.random() < 0.5:
            px, py = px[(slice(None),) * ax + (slice(None, None, -1),)], py[(slice(None),) * ax + (slice(None, None, -1),)]
    k = int(rng.integers(0, 4))                            # quarter turns in the (y, x) plane only
    px, py = np.rot90(px, k, axes=(1, 2)), np.rot90(py, k, axes=(1, 2))
    return np.ascontiguousarray(px), np.ascontiguousarray(py)


def train(cells: list[xr.Dataset], out_dir: str | Path, cpu_seconds: float = float("inf"), *,
          steps: int | None = None, seed: int = 0, classes=CLASSES, log_every: int = 20) -> Path:
    """Train (or resume) until ``cpu_seconds`` of process CPU time or ``steps`` steps in total,
    whichever comes first; returns the checkpoint."""
    if steps is None and not np.isfinite(cpu_seconds):
        raise ValueError("give cpu_seconds or steps: training needs a budget")
    max_steps = np.inf if steps is None else int(steps)
    from monai.losses import DiceCELoss

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    vs = sorted({tuple(round(v, 5) for v in c["lac"].attrs["voxel_size_um"]) for c in cells})
    config = {"classes": list(classes), "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "norm": "instance",
              "patch": PATCH, "batch": 2, "lr": 1e-3, "loss": "DiceCELoss(softmax, to_onehot_y)",
              "normalisation": default_normalisation(), "voxel_size_um": list(vs[0]),
              "training_cells": [str(c.attrs.get("cell_id", c.attrs.get("seed", "?"))) for c in cells]}
    if len(vs) > 1:
        config["voxel_sizes_um"] = [list(v) for v in vs]
    torch.manual_seed(seed)
    net = _net(config)
    opt = torch.optim.Adam(net.parameters(), lr=config["lr"])
    state = {"step": 0, "cpu_seconds": 0.0, "history": []}
    if ckpt.exists():
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)  # tensors and plain values: no code runs
        net.load_state_dict(saved["state_dict"])
        opt.load_state_dict(saved["optimizer"])
        state = {k: saved[k] for k in ("step", "cpu_seconds", "history")}
        print(f"resuming at step {state['step']}, {state['cpu_seconds']:.0f} CPU s used")
    data = [_prepare(c, classes, config["normalisation"]) for c in cells]
    data = [(_pad(x, PATCH, (0.1 - config["normalisation"]["offset"]) / config["normalisation"]["scale"]),
             _pad(y, PATCH, 0)) for x, y in data]
    data = [(x, y, {int(c): np.flatnonzero(y.ravel() == c) for c in np.unique(y) if c > 0}) for x, y in data]
    rng = np.random.default_rng([seed, state["step"]])
    loss_fn = DiceCELoss(softmax=True, to_onehot_y=True)
    net.train()

    def save() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"state_dict": net.state_dict(), "optimizer": opt.state_dict(), "config": config, **state}, tmp)
        tmp.replace(ckpt)
        (out / "config.json").write_text(json.dumps({**config, "step": state["step"],
                                                     "cpu_seconds": round(state["cpu_seconds"], 1)}, indent=1))

    c0 = time.process_time()
    used0 = state["cpu_seconds"]
    last_save = used0
    # a session's end or `kill` sends SIGTERM or SIGHUP: finish the step, save and stop,
    # instead of losing up to 300 CPU s since the last checkpoint
    stop: list[int] = []
    handled = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    previous = ({s: signal.signal(s, lambda signum, _frame: stop.append(signum)) for s in handled}
                if threading.current_thread() is threading.main_thread() else {})
    try:
        while state["cpu_seconds"] < cpu_seconds and state["step"] < max_steps and not stop:
            xs, ys = zip(*(_patch(*data[int(rng.integers(len(data)))], rng) for _ in range(config["batch"])))
            xb = torch.from_numpy(np.stack(xs)[:, None])
            yb = torch.from_numpy(np.stack(ys)[:, None])
            opt.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
            state["step"] += 1
            state["cpu_seconds"] = used0 + time.process_time() - c0
            if state["step"] % log_every == 0:
                state["history"].append((state["step"], round(state["cpu_seconds"], 1), round(float(loss), 4)))
                print(f"step {state['step']} cpu {state['cpu_seconds']:.0f} s loss {float(loss):.4f}", flush=True)
            if state["cpu_seconds"] - last_save > 300:
                save()
                last_save = state["cpu_seconds"]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    save()
    print(f"saved {ckpt}: step {state['step']}, {state['cpu_seconds']:.0f} CPU s"
          + (f" (stopped by signal {stop[0]})" if stop else ""))
    return ckpt


class Peer:
    def __init__(self, net: torch.nn.Module, config: dict, path: Path) -> None:
        self.net, self.config, self.path = net, config, path
        self.classes = config["classes"]

    def __repr__(self) -> str:
        return f"MONAI peer {self.path} (step {self.config.get('step')})"


def load(path: str | Path) -> Peer:
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoint.pt"
    saved = torch.load(p, map_location="cpu", weights_only=True)  # tensors and plain values: no code runs
    config = {**saved["config"], "step": saved["step"], "cpu_seconds": saved["cpu_seconds"]}
    net = _net(config)
    net.load_state_dict(saved["state_dict"])
    net.eval()
    return Peer(net, config, p)


def predict(peer: Peer, lac: xr.DataArray) -> xr.Dataset:
    """Segment ``lac`` (µm⁻¹) with the peer: a Dataset with ``lac`` and ``labels`` (classes named)."""
    from monai.inferers import sliding_window_inference

    norm, target = peer.config["normalisation"], peer.config["voxel_size_um"]
    src = lac
    if not np.allclose(lac.sxt.voxel_size, target, rtol=0.02):
        src = lac.sxt.resample(target)
    x = ((src.values.astype(np.float32) - norm["offset"]) / norm["scale"])
    shape = x.shape
    x = _pad(x, PATCH, (0.1 - norm["offset"]) / norm["scale"])
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(np.ascontiguousarray(x))[None, None], roi_size=(PATCH,) * 3,
                                          sw_batch_size=1, predictor=peer.net, overlap=0.25, mode="gaussian")
        prob = torch.softmax(logits, dim=1)[0].numpy()[(slice(None),) + tuple(slice(0, n) for n in shape)]
    if prob.shape[1:] != lac.shape:
        prob = np.stack([ndimage.zoom(p, [a / b for a, b in zip(lac.shape, p.shape)], order=1, grid_mode=True,
                                      mode="nearest") for p in prob])
    labels = prob.argmax(0).astype(np.uint8)
    lab = label_volume(labels, lac, {i + 1: c for i, c in enumerate(peer.classes)})
    return segmentation(lac, lab, model=str(peer))


def _phantom_cells(seeds, shape, voxel_size):
    from sxtlab import phantom

    return [phantom.cell(seed=s, shape=(shape,) * 3, voxel_size=voxel_size, acquisition=phantom.Acquisition())
            for s in seeds]


def _default_cells(work: Path, n: int) -> list[xr.Dataset]:
    """The cells ``scripts/train_default_model.py --work WORK --cells N`` trains on (same cache)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from train_default_model import make_cells, training_seeds

    return make_cells(training_seeds(n), work / "cells", desc="training cells")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("train", "predict"):
        p = sub.add_parser(name)
        p.add_argument("--phantom-seeds", default="", help="sxtlab.phantom seeds, comma separated")
        p.add_argument("--files", nargs="*", default=[], help="saved cells (NetCDF/Zarr Datasets with lac, labels)")
        p.add_argument("--shape", type=int, default=96)
        p.add_argument("--voxel-size", type=float, default=0.05)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--default-cells", type=Path, default=None, metavar="WORK",
                       help="the default model's training cells (scripts/train_default_model.py's "
                            "cache WORK/cells, made there when missing)")
        p.add_argument("--cells", type=int, default=117,
                       help="with --default-cells: seeds 1..N, validation seeds skipped, as that script")
        if name == "train":
            p.add_argument("--out", type=Path, required=True)
            p.add_argument("--cpu-seconds", type=float, default=float("inf"), help="total budget (resumes)")
            p.add_argument("--steps", type=int, default=None,
                           help="total steps (resumes); training stops at this or --cpu-seconds, whichever is first")
            p.add_argument("--seed", type=int, default=0)
        else:
            p.add_argument("--ckpt", type=Path, required=True)
    args = parser.parse_args()
    if args.cmd == "train" and args.steps is None and args.cpu_seconds == float("inf"):
        parser.error("train needs a budget: --cpu-seconds, --steps or both")
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.phantom_seeds.split(",") if s]
    cells = _phantom_cells(seeds, args.shape, args.voxel_size)
    if args.default_cells is not None:
        if args.cells < 1:
            parser.error(f"--cells must be at least 1, got {args.cells}")
        cells += _default_cells(args.default_cells, args.cells)
    for f in args.files:
        cells.append(xr.open_zarr(f) if str(f).rstrip("/").endswith(".zarr") else xr.open_dataset(f))
    if not cells:
        parser.error("no cells: give --phantom-seeds, --default-cells or --files")
    if args.cmd == "train":
        train(cells, args.out, args.cpu_seconds, steps=args.steps, seed=args.seed)
    else:
        from sxtlab.metrics import evaluate

        peer = load(args.ckpt)
        for c in cells:
            t0 = time.perf_counter()
            seg = predict(peer, c["lac"])
            scores = evaluate(seg, Task(peer.classes).remap(c["labels"]))["dice"]
            print(f"{c.attrs.get('cell_id')}: {time.perf_counter() - t0:.1f} s; "
                  + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
