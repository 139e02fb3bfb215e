"""Judge the released platform: a Python 3.12 venv with democrai 0.0.1b4, then ``taskbed conform``.

Usage (from anywhere; any Python 3 runs this script, the judging runs on 3.12)::

    python adapters/democrai/judge.py            # run, and compare with the published verdict
    python adapters/democrai/judge.py --update   # run, and rewrite the published verdict

Steps: find a Python 3.12 (``$TASKBED_PYTHON312``, ``python3.12`` on PATH, or pyenv's 3.12; no
3.12 is an error, never a skip), make a venv (``--venv``, default ``.venv-democrai`` at the
repository root), install ``democrai==0.0.1b4``, taskbed with its harness extra from this clone
and this adapter, run ``taskbed conform --impl taskbed_democrai:make --format json``, and check
the run against ``adapters/democrai/verdict.json``.

The platform fails MUST rules, so the conform run exits 1; that is its verdict, not an error.
This script fails (exit 1) when the verdict changed (a rule's outcome differs from the
published one: update the verdict and docs/platform.md together) and (exit 2) when the judging
itself broke: no 3.12, an install error, a crash, a rule that cannot be loaded.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VERDICT = HERE / "verdict.json"
PLATFORM = "democrai==0.0.1b4"
# What changes from run to run in a reason: task ids and timestamps.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_STAMP = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(\+00:00| UTC)?")
# Where the run found a file: the venv's and the clone's paths differ from machine to machine.
_PATH = re.compile(r"(?<![\w.])/\S*/(site-packages|harness|reference|python3\.\d+)/")


def scrub(text: str) -> str:
    """*text* without what changes from run to run: ids, times, absolute paths."""
    return _PATH.sub("", _STAMP.sub("<time>", _UUID.sub("<id>", text)))


def broken(message: str) -> None:
    """The judging itself broke: say why, exit 2 (a changed verdict exits 1)."""
    print(f"judge: {message}", file=sys.stderr)
    sys.exit(2)


def find_python312() -> str:
    """A Python 3.12 interpreter, or exit 2 saying where it was looked for."""
    candidates = [os.environ.get("TASKBED_PYTHON312", ""), shutil.which("python3.12") or ""]
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(os.path.join(pyenv_root, "versions", "3.12*", "bin", "python")))
    for candidate in filter(None, candidates):
        probe = [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"]
        try:
            result = subprocess.run(probe, capture_output=True, text=True, check=False)
        except OSError:  # not there, not executable: try the next one
            continue
        if result.stdout.strip() == "True":
            return candidate
    broken(
        "no Python 3.12 found (democrai 0.0.1b4 needs >=3.12,<3.14). Looked at "
        f"$TASKBED_PYTHON312, python3.12 on PATH and {pyenv_root}/versions/3.12*; install one "
        "(pyenv install 3.12) or set TASKBED_PYTHON312=/path/to/python3.12"
    )
    raise AssertionError  # unreachable: broken() exits


def install(python: str, venv: Path) -> Path:
    """The venv's python, with the platform, taskbed[harness] and the adapter installed."""
    fresh = not (venv / "bin" / "python").exists()
    if fresh and subprocess.run([python, "-m", "venv", str(venv)], check=False).returncode:
        broken(f"could not create a venv at {venv} with {python}")
    vpython = venv / "bin" / "python"
    pip = [str(vpython), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if subprocess.run([*pip, PLATFORM, f"{ROOT}[harness]", str(HERE)], check=False).returncode:
        broken(f"installing {PLATFORM}, taskbed[harness] and the adapter into {venv} failed")
    return vpython


def normalize(report: dict) -> dict:
    """The published form of a run: per rule its level, outcome and reason, ids scrubbed."""
    return {
        "implementation": report["implementation"],
        "platform": PLATFORM,
        "totals": report["totals"],
        "results": [
            {
                "rule": r["rule"],
                "level": r["level"],
                "outcome": r["outcome"],
                "reason": scrub(r["reason"]),
                "root": scrub(r.get("root", "")),
            }
            for r in report["results"]
        ],
    }


def judge(vpython: Path) -> dict:
    """Run the suite against the platform; the normalized report."""
    with tempfile.TemporaryDirectory(prefix="taskbed-judge-") as tmp:
        out = Path(tmp) / "report.json"
        command = [
            str(vpython.parent / "taskbed"),
            "conform",
            "--impl",
            "taskbed_democrai:make",
            "--format",
            "json",
        ]
        done = subprocess.run([*command, "-o", str(out)], cwd=tmp, check=False)
        if done.returncode not in (0, 1) or not out.exists():  # 1: MUST rules fail, the verdict
            broken(f"the conformance run broke (exit status {done.returncode})")
        run = normalize(json.loads(out.read_text(encoding="utf-8")))
    peers = subprocess.run(  # the peer rules, asked of two real processes (see the script)
        [str(vpython), str(HERE / "two_runtimes.py")], capture_output=True, text=True, check=False
    )
    if peers.returncode:
        broken(f"two_runtimes.py broke (exit status {peers.returncode}):\n{peers.stderr}")
    run["two_runtimes"] = json.loads(peers.stdout.splitlines()[-1])
    return run


def changes(published: dict, run: dict) -> list[str]:
    """Every rule whose outcome differs between the published verdict and this run."""
    before = {r["rule"]: r["outcome"] for r in published["results"]}
    now = {r["rule"]: r for r in run["results"]}
    lines = [
        f"  {rule} with two processes: published {old}, now {run['two_runtimes'].get(rule)}"
        for rule, old in published.get("two_runtimes", {}).items()
        if rule != "evidence" and run["two_runtimes"].get(rule) != old
    ]
    for rule in sorted(before.keys() | now.keys()):
        old, new = before.get(rule, "absent"), now[rule]["outcome"] if rule in now else "absent"
        if old != new:
            reason = now[rule]["reason"] if rule in now else ""
            lines.append(f"  {rule}: published {old}, now {new}  {reason}".rstrip())
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="rewrite verdict.json")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-democrai")
    args = parser.parse_args()
    run = judge(install(find_python312(), args.venv))
    totals = run["totals"]
    print(f"judge: {run['implementation']}: {json.dumps(totals)}")
    if args.update or not VERDICT.exists():
        VERDICT.write_text(json.dumps(run, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"judge: wrote {VERDICT.relative_to(ROOT)}; update docs/platform.md to match")
        return 0
    diff = changes(json.loads(VERDICT.read_text(encoding="utf-8")), run)
    if diff:
        print("judge: the platform's verdict changed:\n" + "\n".join(diff), file=sys.stderr)
        print("judge: if expected, run with --update and update docs/platform.md", file=sys.stderr)
        return 1
    print("judge: the verdict matches the published one (adapters/democrai/verdict.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
