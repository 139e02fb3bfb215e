"""Keyed submissions and key/prefix queries against a large SQLite history.

    python benchmarks/bench_history.py [--rows 1000000] [--small 1000] [--quick] [--strict]

Two file stores are filled with completed tasks (bulk ``executemany`` into the store's own
table, then the store is reopened so that its schema script builds the indexes): a small
history (1,000 rows, the baseline) and a large one (1,000,000 rows). Keys look like
``hist.000042.17``: each group of 100 tasks shares the prefix ``hist.000042.``.

Measured on each, per operation (median of several passes):

* keyed submit: ``await sdk.tasks.run_background(noop(), task_key=...)`` with a fresh key that
  sorts into the middle of the key index (the call commits the dedup insert before it returns);
  each task is awaited before the next submission, untimed;
* dedup hit: the same with the key of a task that is still running (no insert: the holder is
  read and its id returned);
* prefix query: ``sdk.tasks.get_tasks_by_key_prefix("hist.000042.", 10)``, 100 rows;
* key query: ``sdk.tasks.get_tasks_by_key("hist.000042.17", 10)``, 1 row.

Target: each stays within 2x of the same operation on the small history. The script prints
``EXPLAIN QUERY PLAN`` of the store's queries on the large history to show the indexes in use.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

from _common import Targets, header, median, parser, us

from taskbed import Runtime, SQLiteStore
from taskbed._model import scope
from taskbed._sqlite_store import _ACTIVE_SQL, _COLUMNS, _ORDER, prefix_upper_bound

ORG = 10
SESSION = {"user": {"id": 7, "organization_id": ORG}}
GROUP = 100  # tasks per key prefix
INDEXES = ("tasks_active_key", "tasks_by_key", "tasks_by_user", "tasks_active_runner")


def history_key(i: int) -> str:
    return f"hist.{i // GROUP:06d}.{i % GROUP:02d}"


def fill(path: str, rows: int) -> float:
    """Create the store's schema at *path* and bulk-insert *rows* completed tasks."""
    SQLiteStore(path).close()  # the schema, exactly as the store creates it
    start = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA cache_size=-262144")  # 256 MiB for the bulk load only
        for index in INDEXES:  # rebuilt, sorted, when the store reopens the file
            db.execute(f"DROP INDEX {index}")
        t0 = time.time() - rows
        org = scope(ORG)
        rng = random.Random(7)

        def values() -> Iterator[tuple[object, ...]]:
            for i in range(rows):
                ts = t0 + i
                yield (
                    str(uuid.UUID(int=rng.getrandbits(128), version=4)), scope(i % 1000), org,
                    "bench", f"job {i}", history_key(i), "completed", 1.0, "{}",
                    '{"ok": true}', None, ts, ts + 0.5, "old-runtime", 1,
                )  # fmt: skip

        db.execute("BEGIN")
        db.executemany(f"INSERT INTO tasks ({_COLUMNS}) VALUES ({', '.join('?' * 15)})", values())
        db.execute("COMMIT")
    finally:
        db.close()
    SQLiteStore(path).close()  # CREATE INDEX IF NOT EXISTS: builds the dropped indexes
    return time.perf_counter() - start


async def noop() -> None:
    return None


async def per_op(
    count: int, op: Callable[[int], Awaitable[object]], after: Callable[[object], Awaitable[None]]
) -> float:
    """Median seconds of ``op(i)`` over *count* calls; ``after`` runs untimed between calls."""
    times = []
    for i in range(count):
        start = time.perf_counter()
        value = await op(i)
        times.append(time.perf_counter() - start)
        await after(value)
    return median(times)


