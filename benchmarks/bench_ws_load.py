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

Meanwhile ``--bad`` more sockets (50) misbehave: malformed frames, unknown messages, commands
for tasks that are not theirs, and at the end a frame over the size limit; and ten good
sockets' tokens are tried a second time. Each malformed frame must get its refusal, the
strangers' commands nothing, the huge frame a close (1009), the replays HTTP 401; and the
good sockets' streams must be as exact as without them.

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
import uuid
from typing import Any

from _common import Targets, header, parser
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

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


async def misbehave(url: str, done: asyncio.Event) -> dict[str, int]:
    """One bad client, while the good ones stream: garbage, strangers' ids, then a huge frame."""
    answers = {"refusals": 0, "other": 0, "closed_1009": 0}
    async with connect(url, ping_interval=None, compression=None, max_size=None) as socket:
        frames = [
            "{not json", "[1, 2]", '{"backgroundTaskDelete": {"taskId": "x"}}',
            json.dumps({"backgroundTaskCancel": {"taskId": str(uuid.uuid4())}}),
            json.dumps({"backgroundTaskGet": {"taskId": str(uuid.uuid4())}}),
        ]  # fmt: skip
        while not done.is_set():
            for frame in frames:
                await socket.send(frame)
            for _ in range(3):  # the three malformed frames are answered; the rest are ignored
                message = json.loads(await socket.recv())
                answers["refusals" if message.get("type") == "error" else "other"] += 1
            await asyncio.sleep(0.05)
        await socket.send("x" * (2**20))  # over the server's limit: this socket is closed
        try:
            async with asyncio.timeout(DEADLINE):
                while True:
                    await socket.recv()
        except ConnectionClosed as closed:
            answers["closed_1009"] += closed.rcvd is not None and closed.rcvd.code == 1009
    return answers


async def clients(urls: list[str], bad: list[str], rounds: int, steps: int) -> None:
    per_round = steps + 2
    # one at a time: the listen backlog is not the thing measured here
    sockets = [
        await connect(url, ping_interval=None, compression=None, max_size=None) for url in urls
    ]
    replayed = 0  # each token opened its socket already: a second use is refused
    for url in urls[:10]:
        try:
            async with connect(url, ping_interval=None):
                pass
        except InvalidStatus as refused:
            replayed += refused.response.status_code == 401
    print("ready", flush=True)
    report: list[dict[str, Any]] = []
    done = asyncio.Event()
    bad_clients = [asyncio.create_task(misbehave(url, done)) for url in bad]

    async def follow(index: int, socket: Any) -> None:
        got: list[Any] = []
        async with asyncio.timeout(DEADLINE):
            while len(got) < per_round * rounds:
                got.append(json.loads(await socket.recv()))
        report.append({"index": index, "messages": got})

    await asyncio.gather(*(follow(i, s) for i, s in enumerate(sockets)))
    done.set()
    bad_answers = await asyncio.gather(*bad_clients)
    for socket in sockets:
        await socket.close()
    report.sort(key=lambda r: r["index"])
    totals = {k: sum(a[k] for a in bad_answers) for k in ("refusals", "other", "closed_1009")}
    summary = {"report": report, "bad": totals, "replayed_refused": replayed}
    sys.stdout.write(json.dumps(summary) + "\n")
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
    p.add_argument("--bad", type=int, default=50, help="misbehaving sockets meanwhile")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        given = json.loads(sys.stdin.readline())
        await clients(given["urls"], given["bad"], args.rounds, args.steps)
        return
    sockets, steps, rounds = (100, 10, 2) if args.quick else (args.sockets, args.steps, args.rounds)
    bad_count = 5 if args.quick else args.bad
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
        bad = [channel.ws_url(channel.issue_token(f"bad-{n}", ORGS[0])) for n in range(bad_count)]
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--client", "--rounds", str(rounds), "--steps", str(steps),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=2**30,
        )  # fmt: skip
        assert child.stdin is not None
        assert child.stdout is not None
        child.stdin.write((json.dumps({"urls": urls, "bad": bad}) + "\n").encode())
        await child.stdin.drain()
        child.stdin.close()
        async with asyncio.timeout(DEADLINE):
            assert (await child.stdout.readline()).strip() == b"ready"
            while len(channel.connections) < sockets + bad_count:
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
            summary = json.loads(await child.stdout.readline())
            report = summary["report"]
            await child.wait()
        dropped = sum(c.dropped for c in channel.connections)
        refused = channel.refusals

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
    bad_totals = summary["bad"]
    print(
        f"{bad_count} misbehaving sockets meanwhile: {bad_totals['refusals']:,} refusals, "
        f"{bad_totals['other']} other answers, {bad_totals['closed_1009']} closed by a huge "
        f"frame; replayed tokens refused: {summary['replayed_refused']} of 10; handshakes "
        f"refused by the server: {refused}"
    )
    targets.check(
        "bad frames each refused, huge frames closed, replays refused",
        f"{bad_totals['other']} other answers, {bad_totals['closed_1009']}/{bad_count} closed, "
        f"{summary['replayed_refused']}/10 replays refused",
        "0 other, all closed, 10/10",
        bad_totals["other"] == 0
        and bad_totals["closed_1009"] == bad_count
        and summary["replayed_refused"] == 10
        and bad_totals["refusals"] > 0,
    )
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
