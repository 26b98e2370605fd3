"""Speed and accuracy of :mod:`sxtlab.measure`, run by hand (not a unit test).

Three parts, written as Markdown to ``benchmarks/results/measure.md``:

1. surface-area accuracy on voxelised spheres, raw marching cubes against
   sxtlab's smoothed and volume-corrected mesh;
2. one 256³ phantom cell: the full per-instance and distance tables, against a
   baseline of plain ``regionprops_table`` on each class plus brute-force
   distances (``scipy.spatial.distance.cdist`` between the surface voxels of
   every instance and its target), and against the textbook one Euclidean
   distance transform per target; the distances must agree;
3. a population of small phantom cells measured serially and with dask threads.

Usage::

    python benchmarks/bench_measure.py            # the full run (~10 min on 2 cores)
    python benchmarks/bench_measure.py --quick    # small sizes, to check the script
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial.distance import cdist
from skimage.measure import regionprops_table

import sxtlab
from sxtlab import measure, phantom
from sxtlab.classes import descendants

PAIRS = [("mitochondria", "nucleus"), ("vacuole", "nucleus"), ("lipid_body", "nucleus"),
         ("lipid_body", "cell"), ("mitochondria", "mitochondria"), ("lipid_body", "lipid_body")]
SHELL = ndimage.generate_binary_structure(3, 1)


def markdown(table: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (pandas' to_markdown needs tabulate)."""
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)]
    return "\n".join(["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns),
                      *("| " + " | ".join(row) + " |" for row in cells)])


def timed(func, *args, **kwargs):
    start = time.perf_counter()
    out = func(*args, **kwargs)
    return out, time.perf_counter() - start


# -- 1. surface-area accuracy ----------------------------------------------------------
def sphere_accuracy(radii_vox: list[float]) -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(0)
    for vs in [(0.03, 0.03, 0.03), (0.05, 0.03, 0.03)]:
        for rv in radii_vox:
            r = rv * min(vs)
            shape = tuple(int(2 * r / s) + 10 for s in vs)
            centre = [n * s / 2 + rng.uniform(0, s) for n, s in zip(shape, vs)]
            g = np.meshgrid(*[s * np.arange(n) for n, s in zip(shape, vs)], indexing="ij")
            labels = (sum((gi - c) ** 2 for gi, c in zip(g, centre)) <= r * r).astype(np.uint8) * 6
            img = sxtlab.volume(np.zeros(shape, np.float32), vs)
            seg = sxtlab.segmentation(img, sxtlab.label_volume(labels, img, {6: "vacuole"}))
            exact = 4 * math.pi * r * r
            ours = measure.instances(seg, intensity=None).iloc[0]
            raw = measure.instances(seg, intensity=None, smoothing_sigma=0).iloc[0]
            rows.append({"voxel (µm)": "×".join(f"{v:g}" for v in vs), "radius (voxels of 0.03)": rv,
                         "volume error %": 100 * (ours["volume_um3"] / (4 / 3 * math.pi * r ** 3) - 1),
                         "area error % (raw mesh)": 100 * (raw["surface_area_um2"] / exact - 1),
                         "area error % (sxtlab)": 100 * (ours["surface_area_um2"] / exact - 1),
                         "sphericity (sxtlab)": ours["sphericity"]})
    return pd.DataFrame(rows)


# -- 2. one cell: baseline ---------------------------------------------------------------
def region(labels: np.ndarray, classes: dict[int, str], name: str) -> np.ndarray:
    names = set(descendants(name))
    return np.isin(labels, [v for v, n in classes.items() if n in names])


def surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, SHELL)


def baseline_instances(ds) -> pd.DataFrame:
    """Plain regionprops_table on each class (no surface area, no median)."""
    labels = ds["labels"].values
    classes = {int(k): v for k, v in ds["labels"].attrs["classes"].items()}
    vs = ds["lac"].attrs["voxel_size_um"]
    frames = []
    for name in classes.values():
        lab, _ = ndimage.label(region(labels, classes, name), SHELL)
        t = regionprops_table(lab, intensity_image=ds["lac"].values, spacing=vs,
                              properties=("label", "area", "centroid", "axis_major_length",
                                          "axis_minor_length", "intensity_mean", "intensity_min",
                                          "intensity_max", "intensity_std"))
        frames.append(pd.DataFrame(t).assign(cls=name))
    return pd.concat(frames, ignore_index=True)


def min_cdist(a: np.ndarray, b: np.ndarray, chunk: int = 256) -> float:
    """Smallest distance between two point sets, by brute force in row chunks."""
    return min(float(cdist(a[i:i + chunk], b).min()) for i in range(0, len(a), chunk))


