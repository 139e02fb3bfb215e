"""The executable spec: Markdown pages in ``specs/``, parsed into rules with runnable checks.

Page format (one page per rule family)::

    # Dedup by task key                          <- page title
    <!--setup                                    <- hidden setup, run before every rule of
    async def wait_forever(): ...                   the page (a comment: invisible on the site)
    -->

    ## DEDUP-1 (MUST): A duplicate returns the active task's id { #DEDUP-1 }
    <!-- requires: restart -->                   <- capabilities the rule needs (optional)

    While a task with a non-empty `task_key` is active ...   <- the statement (first paragraph)

    ```python                                    <- checks: run in order, top-level await
    first = await sdk.tasks.run_background(...)     allowed, against the suite's objects
    ```

A rule heading is ``## <FAMILY>-<n> (MUST|SHOULD): <title>``; any other ``##`` heading ends
the rule before it. Python blocks before the first rule are page setup too (visible ones).
Other fences (``pycon``, ``text``, ...) are prose, never run.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RULE_HEADING = re.compile(
    r"^## (?P<id>[A-Z]+-\d+) \((?P<level>MUST|SHOULD)\): (?P<title>.+?)(?:\s*\{[^}]*\})?\s*$"
)
FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<lang>[\w-]*)")
REQUIRES = re.compile(r"^<!--\s*requires:\s*(?P<caps>[\w\s,-]+?)\s*-->\s*$")


class SpecError(ValueError):
    """A spec page that does not follow the page format."""


@dataclasses.dataclass(frozen=True)
class Block:
    """A runnable code block: its source and where it starts in its page (1-based line)."""

    code: str
    path: Path
    line: int
    hidden: bool = False


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule of the spec: ID, level, title, statement, and the checks that judge it."""

    id: str
    level: str
    title: str
    statement: str
    page: Path
    line: int
    requires: frozenset[str]
    setup: tuple[Block, ...]
    blocks: tuple[Block, ...]

    @property
    def family(self) -> str:
        return self.id.split("-")[0]

    @property
    def anchor(self) -> str:
        return f"{self.page.name}#{self.id}"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "level": self.level,
            "title": self.title,
            "statement": self.statement,
            "page": self.page.name,
            "line": self.line,
            "requires": sorted(self.requires),
            "checks": len(self.blocks),
        }


@dataclasses.dataclass(frozen=True)
class Page:
    path: Path
    title: str
    rules: tuple[Rule, ...]


def spec_dir() -> Path:
    """The spec pages: the repository's ``specs/`` or, in an installed wheel, the packaged copy."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "specs", here.parents[1] / "specs"):
        if candidate.is_dir() and any(candidate.glob("*.md")):
            return candidate
    raise FileNotFoundError(
        f"no spec pages found next to {here}; reinstall taskbed[harness] "
        "(the wheel ships them as taskbed_harness/specs)"
    )


def parse_page(path: Path) -> Page:  # noqa: PLR0912, PLR0915 - one pass over the lines
    """Parse one spec page; raise SpecError naming the line of any format problem."""
    lines = path.read_text(encoding="utf-8").splitlines()
    title = ""
    page_setup: list[Block] = []
    rules: list[Rule] = []
    current: dict[str, Any] | None = None
    seen: set[str] = set()
    i = 0

    def finish() -> None:
        if current is not None:
            rules.append(
                Rule(
                    id=current["id"],
                    level=current["level"],
                    title=current["title"],
                    statement=" ".join(current["statement"]).strip(),
                    page=path,
                    line=current["line"],
                    requires=frozenset(current["requires"]),
                    setup=tuple(page_setup) + tuple(current["setup"]),
                    blocks=tuple(current["blocks"]),
                )
            )

    while i < len(lines):
        text = lines[i]
        if text.startswith("# ") and not title:
            title = text[2:].strip()
        elif text.startswith("## "):
            finish()
            current = None
            heading = RULE_HEADING.match(text)
            if heading:
                rule_id = heading["id"]
                if rule_id in seen:
                    raise SpecError(f"{path}:{i + 1}: rule {rule_id} is stated twice")
                seen.add(rule_id)
                current = {
                    **heading.groupdict(),
                    "line": i + 1,
                    "statement": [],
                    "requires": [],
                    "setup": [],
                    "blocks": [],
                    "statement_done": False,
                }
            elif re.match(r"^## [A-Z]+-\d+", text):
                raise SpecError(
                    f"{path}:{i + 1}: a rule heading reads '## ID (MUST|SHOULD): title', "
                    f"got {text!r}"
                )
        elif (requires := REQUIRES.match(text)) and current is not None:
            current["requires"].extend(c.strip() for c in requires["caps"].split(",") if c.strip())
        elif text.strip() == "<!--setup":
            start = i + 1
            i += 1
            while i < len(lines) and lines[i].strip() != "-->":
                i += 1
            if i == len(lines):
                raise SpecError(f"{path}:{start}: '<!--setup' is never closed by '-->'")
            block = Block("\n".join(lines[start:i]), path, start + 1, hidden=True)
            (current["setup"] if current is not None else page_setup).append(block)
        elif fence := FENCE.match(text):
            start = i + 1
            marker = fence["fence"]
            i += 1
            while i < len(lines) and not lines[i].startswith(marker):
                i += 1
            if i == len(lines):
                raise SpecError(f"{path}:{start}: code fence is never closed")
            if fence["lang"] == "python":
                block = Block("\n".join(lines[start:i]), path, start + 1)
                (current["blocks"] if current is not None else page_setup).append(block)
            if current is not None:
                current["statement_done"] = True
        elif current is not None and not current["statement_done"]:
            if text.strip():
                if not text.lstrip().startswith("<!--"):
                    current["statement"].append(text.strip())
            elif current["statement"]:
                current["statement_done"] = True
        i += 1
    finish()
    if not title:
        raise SpecError(f"{path}: a spec page starts with a '# Title' line")
    return Page(path, title, tuple(rules))


def load_pages(directory: Path | None = None) -> list[Page]:
    directory = directory if directory is not None else spec_dir()
    return [parse_page(p) for p in sorted(directory.glob("*.md")) if p.name != "index.md"]


def load_rules(directory: Path | None = None) -> list[Rule]:
    """Every rule of every page, in page order."""
    rules = [rule for page in load_pages(directory) for rule in page.rules]
    ids = [r.id for r in rules]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise SpecError(f"rules stated on more than one page: {duplicates}")
    return rules


def select(rules: Iterable[Rule], patterns: Iterable[str] | None) -> list[Rule]:
    """The rules whose ID matches one of the glob *patterns* (``DEDUP-*``); all for None."""
    chosen = list(rules)
    if not patterns:
        return chosen
    pats = [p.strip() for group in patterns for p in group.split(",") if p.strip()]
    return [r for r in chosen if any(fnmatch.fnmatchcase(r.id, p) for p in pats)]


def rules_index(rules: Iterable[Rule]) -> str:
    """``rules.json``: the index of every rule, generated from the pages."""
    return json.dumps([r.as_json() for r in rules], indent=2, ensure_ascii=False) + "\n"
