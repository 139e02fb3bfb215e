"""Property-based tests with hypothesis: strategies, and a state machine on virtual time.

The module code comes first; in your project you would import it instead.
"""

import asyncio

from hypothesis import given, settings
from hypothesis.stateful import invariant, precondition, rule
from hypothesis.strategies import sampled_from

from taskbed_harness import Harness, new_virtual_loop
from taskbed_harness.strategies import TaskbedMachine, task_keys

# ---------------------------------------------------------------- the module code


async def start_import(sdk, name, key):
    """A module action: import a file in the background, once at a time per key."""

    async def work():
        await asyncio.sleep(60)
        return name

    return await sdk.tasks.run_background(work(), f"Import {name}", task_key=key)


# ---------------------------------------------------------------- a property


@settings(max_examples=30)
@given(key=task_keys())
def test_a_key_gives_one_task_at_a_time(key):
    async def check():
        async with Harness() as tb, tb.request() as sdk:
            first = await start_import(sdk, "a.csv", key)
            second = await start_import(sdk, "b.csv", key)
            assert (first == second) == bool(key)  # None and "" mean "no key"
            await tb.wait(first)
            third = await start_import(sdk, "c.csv", key)
            assert third != first  # a finished task no longer holds its key

    loop = new_virtual_loop()  # one fresh virtual loop per example
    try:
        loop.run_until_complete(check())
    finally:
        loop.close()


# ---------------------------------------------------------------- a state machine


class Imports(TaskbedMachine):
    """Random sequences of imports, releases and cancels; one active import per key."""

    # TaskbedMachine.options holds every submission (HarnessOptions(hold=True)).

    def __init__(self):
        super().__init__()
        self.sdk = self.tb.sdk()
        self.ids = []

    @rule(key=sampled_from(["import.a", "import.b"]))
    def submit(self, key):
        self.ids.append(self.run(start_import(self.sdk, "file.csv", key)))

    @precondition(lambda self: self.tb.manager.held)
    @rule()
    def release_oldest(self):
        self.tb.manager.release()
        self.run(asyncio.sleep(61))  # long enough for the import to finish

    @precondition(lambda self: self.ids)
    @rule(which=sampled_from([0, -1]))
    def cancel(self, which):
        self.run(self.tb.manager.cancel(self.ids[which]))

    @invariant()
    def one_active_import_per_key(self):
        rows = self.sdk.tasks.list_user_tasks(7, organization_id=10)
        active = [r["taskKey"] for r in rows if r["status"] in ("pending", "running")]
        assert len(active) == len(set(active))


TestImports = Imports.TestCase
TestImports.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
