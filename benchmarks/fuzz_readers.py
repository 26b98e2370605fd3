"""Long mutation-fuzzing run of every reader and of ``CascadeModel.load`` (issue 16).

Each format (MRC, AmiraMesh, TIFF, OME-Zarr, model folders) gets ``--count`` mutated
inputs, made by ``tests/fuzzing.py`` from the real files in ``../shared/data`` (input
``i`` of a format is a pure function of ``(format, --seed, i)``). Every input is read
in a worker process under limits:

* time: a worker that has not answered after ``--time-limit`` seconds (10) is killed
  (SIGKILL) and replaced; the input counts as *over limits*;
* memory: before each input the worker's address-space limit (``RLIMIT_AS``) is set to
  its size after start-up plus the input's size plus ``--memory-limit-mb`` (1024); a
  ``MemoryError`` (or a worker killed for memory) counts as *over limits*. The peak
  resident memory an input added (``VmHWM``, reset per input through
  ``/proc/self/clear_refs``) is recorded.

Outcomes: *read* (the reader returned and its data were computed), *sxtlab error* (a
:class:`sxtlab.SxtlabError`), *other* (any other exception: a bug), *over limits*.
Results go to ``benchmarks/results/fuzz.md``::

    nice -n 15 python benchmarks/fuzz_readers.py                       # 5,000 per format
    python benchmarks/fuzz_readers.py --count 200 --formats mrc tiff   # a quick check
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import fuzzing  # noqa: E402  (tests/fuzzing.py: the seeds and mutations the short test run uses too)

SHARED_DATA = ROOT.parent / "shared" / "data"


# ---------------------------------------------------------------------------------
# worker
# ---------------------------------------------------------------------------------
def _status(key: str) -> int:
    """A ``/proc/self/status`` value in bytes (``VmHWM``, ``VmRSS``, ``VmSize``)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current resident size


def _worker(conn, seeds: dict[str, list[Path]], folder: Path, memory_limit: int) -> None:
    import dask

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    dask.config.set(scheduler="synchronous")  # no thread pools: memory and time are this process's
    # warm up every reader once, so that imports do not count against the first input's limits
    for fmt, paths in seeds.items():
        fuzzing.classify(fmt, paths[0])
    base_vm = _status("VmSize")
    conn.send("ready")
    while True:
        task = conn.recv()
        if task is None:
            return
        fmt, index, seed = task
        path, what = fuzzing.make_input(fmt, seeds[fmt], index, folder, seed=seed)
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
        limit = _status("VmSize") + size + memory_limit
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        _reset_peak()
        rss = _status("VmRSS")
        start = time.perf_counter()
        try:
            kind, message = fuzzing.classify(fmt, path)
        except MemoryError:
            kind, message = "over", "MemoryError"
        elapsed = time.perf_counter() - start
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        extra = max(_status("VmHWM") - rss, 0)
        if kind == "other" and message.startswith("MemoryError"):
            kind = "over"
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        conn.send((kind, message, what, elapsed, extra, size, base_vm))


@dataclass
class _Tally:
    outcomes: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    max_seconds: float = 0.0
    max_extra: int = 0
    seconds: float = 0.0


