"""Virtual time on the harness: an hour of sleeps, and 1,000 timers in deadline order.

    python benchmarks/bench_virtual_time.py [--rounds 7] [--runs 20] [--seed 2026]
                                            [--quick] [--strict]

Every run below gets a fresh event loop: ``new_virtual_loop()`` and
``Harness(clock=loop.clock)`` for the harness (as ``TaskbedMachine`` sets it up), or
``asyncio.new_event_loop()`` and a plain ``Runtime(MemoryStore())`` for the baselines. A client
of the task's owner is connected in every variant, so progress messages are delivered (and
checked), not dropped. Times are wall clock from the ``run_background`` call to ``wait``
returning; the CPU time of the process is shown too, as a check on a busy machine.

1. An hour: a background job ``for i in range(3600): await asyncio.sleep(1);
   await sdk.tasks.update_progress(task_id, i / 3600)`` on the harness. Baseline: the same job
   with ``asyncio.sleep(0)`` in place of each sleep, on a plain asyncio loop. For reference,
   the harness with ``sleep(0)`` (its cost without any time jump) and the bare loops, without
   taskbed (3,600 sleeps in one coroutine: what one virtual jump costs). The rounds interleave
   the variants; medians are reported. The harness run is checked: 3,600 progress messages,
   the i-th stamped exactly i virtual seconds after the start, and 3,600 s of virtual time.

   Targets: under 0.5 s of wall time, and within 3x of the baseline.

2. Deadlines: 1,000 background tasks, each ``await asyncio.sleep(d)`` then return its
   submission index, with d drawn by a seeded ``random.Random``: uniform over 0-1000 s in
   whole milliseconds, then one task in ten given the duration of an earlier task (ties).
   All are submitted at virtual time 0; completion order is the order of the
   ``backgroundTaskCompleted`` messages on the client. Each run is checked: every task woke
   at exactly its deadline (integer nanoseconds), its completion message carries that
   virtual time, and the order is by deadline. The same run is repeated (20 times by
   default) and the orders compared. Baseline for the wall time: the same 1,000 tasks with
   ``sleep(0)`` on a plain asyncio loop.

   What the loop guarantees about ties: timers with the same deadline fire in the order of
   asyncio's timer heap (``TimerHandle`` compares ``when`` only, and ``heapq`` is not
   stable). That order is deterministic for the same sequence of timer operations, but it is
   not submission order. (On a real loop ties practically never happen: the clock moves
   between two ``call_later`` calls.) The benchmark counts the tie groups that completed in
   submission order.

   Targets: completion order by virtual deadline, each at its deadline, in every run; one
   order across all the runs (ties included); ties in submission order.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from _common import Targets, collected, header, median, ms, parser, us

from taskbed import MemoryStore, Runtime
from taskbed_harness import Harness, new_virtual_loop

T = TypeVar("T")

SESSION = {"user": {"id": 7, "organization_id": 10}, "session_key": "s1"}
HOUR = 3600
NS = 1_000_000_000

HARNESS_HOUR = "harness, 3,600 x sleep(1)"
PLAIN_HOUR = "plain loop, 3,600 x sleep(0)"
HARNESS_SLEEP0 = "harness, 3,600 x sleep(0)"
BARE_VIRTUAL = "bare virtual loop, sleep(1)"
BARE_PLAIN = "bare asyncio loop, sleep(0)"


@dataclass(frozen=True)
class Sample:
    wall: float  # seconds, run_background to wait returning
    cpu: float  # CPU seconds of this process over the same span
    whole: float  # seconds, loop creation to loop closed (setup and teardown included)


def on_loop(loop: asyncio.AbstractEventLoop, main: Coroutine[Any, Any, T]) -> T:
    """Run *main* to completion on *loop*, then close the loop."""
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class Stopwatch:
    def __init__(self) -> None:
        with collected():
            self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


# ---------------------------------------------------------------- 1. an hour


def harness_hour(delay: float) -> Sample:
    """The hourly job on the harness's virtual loop, sleeping *delay* between updates."""
    outer = time.perf_counter()
    loop = new_virtual_loop()
    tb = Harness(clock=loop.clock)

    async def main() -> tuple[float, float]:
        async with tb:
            client = tb.client()
            async with tb.request() as sdk:

                async def job() -> str:
                    for i in range(HOUR):
                        await asyncio.sleep(delay)
                        await sdk.tasks.update_progress(task_id, i / HOUR)
                    return "done"

                start_ns = tb.clock.now_ns()
                watch = Stopwatch()
                task_id = await sdk.tasks.run_background(job(), "Hourly")
                row = await tb.wait(task_id)
                elapsed = watch.stop()
            assert row["status"] == "completed", row
            stamps = [at for at, m in client.timeline if "backgroundTaskProgress" in m]
            assert len(stamps) == HOUR, len(stamps)
            if delay == 1:
                assert tb.clock.now_ns() - start_ns == HOUR * NS, tb.clock
                expected = [(start_ns + (i + 1) * NS) / NS for i in range(HOUR)]
                assert stamps == expected, "progress timestamps are not exact"
            return elapsed

    wall, cpu = on_loop(loop, main())
    return Sample(wall, cpu, time.perf_counter() - outer)


