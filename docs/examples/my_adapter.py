"""A conformance adapter for "acme", a hypothetical implementation of ``module_sdk.tasks``.

Run the suite against it with::

    taskbed conform --impl my_adapter:make

To keep this example runnable, acme is played by the reference runtime with differences
that a real port might have: it names its sandbox variables ``ACME_*`` instead of
``MODULE_SDK_*``, it runs a plain (sync) registered function on the event loop instead of in
a worker thread, and it has nothing like ``wait(task_id)`` (so the adapter leaves ``wait``
out and the suite polls acme's queries). In your adapter, each method calls your own runtime
instead.
"""

import asyncio
import inspect

from taskbed import OSProcessRunner, Runtime
from taskbed_harness import Adapter

SANDBOX = (
    "MODULE_SDK_MODULE",
    "MODULE_SDK_SUBJECT_KIND",
    "MODULE_SDK_ACCESS",
    "MODULE_SDK_USER_ID",
    "MODULE_SDK_ORGANIZATION_ID",
    "MODULE_SDK_SESSION_KEY",
    "MODULE_SDK_REQUEST_ID",
)


class AcmeProcessRunner:
    """acme's process runner: the sandbox variables are called ACME_* (stand-in code)."""

    def __init__(self):
        self._os = OSProcessRunner()

    async def run(self, argv, *, cwd, env, timeout, capture_output):
        env = {k: v for k, v in env.items() if not k.startswith("ACME_")}
        for name in [k for k in env if k.startswith("MODULE_SDK_")]:
            env["ACME_" + name.removeprefix("MODULE_SDK_")] = env.pop(name)
        return await self._os.run(
            argv, cwd=cwd, env=env, timeout=timeout, capture_output=capture_output
        )

    def close(self):
        self._os.close()


class AcmeAdapter(Adapter):
    """What the conformance suite needs from acme (the ``Adapter`` protocol, version 2)."""

    name = "acme"
    # "restart" is left out: this acme keeps its tasks in memory, so the recovery rules
    # (REC-*) are reported as skipped.
    capabilities = frozenset({"registered_tasks", "modules", "processes"})

    def __init__(self):
        self.sandbox_names = {name: "ACME_" + name.removeprefix("MODULE_SDK_") for name in SANDBOX}
        self.deviations = {
            "BG-10": "acme runs plain registered functions on the event loop; "
            "modules must register async functions for blocking work (ACME-1234)",
        }
        # Called once per rule: build, do not start. start() runs on the suite's event loop.
        self._processes = AcmeProcessRunner()
        self.runtime = Runtime(process_runner=self._processes)

    async def start(self):
        await self.runtime.start()

    async def stop(self):
        await self.runtime.stop()
        self._processes.close()

    def request(self, *, session, module, request_id):
        return self.runtime.request(session=session, module=module, request_id=request_id)

    def sdk(self, *, session, module):
        return self.runtime.sdk(session=session, module=module)

    def connect(self, user_id, organization_id=None, credentials=None):
        return self.runtime.connect(user_id, organization_id)

    def register_task(self, name, func):
        if not inspect.iscoroutinefunction(func):
            plain = func

            async def on_the_loop(**kwargs):  # acme's behaviour: no worker thread
                await asyncio.sleep(0)
                return plain(**kwargs)

            func = on_the_loop
        self.runtime.register_task(name, func)

    def register_module(self, name, access):
        self.runtime.register_module(name, access)


def make():
    """The factory ``taskbed conform --impl my_adapter:make`` calls, once per rule."""
    return AcmeAdapter()