async def measure(path: str, ops: int, passes: int, groups: int) -> dict[str, float]:
    rng = random.Random(11)
    async with Runtime(SQLiteStore(path)) as rt:
        tasks = rt.sdk(session=SESSION, module="bench").tasks
        hold = asyncio.Event()
        holder = await tasks.run_background(hold.wait(), "holder", task_key="busy")
        fresh = iter(range(10**9))

        async def keyed_submit(_: int) -> str:
            return await tasks.run_background(
                noop(), task_key=f"hist.{rng.randrange(groups):06d}+{next(fresh)}"
            )

        async def dedup_hit(_: int) -> str:
            coro = noop()
            task_id = await tasks.run_background(coro, task_key="busy")
            assert task_id == holder
            return task_id

        async def prefix_query(_: int) -> list[dict[str, object]]:
            rows = tasks.get_tasks_by_key_prefix(f"hist.{rng.randrange(groups):06d}.", ORG)
            assert len(rows) == GROUP, len(rows)
            return rows

        async def key_query(_: int) -> list[dict[str, object]]:
            rows = tasks.get_tasks_by_key(history_key(rng.randrange(groups * GROUP)), ORG)
            assert len(rows) == 1, len(rows)
            return rows

        async def complete(task_id: object) -> None:
            await rt.wait(str(task_id))

        async def nothing(_: object) -> None:
            await asyncio.sleep(0)

        ops_table: dict[
            str, tuple[Callable[[int], Awaitable[object]], Callable[..., Awaitable[None]]]
        ] = {
            "keyed submit (new key)": (keyed_submit, complete),
            "keyed submit (dedup hit)": (dedup_hit, nothing),
            "prefix query, 100 rows": (prefix_query, nothing),
            "key query, 1 row": (key_query, nothing),
        }
        for op, after in ops_table.values():  # warm the page cache and the statement cache
            await per_op(min(ops, 20), op, after)
        results: dict[str, list[float]] = {name: [] for name in ops_table}
        for _ in range(passes):
            for name, (op, after) in ops_table.items():
                results[name].append(await per_op(ops, op, after))
        hold.set()
        await rt.wait(holder)
    return {name: median(values) for name, values in results.items()}


def explain(path: str) -> None:
    store = SQLiteStore(path)
    try:
        org = scope(ORG)
        prefix = "hist.000042."
        queries = {
            "key query (get_tasks_by_key)": (
                f"SELECT {_COLUMNS} FROM tasks WHERE org_scope = ? AND task_key = ? {_ORDER}",
                (org, "hist.000042.17"),
            ),
            "prefix query (get_tasks_by_key_prefix)": (
                f"SELECT {_COLUMNS} FROM tasks WHERE org_scope = ? AND task_key >= ? "
                f"AND task_key < ? {_ORDER}",
                (org, prefix, prefix_upper_bound(prefix)),
            ),
            "dedup holder (run_background, key taken)": (
                f"SELECT {_COLUMNS} FROM tasks WHERE org_scope = ? AND task_key = ? "
                f"AND task_key IS NOT NULL AND status IN ({_ACTIVE_SQL})",
                (org, "busy"),
            ),
            "user query (list_user_tasks)": (
                f"SELECT {_COLUMNS} FROM tasks WHERE user_scope = ? AND org_scope = ? {_ORDER}",
                (scope(7), org),
            ),
        }
        for name, (sql, params) in queries.items():
            print(f"  {name}:")
            for line in store.explain(sql, params):
                print(f"      {line}")
    finally:
        store.close()


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the large history")
    p.add_argument("--small", type=int, default=1_000, help="rows of the small history")
    p.add_argument("--ops", type=int, default=300, help="operations per pass")
    p.add_argument("--passes", type=int, default=3)
    args = p.parse_args()
    large = 100_000 if args.quick else args.rows
    ops, passes = (100, 2) if args.quick else (args.ops, args.passes)
    header(
        f"bench_history: keyed submit and key/prefix queries, {args.small:,} vs {large:,} rows"
        f" of history, {ops} ops x {passes} passes"
    )
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="taskbed-bench-") as tmp:
        for rows in (args.small, large):
            path = os.path.join(tmp, f"history-{rows}.db")
            took = fill(path, rows)
            size = os.path.getsize(path) / 2**20
            print(f"filled {rows:,} rows in {took:.1f} s ({size:,.0f} MiB)")
            results[rows] = await measure(path, ops, passes, rows // GROUP)
        print(f"EXPLAIN QUERY PLAN on {large:,} rows:")
        explain(os.path.join(tmp, f"history-{large}.db"))

    print(f"{'operation':28s} {f'{args.small:,} rows':>14s} {f'{large:,} rows':>14s} {'ratio':>7s}")
    targets = Targets()
    for name in results[args.small]:
        small, big = results[args.small][name], results[large][name]
        print(f"{name:28s} {us(small):>14s} {us(big):>14s} {big / small:6.2f}x")
    for name in results[args.small]:
        ratio = results[large][name] / results[args.small][name]
        targets.check(
            f"{name}, {large:,} vs {args.small:,} rows", f"{ratio:.2f}x", "<= 2x", ratio <= 2
        )
    targets.exit(args.strict)


if __name__ == "__main__":
    asyncio.run(main())
