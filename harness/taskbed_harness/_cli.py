"""The ``taskbed`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence


async def _demo(db: str | None) -> int:
    from taskbed import MemoryStore, Runtime, SQLiteStore, TaskStore, ui

    store: TaskStore = SQLiteStore(db) if db else MemoryStore()
    session = {"user": {"id": 7, "organization_id": 10}, "session_key": "demo-session"}
    async with Runtime(store=store) as rt:
        conn = rt.connect(user_id=7, organization_id=10)
        async with rt.request(session=session, module="demo", request_id="req-1") as sdk:

            async def job() -> dict[str, object]:
                me = ids[0]
                for step in range(1, 5):
                    await asyncio.sleep(0.01)
                    await sdk.tasks.update_progress(me, step / 4, checkpoint={"step": step})
                answer = await sdk.tasks.request_confirmation(
                    me, ui.Builder().add(ui.Text("Publish?")).add(ui.Button("Yes"))
                )
                done = await sdk.tasks.run_subprocess(["echo", "$HOME; not a shell"])
                return {"answer": answer, "echo": done.stdout.strip()}

            ids: list[str] = []
            ids.append(await sdk.tasks.run_background(job(), "Demo job", task_key="demo.job"))
            again = await sdk.tasks.run_background(job(), "Demo job", task_key="demo.job")
            print(f"submitted {ids[0]}; same key again -> same id: {again == ids[0]}")
        while True:  # answer the confirmation as the owner, like a browser would
            message = await conn.receive()
            kind, body = next(iter(message.items()))
            print(f"client <- {kind} {json.dumps(body)[:110]}")
            if kind == "backgroundTaskConfirmation":
                await conn.send({"backgroundTaskResponse": {"taskId": ids[0], "response": "yes"}})
            if kind in ("backgroundTaskCompleted", "backgroundTaskError"):
                break
        row = await rt.wait(ids[0])
        print(
            f"final row: status={row['status']} progress={row['progress']} result={row['result']}"
        )
    return 0 if row["status"] == "completed" else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="taskbed",
        description="Reference runtime, harness and conformance suite for module_sdk.tasks.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a short job on the reference runtime")
    demo.add_argument("--db", help="a SQLite file to persist tasks in (default: in memory)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return asyncio.run(_demo(args.db))
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse exits
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
