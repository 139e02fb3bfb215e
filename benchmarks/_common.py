"""Helpers shared by the benchmarks: timing, the event-loop lag probe, reporting.

The benchmarks are scripts, run on demand (``python benchmarks/bench_submit.py``); pytest
never collects them. Each measures a baseline in the same run and prints ratios against it,
so the numbers mean something on any machine. ``run_all.py`` runs them all.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

#: Every benchmark prints one line per target starting with this, for run_all's summary.
TARGET_TAG = "TARGET"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.add_argument(
        "--strict", action="store_true", help="exit with status 1 when a target is missed"
    )
    return p


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}"
    )


def header(title: str) -> None:
    print(f"== {title}")
    print(f"   {machine()}")
    print(f"   {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")


@contextmanager
def collected() -> Iterator[None]:
    """Collect garbage before a measurement, so one round's garbage does not bill the next."""
    gc.collect()
    yield


async def timed_async(fn: Callable[[], Awaitable[object]]) -> float:
    with collected():
        start = time.perf_counter()
        await fn()
        return time.perf_counter() - start


async def call_times(calls: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    """The wall time of each of *calls* sequential ``await call()``.

    Benchmarks report the median of these: on a shared machine a call that lost the CPU to
    another process is an outlier, which a mean would average in and a median ignores.
    """
    times = []
    with collected():
        for _ in range(calls):
            start = time.perf_counter()
            await call()
            times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} us"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f} ms"


@dataclass
class Targets:
    """Collects target checks; prints them and decides the exit status."""

    results: list[tuple[str, bool]] = field(default_factory=list)

    def check(self, name: str, measured: str, limit: str, met: bool) -> None:
        self.results.append((name, met))
        verdict = "met" if met else "MISSED"
        print(f"{TARGET_TAG} {verdict:6s} {name}: measured {measured} (target {limit})")

    def exit(self, strict: bool) -> None:
        if strict and not all(met for _, met in self.results):
            sys.exit(1)


def percentile(values: list[float], pct: float) -> float:
    """The *pct* percentile (nearest rank) of *values*."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


class LagProbe:
    """A ticker that asks for a 1 ms sleep, again and again, and records how late it wakes.

    Lateness is what a coroutine on this loop waits beyond what it asked for: the time the
    loop spent on other callbacks (or blocked) before it could run the ticker.
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.lateness: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.lateness.append(max(0.0, time.perf_counter() - start - self.interval))

    async def __aenter__(self) -> LagProbe:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        await asyncio.sleep(0)  # let it take its first step
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task

    def summary(self) -> str:
        lat = self.lateness
        return (
            f"{len(lat)} ticks, lateness p50 {ms(percentile(lat, 50))}, "
            f"p99 {ms(percentile(lat, 99))}, max {ms(max(lat, default=0.0))}"
        )

    def p99(self) -> float:
        return percentile(self.lateness, 99)
