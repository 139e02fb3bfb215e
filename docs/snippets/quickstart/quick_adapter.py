"""A conformance adapter: the reference runtime on an in-memory store, as an example."""

from taskbed import MemoryStore, Runtime
from taskbed_harness import SANDBOX_VARIABLES


class InMemoryRuntime:
    name = "reference, in memory"
    capabilities = frozenset({"registered_tasks", "modules", "processes"})  # no "restart"

    def __init__(self):
        self.sandbox_names = {name: name for name in SANDBOX_VARIABLES}  # ours: the same names
        self.deviations = {}  # rule ID -> why we knowingly differ
        self.runtime = Runtime(store=MemoryStore())

    async def start(self):
        await self.runtime.start()

    async def stop(self):
        await self.runtime.stop()

    def request(self, *, session, module, request_id):
        return self.runtime.request(session=session, module=module, request_id=request_id)

    def sdk(self, *, session, module):
        return self.runtime.sdk(session=session, module=module)

    def connect(self, user_id, organization_id=None):
        return self.runtime.connect(user_id, organization_id)

    async def wait(self, task_id, timeout=None):
        return await self.runtime.wait(task_id, timeout)

    def register_task(self, name, func):
        self.runtime.register_task(name, func)

    def register_module(self, name, access):
        self.runtime.register_module(name, access)

    async def restart(self, *, crash=False):
        raise NotImplementedError("no 'restart' capability: those rules are skipped")


def make():
    """The factory: taskbed conform --impl quick_adapter:make"""
    return InMemoryRuntime()
