"""Benchmark sxtlab.catalog: adding entries, then listing and selecting thousands.

Listing and selecting must read only the SQLite index, so their cost should grow
with the number of rows, not with the size of the images. The benchmark

1. adds ``--n`` tiny entries (16³ voxels, varied classes and metadata) through
   :meth:`Catalog.add`, the whole path (validation, Zarr group, transaction);
2. times ``len``, ``to_frame``, ``select`` (classes; classes + filters; a callable
   filter), ``Catalog.open`` (which scans ``entries/`` for leftovers) and one ``get``;
3. inserts index rows directly (copies of existing rows under new ids, no Zarr
   groups) up to ``--index-rows`` and times ``to_frame`` and ``select`` again.

Run::

    python benchmarks/bench_catalog.py --n 2000 --index-rows 20000 \\
        --out benchmarks/results/catalog.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

import sxtlab
from sxtlab.catalog import Catalog

SPECIES = ["S. cerevisiae", "C. reinhardtii", "S. pombe"]
ANNOTATORS = ["ana", "ben", "chen", "dara"]
# Label values and the class each names; entries annotate varied subsets.
CLASS_SETS = [
    {1: "cell", 2: "nucleus", 3: "lipid_body"},
    {1: "mitochondria"},
    {1: "cell", 2: "nucleus", 3: "nucleolus"},
    {1: "cell", 2: "vacuole", 3: "lipid_body", 4: "mitochondria"},
]


def tiny_entry(i: int, rng: np.random.Generator, size: int):
    image = sxtlab.volume(rng.uniform(0.1, 0.8, (size,) * 3).astype(np.float32),
                          voxel_size=(0.05, 0.03, 0.03) if i % 10 else None, source=f"cell{i}.mrc")
    classes = CLASS_SETS[i % len(CLASS_SETS)]
    labels = rng.integers(0, len(classes) + 1, (size,) * 3).astype(np.uint8)
    return image, sxtlab.label_volume(labels, image, classes)


def timed(func: Callable[[], object], repeats: int = 5) -> tuple[float, float, object]:
    """Median wall and CPU time (this process, all threads) in ms over ``repeats``
    calls, and the last result. CPU time shows the cost on a shared, busy machine."""
    wall, cpu, result = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = func()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu), result


def index_timings(cat: Catalog) -> list[tuple[str, float, float, int]]:
    rows = []
    for label, func in [
        ("len(catalog)", lambda: len(cat)),
        ("to_frame()", cat.to_frame),
        ('select(["nucleus"])', lambda: cat.select(["nucleus"])),
        ('select(["nuclei", "LDs"], how="any", species="S. cerevisiae")',
         lambda: cat.select(["nuclei", "LDs"], how="any", species="S. cerevisiae")),
        ("select(annotator=lambda a: a < 'c', dz_um=0.05)",
         lambda: cat.select(annotator=lambda a: a < "c", dz_um=0.05)),
        ("Catalog.open(path) (includes the leftover scan)", lambda: Catalog.open(cat.path)),
    ]:
        wall, cpu, result = timed(func)
        n = result if isinstance(result, int) else len(result)
        rows.append((label, wall, cpu, n))
    return rows


def insert_index_rows(cat: Catalog, total: int) -> None:
    """Copy existing rows under new ids until the index holds ``total`` rows."""
    con = sqlite3.connect(cat.path / "index.sqlite", timeout=60)
    with con:
        existing = con.execute("SELECT * FROM entries").fetchall()
        columns = [d[1] for d in con.execute("PRAGMA table_info(entries)")]
        need = total - len(existing)
        new = [(uuid.uuid4().hex, *existing[i % len(existing)][1:]) for i in range(need)]
        con.executemany(f"INSERT INTO entries ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                        new)
    con.close()


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="entries added through Catalog.add")
    parser.add_argument("--size", type=int, default=16, help="edge of the tiny volumes, voxels")
    parser.add_argument("--index-rows", type=int, default=20000, help="rows for the index-only scaling step")
    parser.add_argument("--dir", type=Path, help="where to build the catalog (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="write the Markdown report here too")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench_catalog_"))
    rng = np.random.default_rng(0)
    lines = [
        "# Catalog benchmark",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average at start "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, zarr {zarr.__version__}; catalog on {workdir}.",
        "",
        "Command: `python benchmarks/bench_catalog.py " + f"--n {args.n} --size {args.size} "
        f"--index-rows {args.index_rows}`",
        "",
    ]
    try:
        cat = Catalog.create(workdir / "cat")
        entries = [tiny_entry(i, rng, args.size) for i in range(min(args.n, 64))]
        per_add = []
        t_start, c_start = time.perf_counter(), time.process_time()
        for i in range(args.n):
            image, labels = entries[i % len(entries)]
            t0 = time.perf_counter()
            cat.add(image, labels, species=SPECIES[i % 3], annotator=ANNOTATORS[i % 4],
                    condition="control" if i % 2 else "starved", date=f"2024-{1 + i % 12:02d}-01")
            per_add.append((time.perf_counter() - t0) * 1e3)
        total_s = time.perf_counter() - t_start
        cpu_per_add = (time.process_time() - c_start) * 1e3 / args.n
        size_mb = folder_size(cat.path) / 1e6
        lines += [
            f"## 1. Adding {args.n} entries of {args.size}³ voxels through `Catalog.add`",
            "",
            "| total (wall) | per add: wall median | p95 | max | CPU mean | catalog on disk |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| {total_s:.1f} s | {statistics.median(per_add):.1f} ms | "
            f"{np.percentile(per_add, 95):.1f} ms | {max(per_add):.1f} ms | {cpu_per_add:.1f} ms | "
            f"{size_mb:.1f} MB |",
            "",
            f"## 2. Index-only operations with {len(cat)} entries (median of 5)",
            "",
            "| operation | wall | CPU | rows |",
            "| --- | --- | --- | --- |",
        ]
        lines += [f"| `{label}` | {wall:.1f} ms | {cpu:.1f} ms | {n} |"
                  for label, wall, cpu, n in index_timings(cat)]
        first = next(iter(cat))
        wall, cpu, _ = timed(lambda: cat.get(first).load())
        lines += [f"| `get(id).load()` (opens one Zarr group) | {wall:.1f} ms | {cpu:.1f} ms | 1 |", ""]

        if args.index_rows > len(cat):
            insert_index_rows(cat, args.index_rows)
            lines += [
                f"## 3. Index-only scaling: {len(cat)} index rows (rows copied in SQLite, "
                "no Zarr groups behind the copies)",
                "",
                "| operation | wall | CPU | rows |",
                "| --- | --- | --- | --- |",
            ]
            lines += [f"| `{label}` | {wall:.1f} ms | {cpu:.1f} ms | {n} |"
                      for label, wall, cpu, n in index_timings(cat)[:5]]
            lines.append("")
        cat.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
