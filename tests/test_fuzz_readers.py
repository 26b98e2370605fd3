"""Seeded mutation fuzzing of every reader and of CascadeModel.load (short run; issue 16).

Mutated copies of real files (``tests/fuzzing.py``) must either read or raise one of
sxtlab's own errors, each within seconds. The long run with time and memory limits
per input is ``benchmarks/fuzz_readers.py``; a failure here is reproduced with
``fuzzing.make_input(fmt, seeds[fmt], index, folder)``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

import fuzzing

#: Inputs per format in this short run (a minute in all on two busy cores).
COUNTS = {"mrc": 300, "amira": 300, "tiff": 300, "omezarr": 150, "model": 200}


@pytest.fixture(scope="module")
def seeds(shared: Path, tmp_path_factory) -> dict[str, list[Path]]:
    # tifffile logs every damaged tag it skips; the outcome is what the test checks
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    return fuzzing.seeds(shared / "data", tmp_path_factory.mktemp("seeds"))


@pytest.mark.parametrize("fmt", fuzzing.FORMATS)
def test_mutated_inputs_read_or_raise_sxtlab_errors(seeds, tmp_path, fmt) -> None:
    assert seeds[fmt], f"no seed files for {fmt}"
    outcomes: Counter[str] = Counter()
    others = []
    for index in range(COUNTS[fmt]):
        path, what = fuzzing.make_input(fmt, seeds[fmt], index, tmp_path)
        start = time.perf_counter()
        kind, message = fuzzing.classify(fmt, path)
        elapsed = time.perf_counter() - start
        outcomes[kind] += 1
        if kind == "other" or elapsed > 10:
            others.append(f"#{index} {what}: {message} ({elapsed:.1f} s)")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert not others, "\n".join(others)
    # the mutations neither always break the file nor never do
    assert outcomes["read"] > 0 and outcomes["sxtlab"] > 0, dict(outcomes)
