"""Conformance reports: terminal table, JSON, JUnit XML, Markdown."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any
from xml.etree import ElementTree as ET

from ._conform import Outcome, Result

FORMATS = ("table", "json", "junit", "markdown")


def totals(results: Sequence[Result]) -> dict[str, dict[str, int]]:
    """Outcome counts per level: ``{"MUST": {"pass": 40, "fail": 0, ...}, "SHOULD": {...}}``."""
    counts: dict[str, Counter[str]] = {"MUST": Counter(), "SHOULD": Counter()}
    for r in results:
        counts.setdefault(r.rule.level, Counter())[r.outcome.value] += 1
    return {level: {o.value: c[o.value] for o in Outcome} for level, c in counts.items()}


def failed_must(results: Sequence[Result]) -> list[Result]:
    return [r for r in results if r.rule.level == "MUST" and r.outcome is Outcome.FAIL]


@dataclasses.dataclass(frozen=True)
class RootCause:
    """Failures that arose at the same place: one deviation, however many rules it fails."""

    root: str
    results: tuple[Result, ...]

    @property
    def where(self) -> str:
        """The place without its directories: ``queries.md:27: KeyError``."""
        path, sep, rest = self.root.partition(":")
        return f"{os.path.basename(path)}{sep}{rest}"

    @property
    def rules(self) -> list[str]:
        return [r.rule.id for r in self.results]

    def sentence(self) -> str:
        first = self.results[0].reason
        return f"{len(self.results)} rules failed at the same place ({self.where}): {first}"

    def as_json(self) -> dict[str, Any]:
        return {"root": self.root, "rules": self.rules, "reason": self.results[0].reason}


def root_causes(results: Sequence[Result]) -> list[RootCause]:
    """Failures grouped by root cause (same deepest frame and exception type), biggest first;
    only groups of two rules or more: a failure of its own is its own explanation."""
    grouped: dict[str, list[Result]] = {}
    for r in results:
        if r.outcome is Outcome.FAIL and r.root:
            grouped.setdefault(r.root, []).append(r)
    groups = [RootCause(root, tuple(rs)) for root, rs in grouped.items() if len(rs) > 1]
    return sorted(groups, key=lambda g: -len(g.results))


def summary_line(results: Sequence[Result]) -> str:
    t = totals(results)
    parts = []
    for level in ("MUST", "SHOULD"):
        c = t.get(level, {})
        parts.append(
            f"{level}: {c.get('pass', 0)} passed, {c.get('fail', 0)} failed, "
            f"{c.get('skipped', 0)} skipped, {c.get('deviation', 0)} known deviations"
        )
    return "; ".join(parts)


def to_json(results: Sequence[Result], implementation: str) -> str:
    wall = sum(r.wall for r in results)
    virtual = sum(r.virtual for r in results)
    payload: dict[str, Any] = {
        "implementation": implementation,
        "totals": totals(results),
        "wall_seconds": round(wall, 3),
        "virtual_seconds": round(virtual, 3),
        "results": [r.as_json() for r in results],
        "root_causes": [g.as_json() for g in root_causes(results)],
    }
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def to_junit(results: Sequence[Result], implementation: str) -> str:
    suite = ET.Element(
        "testsuite",
        name=f"taskbed conformance: {implementation}",
        tests=str(len(results)),
        failures=str(sum(r.outcome is Outcome.FAIL for r in results)),
        skipped=str(sum(r.outcome in (Outcome.SKIPPED, Outcome.DEVIATION) for r in results)),
        time=f"{sum(r.wall for r in results):.3f}",
    )
    for r in results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"{r.rule.page.stem}.{r.rule.level}",
            name=f"{r.rule.id} {r.rule.title}",
            time=f"{r.wall:.3f}",
        )
        if r.outcome is Outcome.FAIL:
            ET.SubElement(case, "failure", message=r.reason).text = r.reason
        elif r.outcome is Outcome.SKIPPED:
            ET.SubElement(case, "skipped", message=r.reason)
        elif r.outcome is Outcome.DEVIATION:
            ET.SubElement(case, "skipped", message=f"known deviation: {r.reason}")
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(results: Sequence[Result], implementation: str) -> str:
    lines = [
        f"### {implementation}",
        "",
        f"{summary_line(results)}.",
        "",
        "| rule | level | title | outcome | reason |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        link = f"[{r.rule.id}](../specs/{r.rule.page.name}#{r.rule.id})"
        lines.append(
            f"| {link} | {r.rule.level} | {_md(r.rule.title)} | {r.outcome.value} | "
            f"{_md(r.reason)} |"
        )
    groups = root_causes(results)
    if groups:
        lines += ["", "Failures with one root cause:", ""]
        lines += [f"- {_md(g.sentence())}: {', '.join(g.rules)}" for g in groups]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class Column:
    """One implementation's results in a matrix: *label* heads the column, *mark* prefixes
    the notes its cells point to (``P3``)."""

    label: str
    mark: str
    results: Sequence[Result]


def to_matrix(columns: Sequence[Column], spec_link: str = "../specs") -> str:
    """Every rule, one row, one column per implementation; what is not a pass points to a
    note under the table (its reason, and the rules that share its root cause)."""
    notes: dict[str, list[str]] = {}
    cells: dict[tuple[str, str], str] = {}
    for column in columns:
        lines = notes.setdefault(column.label, [])
        groups = {r.rule.id: g for g in root_causes(column.results) for r in g.results}
        named: dict[str, str] = {}  # a root cause's first rule -> its note's mark
        skipped: dict[str, list[str]] = {}
        for r in column.results:
            key = (column.label, r.rule.id)
            if r.outcome is Outcome.PASS:
                cells[key] = "pass"
                continue
            if r.outcome is Outcome.SKIPPED:
                cells[key] = "skipped"
                skipped.setdefault(r.reason, []).append(r.rule.id)
                continue
            group = groups.get(r.rule.id)
            first = group.results[0].rule.id if group else r.rule.id
            if first not in named:
                named[first] = f"{column.mark}{len(named) + 1}"
                what = group.sentence() if group else f"{r.rule.id}: {r.reason}"
                shared = f" ({', '.join(group.rules)})" if group else ""
                lines.append(f"- **{named[first]}** {r.outcome.value}: {_md(what)}{shared}")
            cells[key] = f"{'**fail**' if r.outcome is Outcome.FAIL else r.outcome.value} "
            cells[key] += named[first]
        for reason, ids in skipped.items():
            count = f"{len(ids)} rule{'s' if len(ids) > 1 else ''}"
            lines.append(f"- skipped, {count} ({_md(reason)}): {', '.join(ids)}")
    rules = {r.rule.id: r.rule for column in columns for r in column.results}
    out = [
        "| rule | level | " + " | ".join(c.label for c in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for rule_id, rule in rules.items():
        row = [f"[{rule_id}]({spec_link}/{rule.page.name}#{rule_id})", rule.level]
        row += [cells.get((c.label, rule_id), "not judged") for c in columns]
        out.append("| " + " | ".join(row) + " |")
    out += ["", "| | " + " | ".join(c.label for c in columns) + " |"]
    out.append("|---|" + "---|" * len(columns))
    for level in ("MUST", "SHOULD"):
        counts = [totals(c.results).get(level, {}) for c in columns]
        out.append(
            f"| {level} pass / fail / skipped | "
            + " | ".join(
                f"{n.get('pass', 0)} / {n.get('fail', 0)} / {n.get('skipped', 0)}"
                + (f" / {n['deviation']} deviation" if n.get("deviation") else "")
                for n in counts
            )
            + " |"
        )
    for column in columns:
        if notes[column.label]:
            out += ["", f"**{column.label}**", "", *notes[column.label]]
    return "\n".join(out) + "\n"


def to_table(results: Sequence[Result], implementation: str) -> str:
    """A plain-text table (``rich`` renders a nicer one in a terminal; see the CLI)."""
    width = max((len(r.rule.title) for r in results), default=5)
    width = min(width, 60)
    lines = [f"taskbed conformance: {implementation}", ""]
    lines.append(f"{'rule':<10} {'level':<7} {'title':<{width}} outcome")
    for r in results:
        title = r.rule.title if len(r.rule.title) <= width else r.rule.title[: width - 1] + "…"
        lines.append(f"{r.rule.id:<10} {r.rule.level:<7} {title:<{width}} {r.outcome.value}")
        if r.reason and r.outcome is not Outcome.PASS:
            lines.append(f"{'':<19}  -> {r.reason}")
    for group in root_causes(results):
        lines += ["", group.sentence(), f"  rules: {', '.join(group.rules)}"]
    lines += ["", summary_line(results)]
    return "\n".join(lines) + "\n"


RENDERERS = {"table": to_table, "json": to_json, "junit": to_junit, "markdown": to_markdown}
