"""MkDocs hooks of the taskbed site (``hooks:`` in mkdocs.yml).

* The spec pages live in the repository's top-level ``specs/`` (the conformance suite reads them
  there, and the wheel ships them). ``on_files`` serves them at ``specs/<page>.md`` in the site
  without copying them or relying on a symlink, so links like ``specs/dedup.md#DEDUP-1`` resolve
  and strict link/anchor validation covers them.
* ``docs/compliance.md`` is not written by hand: where its marker comment stands, the hook runs
  the conformance suite (the same code as ``taskbed conform --format markdown``) against the
  reference runtime and the harness's fake task manager, and inserts the tables with the date
  and the facts of the machine that built the site.
* ``docs/spec.md`` gets the index of every rule, read from the spec pages, at its marker.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import posixpath
import subprocess
import time
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

import taskbed
from taskbed_harness._adapters import fake, reference
from taskbed_harness._conform import Outcome, Result, run_suite
from taskbed_harness._jsonl import reference_jsonl
from taskbed_harness._report import Column, to_matrix
from taskbed_harness._spec import Rule, load_pages, load_rules
from taskbed_harness._ws_adapter import reference_ws

log = logging.getLogger("mkdocs.hooks.taskbed")

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
VERDICT = ROOT / "adapters" / "democrai" / "verdict.json"
COMPLIANCE_MARKER = "<!-- compliance-matrix -->"
RULES_MARKER = "<!-- rules-index -->"


# ---------------------------------------------------------------- spec pages


def on_files(files: Files, config: Any) -> Files:
    """Add every file of the top-level ``specs/`` as ``specs/<name>`` of the site."""
    for path in sorted(SPECS.rglob("*")):
        if not path.is_file() or any(part.startswith((".", "__")) for part in path.parts):
            continue
        src_uri = path.relative_to(ROOT).as_posix()
        if files.get_file_from_path(src_uri) is not None:  # e.g. a docs/specs symlink
            continue
        files.append(
            File(
                src_uri,
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files


# ---------------------------------------------------------------- generated content


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    here = posixpath.dirname(page.file.src_uri) or "."
    specs = posixpath.relpath("specs", here)
    if RULES_MARKER in markdown:
        markdown = markdown.replace(RULES_MARKER, _rules_index(specs))
    if COMPLIANCE_MARKER in markdown:
        markdown = markdown.replace(COMPLIANCE_MARKER, _compliance(specs))
    return markdown


def _rules_index(specs: str) -> str:
    lines = []
    for page in load_pages(SPECS):
        lines += [
            f"### [{page.title}]({specs}/{page.path.name})",
            "",
            "| rule | level | title |",
            "|---|---|---|",
        ]
        lines += [
            f"| [{r.id}]({specs}/{r.anchor}) | {r.level} | {_cell(r.title)} |" for r in page.rules
        ]
        lines.append("")
    return "\n".join(lines)


def _compliance(specs: str) -> str:
    rules = load_rules(SPECS)
    columns, timings = [], []
    implementations = (
        ("reference", "Reference", "R", reference),
        ("fake", "Fake task manager", "F", fake),
        ("reference-ws", "Reference over WebSocket", "W", reference_ws),
        ("reference-jsonl", "Reference over JSON lines", "J", reference_jsonl),
    )
    for name, title, mark, factory in implementations:
        started = time.perf_counter()
        results = run_suite(rules, factory)
        elapsed = time.perf_counter() - started
        timings.append(f"{name} {elapsed:.1f} s")
        log.info("compliance: judged %s on %d rules in %.1f s", name, len(results), elapsed)
        for r in results:
            if r.outcome is Outcome.FAIL:  # each must hold every rule: fail the strict build
                log.warning(
                    "compliance: %s fails %s (%s): %s", name, r.rule.id, r.rule.level, r.reason
                )
        columns.append(Column(title, mark, results))
    columns.append(Column(f"{_platform_name()}", "P", _platform_results(rules)))
    built = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    facts = [
        f"- **Generated**: {built}, from commit `{_commit()}`, taskbed {taskbed.__version__}",
        f"- **Machine**: {platform.system()} {platform.release()} ({platform.machine()}), "
        f"{os.cpu_count()} CPUs; Python {platform.python_version()} "
        f"({platform.python_implementation()})",
        f"- **Rules**: {len(rules)} ({sum(r.level == 'MUST' for r in rules)} MUST, "
        f"{sum(r.level == 'SHOULD' for r in rules)} SHOULD); wall time: {', '.join(timings)}",
    ]
    return "\n".join(facts) + "\n\n" + to_matrix(columns, specs)


def _platform_verdict() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VERDICT.read_text(encoding="utf-8"))
    return data


def _platform_name() -> str:
    return str(_platform_verdict()["implementation"])


def _platform_results(rules: list[Rule]) -> list[Result]:
    """The platform's column: its published verdict, which CI checks against a fresh run of
    the released package (adapters/democrai/judge.py); a rule it lacks fails the build."""
    by_id = {r["rule"]: r for r in _platform_verdict()["results"]}
    results = []
    for rule in rules:
        judged = by_id.get(rule.id)
        if judged is None:
            log.warning("compliance: the platform's verdict has no %s (judge.py --update)", rule.id)
            continue
        results.append(
            Result(rule, Outcome(judged["outcome"]), judged["reason"], root=judged["root"])
        )
    return results


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH, on purpose
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    ).stdout.strip()
    return f"{out}{' + local changes' if dirty else ''}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


__all__ = ("on_files", "on_page_markdown")