def baseline_distances(ds) -> pd.DataFrame:
    """Centre distances from every instance to its target by cdist on surface voxels."""
    labels = ds["labels"].values
    classes = {int(k): v for k, v in ds["labels"].attrs["classes"].items()}
    vs = np.asarray(ds["lac"].attrs["voxel_size_um"])
    rows = []
    for a, b in PAIRS:
        lab, n = ndimage.label(region(labels, classes, a), SHELL)
        points = [np.argwhere(surface(lab == i)) * vs for i in range(1, n + 1)]
        if a == b:
            for i in range(n):
                d = min((min_cdist(points[i], points[j]) for j in range(n) if j != i), default=np.nan)
                rows.append((a, b, i + 1, d))
            continue
        target = region(labels, classes, b)
        if a in descendants(b):  # distance to the target's boundary: its outer shell
            target = ndimage.binary_dilation(target, SHELL) & ~target
        else:
            target = surface(target)
        tpoints = np.argwhere(target) * vs
        rows += [(a, b, i + 1, min_cdist(p, tpoints)) for i, p in enumerate(points)]
    return pd.DataFrame(rows, columns=["class", "target_class", "instance", "centre_distance_um"])


def edt_distances(ds) -> tuple[pd.DataFrame, float]:
    """One Euclidean distance transform per target (no (A, A) pairs: those need one per instance)."""
    labels = ds["labels"].values
    classes = {int(k): v for k, v in ds["labels"].attrs["classes"].items()}
    vs = ds["lac"].attrs["voxel_size_um"]
    rows, maps = [], {}
    start = time.perf_counter()
    for a, b in PAIRS:
        if a == b:
            continue
        boundary = a in descendants(b)
        if (b, boundary) not in maps:
            target = region(labels, classes, b)
            # distance to the nearest target voxel, or inside the target to its outside
            maps[b, boundary] = ndimage.distance_transform_edt(target if boundary else ~target, sampling=vs)
        lab, n = ndimage.label(region(labels, classes, a), SHELL)
        mins = ndimage.minimum(maps[b, boundary], lab, np.arange(1, n + 1))
        rows += [(a, b, i + 1, d) for i, d in enumerate(np.atleast_1d(mins))]
    elapsed = time.perf_counter() - start
    return pd.DataFrame(rows, columns=["class", "target_class", "instance", "centre_distance_um"]), elapsed


def one_cell(shape: int, voxel: float) -> dict:
    ds, t_gen = timed(phantom.cell, seed=0, shape=(shape,) * 3, voxel_size=voxel)
    inst, t_inst = timed(measure.instances, ds)
    dist, t_dist = timed(measure.distances, ds, PAIRS)
    base_inst, t_base_inst = timed(baseline_instances, ds)
    base_dist, t_base_dist = timed(baseline_distances, ds)
    edt, t_edt = edt_distances(ds)
    key = ["class", "target_class", "instance"]
    ours = dist[key + ["centre_distance_um"]]
    brute = ours.merge(base_dist, on=key, suffixes=("", "_brute"))
    via_edt = ours.merge(edt, on=key, suffixes=("", "_edt"))
    return {
        "shape": shape, "voxel": voxel, "generate_s": t_gen,
        "instances": len(inst), "distance_rows": len(dist),
        "counts": inst.groupby("class").size().to_dict(),
        "ours_instances_s": t_inst, "ours_distances_s": t_dist,
        "base_instances_s": t_base_inst, "base_distances_s": t_base_dist, "edt_s": t_edt,
        "edt_pairs": len(edt),
        "max_diff_brute_um": float(np.nanmax(np.abs(brute["centre_distance_um"]
                                                    - brute["centre_distance_um_brute"]))),
        "max_diff_edt_um": float(np.nanmax(np.abs(via_edt["centre_distance_um"]
                                                  - via_edt["centre_distance_um_edt"]))),
        "rows_compared": len(brute),
    }


