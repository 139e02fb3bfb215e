"""Loop choice in a user's project: taskbed tests always get the virtual loop, others what the
project's own ``pytest_asyncio_loop_factories`` hooks (or ``event_loop_policy``) give them.

Issue 12, point 1: a project's hook returning ``{"asyncio": ..., "project": ...}`` used to
make every taskbed test error at setup, and taskbed's hook answered for tests that do not use
it, overriding the project's choice.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

PROJECT_HOOK = """
import asyncio

class ProjectLoop(asyncio.SelectorEventLoop):
    pass

def pytest_asyncio_loop_factories(config, item):
    return {"asyncio": asyncio.new_event_loop, "project": ProjectLoop}
"""

TESTS = """
import asyncio
import pytest
from taskbed_harness import VirtualEventLoop

pytestmark = pytest.mark.asyncio

async def test_taskbed(taskbed):
    assert isinstance(asyncio.get_running_loop(), VirtualEventLoop)
    await asyncio.sleep(3600)
    assert taskbed.clock.monotonic() == 3600

async def test_client(taskbed_client):
    assert isinstance(asyncio.get_running_loop(), VirtualEventLoop)

async def test_plain():
    print("LOOP", type(asyncio.get_running_loop()).__name__)
"""


def run(pytester: pytest.Pytester, *, mode: str, extra_ini: str = "") -> pytest.RunResult:
    pytester.makeini(
        f"""
        [pytest]
        asyncio_mode = {mode}
        asyncio_default_fixture_loop_scope = function
        filterwarnings =
            error
            {extra_ini}
        """
    )
    pytester.makepyfile(test_module=TESTS)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "-s", timeout=300)


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_a_projects_loop_factories_leave_taskbed_tests_alone(
    pytester: pytest.Pytester, mode: str
) -> None:
    pytester.makeconftest(PROJECT_HOOK)
    result = run(pytester, mode=mode)
    # taskbed tests run once, on the virtual loop; the plain test once per project factory
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines_random(
        [
            "PASSED test_module.py::test_taskbed",
            "PASSED test_module.py::test_client",
            "PASSED test_module.py::test_plain[[]asyncio[]]",
            "PASSED test_module.py::test_plain[[]project[]]",
            "*LOOP ProjectLoop*",
            "*LOOP _UnixSelectorEventLoop*",
        ]
    )


def test_a_marker_naming_project_factories_still_gets_the_virtual_loop(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(PROJECT_HOOK)
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = strict
        asyncio_default_fixture_loop_scope = function
        filterwarnings = error
        """
    )
    pytester.makepyfile(
        test_module="""
import asyncio
import pytest
from taskbed_harness import VirtualEventLoop

@pytest.mark.asyncio(loop_factories=["project"])
async def test_named(taskbed):
    assert isinstance(asyncio.get_running_loop(), VirtualEventLoop)
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_an_event_loop_policy_override_still_reaches_plain_tests(
    pytester: pytest.Pytester, mode: str
) -> None:
    pytester.makeconftest(
        """
import asyncio
import pytest

class ProjectLoop(asyncio.SelectorEventLoop):
    pass

class ProjectPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self):
        return ProjectLoop()

@pytest.fixture(scope="session")
def event_loop_policy():
    return ProjectPolicy()
"""
    )
    # overriding event_loop_policy is deprecated in pytest-asyncio 1.x: the project knows
    result = run(pytester, mode=mode, extra_ini="ignore::pytest.PytestDeprecationWarning")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*LOOP ProjectLoop*"])


def test_a_second_plugins_factories_reach_plain_tests_only(pytester: pytest.Pytester) -> None:
    # A plugin loaded with -p, like an installed one: registered before conftests, so the
    # order of hook calls differs from the conftest case above.
    pytester.makepyfile(
        otherplugin="""
import asyncio

class OtherLoop(asyncio.SelectorEventLoop):
    pass

def pytest_asyncio_loop_factories(config, item):
    return {"other": OtherLoop}
"""
    )
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = strict
        asyncio_default_fixture_loop_scope = function
        filterwarnings = error
        """
    )
    pytester.makepyfile(test_module=TESTS)
    pytester.syspathinsert()
    result = pytester.runpytest_subprocess(
        "-p", "otherplugin", "-p", "no:cacheprovider", "-s", timeout=300
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*LOOP OtherLoop*"])


def test_a_test_that_hides_its_taskbed_fixture_is_told_how_to_name_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = strict
        asyncio_default_fixture_loop_scope = function
        filterwarnings = error
        """
    )
    pytester.makepyfile(
        test_module="""
import pytest

def test_dynamic(request):
    request.getfixturevalue("taskbed")
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*this test uses the taskbed fixtures, but it runs on*"])
    result.stdout.no_fnmatch_line("*run the test with the taskbed pytest fixtures*")
