"""Every Python example in the docs pages runs here (Sybil), and so do the example test files.

The convention (the same text, longer, is in docs/_conventions.md):

* Every fenced ``python`` (or ``py``) block in ``docs/**/*.md`` is a test item
  (``test_block[quickstart.md:42]``). The blocks of one page run in page order in one shared
  namespace, in a fresh temporary working directory of that page; ``docs/examples`` is on
  ``sys.path`` while they run. ``pycon`` blocks run as doctests.
* A block may use top-level ``await``: it then runs on the page's event loop, a virtual-time
  loop (``taskbed_harness.new_virtual_loop()``), one per page, kept across its blocks. Blocks
  that a reader can paste as they are (``asyncio.run(main())``) are preferred.
* A block that cannot run says why: ``<!-- skip: next "reason" -->`` before it (the reason
  shows in pytest's summary). Hidden setup: ``<!-- invisible-code-block: python ... -->``.
* A ``python`` block whose whole content is pymdownx.snippets lines
  (``--8<-- "docs/examples/test_hourly_job.py"``) is not run here as a block: every directory
  under docs/ holding ``test_*.py`` files is run by ``pytest`` in a subprocess instead
  (``test_examples``), with the project's pytest configuration; ``docs/examples`` itself is
  run by ``tests/test_doc_examples.py`` (file by file, under pytester) while that file exists.
* The spec pages (``specs/``) are not covered here: ``tests/test_spec.py`` runs them through
  the conformance engine.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sybil import Document, Example, Region
from sybil.evaluators.doctest import DocTestEvaluator
from sybil.evaluators.python import pad
from sybil.parsers.abstract.doctest import DocTestStringParser
from sybil.parsers.abstract.lexers import LexerCollection
from sybil.parsers.markdown import SkipParser
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer, FencedCodeBlockLexer

from taskbed_harness import new_virtual_loop

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
PYTHON = {"python", "py", "python3"}
SNIPPET = re.compile(r"^\s*;?-{1,}8<-{1,}")  # a pymdownx.snippets line: --8<-- "path"


# ---------------------------------------------------------------- parsing


def _language(info: str) -> str:
    """The language of a fence's info string: ``python title="x.py"`` -> ``python``."""
    words = info.strip().lstrip("{").split()
    return words[0].lstrip(".").lower() if words else ""


def _only_snippets(source: str) -> bool:
    lines = [line for line in source.splitlines() if line.strip()]
    return bool(lines) and all(SNIPPET.match(line) for line in lines)


class PageParser:
    """Python fences and invisible code blocks -> Python regions; ``pycon`` -> doctests."""

    def __init__(self) -> None:
        self.lexers = LexerCollection(
            [
                FencedCodeBlockLexer(
                    language=r".+", mapping={"language": "arguments", "source": "source"}
                ),
                DirectiveInHTMLCommentLexer(
                    directive=r"(invisible-)?code(-block)?", arguments=".+"
                ),
            ]
        )
        self.doctests = DocTestStringParser(DocTestEvaluator())

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in self.lexers(document):
            language = _language(region.lexemes["arguments"])
            source = region.lexemes["source"]
            if language == "pycon":
                for doctest_region in self.doctests(source, document.path):
                    doctest_region.adjust(region, source)
                    yield doctest_region
            elif language in PYTHON and not _only_snippets(source):
                region.parsed = source
                region.evaluator = evaluate_python
                yield region


SKIPS = SkipParser()


def parse(path: Path) -> Document:
    return Document.parse(str(path), PageParser(), SKIPS)


# ---------------------------------------------------------------- running


LOOP = "__docs_page_loop__"