# -- 3. population -------------------------------------------------------------------------
def population(n_cells: int, shape: int, voxel: float) -> dict:
    cells = [phantom.cell(seed=i, shape=(shape,) * 3, voxel_size=voxel, lipid_fraction=0.03)
             for i in range(n_cells)]
    out = {"cells": n_cells, "shape": shape, "voxel": voxel}
    tables = {}
    for label, options in [("serial", {"scheduler": "sync"}), ("threads", {"scheduler": "threads"}),
                           ("processes", {"scheduler": "processes"})]:
        tables[label], out[f"{label}_s"] = timed(measure.population, cells, progress=False, **options)
    out["rows"] = len(tables["serial"])
    out["same_result"] = all(tables[k].equals(tables["serial"]) for k in tables)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "measure.md")
    args = parser.parse_args()
    quick = args.quick

    accuracy = sphere_accuracy([4.6, 6.3, 10.2, 20.4] if quick else [3.2, 4.6, 6.3, 8.1, 10.2, 14.6, 20.4, 30.3])
    cell = one_cell(96, 0.04) if quick else one_cell(256, 0.03)
    pop = population(4, 64, 0.05) if quick else population(50, 96, 0.04)

    ours = cell["ours_instances_s"] + cell["ours_distances_s"]
    base = cell["base_instances_s"] + cell["base_distances_s"]
    lines = [
        "# sxtlab.measure benchmark",
        "",
        f"`python benchmarks/bench_measure.py{' --quick' if quick else ''}`, {time.strftime('%Y-%m-%d')}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average at the end {os.getloadavg()[0]:.1f} (other jobs shared the machine), "
        f"Python {platform.python_version()}, sxtlab {sxtlab.__version__}.",
        "",
        "## 1. Surface area of voxelised spheres",
        "",
        "Raw marching cubes on the binary mask against sxtlab's mesh (Gaussian σ = "
        f"{measure.SMOOTHING_SIGMA:g} voxel, then the volume correction of the smoothing's shrinkage). "
        "Radius in voxels of 0.03 µm; the anisotropic grid has 0.05 µm along z.",
        "",
        markdown(accuracy),
        "",
        f"## 2. One phantom cell, {cell['shape']}³ voxels of {cell['voxel']} µm",
        "",
        f"{cell['instances']} instances ({', '.join(f'{k} {v}' for k, v in cell['counts'].items())}), "
        f"{cell['distance_rows']} distance rows for the pairs {', '.join(f'({a}, {b})' for a, b in PAIRS)}. "
        f"Generating the phantom took {cell['generate_s']:.1f} s (not counted).",
        "",
        "| step | sxtlab.measure (s) | baseline (s) | baseline / sxtlab |",
        "| --- | ---: | ---: | ---: |",
        f"| per instance (sxtlab: + surface mesh, median, cells; baseline: regionprops_table per class) "
        f"| {cell['ours_instances_s']:.1f} | {cell['base_instances_s']:.1f} "
        f"| {cell['base_instances_s'] / cell['ours_instances_s']:.2f} |",
        f"| distances (sxtlab: k-d trees on surface voxels + contact areas; baseline: cdist on surface voxels) "
        f"| {cell['ours_distances_s']:.1f} | {cell['base_distances_s']:.1f} "
        f"| {cell['base_distances_s'] / cell['ours_distances_s']:.1f} |",
        f"| **full table, one cell** | **{ours:.1f}** | **{base:.1f}** | **{base / ours:.1f}** |",
        "",
        f"One Euclidean distance transform per target (the textbook method; it cannot do the (A, A) "
        f"pairs without one transform per instance) took {cell['edt_s']:.1f} s for the "
        f"{cell['edt_pairs']} rows of the other pairs, against {cell['ours_distances_s']:.1f} s for all "
        "of sxtlab's rows.",
        "",
        f"Agreement of the centre distances over {cell['rows_compared']} rows: largest difference "
        f"{cell['max_diff_brute_um']:.2g} µm to brute force, {cell['max_diff_edt_um']:.2g} µm to the "
        "distance transform.",
        "",
        f"## 3. Population: {pop['cells']} phantom cells of {pop['shape']}³ voxels ({pop['voxel']} µm), "
        "`measure.population(cells)` (per-instance table)",
        "",
        "| scheduler | time (s) | per cell (s) | serial / this |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {k} | {pop[k + '_s']:.1f} | {pop[k + '_s'] / pop['cells']:.2f} "
          f"| {pop['serial_s'] / pop[k + '_s']:.2f} |" for k in ("serial", "threads", "processes")],
        "",
        f"{pop['rows']} rows; identical tables from every scheduler: {pop['same_result']}.",
        "",
        "## Notes",
        "",
        "- The per-instance baseline does less: no surface mesh (a Gaussian and a marching cubes per "
        "instance on its bounding box, the largest cost, dominated by the whole-cell instance), no "
        "median, no assignment of instances to cells. Its ratio below 1 is the price of surface areas, "
        "sphericity and medians.",
        "- Distances: the nearest voxel pair of two disjoint sets joins two surface voxels, so sxtlab "
        "queries surface voxels only, with one k-d tree per target class (one per instance for (A, A), "
        "pruned by bounding boxes), and first one voxel per 4³ block, querying the others only where "
        "the 1-Lipschitz bound says they can win: O((S_A + S_B) log S_B) for S surface voxels. The "
        "brute force costs O(S_A · S_B); a distance transform per target O(V) of the whole volume.",
        "- Threads help only as far as NumPy, SciPy and scikit-image release the GIL; processes pay "
        "for pickling every Dataset to a worker. On a 2-core machine shared with other jobs the "
        "speed-up is bounded by 2 and noisy.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
