"""The WebSocket channel under load: 1,000 sockets, each following its own task's progress.

    python benchmarks/bench_ws_load.py [--sockets 1000] [--steps 20] [--rounds 2] [--quick]

The server (this process) runs the reference runtime and ``taskbed.ws.WebSocketChannel`` on
loopback; the clients run in a second process (``--client``), so the server's memory is
measured alone. Each socket belongs to its own user (half of them in organization 1, half in
organization 2, user ids overlapping across the two: user 5 of org 1 and user 5 of org 2 are
different owners). Per round, the server submits one task per user; each task reports
``--steps`` progress updates, 2 ms apart, and completes. Each client checks what it received:
exactly its own task's messages (started, every progress value in order, completed), nothing
of anyone else's.

Baseline, in the same run: the same tasks with the same owners connected in process
(``Runtime.connect``), no socket. Reported: wall time per round against the baseline, messages
per second, and the server's resident memory (RSS) before the sockets, with them open, and
after each round. Targets: nothing lost, nothing misdelivered; memory bounded (the second
round grows RSS by < 8 MiB; < 100 KiB per open socket).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from _common import Targets, header, parser
from websockets.asyncio.client import connect

from taskbed import MemoryStore, Runtime
from taskbed.ws import WebSocketChannel

ORGS = (1, 2)
DEADLINE = 300.0  # no wait below lasts longer: a stuck run fails instead of hanging


def rss() -> int:
    """Resident set size of this process, in bytes (Linux /proc)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def owners(sockets: int) -> list[tuple[int, int]]:
    half = sockets // 2
    return [(n, ORGS[0]) for n in range(half)] + [(n, ORGS[1]) for n in range(sockets - half)]


async def job(sdk: Any, me: asyncio.Future[str], steps: int) -> str:
    task_id = await me
    for step in range(1, steps + 1):
        await asyncio.sleep(0.002)
        await sdk.tasks.update_progress(task_id, step / steps)
    return task_id


async def run_round(rt: Runtime, people: list[tuple[int, int]], steps: int) -> list[str]:
    """Submit one task per owner and wait for all of them; their ids, in owner order."""
    loop = asyncio.get_running_loop()
    ids = []
    for user, org in people:
        sdk = rt.sdk(session={"user": {"id": user, "organization_id": org}}, module="bench")
        me: asyncio.Future[str] = loop.create_future()
        task_id = await sdk.tasks.run_background(job(sdk, me, steps), f"u{user}o{org}")
        me.set_result(task_id)
        ids.append(task_id)
    async with asyncio.timeout(DEADLINE):
        for task_id in ids:
            await rt.wait(task_id)
    return ids


# ---------------------------------------------------------------- the client process


async def clients(urls: list[str], rounds: int, steps: int) -> None:
    per_round = steps + 2
    # one at a time: the listen backlog is not the thing measured here
    sockets = [
        await connect(url, ping_interval=None, compression=None, max_size=None) for url in urls
    ]
    print("ready", flush=True)
    report: list[dict[str, Any]] = []

    async def follow(index: int, socket: Any) -> None:
        got: list[Any] = []
        async with asyncio.timeout(DEADLINE):
            while len(got) < per_round * rounds:
                got.append(json.loads(await socket.recv()))
        report.append({"index": index, "messages": got})

    await asyncio.gather(*(follow(i, s) for i, s in enumerate(sockets)))
    for socket in sockets:
        await socket.close()
    report.sort(key=lambda r: r["index"])
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


