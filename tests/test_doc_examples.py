"""The guides' examples, run the way their readers run them, and the guides' claims about them.

* Every ``docs/examples/test_*.py`` runs under ``pytester`` in a pytest subprocess, as a module
  author runs their tests: the taskbed plugin from its entry point, pytest-asyncio in strict
  mode, warnings as errors, and with no program on ``PATH`` (replay never starts a process).
* The recorded example's cassette is replayed, never rewritten; a changed command misses with
  the message ``docs/guides/recording.md`` shows.
* ``taskbed conform`` judges the adapter of ``docs/guides/conformance.md``
  (``docs/examples/my_adapter.py``) with the outcome the guide shows, and a broken variant of
  it fails as the guide shows.
* The guides list every option, record mode, capability and protocol member there is, and the
  doc links in the harness's error messages point at pages and anchors that exist.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import shutil
import sys
from pathlib import Path

import pytest

from taskbed_harness import (
    CAPABILITIES,
    RECORD_MODES,
    SANDBOX_VARIABLES,
    Adapter,
    HarnessOptions,
    as_adapter,
    strategies,
)
from taskbed_harness._cli import main
from taskbed_harness._spec import load_rules

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
GUIDES = ROOT / "docs" / "guides"
EXAMPLE_FILES = sorted(EXAMPLES.glob("test_*.py"))

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""


def guide(name: str) -> str:
    return (GUIDES / name).read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The text of a page from the ``## heading`` line to the next ``## `` heading."""
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def fenced_blocks(text: str, language: str) -> list[str]:
    """The contents of the page's fenced blocks of one language, in page order."""
    pattern = re.compile(rf"^```{language}[^\n]*\n(.*?)^```$", re.MULTILINE | re.DOTALL)
    return [m.group(1) for m in pattern.finditer(text)]


def files_of(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


#: The module files the examples test (``docs/examples/<module>.py``), written for the platform.
MODULE_FILES = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("test_"))


def copy_example(pytester: pytest.Pytester, example: Path) -> None:
    """The example file, the module files and its cassettes, as in a user's project."""
    shutil.copy(example, pytester.path / example.name)
    for module in MODULE_FILES:
        shutil.copy(module, pytester.path / module.name)
    cassettes = EXAMPLES / "cassettes" / example.stem
    if cassettes.is_dir():
        shutil.copytree(cassettes, pytester.path / "cassettes" / example.stem)
    pytester.makeini(INI)


def run_offline(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str
) -> pytest.RunResult:
    """pytest in a subprocess with nothing on PATH: a started process would fail the test."""
    nowhere = pytester.path / "empty-path"
    nowhere.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(nowhere))
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)  # plugins as installed
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


# ---------------------------------------------------------------- the example test files


def test_there_are_examples() -> None:
    names = {p.name for p in EXAMPLE_FILES}
    assert {"test_hourly_job.py", "test_confirmation.py", "test_recorded_git.py"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_passes_as_a_user_runs_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, example: Path
) -> None:
    copy_example(pytester, example)
    cassettes_before = files_of(pytester.path / "cassettes")

    result = run_offline(pytester, monkeypatch, example.name)

    outcomes = result.parseoutcomes()
    assert result.ret == 0, result.stdout.str()
    assert set(outcomes) == {"passed"}, outcomes
    # replay mode: cassettes are read, never written or added
    assert files_of(pytester.path / "cassettes") == cassettes_before


