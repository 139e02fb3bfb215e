"""``taskbed conform`` through its entry point: selection, formats, exit status, bad ``--impl``.

``main([...])`` is called directly and its output captured. The broken implementations come
from ``tests/test_teeth.py`` (``--impl test_teeth:<Class>``; tests/ is on ``sys.path``, see
conftest.py), so a failing run is a real one.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from xml.etree import ElementTree as ET

import psycopg
import pytest

from taskbed_harness._adapters import PROTOCOL_MEMBERS
from taskbed_harness._cli import main
from taskbed_harness._spec import load_rules

RULES = load_rules()
LEVELS = Counter(rule.level for rule in RULES)
# The in-process reference skips the socket rules (specs/transport.md): no websocket capability.
SOCKET = Counter(rule.level for rule in RULES if "websocket" in rule.requires)
IN_PROCESS = LEVELS - SOCKET
SPECS = Path(__file__).parents[1] / "specs"

# A MUST rule fails: DEDUP-3 (see test_teeth.BROKEN).
MUST_BROKEN = "test_teeth:DedupIgnoresOrganization"
# Only a SHOULD rule fails: PROG-7.
SHOULD_BROKEN = "test_teeth:NanProgressIgnored"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["conform", *args])
    out, err = capsys.readouterr()
    return code, out, err


def ids_of(family: str) -> list[str]:
    return [rule.id for rule in RULES if rule.family == family]


# ---------------------------------------------------------------- the default run


def test_default_run_passes_and_prints_the_table_with_totals_per_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys)
    assert code == 0
    assert "taskbed conformance: reference" in out
    rows = {
        found[1]: line
        for line in out.splitlines()
        if (found := re.match(r"^\W*([A-Z]+-\d+)\s", line))
    }
    assert list(rows) == [rule.id for rule in RULES]  # one row per rule, in page order
    outcomes = {rule: re.findall(r"\b(pass|skipped)\b", line)[-1] for rule, line in rows.items()}
    assert {r for r, o in outcomes.items() if o == "skipped"} == {
        rule.id for rule in RULES if "websocket" in rule.requires
    }, rows
    flat = " ".join(out.split())  # the summary may wrap at the console's width
    must, should = (IN_PROCESS["MUST"], SOCKET["MUST"]), (IN_PROCESS["SHOULD"], SOCKET["SHOULD"])
    assert f"MUST: {must[0]} passed, 0 failed, {must[1]} skipped, 0 known deviations" in flat
    assert f"SHOULD: {should[0]} passed, 0 failed, {should[1]} skipped, 0 known deviations" in flat
    assert "s of virtual time" in out


def test_rules_pattern_selects(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--rules", "DEDUP-*")
    assert code == 0
    dedup = ids_of("DEDUP")
    for rule_id in dedup:
        assert rule_id in out
    assert not re.search(r"\b(BG|OWN|CMD|QUERY|REC)-\d+\b", out)
    assert f"MUST: {len(dedup)} passed, 0 failed" in " ".join(out.split())


def test_several_patterns_select_their_union(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--list", "--rules", "MGR-*,REC-1", "--rules", "CONF-3")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == [
        "CONF-3", "MGR-1", "MGR-2", "MGR-3", "MGR-4", "REC-1",
    ]  # fmt: skip


def test_a_pattern_that_matches_nothing_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--rules", "NOPE-*")
    assert code == 2
    assert out == ""
    assert "no rule matches" in err
    assert "NOPE-*" in err


# ---------------------------------------------------------------- report formats


def test_json_report_of_the_whole_suite(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--format", "json")
    assert code == 0
    report = json.loads(out)
    assert report["implementation"] == "reference"
    assert report["totals"]["MUST"] == {
        "pass": IN_PROCESS["MUST"], "fail": 0, "skipped": SOCKET["MUST"], "deviation": 0,
    }  # fmt: skip
    assert report["totals"]["SHOULD"] == {
        "pass": IN_PROCESS["SHOULD"], "fail": 0, "skipped": SOCKET["SHOULD"], "deviation": 0,
    }  # fmt: skip
    assert len(report["results"]) == len(RULES) >= 89  # every rule ran
    assert [r["rule"] for r in report["results"]] == [rule.id for rule in RULES]
    assert {r["outcome"] for r in report["results"]} == {"pass", "skipped"}
    first = report["results"][0]
    assert set(first) == {
        "rule", "level", "title", "outcome", "reason", "root", "wall_seconds",
        "virtual_seconds",
    }  # fmt: skip
    assert report["virtual_seconds"] > 0


@pytest.mark.rule("WS-3")
def test_the_whole_suite_over_websocket(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--impl", "reference-ws", "--format", "json")
    assert code == 0
    report = json.loads(out)
    assert report["implementation"] == "reference-ws"
    outcomes = Counter(r["outcome"] for r in report["results"])
    # BG-7, with its reason: it depends on timing across the socket, so not every run; a
    # declared deviation that passes counts as a pass. Any other rule must pass.
    assert set(outcomes) <= {"pass", "deviation"}
    deviations = {r["rule"]: r["reason"] for r in report["results"] if r["outcome"] == "deviation"}
    assert set(deviations) <= {"BG-7"}
    assert all("socket" in reason for reason in deviations.values())


def test_json_report_of_a_selection_with_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--impl", MUST_BROKEN, "--rules", "DEDUP-*", "--format", "json")
    assert code == 1
    report = json.loads(out)
    assert report["implementation"] == "broken: dedup ignores the organization"
    assert [r["rule"] for r in report["results"]] == ids_of("DEDUP")
    outcomes = {r["rule"]: r["outcome"] for r in report["results"]}
    assert [rule for rule, outcome in outcomes.items() if outcome == "fail"] == ["DEDUP-3"]
    assert report["totals"]["MUST"]["fail"] == 1
    (failed,) = [r for r in report["results"] if r["outcome"] == "fail"]
    assert failed["reason"].startswith("dedup.md:"), failed["reason"]  # points at the page


def test_junit_report(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--rules", "BG-*", "--format", "junit")
    assert code == 0
    suite = ET.fromstring(out)
    assert suite.tag == "testsuite"
    bg = str(len(ids_of("BG")))
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == (bg, "0", "0")
    cases = suite.findall("testcase")
    assert [case.get("name", "").split()[0] for case in cases] == ids_of("BG")
    assert cases[0].get("classname") == "submission.MUST"
    assert suite.findall(".//failure") == []


def test_junit_report_has_a_failure_element_for_a_failing_rule(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "--impl", MUST_BROKEN, "--rules", "DEDUP-*", "--format", "junit")
    assert code == 1
    suite = ET.fromstring(out)
    assert (suite.get("tests"), suite.get("failures")) == (str(len(ids_of("DEDUP"))), "1")
    failing = [case for case in suite.iter("testcase") if case.find("failure") is not None]
    assert [case.get("name", "").split()[0] for case in failing] == ["DEDUP-3"]
    failure = failing[0].find("failure")
    assert failure is not None
    assert failure.get("message")
    assert failure.text == failure.get("message")


def test_markdown_report_links_every_rule(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--rules", "QUERY-*", "--format", "markdown")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "### reference"
    assert "| rule | level | title | outcome | reason |" in lines
    rows = [line for line in lines if line.startswith("| [")]
    assert len(rows) == len(ids_of("QUERY"))
    for row, rule_id in zip(rows, ids_of("QUERY"), strict=True):
        assert row.startswith(f"| [{rule_id}](../specs/queries.md#{rule_id}) | MUST | ")
        assert row.rstrip().endswith("| pass |  |")


def test_output_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    code, out, err = run(capsys, "--rules", "MGR-*", "--format", "json", "--output", str(target))
    assert code == 0
    assert out == ""
    assert f"wrote json report to {target}" in err
    assert [r["rule"] for r in json.loads(target.read_text())["results"]] == [
        "MGR-1", "MGR-2", "MGR-3", "MGR-4",
    ]  # fmt: skip


# ---------------------------------------------------------------- --list and --index


def test_list_prints_every_rule_and_runs_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--list", "--impl", "no.such.module:never_loaded")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == len(RULES)
    for line, rule in zip(lines, RULES, strict=True):
        assert line.split(maxsplit=2) == [rule.id, rule.level, rule.title]


def test_index_writes_the_committed_rules_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "rules.json"
    code, out, _ = run(capsys, "--index", str(target))
    assert code == 0
    assert out.strip() == f"wrote {len(RULES)} rules to {target}"
    committed = (SPECS / "rules.json").read_text(encoding="utf-8")
    assert json.loads(target.read_text(encoding="utf-8")) == json.loads(committed)
    assert target.read_text(encoding="utf-8") == committed


# ---------------------------------------------------------------- --impl and the exit status


def test_a_failing_must_rule_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--impl", MUST_BROKEN, "--rules", "DEDUP-3,DEDUP-4")
    assert code == 1
    assert "broken: dedup ignores the organization" in out
    flat = " ".join(out.split())
    assert "MUST: 1 passed, 1 failed" in flat
    assert "dedup.md:" in flat  # the reason names the failing line of the page


def test_only_a_failing_should_rule_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--impl", SHOULD_BROKEN, "--rules", "PROG-*", "--format", "json")
    assert code == 0
    report = json.loads(out)
    failed = [(r["rule"], r["level"]) for r in report["results"] if r["outcome"] == "fail"]
    assert failed == [("PROG-7", "SHOULD")]
    assert report["totals"]["MUST"]["fail"] == 0
    assert report["totals"]["SHOULD"]["fail"] == 1


def test_the_fake_task_manager_passes_too(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "--impl", "taskbed_harness._adapters:fake", "--rules", "CONF-*", "--format", "json"
    )
    assert code == 0
    report = json.loads(out)
    assert report["implementation"] == "fake"
    assert {r["outcome"] for r in report["results"]} == {"pass"}


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("nonsense", r"--impl takes 'package\.module:factory', got 'nonsense'"),
        ("no_colon.module", r"--impl takes 'package\.module:factory'"),
        (":factory", r"--impl takes 'package\.module:factory'"),
        ("no.such.module:x", r"cannot load --impl 'no\.such\.module:x'.*No module named 'no'"),
        ("taskbed_harness._adapters:nope", r"cannot load --impl .*has no attribute 'nope'"),
        ("test_teeth:BROKEN", r"--impl 'test_teeth:BROKEN' is not callable"),
    ],
    ids=[
        "no-colon",
        "module-only",
        "no-module",
        "no-such-module",
        "no-such-factory",
        "not-callable",
    ],
)
def test_a_bad_impl_spec_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], spec: str, says: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["conform", "--impl", spec, "--rules", "BG-1"])
    message = str(exited.value.code)
    assert message.startswith("taskbed conform: ")
    assert re.search(says, message), message
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("spec", ["builtins:dict", "builtins:object"])
def test_a_factory_that_returns_no_adapter_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["conform", "--impl", spec, "--rules", "BG-1"])
    message = str(refused.value)
    assert f"{spec}(): " in message
    assert "subclass taskbed_harness.Adapter" in message  # what to implement
    assert "'start'" in message  # what is missing
    assert "'request'" in message
    assert "docs/guides/conformance.md" in message  # where to read about it
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------- on PostgreSQL


@pytest.mark.slow
def test_the_whole_spec_passes_on_postgres(
    capsys: pytest.CaptureFixture[str], postgres_server: str
) -> None:
    code, out, _ = run(capsys, "--postgres", postgres_server, "--format", "json")
    report = json.loads(out)
    outcomes = Counter(r["outcome"] for r in report["results"])
    assert code == 0, [
        (r["rule"], r["reason"])
        for r in report["results"]
        if r["outcome"] not in ("pass", "skipped")
    ]
    socket_rules = sum(SOCKET.values())  # the in-process reference skips them
    assert outcomes == {"pass": len(RULES) - socket_rules, "skipped": socket_rules}
    with psycopg.connect(postgres_server) as check:  # every instance dropped its schema
        left = check.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'taskbed_conform_%'"
        ).fetchall()
    assert left == []


def test_fake_on_postgres_passes_the_dedup_rules(
    capsys: pytest.CaptureFixture[str], postgres_server: str
) -> None:
    code, out, _ = run(
        capsys, "--impl", "taskbed_harness:fake_implementation", "--postgres", postgres_server,
        "--rules", "DEDUP-*", "--format", "json",
    )  # fmt: skip
    report = json.loads(out)
    assert code == 0
    assert {r["outcome"] for r in report["results"]} == {"pass"}
    assert len(report["results"]) == len(ids_of("DEDUP"))


@pytest.mark.slow
@pytest.mark.rule("WS-2")
def test_the_socket_adapter_on_postgres_passes_the_ownership_and_socket_rules(
    capsys: pytest.CaptureFixture[str], postgres_server: str
) -> None:
    code, out, _ = run(
        capsys, "--impl", "reference-ws", "--postgres", postgres_server,
        "--rules", "OWN-*,WS-*,REC-3", "--format", "json",
    )  # fmt: skip
    report = json.loads(out)
    assert code == 0, [r for r in report["results"] if r["outcome"] != "pass"]
    assert {r["outcome"] for r in report["results"]} == {"pass"}
    assert len(report["results"]) == len(ids_of("OWN")) + len(ids_of("WS")) + 1


#: An adapter that is not the reference's: it brings its own store.
Foreign = type(
    "Foreign",
    (),
    {
        **dict.fromkeys(PROTOCOL_MEMBERS, lambda *a, **k: None),
        "name": "foreign",
        "capabilities": frozenset(),
        "sandbox_names": {},
        "deviations": {},
    },
)


def test_postgres_refuses_a_foreign_implementation(
    capsys: pytest.CaptureFixture[str], postgres_server: str
) -> None:
    with pytest.raises(SystemExit, match="built-in adapters"):
        run(capsys, "--impl", "test_conform_cli:Foreign", "--postgres", postgres_server)


def test_postgres_that_cannot_be_reached_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="cannot connect to --postgres"):
        run(capsys, "--postgres", "host=/nonexistent port=1 connect_timeout=1")