def check(
    report: list[dict[str, Any]], ids_per_round: list[list[str]], steps: int
) -> tuple[int, int]:
    """(lost or out-of-order, misdelivered), over every socket and round."""
    lost = wrong = 0
    expected_progress = [step / steps for step in range(1, steps + 1)]
    for entry in report:
        index, messages = entry["index"], entry["messages"]
        mine = {ids[index] for ids in ids_per_round}
        wrong += sum(next(iter(m.values()))["taskId"] not in mine for m in messages)
        for ids in ids_per_round:
            of_task = [m for m in messages if next(iter(m.values()))["taskId"] == ids[index]]
            kinds = [next(iter(m)) for m in of_task]
            progress = [m["backgroundTaskProgress"]["progress"] for m in of_task[1:-1]]
            ok = (
                kinds == ["backgroundTaskStarted"] + ["backgroundTaskProgress"] * steps
                + ["backgroundTaskCompleted"]
                and progress == expected_progress
            )  # fmt: skip
            lost += not ok
    return lost, wrong


# ---------------------------------------------------------------- the server process


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sockets", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20, help="progress updates per task")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        urls = json.loads(sys.stdin.readline())
        await clients(urls, args.rounds, args.steps)
        return
    sockets, steps, rounds = (100, 10, 2) if args.quick else (args.sockets, args.steps, args.rounds)
    header(f"bench_ws_load: {sockets:,} sockets x {rounds} rounds of one task each, {steps} steps")
    people = owners(sockets)
    targets = Targets()

    async with Runtime(store=MemoryStore()) as rt:
        # Baseline: the same rounds with in-process connections.
        conns = [rt.connect(user, org) for user, org in people]
        base_times = []
        for _ in range(rounds):
            start = time.perf_counter()
            await run_round(rt, people, steps)
            base_times.append(time.perf_counter() - start)
        for conn in conns:
            conn.close()

    async with (
        Runtime(store=MemoryStore()) as rt,
        WebSocketChannel(rt, ping_interval=None) as channel,
    ):
        before = rss()
        urls = [channel.ws_url(channel.issue_token(user, org)) for user, org in people]
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--client", "--rounds", str(rounds), "--steps", str(steps),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=2**30,
        )  # fmt: skip
        assert child.stdin is not None
        assert child.stdout is not None
        child.stdin.write((json.dumps(urls) + "\n").encode())
        await child.stdin.drain()
        child.stdin.close()
        async with asyncio.timeout(DEADLINE):
            assert (await child.stdout.readline()).strip() == b"ready"
            while len(channel.connections) < sockets:
                await asyncio.sleep(0.01)
        connected = rss()
        times, after = [], []
        ids_per_round = []
        for _ in range(rounds):
            start = time.perf_counter()
            ids_per_round.append(await run_round(rt, people, steps))
            times.append(time.perf_counter() - start)
            after.append(rss())
        async with asyncio.timeout(DEADLINE):
            report = json.loads(await child.stdout.readline())
            await child.wait()
        dropped = sum(c.dropped for c in channel.connections)

    lost, wrong = check(report, ids_per_round, steps)
    messages = sockets * (steps + 2)
    columns = ("in process", "websocket", "ratio", "msgs/s", "RSS after")
    print(f"{'round':8s} " + " ".join(f"{c:>12s}" for c in columns))
    for n, (b, t, m) in enumerate(zip(base_times, times, after, strict=True), 1):
        print(f"{n:<8d} {b:11.2f}s {t:11.2f}s {t / b:11.2f}x {messages / t:12,.0f} {mib(m):>12s}")
    per_socket = (connected - before) / sockets
    print(
        f"RSS: {mib(before)} before the sockets, {mib(connected)} with {sockets:,} open "
        f"({per_socket / 1024:,.1f} KiB per socket); progress messages dropped: {dropped}"
    )
    targets.check("messages lost or out of order (task streams)", str(lost), "0", lost == 0)
    targets.check("messages misdelivered", str(wrong), "0", wrong == 0)
    growth = after[-1] - after[0]
    targets.check(
        "RSS growth from the first to the last round", mib(growth), "< 8 MiB", growth < 8 * 2**20
    )
    targets.check(
        "RSS per open socket", f"{per_socket / 1024:,.1f} KiB", "< 100 KiB", per_socket < 100 * 1024
    )
    targets.exit(args.strict)


if __name__ == "__main__":
    asyncio.run(main())
