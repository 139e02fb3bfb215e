"""Shared fixtures of our own tests: a runtime over each store, sessions, requests."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from taskbed import MemoryStore, ModuleSDK, Runtime, SQLiteStore, TaskStore
from taskbed_harness import HarnessRuntime

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `from rules import RULES`

import pgcluster

Request = Callable[..., AbstractAsyncContextManager[ModuleSDK]]
"""The type of the ``request_as`` fixture."""


async def settle(rounds: int = 25) -> None:
    """Let every ready callback run (exact when no thread or I/O is involved)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def kinds(messages: list[dict[str, Any]]) -> list[str]:
    """The kind (the one key) of each message, in order."""
    return [next(iter(m)) for m in messages]


def make_session(user: Any = 7, org: Any = 10, key: str | None = "s1") -> dict[str, Any]:
    """A session dict as the platform passes it."""
    return {"user": {"id": user, "organization_id": org}, "session_key": key}


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> TaskStore:
    """Each store the reference ships: rule tests run over both."""
    if request.param == "memory":
        return MemoryStore()
    return SQLiteStore(tmp_path / "tasks.db")


@pytest.fixture(params=["reference", "fake"])
def runtime_class(request: pytest.FixtureRequest) -> type[Runtime]:
    """The reference task manager, and the harness's fake one: both obey every rule."""
    return Runtime if request.param == "reference" else HarnessRuntime


@pytest_asyncio.fixture
async def rt(store: TaskStore, runtime_class: type[Runtime]) -> AsyncIterator[Runtime]:
    """A started runtime over the store; stopped (and its store closed) after the test."""
    async with runtime_class(store=store) as runtime:
        yield runtime
    store.close()


@pytest.fixture
def request_as(
    rt: Runtime,
) -> Callable[..., AbstractAsyncContextManager[ModuleSDK]]:
    """``async with request_as(user=7, org=10, module="mod") as sdk:`` opens a request."""

    def open_request(
        user: Any = 7, org: Any = 10, module: str = "mod", request_id: str = "r1",
        key: str | None = "s1",
    ) -> AbstractAsyncContextManager[ModuleSDK]:  # fmt: skip
        return rt.request(
            session=make_session(user, org, key), module=module, request_id=request_id
        )

    return open_request


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The DSN of a PostgreSQL server for this test session (see tests/pgcluster.py).

    A throwaway cluster unless ``TASKBED_POSTGRES_DSN`` names a server. Without PostgreSQL
    the tests that need it are skipped, except where ``TASKBED_REQUIRE_POSTGRES=1`` (CI)
    makes that an error.
    """
    try:
        context = pgcluster.server()
        dsn = context.__enter__()
    except LookupError as exc:
        if os.environ.get("TASKBED_REQUIRE_POSTGRES") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        yield dsn
    finally:
        context.__exit__(None, None, None)


@pytest.fixture
def postgres_dsn(postgres_server: str) -> Iterator[str]:
    """A DSN whose search_path is a new empty schema, dropped after the test."""
    with pgcluster.fresh_schema(postgres_server) as dsn:
        yield dsn
