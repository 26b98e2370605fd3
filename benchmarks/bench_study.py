"""Benchmark of `sxtlab study`: throughput, memory, the planted difference, a kill half-way.

    python benchmarks/bench_study.py --work /tmp/bench-study                 # 24 cells of 128³ (the machine alone)
    python benchmarks/bench_study.py --work /tmp/bench-study --quick         # 4 cells of 48³: the script works

On one machine, in one run:

1. a phantom population (``--cells`` cells of ``--size``³ at 50 nm with a simulated
   acquisition; half ``control`` with 2 % lipid, half ``high_lipid`` with 8 %, and a
   ``batch`` column that splits each condition in two, where nothing was planted),
   written as MRC files with ``cells.csv``;
2. ``sxtlab study`` with 1 and with 2 local workers (cells per hour; the largest
   resident memory of each worker process, sampled every 0.5 s);
3. the same cells by a shell loop of ``sxtlab segment`` + ``sxtlab measure`` per file
   (cells per hour);
4. the volume intervals' coverage: the share of organelles (matched to the truth)
   whose true volume lies in the interval, the share whose true volume lies above
   it, and per true object the share held by the summed intervals of the pieces the
   model split it into (a split piece's own interval cannot hold the whole);
5. ``sxtlab compare`` by ``condition`` (the planted difference: p-value and effect
   size of the lipid volume) and by ``batch`` (nothing planted: how many of the
   adjusted p-values fall below 0.05);
6. ``sxtlab study`` with 2 workers killed by SIGKILL (the whole process group) once
   half the cells are done, then the same command again: which cells the second
   run did, whether any was done twice, and whether the tables equal the
   uninterrupted 2-worker run's.

Results go to ``benchmarks/results/study.md`` (``--quick``: ``study_quick.md``)
with the load average before and after, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

import sxtlab
from sxtlab import phantom
from sxtlab.study import Study, compare_study

RESULTS = Path(__file__).resolve().parent / "results"
SXTLAB = [sys.executable, "-m", "sxtlab.cli"]


def make_inputs(folder: Path, n: int, size: int, seed: int) -> Path:
    recs = folder / "recs"
    if (folder / "cells.csv").exists():
        return recs
    recs.mkdir(parents=True, exist_ok=True)
    (folder / "truth").mkdir(exist_ok=True)
    conditions = {"control": {"lipid_fraction": 0.02}, "high_lipid": {"lipid_fraction": 0.08}}
    rows = []
    for i, ds in enumerate(phantom.population(n // 2, conditions=conditions, seed=seed, shape=(size,) * 3,
                                              voxel_size=0.05, acquisition=True)):
        name = f"cell{i:03d}.mrc"
        sxtlab.write_volume(ds["lac"], recs / name)
        sxtlab.write_volume(ds["labels"], folder / "truth" / f"cell{i:03d}.ome.zarr")
        rows.append({"file": name, "condition": ds.attrs["condition"], "batch": "AB"[i % 2]})
    pd.DataFrame(rows).to_csv(folder / "cells.csv", index=False)
    return recs


class MemorySampler:
    """Largest RSS (MiB) of each descendant process of ``pid``, sampled until stopped."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self.pid, self.every, self.peak = pid, every, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for child in psutil.Process(self.pid).children(recursive=True):
                    try:
                        rss = child.memory_info().rss / 2 ** 20
                        cmd = " ".join(child.cmdline()[-2:])
                    except psutil.Error:
                        continue
                    key = (child.pid, cmd)
                    self.peak[key] = max(self.peak.get(key, 0.0), rss)
            except psutil.Error:
                pass
            self._stop.wait(self.every)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_study(recs: Path, meta: Path, out: Path, workers: int, env: dict) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([*SXTLAB, "study", str(recs), "-o", str(out), "--metadata", str(meta),
                             "--workers", str(workers), "-q"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    sampler = MemorySampler(proc.pid)
    output, _ = proc.communicate()
    peak = sampler.stop()
    wall = time.perf_counter() - t0
    # worker processes: the children that ran cells (the largest ones; the nanny is small)
    workers_mib = sorted((v for v in peak.values()), reverse=True)[:workers]
    return {"workers": workers, "wall_s": wall, "rc": proc.returncode, "output": output.strip().splitlines()[-3:],
            "worker_peak_mib": [round(v) for v in workers_mib]}


def run_shell_loop(recs: Path, out: Path, env: dict) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    script = (f'for f in {recs}/*.mrc; do n=$(basename "$f" .mrc); '
              f'{sys.executable} -m sxtlab.cli segment "$f" -o {out}/"$n".zarr > /dev/null && '
              f'{sys.executable} -m sxtlab.cli measure {out}/"$n".zarr -o {out}/"$n".csv > /dev/null || exit 1; done')
    t0 = time.perf_counter()
    subprocess.run(["bash", "-c", script], env=env, check=True)
    return time.perf_counter() - t0


def kill_and_resume(recs: Path, meta: Path, out: Path, reference: Path, n: int, env: dict) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*SXTLAB, "study", str(recs), "-o", str(out), "--metadata", str(meta), "--workers", "2", "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    half = n // 2
    while proc.poll() is None and len(list(out.glob("cells/*/record.json"))) < half:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the study and its workers, as a batch system's kill would
    proc.wait()
    time.sleep(1.0)
    done_before = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("cells/*/record.json")}
    leftovers = sorted(p.name for p in (out / "cells").glob(".*"))
    t0 = time.perf_counter()
    second = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    study = Study(out)
    redone = [c for c, t in done_before.items() if (out / "cells" / c / "record.json").stat().st_mtime_ns != t]
    equal = {}
    for name in ("instances", "classes", "distances", "cells"):
        a, b = study.table(name), Study(reference).table(name)
        try:
            pd.testing.assert_frame_equal(a, b)
            equal[name] = True
        except AssertionError as err:
            equal[name] = f"differs: {str(err).splitlines()[0]}"
    return {"done_before_kill": len(done_before), "leftovers_after_kill": leftovers,
            "leftovers_after_rerun": sorted(p.name for p in (out / "cells").glob(".*")),
            "processed_by_rerun": study.manifest["run"]["processed_now"], "rerun_rc": second.returncode,
            "rerun_wall_s": round(wall, 1), "done_twice": redone, "tables_equal_uninterrupted": equal,
            "cells_done": study.manifest["run"]["done"]}


def interval_coverage(study: Path, truth: Path) -> dict:
    """Share of matched organelles whose true volume lies in the study's volume interval, per class."""
    from sxtlab import qc

    parts = []
    for cell in sorted((study / "cells").iterdir()):
        seg = sxtlab.read_segmentation(cell / "segmentation.ome.zarr").load()
        labels = sxtlab.read_volume(truth / f"{cell.name}.ome.zarr")
        parts.append(qc.coverage(qc.instance_uncertainty(seg), seg, labels))
    table = pd.concat(parts)
    matched = table[table["true_volume_um3"] > 0]
    # a true object the model split into pieces: each piece is matched to the whole and its
    # interval cannot hold it; summing the pieces' intervals tells a split from a wrong outline
    whole = matched.groupby(["cell_id", "class", "true_instance"]).agg(
        pieces=("instance", "size"), low=("volume_low_um3", "sum"), high=("volume_high_um3", "sum"),
        true=("true_volume_um3", "first")).reset_index()
    whole["covered"] = (whole["true"] >= whole["low"]) & (whole["true"] <= whole["high"])
    out = {"thresholds": [qc.LOW, qc.HIGH], "objects_made_up": int((table["true_volume_um3"] == 0).sum())}
    for c, g in matched.groupby("class"):
        w = whole[whole["class"] == c]
        out[c] = {"coverage": round(float(g["covered"].mean()), 3), "objects": len(g),
                  "true_above_interval": round(float((g["true_volume_um3"] > g["volume_high_um3"]).mean()), 3),
                  "true_objects": len(w), "true_objects_split": int((w["pieces"] > 1).sum()),
                  "coverage_pieces_summed": round(float(w["covered"].mean()), 3)}
    return out


def lipid_row(result: pd.DataFrame) -> dict:
    row = result[(result["measurement"] == "volume_um3") & (result["class"] == "lipid_body")].iloc[0]
    return {"p_value": float(row["p_value"]), "p_adjusted": float(row["p_adjusted"]),
            "effect_size": float(row["effect_size"]), "comparison": row["comparison"],
            "exceeds_uncertainty": row["exceeds_uncertainty"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--cells", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--quick", action="store_true", help="4 cells of 48³: check that the script works")
    parser.add_argument("--skip-shell", action="store_true", help="leave out the shell loop")
    args = parser.parse_args()
    if args.quick:
        args.cells, args.size = 4, 48
    load_before = os.getloadavg()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("OMP_NUM_THREADS")  # the study sets threads per worker; the shell loop takes the free cores
    args.work.mkdir(parents=True, exist_ok=True)
    recs = make_inputs(args.work, args.cells, args.size, args.seed)
    meta = args.work / "cells.csv"
    n = len(list(recs.glob("*.mrc")))
    runs = [run_study(recs, meta, args.work / f"study-w{w}", w, env) for w in (1, 2)]
    for r in runs:
        r["cells_per_hour"] = round(n / r["wall_s"] * 3600, 1)
    shell = None if args.skip_shell else run_shell_loop(recs, args.work / "shell", env)
    planted = lipid_row(compare_study(args.work / "study-w2", "condition", overwrite=True))
    null = compare_study(args.work / "study-w2", "batch", overwrite=True)
    tests = null.drop_duplicates(["measurement", "class", "target_class"])
    coverage = interval_coverage(args.work / "study-w2", args.work / "truth")
    kill = kill_and_resume(recs, meta, args.work / "study-kill", args.work / "study-w2", n, env)
    load_after = os.getloadavg()
    result = {"cells": n, "size": args.size, "studies": runs,
              "shell_loop": None if shell is None else {"wall_s": round(shell, 1),
                                                         "cells_per_hour": round(n / shell * 3600, 1)},
              "planted_lipid_volume": planted,
              "no_difference_by_batch": {"tests": len(tests),
                                         "p_adjusted_below_0.05": int((tests["p_adjusted"] < 0.05).sum()),
                                         "smallest_p_adjusted": float(tests["p_adjusted"].min())},
              "volume_interval_coverage": coverage,
              "kill_and_resume": kill,
              "load_average_before": [round(v, 2) for v in load_before],
              "load_average_after": [round(v, 2) for v in load_after],
              "cpus": len(os.sched_getaffinity(0)), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    text = json.dumps(result, indent=1, default=str)
    print(text)
    out = RESULTS / ("study_quick.md" if args.quick else "study.md")
    out.write_text(f"# sxtlab study benchmark\n\n`python benchmarks/bench_study.py {' '.join(sys.argv[1:])}`\n\n"
                   f"```json\n{text}\n```\n")


if __name__ == "__main__":
    main()
