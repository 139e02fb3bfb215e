"""run_subprocess: per-call cost against subprocess.run, and 32 concurrent commands.

    python benchmarks/bench_subprocess.py [--calls 300] [--rounds 5] [--quick] [--strict]

1. Per call, sequential, ``true`` as the command (the rounds interleave the variants; the
   median of every call's time is reported):
   * ``subprocess.run(["true"])`` from the event-loop thread (the baseline; it blocks the loop);
   * ``subprocess.run(["true"], capture_output=True)``, as run_subprocess captures by default;
   * the same work as run_subprocess asks of the OS: ``subprocess.run`` with captured output,
     stdin from /dev/null, its own process group and the environment run_subprocess passes
     (the parent's, the sandbox variables and the kill marker; explicit, so Popen encodes it);
   * ``await sdk.tasks.run_subprocess(["true"])``;
   * ``asyncio.create_subprocess_exec("true")`` with captured output, for reference;
   * ``loop.run_in_executor(pool, subprocess.run, ["true"], capture_output=True)``: the floor
     of any design that waits in a worker thread (what run_subprocess does), for reference.
   Target: run_subprocess <= 1.2x subprocess.run.
2. Concurrency: 32 ``run_subprocess(["sleep", "0.2"])`` at once under a 1 ms lag probe,
   repeated (``--batches``, default 5) so the p99 rests on ~1,000 ticks.
   Targets: every batch done in < 1.5 s (the slowest is reported), loop lag p99 < 10 ms.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from _common import LagProbe, Targets, call_times, header, median, ms, parser, us

from taskbed import Runtime
from taskbed._process import TAG_VARIABLE

SESSION = {"user": {"id": 7, "organization_id": 10}}
TRUE = shutil.which("true") or "true"


async def blocking_run() -> None:
    subprocess.run(["true"], check=True)


async def blocking_run_captured() -> None:
    subprocess.run(["true"], check=True, capture_output=True)


async def asyncio_exec() -> None:
    proc = await asyncio.create_subprocess_exec(
        "true",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    await proc.communicate()
    assert proc.returncode == 0


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=300, help="sequential calls per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrent", type=int, default=32)
    p.add_argument("--batches", type=int, default=5, help="concurrent batches under the probe")
    args = p.parse_args()
    calls, rounds = (100, 3) if args.quick else (args.calls, args.rounds)
    batches = 2 if args.quick else args.batches
    header(
        f"bench_subprocess: `true` x {calls} sequential x {rounds} rounds; "
        f"{args.concurrent} x `sleep 0.2` at once"
    )

    async with Runtime() as rt:
        tasks = rt.sdk(session=SESSION, module="bench").tasks

        async def run_subprocess() -> None:
            result = await tasks.run_subprocess(["true"])
            assert result.returncode == 0

        pool = ThreadPoolExecutor(thread_name_prefix="bench-direct")
        loop = asyncio.get_running_loop()

        async def in_thread() -> None:
            run = functools.partial(subprocess.run, ["true"], check=True, capture_output=True)
            await loop.run_in_executor(pool, run)

        same_env = {**os.environ, **tasks.sandbox_variables(), TAG_VARIABLE: os.urandom(8).hex()}

        async def same_work() -> None:
            subprocess.run(["true"], check=True, capture_output=True, env=same_env,
                           stdin=subprocess.DEVNULL, process_group=0)  # fmt: skip

        variants: dict[str, Callable[[], Awaitable[object]]] = {
            'subprocess.run(["true"])': blocking_run,
            "subprocess.run(..., capture_output=True)": blocking_run_captured,
            "subprocess.run, the same work": same_work,
            "sdk.tasks.run_subprocess": run_subprocess,
            "asyncio.create_subprocess_exec": asyncio_exec,
            "run_in_executor(subprocess.run, capture)": in_thread,
        }
        for call in variants.values():  # warm up: threads, child watcher, code paths
            await call_times(10, call)
        results: dict[str, list[float]] = {name: [] for name in variants}  # every call's time
        for _ in range(rounds):
            for name, call in variants.items():
                results[name].extend(await call_times(calls, call))

        pool.shutdown()
        base = median(results['subprocess.run(["true"])'])
        print(f"{'per call (median of all calls)':42s} {'time':>10s} {'ratio':>7s}")
        for name, values in results.items():
            print(f"{name:42s} {us(median(values)):>10s} {median(values) / base:6.2f}x")

        async with LagProbe() as idle:
            await asyncio.sleep(0.25 * batches)
        walls, probes = [], []
        for _ in range(batches):
            async with LagProbe() as batch_probe:
                start = time.perf_counter()
                done = await asyncio.gather(
                    *(tasks.run_subprocess(["sleep", "0.2"]) for _ in range(args.concurrent))
                )
                walls.append(time.perf_counter() - start)
            assert all(r.returncode == 0 for r in done)
            probes.append(batch_probe)
        probe = LagProbe()
        probe.lateness = [lag for each in probes for lag in each.lateness]
        wall = max(walls)
        print(
            f"{args.concurrent} x run_subprocess(['sleep', '0.2']) at once, {batches} batches: "
            f"done in {min(walls):.3f} s (fastest) .. {wall:.3f} s (slowest)"
        )
        print(f"  loop lag, all batches: {probe.summary()}")
        print(f"  loop lag, first batch (the pool starts its threads): {probes[0].summary()}")
        print(f"  loop lag, idle {0.25 * batches:.2f} s: {idle.summary()}")

    ratio = median(results["sdk.tasks.run_subprocess"]) / base
    same_work = median(results["subprocess.run, the same work"])
    same = median(results["sdk.tasks.run_subprocess"]) / same_work
    print(f"run_subprocess vs subprocess.run doing the same work: {same:.2f}x")
    targets = Targets()
    targets.check(
        'run_subprocess(["true"]) per call vs subprocess.run(["true"])', f"{ratio:.2f}x",
        "<= 1.2x", ratio <= 1.2,
    )  # fmt: skip
    targets.check(f"{args.concurrent} concurrent sleep 0.2, wall time", f"{wall:.3f} s", "< 1.5 s",
                  wall < 1.5)  # fmt: skip
    targets.check(
        f"loop lag p99 during {args.concurrent} concurrent commands", ms(probe.p99()), "< 10 ms",
        probe.p99() < 0.010,
    )  # fmt: skip
    targets.exit(args.strict)


if __name__ == "__main__":
    asyncio.run(main())
