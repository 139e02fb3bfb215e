"""run_blocking: per-call overhead against asyncio.to_thread, and event-loop lag meanwhile.

    python benchmarks/bench_blocking.py [--calls 5000] [--rounds 5] [--quick] [--strict]

1. Overhead: ``await sdk.tasks.run_blocking(f)`` of a function that returns at once, called
   sequentially, against ``await asyncio.to_thread(f)`` (the baseline) and, for reference, a
   direct ``loop.run_in_executor`` on a pool of the same size. The rounds interleave the
   variants; the median of every call's time is reported. Target: run_blocking <= 1.5x to_thread.
2. Lag: a ticker asks for 1 ms sleeps and records how late each wakes up, while four
   ``run_blocking(time.sleep, 0.2)`` calls run at once (and, for comparison, with nothing
   running, and with four ``asyncio.to_thread(time.sleep, 0.2)``). Each is repeated
   (``--lag-rounds``, default 5) under one probe, so the p99 rests on ~850 ticks, not ~170.
   Target: p99 < 5 ms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from _common import LagProbe, Targets, call_times, header, median, ms, parser, us

from taskbed import Runtime

SESSION = {"user": {"id": 7, "organization_id": 10}}


def nothing() -> None:
    return None


async def lag_during(
    work: Callable[[], Awaitable[object]] | None, seconds: float, repeat: int
) -> LagProbe:
    async with LagProbe() as probe:
        for _ in range(repeat):
            if work is None:
                await asyncio.sleep(seconds)
            else:
                await work()
    return probe


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=5_000, help="sequential calls per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--lag-rounds", type=int, default=5, help="4 x 200 ms batches per probe")
    args = p.parse_args()
    calls, rounds = (1_000, 3) if args.quick else (args.calls, args.rounds)
    lag_rounds = 2 if args.quick else args.lag_rounds
    header(f"bench_blocking: {calls:,} sequential calls x {rounds} rounds; lag with 4 x 200 ms")

    loop = asyncio.get_running_loop()
    async with Runtime() as rt:
        tasks = rt.sdk(session=SESSION, module="bench").tasks
        workers = ThreadPoolExecutor(thread_name_prefix="bench-direct")
        variants: dict[str, Callable[[], Awaitable[object]]] = {
            "asyncio.to_thread": lambda: asyncio.to_thread(nothing),
            "sdk.tasks.run_blocking": lambda: tasks.run_blocking(nothing),
            "loop.run_in_executor": lambda: loop.run_in_executor(workers, nothing),
        }
        for call in variants.values():  # start the pools' threads, warm the code paths
            await call_times(200, call)
        results: dict[str, list[float]] = {name: [] for name in variants}  # every call's time
        for _ in range(rounds):
            for name, call in variants.items():
                results[name].extend(await call_times(calls, call))
        workers.shutdown()

        base = median(results["asyncio.to_thread"])
        print(f"{'per call (median of all calls)':32s} {'time':>10s} {'ratio':>7s}")
        for name, values in results.items():
            print(f"{name:32s} {us(median(values)):>10s} {median(values) / base:6.2f}x")

        async def four(run: Callable[..., Awaitable[object]]) -> None:
            await asyncio.gather(*(run(time.sleep, 0.2) for _ in range(4)))

        lags = {
            "idle loop (0.2 s)": await lag_during(None, 0.2, lag_rounds),
            "4 x asyncio.to_thread(time.sleep, 0.2)": await lag_during(
                lambda: four(asyncio.to_thread), 0.2, lag_rounds
            ),
            "4 x run_blocking(time.sleep, 0.2)": await lag_during(
                lambda: four(tasks.run_blocking), 0.2, lag_rounds
            ),
        }
        print(f"event-loop lag, a 1 ms ticker, {lag_rounds} x 0.2 s each:")
        for name, probe in lags.items():
            print(f"  {name:40s} {probe.summary()}")

    ratio = median(results["sdk.tasks.run_blocking"]) / base
    p99 = lags["4 x run_blocking(time.sleep, 0.2)"].p99()
    targets = Targets()
    targets.check(
        "run_blocking per-call overhead vs asyncio.to_thread", f"{ratio:.2f}x", "<= 1.5x",
        ratio <= 1.5,
    )  # fmt: skip
    targets.check(
        "loop lag p99 during 4 x run_blocking(time.sleep, 0.2)", ms(p99), "< 5 ms", p99 < 0.005
    )
    targets.exit(args.strict)


if __name__ == "__main__":
    asyncio.run(main())