def plain_hour() -> Sample:
    """The baseline: the same job with sleep(0), reference Runtime on a plain asyncio loop."""
    outer = time.perf_counter()

    async def main() -> tuple[float, float]:
        async with Runtime(store=MemoryStore()) as rt:
            conn = rt.connect(7, 10)
            async with rt.request(session=SESSION, module="mod", request_id="r1") as sdk:

                async def job() -> str:
                    for i in range(HOUR):
                        await asyncio.sleep(0)
                        await sdk.tasks.update_progress(task_id, i / HOUR)
                    return "done"

                watch = Stopwatch()
                task_id = await sdk.tasks.run_background(job(), "Hourly")
                row = await rt.wait(task_id)
                elapsed = watch.stop()
            assert row["status"] == "completed", row
            progress = [m for m in conn.messages if "backgroundTaskProgress" in m]
            assert len(progress) == HOUR, len(progress)
            return elapsed

    wall, cpu = on_loop(asyncio.new_event_loop(), main())
    return Sample(wall, cpu, time.perf_counter() - outer)


def bare(make_loop: Callable[[], asyncio.AbstractEventLoop], delay: float) -> Sample:
    """3,600 sleeps in one coroutine, no taskbed: the loop's own cost per sleep."""
    outer = time.perf_counter()

    async def main() -> tuple[float, float]:
        watch = Stopwatch()
        for _ in range(HOUR):
            await asyncio.sleep(delay)
        return watch.stop()

    wall, cpu = on_loop(make_loop(), main())
    return Sample(wall, cpu, time.perf_counter() - outer)


