"""Hypothesis strategies for the tasks domain, and a stateful-machine base on a virtual loop.

Hypothesis has no async stateful testing, so ``TaskbedMachine`` owns a fresh virtual-time
event loop and a started ``Harness`` per example, and runs each rule's coroutine to completion
on it with ``self.run(...)``.

    >>> from taskbed_harness.strategies import commands
    >>> commands().example()  # doctest: +SKIP
    ['a', '0']
"""

from __future__ import annotations

import math
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine

from ._clock import new_virtual_loop
from ._harness import Harness, HarnessOptions

T = TypeVar("T")

__all__ = (
    "TaskbedMachine",
    "commands",
    "invalid_commands",
    "organization_ids",
    "progress_values",
    "sessions",
    "task_keys",
    "user_ids",
)

_TOKEN_ALPHABET = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")


def tokens() -> st.SearchStrategy[str]:
    """One valid command token: non-blank, no NUL (shell metacharacters included on purpose)."""
    return st.text(_TOKEN_ALPHABET, min_size=1, max_size=20).filter(lambda s: s.strip() != "")


def commands(program: str | None = None) -> st.SearchStrategy[list[str]]:
    """Valid ``run_subprocess`` commands: non-empty lists of non-blank tokens."""
    head = st.just(program) if program is not None else tokens()
    return st.builds(lambda h, rest: [h, *rest], head, st.lists(tokens(), max_size=6))


def invalid_commands() -> st.SearchStrategy[object]:
    """Commands ``run_subprocess`` must reject: str, tuple, None, [], blank or non-str tokens."""
    return st.one_of(
        st.text(max_size=20),
        st.tuples(tokens()),
        st.none(),
        st.just([]),
        st.builds(lambda c, blank: [*c, blank], commands(), st.sampled_from(["", " ", "\t"])),
        st.builds(lambda c, bad: [*c, bad], commands(), st.one_of(st.integers(), st.binary())),
    )


def task_keys() -> st.SearchStrategy[str | None]:
    """Task keys, including None, "" (no key), LIKE wildcards and non-ASCII characters."""
    piece = st.sampled_from(["mod", "job", "_", "%", ".", "a_b", "é", "🙂", "x"])
    return st.one_of(st.none(), st.just(""), st.lists(piece, min_size=1, max_size=4).map("".join))


def user_ids() -> st.SearchStrategy[Any]:
    return st.one_of(st.integers(1, 5), st.sampled_from(["u1", "u2"]))


def organization_ids() -> st.SearchStrategy[Any]:
    """Organization ids: None, ints and strings (10 and "10" are different organizations)."""
    return st.one_of(st.none(), st.integers(1, 3), st.sampled_from(["1", "org-a"]))


def sessions() -> st.SearchStrategy[dict[str, Any]]:
    """Session dicts as the platform passes them."""
    return st.builds(
        lambda user, org, key: {"user": {"id": user, "organization_id": org}, "session_key": key},
        user_ids(),
        organization_ids(),
        st.one_of(st.none(), st.text(min_size=1, max_size=8)),
    )


def progress_values() -> st.SearchStrategy[float]:
    """Any float, including NaN, infinities and values outside [0, 1]."""
    return st.floats(allow_nan=True, allow_infinity=True)


def clamped(value: float) -> float | None:
    """What ``update_progress`` stores for *value*: clamped, or None (rejected) when non-finite."""
    return min(1.0, max(0.0, value)) if math.isfinite(value) else None


class TaskbedMachine(RuleBasedStateMachine):
    """A ``RuleBasedStateMachine`` with its own virtual loop and started ``Harness``.

    Subclasses write rules that call ``self.run(coroutine)``; ``self.tb`` is the harness.
    Override ``options`` to change the harness options.
    """

    options = HarnessOptions(hold=True)

    def __init__(self) -> None:
        super().__init__()
        self.loop = new_virtual_loop()
        self.tb = Harness(self.options, clock=self.loop.clock)
        self.run(self.tb.start())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run *coro* to completion on this machine's virtual loop."""
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.tb.stop())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
