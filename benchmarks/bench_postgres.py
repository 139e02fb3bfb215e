"""Submit-to-completion on PostgreSQL, against raw psycopg writing the same rows.

    python benchmarks/bench_postgres.py [--n 2000] [--rounds 5] [--dsn DSN] [--quick] [--strict]

Measured, per round (the rounds interleave the variants, then the median is reported):

* raw psycopg (the baseline): what the store must write for N tasks, by hand on the same
  schema: one committed ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` per task (dedup needs
  it before ``run_background`` returns), then, in one transaction, one ``UPDATE`` per task to
  its final state and one ``INSERT`` of its completion message into the offline queue;
* taskbed, PostgresStore: ``await sdk.tasks.run_background(noop())`` N times, then
  ``await rt.wait(last_id)`` (no client connected: every completion is queued; afterwards,
  untimed, every row is checked to be completed);
* taskbed, PostgresStore with the owner connected to a second runtime (another "host"): the
  messages travel by NOTIFY instead, and the run ends when that connection has them all;
* taskbed, SQLiteStore on a file, the same as the first taskbed variant, for comparison.

Target: PostgresStore <= 1.5x raw psycopg. The server is ``--dsn``, else
``TASKBED_POSTGRES_DSN``, else a throwaway cluster (tests/pgcluster.py) on a unix socket with
``fsync=off``, so the numbers are the client's and the protocol's, not the disk's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import NamedTuple

import psycopg
from _common import Targets, collected, header, median, parser, us

from taskbed import PostgresStore, Runtime, SQLiteStore, TaskStore
from taskbed._postgres_store import _INSERT

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
import pgcluster  # tests/pgcluster.py, found through the path set above

SESSION = {"user": {"id": 7, "organization_id": 10}}


class Sample(NamedTuple):
    submit: float  # wall seconds until the last submission returned
    total: float  # wall seconds until the last task was seen complete


async def noop() -> None:
    return None


async def taskbed(n: int, store: TaskStore, listener: TaskStore | None = None) -> Sample:
    """N tasks on a runtime over *store*; with *listener*, the owner is on a second runtime."""
    other = Runtime(listener) if listener is not None else None
    async with Runtime(store) as rt:
        if other is not None:
            await other.start()
        try:
            conn = other.connect(7, 10) if other is not None else None
            if conn is not None:  # wait until this host has heard the owner is over there
                assert isinstance(store, PostgresStore)
                while not store.connected_elsewhere(conn.owner):
                    await asyncio.sleep(0.001)
            sdk = rt.sdk(session=SESSION, module="bench")
            run_background, wait = sdk.tasks.run_background, rt.wait
            with collected():
                start = time.perf_counter()
                ids = [await run_background(noop()) for _ in range(n)]
                submitted = time.perf_counter()
                # The tasks end in submission order: the last one's end is the run's end. (A
                # wait per task would add a read per task, which raw psycopg does not do.)
                await wait(ids[-1])
                if conn is not None:
                    while len(conn.messages) < 2 * n:  # started and completed, for each
                        await conn.receive()
                sample = Sample(submitted - start, time.perf_counter() - start)
            rows = store.find_by_user(7, 10)
            assert len(rows) == n, len(rows)
            assert {r.status for r in rows} == {"completed"}
        finally:
            if other is not None:
                await other.stop()
    return sample


def raw(n: int, dsn: str) -> Sample:
    """The same rows, written by hand: N committed inserts, then one transaction of updates."""
    PostgresStore(dsn).close()  # the schema
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as db, collected():
        start = time.perf_counter()
        ids = []
        for _ in range(n):
            now = time.time()
            task_id = str(uuid.uuid4())
            row = (task_id, "7", "10", "bench", '"Background Task"', None, "pending", 0.0,
                   "{}", "null", None, now, now, "bench")  # fmt: skip
            db.execute(_INSERT, row).fetchone()
            ids.append(task_id)
        submitted = time.perf_counter()
        now = time.time()
        message = '{"backgroundTaskCompleted": {"taskId": "x", "result": null}}'
        with db.transaction(), db.cursor() as cur:
            cur.executemany(
                "UPDATE taskbed_tasks SET status = %s, updated_at = %s, result = %s, "
                "progress = %s WHERE id = %s AND status IN ('pending', 'running')",
                [("completed", now, "null", 1.0, task_id) for task_id in ids],
            )
            cur.executemany(
                "INSERT INTO taskbed_outbox (user_scope, org_scope, message) VALUES (%s, %s, %s)",
                [("7", "10", message)] * n,
            )
        return Sample(submitted - start, time.perf_counter() - start)


RAW = "raw psycopg, same rows"
PG = "taskbed PostgresStore"
PG_REMOTE = "PostgresStore, owner on host B"
SQLITE = "taskbed SQLiteStore (file)"


async def run(n: int, rounds: int, dsn: str) -> dict[str, list[Sample]]:
    results: dict[str, list[Sample]] = {name: [] for name in (RAW, PG, PG_REMOTE, SQLITE)}
    with tempfile.TemporaryDirectory(prefix="taskbed-bench-") as tmp:
        counter = iter(range(1_000_000))

        def fresh() -> str:
            return str(next(counter))

        def schema() -> AbstractContextManager[str]:
            return pgcluster.fresh_schema(dsn)

        with schema() as warm:  # imports and code paths
            store = PostgresStore(warm)
            try:
                await taskbed(min(n, 200), store)
            finally:
                store.close()
        for _ in range(rounds):
            with schema() as fresh_dsn:
                results[RAW].append(raw(n, fresh_dsn))
            with schema() as fresh_dsn:
                store = PostgresStore(fresh_dsn)
                try:
                    results[PG].append(await taskbed(n, store))
                finally:
                    store.close()
            with schema() as fresh_dsn:
                store, listener = PostgresStore(fresh_dsn), PostgresStore(fresh_dsn)
                try:
                    results[PG_REMOTE].append(await taskbed(n, store, listener))
                finally:
                    store.close()
                    listener.close()
            sqlite = SQLiteStore(os.path.join(tmp, f"tasks-{fresh()}.db"))
            try:
                results[SQLITE].append(await taskbed(n, sqlite))
            finally:
                sqlite.close()
    return results


def report(results: dict[str, list[Sample]], n: int, strict: bool) -> None:
    base = median([s.total for s in results[RAW]])
    print(f"{'variant':32s} {'total (median)':>15s} {'per task':>11s} {'submit part':>12s} ratio")
    ratios: dict[str, float] = {}
    for name, samples in results.items():
        total = median([s.total for s in samples])
        submit = median([s.submit for s in samples])
        ratios[name] = total / base
        print(
            f"{name:32s} {total * 1e3:12.1f} ms {us(total / n):>11s} {us(submit / n):>12s} "
            f"{ratios[name]:5.2f}x"
        )
    sqlite = median([s.total for s in results[SQLITE]])
    pg = median([s.total for s in results[PG]])
    print(f"submits/s to completion: PostgresStore {n / pg:,.0f}, SQLiteStore {n / sqlite:,.0f}")
    targets = Targets()
    targets.check(
        "submit-to-completion, PostgresStore vs raw psycopg on the same rows",
        f"{ratios[PG]:.2f}x", "<= 1.5x", ratios[PG] <= 1.5,
    )  # fmt: skip
    targets.exit(strict)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2_000, help="tasks per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dsn", help="a PostgreSQL server to use (default: a throwaway cluster)")
    args = p.parse_args()
    n, rounds = (300, 2) if args.quick else (args.n, args.rounds)
    header(f"bench_postgres: {n:,} no-op background tasks, submit to completion, {rounds} rounds")
    if args.dsn:
        os.environ["TASKBED_POSTGRES_DSN"] = args.dsn
    # A terminated run (timeout, Ctrl-C) still stops its throwaway cluster.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        server = pgcluster.server()
        dsn = server.__enter__()
    except LookupError as exc:
        print(f"skipped: {exc}")
        return
    try:
        results = asyncio.run(run(n, rounds, dsn))
    finally:
        server.__exit__(None, None, None)
    report(results, n, args.strict)


if __name__ == "__main__":
    main()
