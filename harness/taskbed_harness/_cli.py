"""The ``taskbed`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any


async def _demo(db: str | None) -> int:
    from taskbed import MemoryStore, Runtime, SQLiteStore, TaskStore, ui

    store: TaskStore = SQLiteStore(db) if db else MemoryStore()
    session = {"user": {"id": 7, "organization_id": 10}, "session_key": "demo-session"}
    async with Runtime(store=store) as rt:
        conn = rt.connect(user_id=7, organization_id=10)
        async with rt.request(session=session, module="demo", request_id="req-1") as sdk:

            async def job() -> dict[str, object]:
                me = ids[0]
                for step in range(1, 5):
                    await asyncio.sleep(0.01)
                    await sdk.tasks.update_progress(me, step / 4, checkpoint={"step": step})
                answer = await sdk.tasks.request_confirmation(
                    me, ui.Builder().add(ui.Text("q", "Publish?")).add(ui.Button("yes", "Yes"))
                )
                done = await sdk.tasks.run_subprocess(["echo", "$HOME; not a shell"])
                return {"answer": answer, "echo": done.stdout.strip()}

            ids: list[str] = []
            ids.append(await sdk.tasks.run_background(job(), "Demo job", task_key="demo.job"))
            again = await sdk.tasks.run_background(job(), "Demo job", task_key="demo.job")
            print(f"submitted {ids[0]}; same key again -> same id: {again == ids[0]}")
        while True:  # answer the confirmation as the owner, like a browser would
            message = await conn.receive()
            kind, body = next(iter(message.items()))
            print(f"client <- {kind} {json.dumps(body)[:110]}")
            if kind == "backgroundTaskConfirmation":
                await conn.send({"backgroundTaskResponse": {"taskId": ids[0], "response": "yes"}})
            if kind in ("backgroundTaskCompleted", "backgroundTaskError"):
                break
        row = await rt.wait(ids[0])
        print(
            f"final row: status={row['status']} progress={row['progress']} result={row['result']}"
        )
    return 0 if row["status"] == "completed" else 1


#: ``--impl`` names that need no ``module:factory``.
_SHORT_NAMES = {
    "reference": "taskbed_harness:reference_implementation",
    "reference-ws": "taskbed_harness:reference_ws_implementation",
    "reference-jsonl": "taskbed_harness:reference_jsonl_implementation",
    "fake": "taskbed_harness:fake_implementation",
}


def _serve(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("websockets") is None:
        print(
            "taskbed serve needs the serve extra (websockets); install it with: "
            "python -m pip install '<path to taskbed>[serve]'",
            file=sys.stderr,
        )
        return 2
    from ._serve import serve_forever

    return asyncio.run(serve_forever(args.module, db=args.db, host=args.host, port=args.port))


def _load_factory(spec: str) -> Callable[[], Any]:
    import importlib

    from ._protocol import ProtocolError, as_adapter

    spec = _SHORT_NAMES.get(spec, spec)
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(
            f"taskbed conform: --impl takes 'package.module:factory', got {spec!r} "
            "(see docs/guides/conformance.md)"
        )
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # an adapter module next to the user, as `python -m` would
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"taskbed conform: cannot load --impl {spec!r}: {exc}") from None
    if not callable(factory):
        raise SystemExit(f"taskbed conform: --impl {spec!r} is not callable")
    sample = factory()  # adapters are cheap to create; start() is where work begins
    try:
        as_adapter(sample, f"{spec}()")
    except ProtocolError as exc:
        raise SystemExit(f"taskbed conform: {exc}") from None
    return factory  # type: ignore[no-any-return]


def _on_postgres(factory: Callable[[], Any], spec: str, dsn: str) -> Callable[[], Any]:
    """The built-in adapter *factory* makes, on PostgreSQL at *dsn*."""
    import functools

    from ._adapters import ReferenceImplementation

    sample = factory()
    if not isinstance(sample, ReferenceImplementation):
        raise SystemExit(
            f"taskbed conform: --postgres runs the built-in adapters on PostgreSQL; {spec} is "
            "another implementation (give it its own store instead; see "
            "docs/guides/postgres.md)"
        )
    try:
        import psycopg
    except ImportError:
        raise SystemExit(
            "taskbed conform: --postgres needs psycopg 3: "
            "python -m pip install '<path to taskbed>[postgres]'"
        ) from None
    try:
        psycopg.connect(dsn, connect_timeout=10).close()
    except psycopg.Error as exc:
        raise SystemExit(f"taskbed conform: cannot connect to --postgres {dsn!r}: {exc}") from None
    return functools.partial(type(sample), postgres=dsn)


def _missing_harness_extra() -> list[str]:
    import importlib.util

    needed = ("time_machine", "rich")  # the virtual clock's wall time; the report table
    return [name for name in needed if importlib.util.find_spec(name) is None]


def _conform(args: argparse.Namespace) -> int:
    from pathlib import Path

    missing = _missing_harness_extra()
    if missing:
        print(
            f"taskbed conform needs the harness extra (missing: {', '.join(missing)}); "
            "install it with: python -m pip install '<path to taskbed>[harness]'",
            file=sys.stderr,
        )
        return 2

    from ._report import RENDERERS, failed_must
    from ._spec import load_rules, rules_index, select

    rules = select(load_rules(Path(args.specs) if args.specs else None), args.rules)
    if not rules:
        print(f"taskbed conform: no rule matches {args.rules}", file=sys.stderr)
        return 2
    if args.list:
        for rule in rules:
            print(f"{rule.id:<10} {rule.level:<7} {rule.title}")
        return 0
    if args.index:
        Path(args.index).write_text(rules_index(rules), encoding="utf-8")
        print(f"wrote {len(rules)} rules to {args.index}")
        return 0
    factory = _load_factory(args.impl)
    if args.postgres:
        factory = _on_postgres(factory, args.impl, args.postgres)
    name = str(getattr(factory(), "name", args.impl))  # checked by _load_factory
    results = _run_with_progress(rules, factory, name)
    text = RENDERERS[args.format](results, name)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.format} report to {args.output}", file=sys.stderr)
    elif args.format == "table":
        _print_table(results, name)
    else:
        sys.stdout.write(text)
    return 1 if failed_must(results) else 0


def _run_with_progress(rules: list[Any], factory: Callable[[], Any], name: str) -> list[Any]:
    from ._conform import run_suite

    if not sys.stderr.isatty():
        return run_suite(rules, factory)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        job = bar.add_task(f"judging {name}", total=len(rules))
        return run_suite(rules, factory, progress=lambda r: bar.update(job, advance=1))


def _print_table(results: list[Any], name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from ._report import root_causes, summary_line

    style = {"pass": "green", "fail": "bold red", "skipped": "yellow", "deviation": "cyan"}
    table = Table(title=f"taskbed conformance: {name}", title_justify="left")
    for column in ("rule", "level", "title", "outcome"):
        table.add_column(column, no_wrap=column != "title")
    for r in results:
        table.add_row(
            r.rule.id, r.rule.level, r.rule.title, f"[{style[r.outcome.value]}]{r.outcome.value}[/]"
        )
    console = Console(width=max(100, Console().width))
    console.print(table)
    explained = [r for r in results if r.reason]
    if explained:  # below the table, so a long reason never squeezes its columns
        console.print()
        for r in explained:
            console.print(f"[bold]{r.rule.id}[/] {r.outcome.value}: {r.reason}", highlight=False)
        console.print()
    for group in root_causes(results):  # one deviation, many rules: say it once
        console.print(f"[bold]{group.sentence()}[/]", highlight=False)
        console.print(f"  rules: {', '.join(group.rules)}", highlight=False)
        console.print()
    wall = sum(r.wall for r in results)
    virtual = sum(r.virtual for r in results)
    console.print(summary_line(results))
    console.print(f"{wall:.2f} s wall for {virtual:.0f} s of virtual time")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("taskbed")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree, not installed
        import taskbed

        return taskbed.__version__


def main(argv: Sequence[str] | None = None) -> int:
    """The ``taskbed`` command; returns its exit status.

    Output cut short by a closed pipe (``taskbed conform --list | head``) ends quietly with
    status 141, as a command killed by SIGPIPE would, instead of a BrokenPipeError traceback.
    """
    try:
        status = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, inside the try
    except BrokenPipeError:
        # Python's documented recipe: point stdout at devnull so the flush at exit is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
    return status


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="taskbed",
        description="Reference runtime, harness and conformance suite for module_sdk.tasks.",
    )
    parser.add_argument("--version", action="version", version=f"taskbed {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a short job on the reference runtime")
    demo.add_argument("--db", help="a SQLite file to persist tasks in (default: in memory)")
    conform = commands.add_parser(
        "conform",
        help="judge an implementation rule by rule against the executable spec",
        description="Run the spec pages as a conformance suite. Exit status 1 when a MUST "
        "rule fails.",
    )
    conform.add_argument(
        "--impl",
        default="taskbed_harness:reference_implementation",
        help="the adapter factory, 'package.module:factory', or one of the short names "
        "'reference' (the default: the reference runtime), 'reference-ws' (the reference "
        "runtime with its clients over WebSocket; needs the serve extra), 'reference-jsonl' "
        "(the reference runtime in a child process, judged over the JSON-lines protocol) and "
        "'fake' (the harness's fake task manager)",
    )
    conform.add_argument(
        "--rules", action="append", metavar="PATTERN", help="only rules matching, e.g. 'DEDUP-*'"
    )
    conform.add_argument(
        "--format", choices=("table", "json", "junit", "markdown"), default="table"
    )
    conform.add_argument(
        "--postgres",
        metavar="DSN",
        help="run the reference (or the fake) on PostgreSQL at DSN: each rule gets a new "
        "schema there, dropped afterwards (needs the postgres extra)",
    )
    conform.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE")
    conform.add_argument("--specs", metavar="DIR", help="read spec pages from DIR")
    conform.add_argument("--list", action="store_true", help="list the rules and exit")
    conform.add_argument("--index", metavar="FILE", help="write the rules index (rules.json)")
    serve = commands.add_parser(
        "serve",
        help="serve a module's actions and a live page of its tasks on localhost",
        description="Start the reference runtime on SQLite with the module's actions, and "
        "serve a page where you pick a user, call an action and watch that user's tasks live "
        "(needs the serve extra). See docs/guides/live-view.md.",
    )
    serve.add_argument(
        "module", help="a Python file with actions: async def f(ctx, session, module_sdk)"
    )
    serve.add_argument(
        "--db",
        default="taskbed-serve.db",
        help="the SQLite file of the tasks (default: %(default)s)",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="a loopback address (default: %(default)s)"
    )
    serve.add_argument(
        "--port", type=int, default=8765, help="0 picks a free one (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "demo":
        return asyncio.run(_demo(args.db))
    if args.command == "conform":
        return _conform(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse exits
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
