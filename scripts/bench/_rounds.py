"""Timing rounds shared by the benchmarks: run an operation for a while, count it, profile it."""

from __future__ import annotations

import cProfile
import gc
import io
import pstats
import time
from collections.abc import Callable
from typing import NamedTuple

Op = Callable[[], object]


class Rate(NamedTuple):
    """One round of one side: operations per wall-clock second and per CPU second."""

    wall: float
    cpu: float


def run_for(op: Op, seconds: float) -> Rate:
    """Run ``op`` for about ``seconds``; SoftHSM runs in this thread, so CPU time is all of it."""
    gc.collect()
    count = 0
    clock = time.perf_counter
    cpu_start = time.thread_time()
    start = clock()
    deadline = start + seconds
    while True:
        op()
        count += 1
        now = clock()
        if now >= deadline:
            cpu = time.thread_time() - cpu_start
            return Rate(count / (now - start), count / cpu if cpu > 0 else float("nan"))


def profile(op: Op, seconds: float, top: int) -> str:
    """cProfile of ``op`` run for ``seconds``: the ``top`` rows by own and by total time."""
    profiler = cProfile.Profile()
    profiler.enable()
    run_for(op, seconds)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()
