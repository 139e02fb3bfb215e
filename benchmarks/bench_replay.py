"""A replayed subprocess call against running the real command.

    python benchmarks/bench_replay.py [--n 300] [--rounds 5] [--quick] [--strict]

Each variant makes N calls of ``true`` (about the cheapest command there is, so the ratios
are the least flattering ones; real commands cost more), measured at two levels:

* port: ``await runner.run(argv, cwd=None, env=env, ...)`` with the environment the facade
  would build, prepared once: the cost of the runner itself;
* facade: ``await sdk.tasks.run_subprocess(argv)`` through the real facade (argv validation,
  building the environment from ``os.environ`` plus the sandbox variables, decoding).

Runners:

* real: ``taskbed.OSProcessRunner``;
* replay, 1 recording: ``RecordedProcessRunner`` over a cassette recorded in this run, its one
  interaction marked ``"repeat": true``;
* replay, 50 recordings: the same interaction behind 49 others that differ in argv (matching
  walks past them), to show how the cost grows with the cassette;
* floor: a runner that returns a constant result at once. At the facade level it is what the
  facade itself costs, which no runner can go below; "minus floor" is what replay adds.

Replay gets an instant ``sleep``, as on the harness's virtual-time loop (on a real loop,
``asyncio.sleep`` would really wait the recorded duration). The rounds interleave the variants;
medians are reported.

Target: a replayed call costs less than 1/50 of running the real command (checked at the port;
the facade-level ratio is printed next to the facade's own floor).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import Targets, collected, header, median, parser, us

from taskbed import OSProcessRunner, ProcessResult, ProcessRunner, Runtime
from taskbed_harness._processes import RecordedProcessRunner

SESSION = {"user": {"id": 7, "organization_id": 10}, "session_key": "s1"}
REAL = "real (OSProcessRunner)"
ONE = "replay, 1 recording"
FIFTY = "replay, 50 recordings"
FLOOR = "floor (constant runner)"


async def instant(seconds: float) -> None:
    return None


class Constant:
    """The floor: a ProcessRunner that does nothing at all."""

    result = ProcessResult(0, b"", b"")

    async def run(
        self,
        argv: list[str],
        *,
        cwd: str | None,
        env: dict[str, str],
        timeout: float | None,
        capture_output: bool,
    ) -> ProcessResult:
        return self.result


async def timed(call: Callable[[], Awaitable[Any]], n: int) -> float:
    await call()  # warm up the code path (and the worker thread, for the real runner)
    with collected():
        start = time.perf_counter()
        for _ in range(n):
            await call()
        return (time.perf_counter() - start) / n


async def measure(runner: ProcessRunner, argv: list[str], n: int) -> tuple[float, float]:
    """Seconds per call at the port and through the facade."""
    async with (
        Runtime(process_runner=runner) as rt,
        rt.request(session=SESSION, module="bench", request_id="r1") as sdk,
    ):
        env = {**os.environ, **sdk.tasks.sandbox_variables()}  # what the facade passes on
        port = await timed(
            lambda: runner.run(argv, cwd=None, env=env, timeout=None, capture_output=True), n
        )
        facade = await timed(lambda: sdk.tasks.run_subprocess(argv), n)
    return port, facade


async def record(directory: Path, argv: list[str]) -> tuple[Path, Path]:
    """Record *argv* once; write the 1-recording and the 50-recording cassettes."""
    recorded = directory / "recorded.json"
    recorder = RecordedProcessRunner(recorded, mode="once")
    async with (
        Runtime(process_runner=recorder) as rt,
        rt.request(session=SESSION, module="bench", request_id="r1") as sdk,
    ):
        await sdk.tasks.run_subprocess(argv)
    recorder.close()
    data = json.loads(recorded.read_text())
    [entry] = data["interactions"]
    entry["repeat"] = True
    single = directory / "single.json"
    single.write_text(json.dumps(data))
    others = [dict(entry, argv=[*argv, f"--other-{i}"], repeat=False) for i in range(49)]
    crowded = directory / "crowded.json"
    crowded.write_text(json.dumps({"version": 1, "interactions": [*others, entry]}))
    return single, crowded


def fraction(ratio: float) -> str:
    return f"1/{1 / ratio:.0f}" if ratio < 1 else f"{ratio:.1f}x"


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300, help="calls per round, variant and level")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    n, rounds = (100, 3) if args.quick else (args.n, args.rounds)
    true = shutil.which("true")
    assert true is not None, "the benchmark runs `true`"
    argv = [true]
    header(f"bench_replay: {n:,} calls of {argv} per variant and level, {rounds} rounds")

    with tempfile.TemporaryDirectory(prefix="taskbed-bench-") as tmp:
        single, crowded = await record(Path(tmp), argv)
        real = OSProcessRunner()
        makers: dict[str, Callable[[], ProcessRunner]] = {
            REAL: lambda: real,
            ONE: lambda: RecordedProcessRunner(single, sleep=instant),
            FIFTY: lambda: RecordedProcessRunner(crowded, sleep=instant),
            FLOOR: Constant,
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in makers}
        for _ in range(rounds):
            for name, make in makers.items():
                results[name].append(await measure(make(), argv, n))
        real.close()

    port = {name: median([p for p, _ in values]) for name, values in results.items()}
    facade = {name: median([f for _, f in values]) for name, values in results.items()}
    print(
        f"{'variant':26s} {'port':>12s} {'vs real':>8s} {'facade':>12s} {'vs real':>8s} "
        f"{'facade minus floor':>19s}"
    )
    for name in makers:
        added = us(facade[name] - facade[FLOOR]) if name in (ONE, FIFTY) else ""
        print(
            f"{name:26s} {us(port[name]):>12s} {fraction(port[name] / port[REAL]):>8s} "
            f"{us(facade[name]):>12s} {fraction(facade[name] / facade[REAL]):>8s} {added:>19s}"
        )
    targets = Targets()
    for name in (ONE, FIFTY):
        ratio = port[name] / port[REAL]
        targets.check(
            f"{name} vs running `true`, at the port", fraction(ratio), "< 1/50", ratio < 1 / 50
        )
    targets.exit(args.strict)


if __name__ == "__main__":
    asyncio.run(main())
