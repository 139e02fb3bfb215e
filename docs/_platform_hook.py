"""MkDocs hook: the platform's published verdict on ``docs/platform.md``.

The run itself needs Python 3.12 and the platform (``adapters/democrai/judge.py`` makes both and
writes ``adapters/democrai/verdict.json``), so the site does not rerun it: where the marker
stands, this hook renders the committed verdict as a table and joins each rule to the causes the
page explains by hand. A cause is a ``### <ID>: ...`` section with a ``Rules: A-1, B-2`` line.

The page and the verdict must agree: a rule that does not pass with no cause, or a cause that
names a rule that passes, is logged as a warning (which fails the strict build) and is what
``tests/test_platform_verdict.py`` checks.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from taskbed_harness import load_rules

log = logging.getLogger("mkdocs.hooks.platform")

ROOT = Path(__file__).resolve().parents[1]
VERDICT = ROOT / "adapters" / "democrai" / "verdict.json"
MARKER = "<!-- platform-verdict -->"
CAUSE = re.compile(r"^### (?P<id>[A-Z]\d+): ")
RULES = re.compile(r"^Rules: (?P<rules>.+?)\.?\s*$")


def causes(markdown: str) -> dict[str, list[str]]:
    """Rule ID -> the IDs of the causes whose ``Rules:`` line names it, in page order."""
    found: dict[str, list[str]] = {}
    current, listing = None, False
    for line in markdown.splitlines():
        if heading := CAUSE.match(line):
            current, listing = heading["id"], False
        elif (listed := RULES.match(line)) and current is not None:
            listing, line = True, listed["rules"]  # noqa: PLW2901 - the rest of the line
        elif not line.strip():
            listing = False
        if listing and current is not None:
            for rule in re.split(r"[,.\s]+", line):
                if rule:
                    found.setdefault(rule.strip("`"), []).append(current)
    return found


def problems(verdict: dict[str, Any], found: dict[str, list[str]]) -> list[str]:
    """Where the page's causes and the verdict disagree (empty when they agree)."""
    outcome = {r["rule"]: r["outcome"] for r in verdict["results"]}
    issues = [
        f"{rule} is {o} in the verdict but no cause on docs/platform.md names it"
        for rule, o in outcome.items()
        if o != "pass" and rule not in found
    ]
    issues += [
        f"cause {', '.join(ids)} names {rule}, which "
        + ("passes" if rule in outcome else "is not in the verdict")
        for rule, ids in found.items()
        if outcome.get(rule, "pass") == "pass"
    ]
    return issues


def table(verdict: dict[str, Any], found: dict[str, list[str]], specs: str) -> str:
    t = verdict["totals"]
    lines = [
        f"**{verdict['implementation']}** (`{verdict['platform']}`): "
        + "; ".join(
            f"{level} {c['pass']} passed, {c['fail']} failed, {c['deviation']} deviations, "
            f"{c['skipped']} skipped"
            for level, c in t.items()
        ),
        "",
        "| rule | level | outcome | cause | first failure the run reported |",
        "|---|---|---|---|---|",
    ]
    pages = {rule.id: rule.page.name for rule in load_rules(ROOT / "specs")}
    for r in verdict["results"]:
        where = f"{specs}/{pages[r['rule']]}#{r['rule']}" if r["rule"] in pages else ""
        link = f"[{r['rule']}]({where})" if where else r["rule"]
        cause = ", ".join(f"[{c}](#{c.lower()})" for c in found.get(r["rule"], []))
        reason = r["reason"].replace("\n", " ")
        reason = _escape(reason if len(reason) <= 180 else reason[:179] + "…")
        lines.append(f"| {link} | {r['level']} | {r['outcome']} | {cause} | {reason} |")
    peers = verdict.get("two_runtimes")
    if peers:  # the peer rules, asked of two real processes (adapters/democrai/two_runtimes.py)
        asked = ", ".join(f"{rule} **{o}**" for rule, o in peers.items() if rule != "evidence")
        seen = "; ".join(f"{what}: `{value}`" for what, value in peers["evidence"].items())
        lines += ["", f"Skipped above, asked of two platform processes instead ([S1](#s1)): "
                  f"{asked} ({seen})."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    """Plain text in a table cell: no link, emphasis, code or column break by accident."""
    return re.sub(r"([\\`*_\[\]<>|])", r"\\\1", text)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    verdict = json.loads(VERDICT.read_text(encoding="utf-8"))
    found = causes(markdown)
    for issue in problems(verdict, found):
        log.warning("platform verdict: %s", issue)
    specs = posixpath.relpath("specs", posixpath.dirname(page.file.src_uri) or ".")
    return markdown.replace(MARKER, table(verdict, found, specs))