class _Pool:
    """Workers fed one input at a time; a worker over the time limit is killed and replaced."""

    def __init__(self, n: int, seeds, work: Path, memory_limit: int) -> None:
        self.ctx = mp.get_context("spawn")
        self.seeds, self.work, self.memory_limit = seeds, work, memory_limit
        self.workers = [self._start(i) for i in range(n)]

    def _start(self, i: int):
        folder = self.work / f"worker{i}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(child, self.seeds, folder, self.memory_limit), daemon=True)
        proc.start()
        assert parent.recv() == "ready"
        return [proc, parent, None, 0.0]  # process, pipe, task in flight, its start

    def run(self, tasks, time_limit: float, report) -> None:
        tasks = iter(tasks)
        pending = True
        while pending or any(w[2] is not None for w in self.workers):
            for i, w in enumerate(self.workers):
                if w[2] is None and pending:
                    task = next(tasks, None)
                    if task is None:
                        pending = False
                        continue
                    w[1].send(task)
                    w[2], w[3] = task, time.perf_counter()
                if w[2] is None:
                    continue
                if w[1].poll(0.01):
                    try:
                        report(w[2], w[1].recv())
                    except EOFError:  # the worker died (e.g. killed by the kernel for memory)
                        report(w[2], ("over", "worker died", "", time.perf_counter() - w[3], 0, 0, 0))
                        self._replace(i)
                        continue
                    w[2] = None
                elif time.perf_counter() - w[3] > time_limit:
                    report(w[2], ("over", f"no answer after {time_limit:g} s (killed)", "", time_limit, 0, 0, 0))
                    self._replace(i)

    def _replace(self, i: int) -> None:
        proc = self.workers[i][0]
        proc.kill()
        proc.join()
        self.workers[i] = self._start(i)

    def close(self) -> None:
        for proc, pipe, _, _ in self.workers:
            pipe.send(None)
            proc.join(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000, help="inputs per format (5000)")
    parser.add_argument("--formats", nargs="+", default=list(fuzzing.FORMATS), choices=fuzzing.FORMATS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds per input (10)")
    parser.add_argument("--memory-limit-mb", type=int, default=1024, help="MiB beyond the input's size (1024)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz.md")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"{args.data}: shared data not found (pass --data)")

    load_start, start = os.getloadavg(), time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="sxtlab-fuzz-"))
    try:
        seeds = fuzzing.seeds(args.data, work / "seeds")
        seeds = {f: seeds[f] for f in args.formats}
        pool = _Pool(args.workers, seeds, work, args.memory_limit_mb * 2**20)
        tallies = {f: _Tally() for f in args.formats}

        def report(task, answer) -> None:
            fmt, index, _ = task
            kind, message, what, elapsed, extra, size, _ = answer
            t = tallies[fmt]
            t.outcomes[kind] += 1
            t.seconds += elapsed
            t.max_seconds, t.max_extra = max(t.max_seconds, elapsed), max(t.max_extra, extra)
            if kind == "read" and (elapsed > args.time_limit or extra > args.memory_limit_mb * 2**20 + size):
                t.outcomes["read"] -= 1
                t.outcomes["over"] += 1
                kind, message = "over", f"read, but took {elapsed:.1f} s and {extra / 2**20:.0f} MiB"
            if kind in ("other", "over"):
                t.problems.append(f"{fmt} #{index} ({what}): {message}")
            done = sum(t.outcomes.values())
            if done % 500 == 0:
                print(f"{fmt}: {done} {dict(t.outcomes)}", flush=True)

        for fmt in args.formats:
            pool.run(((fmt, i, args.seed) for i in range(args.count)), args.time_limit, report)
        pool.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed, load_end = time.perf_counter() - start, os.getloadavg()
    _write_report(args, seeds, tallies, elapsed, load_start, load_end)


def _write_report(args, seeds, tallies, elapsed: float, load_start, load_end) -> None:
    lines = [
        "# Fuzzing the readers and `CascadeModel.load` (issue 16)",
        "",
        f"Run: `python benchmarks/fuzz_readers.py --count {args.count} --seed {args.seed} --workers {args.workers} "
        f"--time-limit {args.time_limit:g} --memory-limit-mb {args.memory_limit_mb}` "
        f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.platform()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; {elapsed / 60:.1f} min wall under `nice -n 15`; "
        f"load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end (the cores were shared "
        "with other jobs).",
        "",
        "Each input is a seeded mutation (bit flips, truncation, extreme header integers, extreme text and JSON "
        "values, spliced byte ranges; `tests/fuzzing.py`) of one seed file, read in a worker process with a "
        f"{args.time_limit:g} s limit and an address-space limit of {args.memory_limit_mb} MiB beyond the "
        "worker's size and the input's; its data computed where the reader is lazy.",
        "",
        "| format | inputs | read | sxtlab error | other exception | over limits | mean s | max s | "
        "max extra RSS (MiB) | seed files |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fmt, t in tallies.items():
        n = sum(t.outcomes.values())
        lines.append(f"| {fmt} | {n:,} | {t.outcomes['read']:,} | {t.outcomes['sxtlab']:,} | {t.outcomes['other']:,} "
                     f"| {t.outcomes['over']:,} | {t.seconds / max(n, 1):.3f} | {t.max_seconds:.2f} | "
                     f"{t.max_extra / 2**20:.0f} | {len(seeds[fmt])} |")
    problems = [p for t in tallies.values() for p in t.problems]
    lines += ["", "## Inputs that were neither read nor refused with sxtlab's error", ""]
    lines += [f"- {p}" for p in problems[:50]] or ["None."]
    lines += ["", "## Seed files", ""]
    lines += [f"- {fmt}: " + ", ".join(p.name for p in paths) for fmt, paths in seeds.items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
