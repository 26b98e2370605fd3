"""Time the phantom generator and its simulated acquisition.

Run::

    python benchmarks/bench_phantom.py            # print a Markdown table
    python benchmarks/bench_phantom.py --write    # also write benchmarks/results/phantom.md

Wall and CPU time are both reported: on a shared machine the wall time grows with
other load, while the CPU time of the (mostly single-threaded) generator does not.
The acquisition's projections run on ``n_jobs`` threads.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from sxtlab import phantom
from sxtlab.acquisition import Acquisition, _geometry, simulate_acquisition

RESULTS = Path(__file__).resolve().parent / "results" / "phantom.md"


def timed(func, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = func(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/phantom.md")
    parser.add_argument("--size", type=int, default=128, help="voxels per axis (default 128)")
    args = parser.parse_args()
    n = args.size
    shape = (n, n, n)
    phantom.cell(0, (32, 32, 32), 0.06)  # imports and first-call costs out of the way

    rows = []
    ds, wall, cpu = timed(phantom.cell, 1, shape, 0.04)
    rows.append((f"`cell` {n}³ × 40 nm, no acquisition", wall, cpu))
    _, wall, cpu = timed(phantom.cell, 1, shape, 0.04, starch=True, lipid_fraction=0.08)
    rows.append((f"`cell` {n}³, starch, lipid 0.08", wall, cpu))
    medium = ds.attrs["class_lac_per_um"]["background"]
    for jobs in (1, 2):
        _geometry.cache_clear()
        acq = Acquisition(seed=0)
        _, wall, cpu = timed(simulate_acquisition, ds.lac, acq, medium_lac=medium, n_jobs=jobs)
        rows.append((f"`simulate_acquisition` {n}³, 91 angles ±65°, {jobs} thread(s), new projector",
                     wall, cpu))
        _, wall, cpu = timed(simulate_acquisition, ds.lac, acq, medium_lac=medium, n_jobs=jobs)
        rows.append((f"`simulate_acquisition` {n}³, cached projector, {jobs} thread(s)", wall, cpu))
    _geometry.cache_clear()
    full, wall, cpu = timed(phantom.cell, 1, shape, 0.04, acquisition=True)
    rows.append((f"`cell` {n}³ with `acquisition=True` (all threads)", wall, cpu))

    # Noise of the default acquisition, in the medium far from the cell.
    labels = full.labels.values
    far = ~ndimage.binary_dilation(labels > 0, iterations=8)
    clean = simulate_acquisition(full.lac_true, Acquisition(photons=None), medium_lac=medium).values
    noise = float(np.std(full.lac.values[far] - clean[far]))
    contrast = full.attrs["class_lac_per_um"]["cell"] - medium

    lines = [
        "# Phantom benchmark",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the start of the last run; "
        f"numpy {np.__version__}. Produced by `benchmarks/bench_phantom.py`.",
        "",
        "| step | wall (s) | CPU (s) |",
        "| --- | ---: | ---: |",
        *[f"| {name} | {wall:.2f} | {cpu:.2f} |" for name, wall, cpu in rows],
        "",
        f"Default acquisition (2000 photons/pixel, PSF σ 20 nm, ±65°, 91 angles) at 40 nm: "
        f"medium noise σ = {noise:.3f} µm⁻¹, cytoplasm–medium contrast {contrast:.3f} µm⁻¹ "
        f"(contrast-to-noise {contrast / noise:.1f} per voxel).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
