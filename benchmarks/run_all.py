"""Run every benchmark, one after the other, and summarise the targets.

    python benchmarks/run_all.py [--quick] [--strict] [--only submit,history]

Every ``bench_*.py`` here runs in its own interpreter (``python benchmarks/bench_<name>.py``),
its output streamed as it comes; at the end the TARGET lines of all of them are repeated. Exit
status: 1 if a benchmark crashed, or with ``--strict`` if a target was missed; else 0 (a
missed target is a finding to report, not a failure of the run). The full run takes a few
minutes, most of it filling the 1,000,000-row history; ``--quick`` takes well under one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _common import TARGET_TAG

HERE = Path(__file__).resolve().parent
#: The runtime's benchmarks first, in this order; any other bench_*.py (the harness's) after.
FIRST = ("submit", "history", "blocking", "subprocess")
BENCHMARKS = FIRST + tuple(
    sorted(
        name
        for name in (path.stem.removeprefix("bench_") for path in HERE.glob("bench_*.py"))
        if name not in FIRST
    )
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--only", default="", help="comma-separated names, e.g. submit,blocking")
    args = p.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")

    summary: list[str] = []
    crashed: list[str] = []
    for name in names:
        command = [sys.executable, str(HERE / f"bench_{name}.py")]
        command += ["--quick"] if args.quick else []
        start = time.perf_counter()
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                print(line, end="", flush=True)
                if line.startswith(TARGET_TAG):
                    summary.append(f"[{name}] {line.rstrip()}")
        if proc.returncode != 0:
            crashed.append(name)
        print(f"-- bench_{name} took {time.perf_counter() - start:.0f} s\n", flush=True)

    print("== summary")
    for line in summary:
        print(line)
    for name in crashed:
        print(f"[{name}] CRASHED (exit status non-zero)")
    missed = any(f"{TARGET_TAG} MISSED" in line for line in summary)
    return 1 if crashed or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