def hour(rounds: int, targets: Targets) -> None:
    variants: dict[str, Callable[[], Sample]] = {
        PLAIN_HOUR: plain_hour,
        HARNESS_HOUR: lambda: harness_hour(1),
        HARNESS_SLEEP0: lambda: harness_hour(0),
        BARE_PLAIN: lambda: bare(asyncio.new_event_loop, 0),
        BARE_VIRTUAL: lambda: bare(new_virtual_loop, 1),
    }
    for run in variants.values():  # warm up imports (time-machine) and code paths
        run()
    results: dict[str, list[Sample]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            results[name].append(run())

    print(f"\n-- 1. an hour of virtual time, 3,600 progress updates ({rounds} rounds, medians)")
    print(
        f"{'variant':32s} {'wall':>10s} {'per step':>10s} {'ratio':>7s} {'CPU':>10s} "
        f"{'CPU ratio':>10s} {'wall min-max':>17s} {'whole run':>10s}"
    )
    wall = {n: median([s.wall for s in v]) for n, v in results.items()}
    cpu = {n: median([s.cpu for s in v]) for n, v in results.items()}
    for name, samples in results.items():
        base = BARE_PLAIN if name in (BARE_PLAIN, BARE_VIRTUAL) else PLAIN_HOUR
        walls = [s.wall for s in samples]
        print(
            f"{name:32s} {ms(wall[name]):>10s} {us(wall[name] / HOUR):>10s} "
            f"{wall[name] / wall[base]:6.2f}x {ms(cpu[name]):>10s} "
            f"{cpu[name] / cpu[base]:9.2f}x "
            f"{ms(min(walls)):>8s}-{ms(max(walls)):>8s} "
            f"{ms(median([s.whole for s in samples])):>10s}"
        )
    print(
        "(ratio: against the plain-loop job; the bare virtual loop against the bare asyncio\n"
        " loop. per step = wall / 3,600. whole run = loop creation, harness start, the job,\n"
        " harness stop and loop close.)"
    )
    jump = (wall[BARE_VIRTUAL] - wall[BARE_PLAIN]) / HOUR
    print(f"one virtual jump costs about {us(jump)} more than a sleep(0) on a plain loop")
    targets.check(
        "an hour of virtual sleep + 3,600 progress updates on the harness, wall time",
        f"{wall[HARNESS_HOUR]:.3f} s",
        "< 0.5 s",
        wall[HARNESS_HOUR] < 0.5,
    )
    ratio = wall[HARNESS_HOUR] / wall[PLAIN_HOUR]
    targets.check(
        "the same vs the job with sleep(0) on a plain asyncio loop",
        f"{ratio:.2f}x (CPU {cpu[HARNESS_HOUR] / cpu[PLAIN_HOUR]:.2f}x)",
        "<= 3x",
        ratio <= 3,
    )


# ---------------------------------------------------------------- 2. deadlines


def durations_ms(n: int, seed: int) -> list[int]:
    """Uniform 0-1000 s in whole milliseconds; one task in ten copies an earlier duration."""
    rng = random.Random(seed)
    values = [rng.randrange(0, 1_000_001) for _ in range(n)]
    for i in sorted(rng.sample(range(1, n), n // 10)):
        values[i] = values[rng.randrange(i)]
    return values


@dataclass(frozen=True)
class Run:
    order: list[int]  # submission indices in completion order
    in_deadline_order: bool
    at_deadline: bool  # woke at the exact nanosecond, and the message says so
    wall: float
    cpu: float


def harness_deadlines(millis: list[int]) -> Run:
    loop = new_virtual_loop()
    tb = Harness(clock=loop.clock)
    woke: dict[int, int] = {}

    async def main() -> Run:
        async with tb:
            client = tb.client()
            clock = tb.clock
            origin_ns, start_ns = clock.monotonic_ns(), clock.now_ns()

            async def job(k: int, seconds: float) -> int:
                await asyncio.sleep(seconds)
                woke[k] = clock.monotonic_ns() - origin_ns
                return k

            async with tb.request() as sdk:
                watch = Stopwatch()
                ids = [
                    await sdk.tasks.run_background(job(k, m / 1000), f"t{k}")
                    for k, m in enumerate(millis)
                ]
                rows = [await tb.wait(task_id) for task_id in ids]
                wall, cpu = watch.stop()
            assert all(row["status"] == "completed" for row in rows)
            done = [(at, m) for at, m in client.timeline if "backgroundTaskCompleted" in m]
            order = [m["backgroundTaskCompleted"]["result"] for _, m in done]
            assert sorted(order) == list(range(len(millis))), "a task is missing"
            deadline_ns = [m * 1_000_000 for m in millis]
            at_deadline = all(woke[k] == deadline_ns[k] for k in order) and all(
                at == (start_ns + deadline_ns[k]) / NS
                for (at, _), k in zip(done, order, strict=True)
            )
            ordered = all(millis[a] <= millis[b] for a, b in itertools.pairwise(order))
            return Run(order, ordered, at_deadline, wall, cpu)

    return on_loop(loop, main())


def plain_deadlines(n: int) -> float:
    """The baseline: *n* tasks with sleep(0) on a plain asyncio loop, reference Runtime."""

    async def main() -> float:
        async with Runtime(store=MemoryStore()) as rt:
            rt.connect(7, 10)

            async def job(k: int) -> int:
                await asyncio.sleep(0)
                return k

            async with rt.request(session=SESSION, module="mod", request_id="r1") as sdk:
                watch = Stopwatch()
                ids = [await sdk.tasks.run_background(job(k), f"t{k}") for k in range(n)]
                rows = [await rt.wait(task_id) for task_id in ids]
                wall, _ = watch.stop()
            assert all(row["status"] == "completed" for row in rows)
            return wall

    return on_loop(asyncio.new_event_loop(), main())


def tie_groups(millis: list[int]) -> list[list[int]]:
    """Submission indices sharing a deadline, for every deadline shared by two or more."""
    by_deadline: dict[int, list[int]] = {}
    for k, m in enumerate(millis):
        by_deadline.setdefault(m, []).append(k)
    return [group for group in by_deadline.values() if len(group) > 1]


def deadlines(n: int, runs: int, seed: int, targets: Targets) -> None:
    millis = durations_ms(n, seed)
    groups = tie_groups(millis)
    harness_deadlines(millis[:50])  # warm up
    plain_deadlines(50)
    results: list[Run] = []
    baseline: list[float] = []
    for _ in range(runs):
        results.append(harness_deadlines(millis))
        baseline.append(plain_deadlines(n))

    print(
        f"\n-- 2. {n:,} tasks sleeping seeded random virtual durations (seed {seed}), {runs} runs"
    )
    print(
        f"durations 0-1000 s in ms, {len(set(millis))} distinct; {len(groups)} deadlines "
        f"shared by {sum(map(len, groups))} tasks (largest tie: {max(map(len, groups))} tasks)"
    )
    walls = [r.wall for r in results]
    wall, base = median(walls), median(baseline)
    print(
        f"wall per run: median {ms(wall)} (min {ms(min(walls))}, max {ms(max(walls))}, "
        f"stdev {ms(statistics.pstdev(walls))}), CPU {ms(median([r.cpu for r in results]))}; "
        f"{us(wall / n)} per task"
    )
    print(
        f"baseline, the same {n:,} tasks with sleep(0) on a plain asyncio loop: {ms(base)} "
        f"-> ratio {wall / base:.2f}x"
    )
    first = results[0].order
    distinct = len({tuple(r.order) for r in results})
    position = {k: i for i, k in enumerate(first)}
    fifo = sum(sorted(group, key=position.__getitem__) == group for group in groups)
    print(
        "ties: the virtual loop fires equal deadlines in the order the timers were made;\n"
        f"      {fifo} of {len(groups)} tie groups completed in submission order"
    )
    good = sum(r.in_deadline_order and r.at_deadline for r in results)
    targets.check(
        f"{n:,} timers complete in virtual-deadline order, each at its exact deadline",
        f"{good}/{runs} runs",
        f"all {runs}",
        good == runs,
    )
    targets.check(
        f"completion order identical across {runs} runs (ties included)",
        f"{distinct} distinct order{'s' if distinct > 1 else ''}",
        "1",
        distinct == 1,
    )
    targets.check(
        "ties (same deadline) complete in submission order",
        f"{fifo}/{len(groups)} tie groups",
        f"all {len(groups)}",
        fifo == len(groups),
    )


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7, help="rounds of the hour variants")
    p.add_argument("--runs", type=int, default=20, help="runs of the 1,000 tasks")
    p.add_argument("--n", type=int, default=1000, help="tasks of the deadline runs")
    p.add_argument("--seed", type=int, default=2026)
    args = p.parse_args()
    rounds, runs = (3, 5) if args.quick else (args.rounds, args.runs)
    header(
        f"bench_virtual_time: an hour of sleep(1) x 3,600 ({rounds} rounds); "
        f"{args.n:,} random timers x {runs} runs"
    )
    targets = Targets()
    hour(rounds, targets)
    deadlines(args.n, runs, args.seed, targets)
    targets.exit(args.strict)


if __name__ == "__main__":
    main()
