"""Exclusive creation, one-step replacement and recovery of killed writes (sxtlab.io._atomic, issue 16)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from sxtlab.errors import OutputExistsError
from sxtlab.io import read_volume, write_volume
from sxtlab.io._atomic import atomic_output, leftovers
from sxtlab.volume import volume

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and fcntl (POSIX)")

ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    from sxtlab.errors import OutputExistsError
    from sxtlab.io import write_volume
    from sxtlab.volume import volume
    value, go, outs = float(sys.argv[1]), Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
    image = volume(np.full((16, 64, 64), value, np.float32), 0.05)
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.001)
    for out in outs:
        try:
            write_volume(image, out)
            print("wrote", flush=True)
        except OutputExistsError as err:
            print("exists", err, flush=True)
""")
NAMES = ["out.mrc", "out.ome.zarr", "out.tif", "out.am"]


def test_two_concurrent_writers_of_a_new_output_exactly_one_succeeds(tmp_path) -> None:
    outs, go = [tmp_path / n for n in NAMES], tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(v), str(go), *map(str, outs)],
                              stdout=subprocess.PIPE, text=True, env=env) for v in (1.0, 2.0)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()  # both start writing the same new outputs at once
    results = [p.communicate(timeout=300)[0].strip().splitlines() for p in procs]
    for out, pair in zip(outs, zip(*results)):
        assert sorted(r.split()[0] for r in pair) == ["exists", "wrote"], (out.name, pair)
        loser = next(r for r in pair if r.startswith("exists"))
        assert f"{out} exists; pass overwrite=True" in loser
        winner = 1.0 if pair[0] == "wrote" else 2.0
        assert np.all(read_volume(out).values == winner)
        assert leftovers(out) == {"partial": [], "ready": [], "old": []}
        assert not (tmp_path / f".{out.name}.lock").exists()


def test_an_output_that_appears_while_writing_is_not_replaced(tmp_path) -> None:
    out = tmp_path / "a.txt"

    def write(tmp: Path) -> None:
        tmp.write_text("mine")
        out.write_text("another tool's")  # not an sxtlab writer: it takes no lock

    with pytest.raises(OutputExistsError, match=r"a\.txt exists; .* \(it appeared while writing\)"):
        atomic_output(out, write)
    assert out.read_text() == "another tool's"
    assert leftovers(out)["partial"] == []


def test_leftovers_of_killed_writes_are_removed_by_the_next_write(tmp_path) -> None:
    out = tmp_path / "v.mrc"
    write_volume(volume(np.zeros((2, 3, 4), np.float32), 0.05), out)
    junk = [tmp_path / ".v.mrc.partial-0123abcd", tmp_path / ".v.mrc.old-4567abcd"]
    for j in junk:
        j.write_bytes(b"x" * 1000)
    (tmp_path / ".v.mrc.partial-89abcdef").mkdir()  # a Zarr-like folder
    assert sum(map(len, leftovers(out).values())) == 3
    write_volume(volume(np.ones((2, 3, 4), np.float32), 0.05), out, overwrite=True)
    assert leftovers(out) == {"partial": [], "ready": [], "old": []}
    assert np.all(read_volume(out).values == 1)


def test_a_swap_killed_between_its_renames_is_completed(tmp_path) -> None:
    out = tmp_path / "s.ome.zarr"
    write_volume(volume(np.full((2, 3, 4), 7, np.float32), 0.05), out)
    # the state a kill leaves after `rename(out, old)` and before `rename(ready, out)`
    write_volume(volume(np.full((2, 3, 4), 8, np.float32), 0.05), tmp_path / "new.ome.zarr")
    os.rename(tmp_path / "new.ome.zarr", tmp_path / ".s.ome.zarr.ready-00aa")
    os.rename(out, tmp_path / ".s.ome.zarr.old-00aa")
    with pytest.raises(OutputExistsError, match="exists"):
        write_volume(volume(np.zeros((2, 3, 4), np.float32), 0.05), out)
    assert np.all(read_volume(out).values == 8)
    assert leftovers(out) == {"partial": [], "ready": [], "old": []}


def test_an_old_output_moved_aside_without_a_complete_new_one_comes_back(tmp_path) -> None:
    out = tmp_path / "s.ome.zarr"
    write_volume(volume(np.full((2, 3, 4), 7, np.float32), 0.05), out)
    os.rename(out, tmp_path / ".s.ome.zarr.old-00bb")
    (tmp_path / ".s.ome.zarr.partial-00cc").mkdir()
    with pytest.raises(OutputExistsError, match="exists"):
        write_volume(volume(np.zeros((2, 3, 4), np.float32), 0.05), out)
    assert np.all(read_volume(out).values == 7)
    assert leftovers(out) == {"partial": [], "ready": [], "old": []}


def _slow_write(content: bytes, folder: bool):
    """A writer that takes about 40 ms, so that kills land inside it as well as around it."""

    def write(tmp: Path) -> None:
        target = tmp
        if folder:
            tmp.mkdir()
            target = tmp / "data"
        with open(target, "wb") as fh:
            for i in range(0, len(content), len(content) // 8):
                fh.write(content[i:i + len(content) // 8])
                fh.flush()
                time.sleep(0.005)

    return write


def _content(path: Path, folder: bool) -> bytes | None:
    target = path / "data" if folder else path
    return target.read_bytes() if target.exists() else None


@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
def test_kill_at_random_moments_leaves_old_or_new_and_the_next_write_cleans(tmp_path, folder, overwrite) -> None:
    rng = random.Random(16)
    old, new = b"o" * 80_000, b"n" * 80_000
    for trial in range(20):
        out = tmp_path / f"t{trial}"
        if overwrite:
            atomic_output(out, _slow_write(old, folder))
        pid = os.fork()
        if pid == 0:  # the child writes and is killed at some moment
            try:
                atomic_output(out, _slow_write(new, folder), overwrite=overwrite)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0, 0.06))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        # what a reader finds (the lock and leftovers are hidden beside it)
        found = _content(out, folder) if out.exists() else None
        assert found in ((old, new) if overwrite else (None, new)), f"trial {trial}: {found and found[:10]}"
        # the next write recovers (completing or rolling back) and cleans
        atomic_output(out, _slow_write(b"z" * 10, folder), overwrite=True)
        assert _content(out, folder) == b"z" * 10
        assert leftovers(out) == {"partial": [], "ready": [], "old": []}
        assert not out.with_name(f".{out.name}.lock").exists()
