"""Mutation testing of the reference runtime, with the conformance suite as its test.

Run on demand, never in CI (docs/guides/mutation.md has the last run's numbers and the triage
of every surviving mutant)::

    python -m pip install -e '.[mutation]'
    nice -n 19 python tools/mutation.py run            # mutmut over the modules below
    nice -n 19 python tools/mutation.py table          # the lifecycle table's own mutants
    python tools/mutation.py report                    # the per-module numbers, as markdown
    python tools/mutation.py survivors > survivors.diff

Why a stage: mutmut 3 copies the sources into ``mutants/`` and puts ``mutants/src`` first on
``sys.path``, and names each trampoline after the file's path. Here the package ``taskbed``
lives in ``reference/taskbed`` and is installed editable, so run in place mutmut would name
the mutants ``reference.taskbed...`` while the suite imports the installed, unmutated
``taskbed``: every mutant would "survive". The stage (``.mutation/``, git-ignored) has the
layout mutmut expects: ``src/taskbed`` (a copy of ``reference/taskbed``), ``tests/`` (the
conformance suite as pytest tests: ``tools/mutation_suite.py``) and a ``pyproject.toml`` with
mutmut's settings. ``taskbed_harness`` and ``specs/`` still come from this repository.

mutmut mutates code inside functions only; the lifecycle's transition table is module-level
data, so ``table`` makes its mutants itself (each entry removed, each entry sent to another
status) and judges each with the whole suite in a fresh process.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import difflib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tokenize
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / ".mutation"

#: The modules mutated: where the rules' behaviour lives (docs/guides/mutation.md#scope says
#: what is left out and why).
MODULES = ("_lifecycle.py", "_tasks.py", "_manager.py", "_model.py", "_memory_store.py")

PYPROJECT = """\
# Written by tools/mutation.py; the stage is rebuilt on every run.
[tool.mutmut]
source_paths = ["src/taskbed"]
only_mutate = {only}
pytest_add_cli_args_test_selection = ["tests/"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:randomly"]
use_git_change_detection = false
track_dependencies = false
# A rule's checks wait on real subprocesses and threads; a mutant that hangs one is stopped
# after 10x the clean duration of the rules it runs, plus 10 s.
timeout_multiplier = 10.0
timeout_constant = 10.0

[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = ["--strict-markers", "-q"]
asyncio_mode = "strict"
asyncio_default_fixture_loop_scope = "function"
filterwarnings = [
    "error",
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning",
]
"""


def stage(modules: tuple[str, ...]) -> None:
    """Build the stage afresh: the package, the suite, mutmut's settings."""
    if STAGE.exists():
        shutil.rmtree(STAGE)
    shutil.copytree(
        ROOT / "reference" / "taskbed",
        STAGE / "src" / "taskbed",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (STAGE / "tests").mkdir()
    shutil.copy2(ROOT / "tools" / "mutation_suite.py", STAGE / "tests" / "test_conformance.py")
    only = json.dumps([f"src/taskbed/{name}" for name in modules])
    (STAGE / "pyproject.toml").write_text(PYPROJECT.format(only=only), encoding="utf-8")


def mutmut(*args: str) -> int:
    exe = Path(sys.executable).with_name("mutmut")
    return subprocess.call([str(exe), *args], cwd=STAGE)


# ---------------------------------------------------------------- reading mutmut's results

#: mutmut's exit codes (mutmut/stats.py), folded into the four numbers the guide reports.
_STATUS = {1: "killed", 3: "killed", 0: "survived", 36: "timeout", 24: "timeout", -24: "timeout"}
_STATUS.update({152: "timeout", 255: "timeout", 5: "no tests", 33: "no tests", None: "not run"})


def results() -> dict[str, Counter[str]]:
    """Per module: how many mutants ended killed / survived / timeout / ... ."""
    counts: dict[str, Counter[str]] = {}
    for meta in sorted((STAGE / "mutants" / "src" / "taskbed").glob("*.py.meta")):
        data = json.loads(meta.read_text(encoding="utf-8"))
        module = meta.name.removesuffix(".meta")
        counts[module] = Counter(
            _STATUS.get(code, f"other ({code})") for code in data["exit_code_by_key"].values()
        )
    return counts


def survivors() -> list[tuple[str, str, int]]:
    """(mutant name, module, exit code) of every mutant that survived."""
    found = []
    for meta in sorted((STAGE / "mutants" / "src" / "taskbed").glob("*.py.meta")):
        data = json.loads(meta.read_text(encoding="utf-8"))
        module = meta.name.removesuffix(".meta")
        found += [(name, module, 0) for name, code in data["exit_code_by_key"].items() if code == 0]
    return found


def _functions(path: Path) -> dict[str, str]:
    """Every function of mutmut's mutated *path* by name (originals end ``__mutmut_orig``)."""
    text = path.read_text(encoding="utf-8")
    return {
        node.name: ast.get_source_segment(text, node) or ""
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def survivor_changes() -> list[tuple[str, str, list[str], list[str]]]:
    """(mutant name, module, removed lines, added lines) of every survivor."""
    out = []
    by_module: dict[str, dict[str, str]] = {}
    for name, module, _ in survivors():
        if module not in by_module:
            by_module[module] = _functions(STAGE / "mutants" / "src" / "taskbed" / module)
        functions = by_module[module]
        local = name.rpartition(".")[2]
        orig = functions.get(local.partition("__mutmut_")[0] + "__mutmut_orig", "")
        changed = [
            line
            for line in difflib.unified_diff(
                orig.splitlines(), functions.get(local, "").splitlines(), lineterm="", n=0
            )
            if line[:1] in "+-" and line[:3] not in ("+++", "---") and "def x" not in line
        ]
        minus = [line[1:] for line in changed if line.startswith("-")]
        plus = [line[1:] for line in changed if line.startswith("+")]
        out.append((name, module, minus, plus))
    return out


def survivor_diffs() -> str:
    """The changed lines of every survivor (faster than ``mutmut show`` for each)."""
    out: list[str] = []
    for name, _, minus, plus in survivor_changes():
        out.append(f"# {name}  [{kind(minus, plus)}]")
        out += [f"-{line}" for line in minus] + [f"+{line}" for line in plus]
    return "\n".join(out) + "\n"


def _tokens(lines: list[str]) -> list[tuple[int, str]] | None:
    source = "\n".join(line.strip() for line in lines)
    skip = {tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT}
    try:
        return [
            (t.type, t.string)
            for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type not in skip and t.type != tokenize.ENDMARKER
        ]
    except (tokenize.TokenError, SyntaxError):
        return None


#: A line of an error message: a string literal (f-string too) or the ``see(...)`` docs link.
_MESSAGE_LINE = re.compile(r"""^(\+ )?(see\(|[rf]?["'])""")


def kind(minus: list[str], plus: list[str]) -> str:
    """A first sort of a survivor, for the summary; the guide's triage reads each one.

    ``wording``: only the text inside string literals changed (mostly error messages);
    ``message``: a line that builds a message (a string literal or its ``see(...)`` link);
    ``log``: a logging or warning call's line; ``argument``: an argument replaced by None;
    ``logic``: anything else.
    """
    a, b = _tokens(minus), _tokens(plus)
    if (
        a is not None
        and b is not None
        and len(a) == len(b)
        and all(
            x[0] == y[0] and (x[1] == y[1] or x[0] == tokenize.STRING)
            for x, y in zip(a, b, strict=True)
        )
    ):
        return "wording"
    if minus and all(_MESSAGE_LINE.match(line.strip()) for line in minus):
        return "message"
    if re.search(r"\blog\.|logger\.|warnings\.warn", " ".join(minus)):
        return "log"
    if plus and all(line.strip().rstrip(",") == "None" for line in plus):
        return "argument"
    return "logic"


def summary() -> str:
    """Survivors per module and kind, then the ``logic`` ones per function."""
    changes = survivor_changes()
    kinds = ("wording", "message", "argument", "log", "logic")
    per: dict[str, Counter[str]] = {}
    functions: Counter[str] = Counter()
    for name, module, minus, plus in changes:
        k = kind(minus, plus)
        per.setdefault(module, Counter())[k] += 1
        if k == "logic":
            mangled = name.partition("__mutmut_")[0].rpartition(".")[2]  # x_f, xǁClassǁf
            readable = ".".join(mangled[2:].split("\u01c1")) if mangled[1] != "_" else mangled[2:]
            functions[f"{module}: {readable}"] += 1
    lines = ["| module | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    lines += [f"| `{m}` | " + " | ".join(str(c[k]) for k in kinds) + " |" for m, c in per.items()]
    lines += ["", "| function | logic survivors |", "|---|---:|"]
    lines += [f"| `{f}` | {n} |" for f, n in functions.most_common()]
    return "\n".join(lines)


def report(counts: dict[str, Counter[str]], table: dict[str, int] | None) -> str:
    lines = [
        f"Run of {time.strftime('%Y-%m-%d')} on {platform.node() or 'this machine'} "
        f"({os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}).",
        "",
        "| module | mutants | killed | survived | timed out | other |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    total: Counter[str] = Counter()
    for module, c in counts.items():
        total.update(c)
        other = sum(c.values()) - c["killed"] - c["survived"] - c["timeout"]
        lines.append(
            f"| `{module}` | {sum(c.values())} | {c['killed']} | {c['survived']} "
            f"| {c['timeout']} | {other} |"
        )
    if table is not None:
        total.update(table)
        lines.append(
            f"| `_lifecycle.py` table (`table`) | {sum(table.values())} | {table['killed']} "
            f"| {table['survived']} | 0 | 0 |"
        )
    other = sum(total.values()) - total["killed"] - total["survived"] - total["timeout"]
    lines.append(
        f"| **all** | {sum(total.values())} | {total['killed']} | {total['survived']} "
        f"| {total['timeout']} | {other} |"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------- the transition table


def table_mutants() -> list[tuple[str, str, str | None]]:
    """(status, event, new target or None for "entry removed") for every table mutant."""
    sys.path.insert(0, str(ROOT / "reference"))
    from taskbed._lifecycle import TRANSITIONS, TaskStatus

    found: list[tuple[str, str, str | None]] = []
    for state, row in TRANSITIONS.items():
        for event, target in row.items():
            found.append((state.value, event.value, None))
            found += [(state.value, event.value, s.value) for s in TaskStatus if s != target]
    return found


def _mutated_lifecycle(state: str, event: str, target: str | None) -> str:
    """The source of ``_lifecycle.py`` with one entry of TRANSITIONS removed or retargeted.

    A source mutant, not a change of the dict at run time: the stores derive SQL from the
    table when they are imported (``_INTERRUPTIBLE_SQL = ... sources(TaskEvent.INTERRUPT)``).
    """
    path = ROOT / "reference" / "taskbed" / "_lifecycle.py"
    text = path.read_text(encoding="utf-8")
    rows = {"P": "pending", "R": "running", "W": "waiting_confirmation"}
    lines = text.splitlines(keepends=True)
    for node in ast.walk(ast.parse(text)):
        named = getattr(getattr(node, "target", None), "id", "")
        if not (isinstance(node, ast.AnnAssign) and named == "TRANSITIONS"):
            continue
        assert isinstance(node.value, ast.Dict)
        for row_key, row in zip(node.value.keys, node.value.values, strict=True):
            if not (isinstance(row_key, ast.Name) and rows[row_key.id] == state):
                continue
            assert isinstance(row, ast.Dict)
            for key in row.keys:
                if isinstance(key, ast.Attribute) and key.attr.lower() == event:
                    line = key.lineno - 1
                    indent = lines[line][: len(lines[line]) - len(lines[line].lstrip())]
                    lines[line] = (
                        ""
                        if target is None
                        else f"{indent}TaskEvent.{key.attr}: TaskStatus.{target.upper()},\n"
                    )
                    return "".join(lines)
    raise LookupError(f"no table entry {state} --{event}-->")


def judge_table_mutant() -> list[str]:
    """In this process (its ``taskbed`` the mutated copy): run the suite; the failing rules."""
    sys.path.insert(0, str(ROOT / "tools"))
    from mutation_suite import ADAPTERS

    import taskbed
    from taskbed_harness._conform import Outcome, run_suite
    from taskbed_harness._spec import load_rules

    here = Path(taskbed.__file__).resolve()
    assert ROOT / "reference" not in here.parents, f"the unmutated taskbed was imported: {here}"
    failing: list[str] = []
    rules = load_rules()
    for name, factory in ADAPTERS.items():
        caps = factory().capabilities
        judged = [r for r in rules if not r.requires - caps]
        failed = [r.rule for r in run_suite(judged, factory) if r.outcome is not Outcome.PASS]
        # As in mutation_suite.py: a kill is a failure that happens twice (LEASE-9 and load).
        failing += [
            f"{name}:{result.rule.id}"
            for result in run_suite(failed, factory)
            if result.outcome is not Outcome.PASS
        ]
    return failing


def _judge_in_subprocess(mutant: tuple[str, str, str | None]) -> list[str] | None:
    """The failing rules of one table mutant, judged in a fresh process (None: it crashed)."""
    state, event, target = mutant
    with tempfile.TemporaryDirectory(prefix="taskbed-table-") as tmp:
        package = Path(tmp) / "taskbed"
        shutil.copytree(
            ROOT / "reference" / "taskbed", package, ignore=shutil.ignore_patterns("__pycache__")
        )
        (package / "_lifecycle.py").write_text(
            _mutated_lifecycle(state, event, target), encoding="utf-8"
        )
        # PYTHONPATH comes before the editable install's .pth entry: this copy is imported.
        env = {**os.environ, "PYTHONPATH": tmp, "PYTHONDONTWRITEBYTECODE": "1"}
        out = subprocess.run(
            [sys.executable, __file__, "_table-one"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env=env,
        )
    if out.returncode != 0:
        return None
    failing: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return failing


def run_table(sample: str, jobs: int) -> dict[str, int]:
    """Judge the table's mutants, *jobs* at a time; write table.txt and table.json."""
    mutants = table_mutants()
    if sample == "removals":
        mutants = [m for m in mutants if m[2] is None]
    counts: Counter[str] = Counter()
    lines = []
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for (state, event, target), failing in zip(
            mutants, pool.map(_judge_in_subprocess, mutants), strict=True
        ):
            label = f"{state} --{event}--> " + (target or "(entry removed)")
            verdict = "survived" if failing == [] else "killed"
            counts[verdict] += 1
            shown = "crashed" if failing is None else ", ".join(sorted(set(failing)))
            lines.append(f"{verdict:8} {label:58} {shown}")
            print(lines[-1], flush=True)
    (STAGE / "table.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (STAGE / "table.json").write_text(json.dumps(counts), encoding="utf-8")
    return dict(counts)


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="build the stage and run mutmut over MODULES")
    run.add_argument("--modules", nargs="+", default=list(MODULES), metavar="FILE")
    run.add_argument("--max-children", type=int, default=4)
    run.add_argument("--keep", action="store_true", help="resume: keep the stage and results")
    run.add_argument("names", nargs="*", help="only these mutants (mutmut's globs)")
    table = sub.add_parser("table", help="mutants of the lifecycle table, one suite run each")
    table.add_argument("--sample", choices=("all", "removals"), default="all")
    table.add_argument("--jobs", type=int, default=2)
    sub.add_parser("report", help="the per-module numbers as a markdown table")
    sub.add_parser("survivors", help="the changed lines of every surviving mutant")
    sub.add_parser("summary", help="survivors per module and kind; logic ones per function")
    sub.add_parser("_table-one")
    args = parser.parse_args(argv)

    if args.command == "run":
        if not args.keep or not STAGE.exists():
            stage(tuple(args.modules))
        return mutmut("run", "--max-children", str(args.max_children), *args.names)
    if args.command == "table":
        STAGE.mkdir(exist_ok=True)
        print(run_table(args.sample, args.jobs))
        return 0
    if args.command == "report":
        path = STAGE / "table.json"
        table_counts = json.loads(path.read_text()) if path.exists() else None
        print(report(results(), table_counts))
        return 0
    if args.command == "survivors":
        sys.stdout.write(survivor_diffs())
        return 0
    if args.command == "summary":
        print(summary())
        return 0
    print(json.dumps(judge_table_mutant()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