@pytest.mark.slow
def test_a_changed_command_misses_as_the_recording_guide_shows(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = EXAMPLES / "test_recorded_git.py"
    copy_example(pytester, example)
    source = example.read_text(encoding="utf-8")
    changed = source.replace('"--abbrev=0"]', '"--abbrev=0", "--always"]')
    assert changed != source
    (pytester.path / example.name).write_text(changed, encoding="utf-8")

    node = f"{example.name}::test_changelog_from_the_cassette"
    result = run_offline(pytester, monkeypatch, node)

    result.assert_outcomes(failed=1, errors=1)  # the miss, then the unused recordings
    output = result.stdout.str()
    expected = [  # literal text, in this order (brackets rule out fnmatch patterns)
        "no recorded command matches this call:",
        "argv: ['git', 'describe', '--tags', '--abbrev=0', '--always']",
        "closest recordings:",
        "1. recording #0 ['git', 'describe', '--tags', '--abbrev=0']",
        "argv[4]: called '--always', not in the recording",
        f"to record it: pytest --taskbed-record=new {node}",
        "(see docs/guides/recording.md)",
    ]
    start = output.index("E       AssertionError: no recorded command")
    for text in expected:
        start = output.index(text, start)
    assert "2 recorded command(s) were never run" in output
    documented = section(guide("recording.md"), "Misses")
    assert "argv[4]: called '--always', not in the recording" in documented


def test_the_committed_cassette_is_the_one_the_guide_shows() -> None:
    text = guide("recording.md")
    cassette = "docs/examples/cassettes/test_recorded_git/test_changelog_from_the_cassette.json"
    assert f'--8<-- "{cassette}"' in text
    assert (ROOT / cassette).is_file()


# ---------------------------------------------------------------- the conformance adapter


OUTCOME_ROW = re.compile(r"^(?P<id>[A-Z]+-\d+)\s+(?P<level>MUST|SHOULD)\s+.*?\s(?P<outcome>\S+)$")


def report_outcomes(report: str) -> dict[str, str]:
    return {m["id"]: m["outcome"] for line in report.splitlines() if (m := OUTCOME_ROW.match(line))}


def without_passes(report: str) -> str:
    """The plain-text report without the rows of rules that passed (as the guide shows it)."""
    return "\n".join(line for line in report.splitlines() if not line.endswith(" pass"))


def shown_report(page: str, first_line: str, containing: str) -> str:
    blocks = fenced_blocks(page, "text")
    (block,) = [b for b in blocks if b.startswith(first_line) and containing in b]
    return block.rstrip("\n")


def no_line_numbers(text: str) -> str:
    return re.sub(r"\.md:\d+:", ".md:N:", text)


@pytest.mark.slow
def test_the_adapter_example_gets_the_documented_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    report = tmp_path / "report.txt"

    status = main(["conform", "--impl", "my_adapter:make", "-o", str(report)])

    assert status == 0
    assert f"wrote table report to {report}" in capsys.readouterr().err
    text = report.read_text(encoding="utf-8").rstrip("\n")
    outcomes = report_outcomes(text)
    rules = load_rules()
    assert set(outcomes) == {r.id for r in rules}
    needs_restart = {r.id for r in rules if {"restart", "peer", "websocket"} & r.requires}
    assert {i for i, o in outcomes.items() if o == "skipped"} == needs_restart
    assert {i for i, o in outcomes.items() if o == "deviation"} == {"BG-10"}
    assert {i for i, o in outcomes.items() if o not in ("skipped", "deviation")} == (
        {r.id for r in rules} - needs_restart - {"BG-10"}
    )
    assert set(outcomes.values()) <= {"pass", "skipped", "deviation"}
    # the guide shows this very report, less the passing rows
    shown = shown_report(guide("conformance.md"), "taskbed conformance: acme", "needs capabilities")
    assert without_passes(text) == shown


@pytest.mark.slow
def test_the_broken_adapter_fails_as_the_guide_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = guide("conformance.md")
    (source,) = [b for b in fenced_blocks(page, "python") if "class BrokenAdapter" in b]
    (tmp_path / "broken_adapter.py").write_text(source, encoding="utf-8")
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.syspath_prepend(str(tmp_path))
    report = tmp_path / "report.txt"

    status = main(
        ["conform", "--impl", "broken_adapter:make", "--rules", "CMD-10", "--rules", "BG-10",
         "-o", str(report)]
    )  # fmt: skip

    assert status == 1  # CMD-10 is a MUST rule
    text = report.read_text(encoding="utf-8").rstrip("\n")
    assert report_outcomes(text) == {"CMD-10": "fail", "BG-10": "fail"}
    shown = [b for b in fenced_blocks(page, "text") if "CMD-10" in b and "fail" in b]
    assert len(shown) == 1
    assert no_line_numbers(text) == no_line_numbers(shown[0].rstrip("\n"))


def test_the_exit_status_of_usage_errors_is_as_documented(tmp_path: Path) -> None:
    assert main(["conform", "--rules", "NOPE-*"]) == 2
    with pytest.raises(SystemExit) as caught:
        main(["conform", "--impl", "no_such_module_here:make"])
    assert "cannot load --impl" in str(caught.value.code)  # exit status 1
    exit_table = section(guide("conformance.md"), "Running the suite")
    assert "`--rules` matched no rule" in exit_table
    assert "when `--impl` cannot be loaded" in exit_table


def test_the_example_adapter_maps_every_sandbox_variable() -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        my_adapter = importlib.import_module("my_adapter")
    finally:
        sys.path.remove(str(EXAMPLES))
    adapter = my_adapter.make()
    assert isinstance(adapter, Adapter)
    assert as_adapter(adapter) is adapter
    assert set(adapter.sandbox_names) == set(SANDBOX_VARIABLES)
    assert adapter.capabilities <= set(CAPABILITIES)


# ---------------------------------------------------------------- the guides list everything


def table_names(text: str) -> set[str]:
    """The `names` in the first column of the Markdown tables of *text*."""
    return set(re.findall(r"^\| `([^`(]+)", text, re.MULTILINE))


def test_the_options_section_lists_every_harness_option() -> None:
    options = section(guide("harness.md"), "Options")
    assert "{ #options }" in options  # error messages link to docs/guides/harness.md#options
    fields = {f.name for f in dataclasses.fields(HarnessOptions)}
    assert table_names(options) == fields


def test_the_recording_guide_lists_every_record_mode() -> None:
    modes = section(guide("recording.md"), "Record modes")
    assert {name.split()[0] for name in table_names(modes)} == set(RECORD_MODES)


def test_the_conformance_guide_covers_the_whole_protocol() -> None:
    page = guide("conformance.md")
    capabilities = section(page, "The `Adapter` protocol")
    assert set(CAPABILITIES) <= table_names(capabilities)
    members = {n for n in dir(Adapter) if not n.startswith("_")}
    members |= set(Adapter.__annotations__)
    headings = {
        name
        for line in re.findall(r"^### .*$", page, re.MULTILINE)
        for name in re.findall(r"`(?:async )?(\w+)", line)
    }
    assert members <= headings, members - headings
    for name in SANDBOX_VARIABLES:
        assert f"`{name}`" in capabilities


def test_the_harness_guide_lists_every_strategy() -> None:
    listed = section(guide("harness.md"), "Property-based tests with hypothesis")
    for name in strategies.__all__:
        assert f"`{name}" in listed, name


def test_every_example_is_shown_in_a_guide() -> None:
    pages = "".join(guide(p.name) for p in GUIDES.glob("*.md"))
    for example in [*EXAMPLE_FILES, EXAMPLES / "my_adapter.py"]:
        path = example.relative_to(ROOT).as_posix()
        assert f'--8<-- "{path}"' in pages, f"{path} is not included in any guide"


DOC_LINK = re.compile(r"docs/(guides/[\w-]+\.md)(?:#([\w-]+))?")


def test_error_messages_link_to_pages_and_anchors_that_exist() -> None:
    sources = [
        *(ROOT / "harness" / "taskbed_harness").glob("*.py"),
        *(ROOT / "reference" / "taskbed").glob("*.py"),
    ]
    links = {m.groups() for path in sources for m in DOC_LINK.finditer(path.read_text("utf-8"))}
    assert ("guides/harness.md", "options") in links
    for page, anchor in links:
        text = (ROOT / "docs" / page).read_text(encoding="utf-8")
        if anchor:
            assert f"{{ #{anchor} }}" in text, f"docs/{page}#{anchor} has no such anchor"
