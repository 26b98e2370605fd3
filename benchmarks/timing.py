"""Timing shared by the benchmarks (imported as a sibling: ``from timing import Clock``)."""

from __future__ import annotations

import time


class Clock:
    """Wall and CPU seconds of a block (CPU counts every thread of this process)."""

    def __enter__(self) -> "Clock":
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c