def evaluate_python(example: Example) -> None:
    """Run a block; a block with top-level ``await`` runs on the page's virtual-time loop."""
    __tracebackhide__ = True
    source = pad(example.parsed, example.line + example.parsed.line_offset)
    code = compile(
        source, example.path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    namespace = example.namespace
    if code.co_flags & inspect.CO_COROUTINE:
        if LOOP not in namespace:
            namespace[LOOP] = new_virtual_loop()
        namespace[LOOP].run_until_complete(eval(code, namespace))
    else:
        exec(code, namespace)  # running the docs' examples is the point
    namespace.pop("__builtins__", None)


class PageRun:
    """One page's examples, run lazily in page order, each outcome kept for its test item."""

    def __init__(self, path: Path) -> None:
        self.document = parse(path)
        self.examples = list(self.document.examples())
        self.outcomes: dict[int, BaseException | None] = {}
        self.next = 0
        self.workdir: str | None = None
        self.first_failure: int | None = None

    @contextmanager
    def _inside(self) -> Iterator[None]:
        if self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix="taskbed-docs-")
        cwd, path = os.getcwd(), list(sys.path)
        os.chdir(self.workdir)
        sys.path.insert(0, str(EXAMPLES))
        try:
            yield
        finally:
            os.chdir(cwd)
            sys.path[:] = path

    def run_through(self, index: int) -> BaseException | None:
        while self.next <= index:
            number = self.next
            self.next += 1
            with self._inside():
                try:
                    self.examples[number].evaluate()
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # SystemExit of a CLI example is a failure too
                    self.outcomes[number] = exc
                    is_skip = isinstance(exc, (unittest.SkipTest, pytest.skip.Exception))
                    if not is_skip and self.first_failure is None:
                        self.first_failure = number
                else:
                    self.outcomes[number] = None
            if self.next == len(self.examples):
                self.close()
        return self.outcomes[index]

    def close(self) -> None:
        loop = self.document.namespace.pop(LOOP, None)
        if loop is not None:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "__pycache__" not in p.parts)


def _items() -> list[Any]:
    items = []
    for path in _pages():
        name = path.relative_to(DOCS).as_posix()
        for index, example in enumerate(parse(path).examples()):
            if example.region.evaluator is SKIPS.skipper:
                continue  # a skip directive: it runs in order, but is no test of its own
            items.append(pytest.param(path, index, id=f"{name}:{example.line}"))
    return items


RUNS: dict[Path, PageRun] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_pages() -> Iterator[None]:
    yield
    for run in RUNS.values():
        run.close()
    RUNS.clear()


@pytest.mark.parametrize(("path", "index"), _items())
def test_block(path: Path, index: int) -> None:
    """One Python block (or doctest) of a docs page, after the blocks before it."""
    run = RUNS.get(path)
    if run is None:
        run = RUNS[path] = PageRun(path)
    outcome = run.run_through(index)
    if outcome is None:
        return
    if isinstance(outcome, unittest.SkipTest):
        pytest.skip(str(outcome))
    earlier = run.first_failure
    if earlier is not None and earlier < index:
        line = run.examples[earlier].line
        outcome.add_note(f"note: an earlier block of this page failed first (line {line})")
    raise outcome


# ---------------------------------------------------------------- example test files


#: Example directories that a dedicated test module runs more thoroughly (skipped here while
#: that module exists, so nothing runs twice).
RUN_ELSEWHERE = {EXAMPLES: ROOT / "tests" / "test_doc_examples.py"}


def _example_dirs() -> list[Path]:
    found = {p.parent for p in DOCS.rglob("test_*.py") if "__pycache__" not in p.parts}
    return sorted(d for d in found if not (d in RUN_ELSEWHERE and RUN_ELSEWHERE[d].exists()))


@pytest.mark.slow
@pytest.mark.parametrize(
    "directory",
    _example_dirs()
    or [pytest.param(None, marks=pytest.mark.skip(reason="no docs/**/test_*.py files yet"))],
    ids=lambda d: d.relative_to(ROOT).as_posix() if d else "none",
)
def test_examples(directory: Path) -> None:
    """The example test files included into pages pass under the project's pytest config."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(directory)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (
        f"pytest {directory.relative_to(ROOT)} failed (exit {result.returncode}):\n"
        f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    )


def test_skips_give_a_reason() -> None:
    """``<!-- skip: next -->`` without a reason would hide a block silently; say why."""
    silent = [
        f"{path.relative_to(ROOT)}:{example.line}"
        for path in _pages()
        for example in parse(path).examples()
        if example.region.evaluator is SKIPS.skipper
        and example.parsed[0] in ("next", "start")
        and not example.parsed[1]
    ]
    assert not silent, f'skip directives without a reason (write skip: next "why"): {silent}'


def test_pages_have_no_unrun_python() -> None:
    """A Python-looking fence with another tag would silently not run: name it ``python``."""
    fence = re.compile(r"^\s*(`{3,}|~{3,})\s*\{?\.?(?P<lang>[\w-]*)", re.MULTILINE)
    suspicious = {"python2", "ipython", "py3", "python-console", "pytb"}
    found = [
        f"{path.relative_to(ROOT)}: ```{m['lang']}"
        for path in _pages()
        for m in fence.finditer(path.read_text(encoding="utf-8"))
        if m["lang"].lower() in suspicious
    ]
    assert not found, "fences that look like Python but do not run:\n" + "\n".join(found)
