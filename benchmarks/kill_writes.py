"""Kill -9 at random moments of large writes: the output is always complete, old or new (issue 16).

For each trial a writer process writes a ``--size``³ float32 volume with
:func:`sxtlab.io.write_volume` (a new output, or over an existing one) and is killed
with SIGKILL at a random moment between its start and a little after the time a full
write takes. Then:

1. the output must be absent (a new output) or the complete old volume, or the
   complete new one (every voxel equal to the value written);
2. the next write of the output (here, in this process, with ``overwrite=True``) must
   succeed and leave no ``.partial``, ``.ready`` or ``.old`` entry beside it.

Results go to ``benchmarks/results/kill_writes.md``::

    nice -n 15 python benchmarks/kill_writes.py                 # 512³, 20 trials each
    python benchmarks/kill_writes.py --size 64 --trials 3       # a quick check
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from sxtlab.io import write_volume
    from sxtlab.volume import volume
    out, size, value, overwrite = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
    image = volume(np.full((size, size, size), value, np.float32), 0.05)
    print("ready", flush=True)
    sys.stdin.readline()
    write_volume(image, out, overwrite=overwrite)
    print("done", flush=True)
""")


def _write(out: Path, size: int, value: float) -> None:
    from sxtlab.io import write_volume
    from sxtlab.volume import volume

    write_volume(volume(np.full((size,) * 3, value, np.float32), 0.05), out, overwrite=True)


def _state(out: Path, size: int) -> str:
    """``"absent"``, ``"complete 1"``/``"complete 2"`` (every voxel that value) or what is wrong."""
    import warnings

    from sxtlab.io import read_volume
    from sxtlab.errors import SxtlabError

    if not out.exists():
        return "absent"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vol = read_volume(out)
            lo, hi = float(vol.min()), float(vol.max())
    except SxtlabError as err:
        return f"unreadable: {err}"
    if vol.shape != (size,) * 3 or lo != hi:
        return f"incomplete: shape {vol.shape}, values {lo}..{hi}"
    return f"complete {hi:g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--formats", nargs="+", default=["mrc", "ome.zarr"])
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kill_writes.md")
    args = parser.parse_args(argv)
    from sxtlab.io._atomic import leftovers

    rng = random.Random(args.seed)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    rows, problems = [], []
    load_start, start = os.getloadavg(), time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="sxtlab-kill-"))
    try:
        for fmt in args.formats:
            out = work / f"vol.{fmt}"
            _write(out, args.size, 1.0)  # the first write imports the format's libraries
            t0 = time.perf_counter()
            _write(out, args.size, 1.0)
            full = time.perf_counter() - t0
            for mode in ("new", "overwrite"):
                states, left_after_kill = [], 0
                for trial in range(args.trials):
                    if mode == "new":
                        shutil.rmtree(out) if out.is_dir() else out.unlink(missing_ok=True)
                        value = 2.0
                    else:
                        value = 3.0 - float(_state(out, args.size).split()[-1])  # the other of 1 and 2
                    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(args.size), str(value),
                                             "1" if mode == "overwrite" else "0"], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True, env=env)
                    assert proc.stdout.readline().strip() == "ready"
                    delay = rng.uniform(0, 1.2 * full)
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                    time.sleep(delay)
                    proc.kill()
                    proc.wait()
                    state = _state(out, args.size)
                    allowed = {"absent", "complete 2"} if mode == "new" else {"complete 1", "complete 2"}
                    states.append(state)
                    left_after_kill += sum(map(len, leftovers(out).values())) > 0
                    print(f"{fmt} {mode} trial {trial}: killed at {delay:.2f} s of {full:.2f} s: {state}", flush=True)
                    if state not in allowed:
                        problems.append(f"{fmt} {mode} trial {trial} (killed at {delay:.2f} s): {state}")
                    _write(out, args.size, 1.0)  # the next write: recovers and cleans
                    left = leftovers(out)
                    if any(left.values()) or not _state(out, args.size).startswith("complete"):
                        problems.append(f"{fmt} {mode} trial {trial}: after the next write {left}")
                counts = {s: states.count(s) for s in sorted(set(states))}
                rows.append(f"| {fmt} | {mode} | {args.trials} | {full:.1f} | "
                            f"{', '.join(f'{k}: {v}' for k, v in counts.items())} | {left_after_kill} | "
                            f"{sum(1 for p in problems if p.startswith(f'{fmt} {mode}'))} |")
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed, load_end = time.perf_counter() - start, os.getloadavg()
    lines = [
        "# Killed writes (issue 16)", "",
        f"Run: `python benchmarks/kill_writes.py --size {args.size} --trials {args.trials} --seed {args.seed}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, {elapsed / 60:.1f} min wall "
        f"under `nice -n 15`; load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end (shared "
        "with other jobs).", "",
        f"A writer process writes a {args.size}³ float32 volume (a new output, or over the existing one) and is "
        "killed with SIGKILL at a moment drawn uniformly from 0 to 1.2 times a full write's duration. What a reader "
        "then finds must be nothing (new output) or a complete volume, old or new; the next write must succeed "
        "and leave no leftover beside the output.", "",
        "| format | mode | trials | full write (s) | output after the kill | trials that left leftovers | "
        "problems |",
        "|---|---|---|---|---|---|---|", *rows, "",
        "Problems: " + ("none." if not problems else ""), *[f"- {p}" for p in problems],
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
