"""Two live platform runtimes, two processes, one SQLite file: what DEDUP-7 and REC-4 ask.

The adapter protocol's peer runs the suite's coroutines in the suite's process, and the
platform keeps one runtime per process (``app_ctx()``), so the conformance run skips the two
peer rules. This script asks their questions of two real processes instead, each running the
platform as the adapter does (``taskbed_democrai.Democrai``) over the same database file:

1. runtimes A and B start; A submits a task with key ``import`` that runs until told to stop,
   then B submits the same key: does B get A's task id (DEDUP-7, dedup across runtimes)?
2. runtime C starts beside them: is A's task still ``running`` in the store once C has
   started (REC-4, a live peer's task is left alone)?

``python two_runtimes.py`` (Python 3.12, the platform installed) prints one JSON object;
``judge.py`` runs it and keeps the answer in the published verdict.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import tempfile
import types
from pathlib import Path

from taskbed_democrai import Democrai


async def runtime(directory: str) -> None:
    """A child: the platform over *directory*'s database, submitting when told (stdin lines)."""
    impl = Democrai()
    await impl.setup("two-runtimes")
    impl.dir.cleanup()
    impl.dir = types.SimpleNamespace(name=directory, cleanup=lambda: None)  # the shared file
    impl.register_module("mod", [])  # its manifest beside the shared file, as setup() made it
    await impl.start()
    print(json.dumps({"started": True}), flush=True)
    session = {"user": {"id": 7, "organization_id": 10}, "session_key": "s1"}
    read = asyncio.get_running_loop().run_in_executor
    while (await read(None, sys.stdin.readline)).strip() == "submit":
        async with impl.request(session=session, module="mod", request_id="r-1") as sdk:
            job = asyncio.Event().wait()  # runs until the runtime ends
            task_id = await sdk.tasks.run_background(job, "Import", task_key="import")
        print(json.dumps({"task_id": task_id}), flush=True)
    await impl.stop()
    await impl.teardown("two-runtimes")


def status(database: Path, task_id: str) -> str | None:
    with sqlite3.connect(database) as db:
        row = db.execute("SELECT status FROM background_tasks WHERE id = ?", (task_id,)).fetchone()
    return None if row is None else str(row[0])


def main() -> int:
    if sys.argv[1:2] == ["child"]:
        asyncio.run(runtime(sys.argv[2]))
        return 0
    with tempfile.TemporaryDirectory(prefix="taskbed-two-runtimes-") as directory:
        child = [sys.executable, __file__, "child", directory]
        opts = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
        started = []

        def start() -> subprocess.Popen[str]:
            process: subprocess.Popen[str] = subprocess.Popen(child, **opts)  # type: ignore[call-overload]
            started.append(process)
            assert json.loads(process.stdout.readline()) == {"started": True}  # type: ignore[union-attr]
            return process

        def submit(process: subprocess.Popen[str]) -> str:
            process.stdin.write("submit\n")  # type: ignore[union-attr]
            process.stdin.flush()  # type: ignore[union-attr]
            return str(json.loads(process.stdout.readline())["task_id"])  # type: ignore[union-attr]

        try:
            a, b = start(), start()
            first, second = submit(a), submit(b)
            start()  # runtime C, beside the live A and B
            after = status(Path(directory) / "democrai.db", first)
        finally:
            for process in started:
                process.communicate("")
    answer = {
        "DEDUP-7": "pass" if second == first else "fail",
        "REC-4": "pass" if after == "running" else "fail",
        "evidence": {
            "runtime B, same key while A's task runs: A's id": second == first,
            "runtime A's live task, once C started": after,
        },
    }
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
