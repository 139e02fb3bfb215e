"""Submit-to-completion of many no-op background tasks, against bare asyncio.

    python benchmarks/bench_submit.py [--n 10000] [--rounds 5] [--quick] [--strict]

Measured, per round (the rounds interleave the three, then the median is reported):

* baseline: ``asyncio.create_task(noop())`` N times, then ``asyncio.gather`` of them;
* taskbed, MemoryStore: ``await sdk.tasks.run_background(noop())`` N times, then
  ``await rt.wait(task_id)`` for each (the public way to wait for a task);
* taskbed, SQLiteStore on a file in a fresh temporary directory, the same.

Targets: MemoryStore <= 5x the baseline, file SQLiteStore <= 20x.

For reference it also measures the floor the SQLite variant cannot go below: one committed
``INSERT`` per task (``BEGIN IMMEDIATE`` / ``INSERT ... RETURNING`` / ``COMMIT``, raw sqlite3
on the same schema and pragmas), which rule DEDUP requires before ``run_background`` returns.
Times are wall clock; the CPU time of the process is shown too, as a check on a busy machine.
No client is connected, so every completion message goes to the offline queue, as it would
for a user who closed the tab: that is the expensive path and the one measured.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import NamedTuple

from _common import Targets, collected, header, median, parser, us

from taskbed import MemoryStore, Runtime, SQLiteStore, TaskStore
from taskbed._sqlite_store import _COLUMNS, _SCHEMA

SESSION = {"user": {"id": 7, "organization_id": 10}}


class Sample(NamedTuple):
    submit: float  # wall seconds until the last submission returned
    total: float  # wall seconds until the last task was seen complete
    cpu: float  # CPU seconds of this process over the same span


async def noop() -> None:
    return None


async def baseline(n: int) -> Sample:
    with collected():
        start, cpu = time.perf_counter(), time.process_time()
        tasks = [asyncio.create_task(noop()) for _ in range(n)]
        submitted = time.perf_counter()
        await asyncio.gather(*tasks)
        return Sample(submitted - start, time.perf_counter() - start, time.process_time() - cpu)


async def taskbed(n: int, store: TaskStore) -> Sample:
    async with Runtime(store) as rt:
        sdk = rt.sdk(session=SESSION, module="bench")
        run_background, wait = sdk.tasks.run_background, rt.wait
        with collected():
            start, cpu = time.perf_counter(), time.process_time()
            ids = [await run_background(noop()) for _ in range(n)]
            submitted = time.perf_counter()
            for task_id in ids:
                await wait(task_id)
            sample = Sample(
                submitted - start, time.perf_counter() - start, time.process_time() - cpu
            )
        last = await wait(ids[-1])
        assert last["status"] == "completed", last
    return sample


def committed_inserts(n: int, path: str) -> Sample:
    """The floor of a file store: one committed insert per task, nothing else."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        insert = (
            f"INSERT INTO tasks ({_COLUMNS}) VALUES ({', '.join('?' * 15)}) "
            "ON CONFLICT DO NOTHING RETURNING id"
        )
        with collected():
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                now = time.time()
                row = (str(uuid.uuid4()), "7", "10", "bench", "Background Task", None,
                       "pending", 0.0, "{}", "null", None, now, now, "bench", 1)  # fmt: skip
                db.execute("BEGIN IMMEDIATE")
                db.execute(insert, row).fetchone()
                db.execute("COMMIT")
            elapsed = time.perf_counter() - start
            return Sample(elapsed, elapsed, time.process_time() - cpu)
    finally:
        db.close()


BASELINE = "asyncio create_task + gather"
MEMORY = "taskbed MemoryStore"
SQLITE = "taskbed SQLiteStore (file)"
FLOOR = "floor: 1 committed INSERT/task"


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="tasks per round")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    n, rounds = (2_000, 3) if args.quick else (args.n, args.rounds)
    header(f"bench_submit: {n:,} no-op background tasks, submit to completion, {rounds} rounds")

    with tempfile.TemporaryDirectory(prefix="taskbed-bench-") as tmp:
        counter = iter(range(1_000_000))

        def fresh_path() -> str:
            return os.path.join(tmp, f"tasks-{next(counter)}.db")

        variants: dict[str, Callable[[], TaskStore] | None] = {
            BASELINE: None,
            MEMORY: MemoryStore,
            SQLITE: lambda: SQLiteStore(fresh_path()),
            FLOOR: None,
        }
        await taskbed(min(n, 500), MemoryStore())  # warm up imports and code paths
        results: dict[str, list[Sample]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, make in variants.items():
                if name == BASELINE:
                    results[name].append(await baseline(n))
                elif name == FLOOR:
                    results[name].append(committed_inserts(n, fresh_path()))
                else:
                    assert make is not None
                    store = make()
                    try:
                        results[name].append(await taskbed(n, store))
                    finally:
                        store.close()

    base = median([s.total for s in results[BASELINE]])
    base_cpu = median([s.cpu for s in results[BASELINE]])
    print(
        f"{'variant':32s} {'total (median)':>15s} {'per task':>11s} {'submit part':>12s} "
        f"{'ratio':>7s} {'CPU ratio':>10s}"
    )
    ratios = {}
    for name, samples in results.items():
        total = median([s.total for s in samples])
        submit = median([s.submit for s in samples])
        cpu = median([s.cpu for s in samples])
        ratios[name] = total / base
        print(
            f"{name:32s} {total * 1e3:12.1f} ms {us(total / n):>11s} {us(submit / n):>12s} "
            f"{ratios[name]:6.1f}x {cpu / base_cpu:9.1f}x"
        )
    print("(per task = total / N; submit part = the run_background calls alone; the floor is")
    print(" raw sqlite3 on the same schema, the cost DEDUP's commit-before-return imposes)")
    targets = Targets()
    targets.check(
        "submit-to-completion, MemoryStore vs create_task+gather",
        f"{ratios[MEMORY]:.1f}x", "<= 5x", ratios[MEMORY] <= 5,
    )  # fmt: skip
    targets.check(
        "submit-to-completion, file SQLiteStore vs create_task+gather",
        f"{ratios[SQLITE]:.1f}x", "<= 20x", ratios[SQLITE] <= 20,
    )  # fmt: skip
    targets.exit(args.strict)


if __name__ == "__main__":
    asyncio.run(main())
