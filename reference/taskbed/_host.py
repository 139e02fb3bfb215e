"""What the SDK's namespaces need from the runtime that hosts them: one small Protocol.

``Tasks`` and the other namespaces talk to ``Host``, never to ``Runtime`` itself, so
``_tasks.py`` does not import ``_runtime.py`` (which imports it): the import graph has no
circle. ``Runtime`` is the one implementation; a test may pass anything of this shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._manager import TaskManager
    from ._ports import ProcessRunner
    from ._threads import WorkerPool


class Host(Protocol):
    """The runtime as its namespaces see it."""

    @property
    def tasks_class(self) -> Callable[..., Any]:
        """Builds ``sdk.tasks``: ``tasks_class(host, session, module)``."""
        ...

    @property
    def namespaces(self) -> Mapping[str, Callable[[Any], Any]]:
        """name -> factory called with each new SDK (``ui``, ``i18n``, ``media``, ...)."""
        ...

    @property
    def manager(self) -> TaskManager | None:
        """The running task manager, or None before ``start()`` and after ``stop()``."""
        ...

    @property
    def pool(self) -> WorkerPool: ...

    @property
    def processes(self) -> ProcessRunner: ...

    @property
    def translations(self) -> Mapping[str, Mapping[str, str]]:
        """language -> key -> text, as ``i18n.t`` reads it."""
        ...

    @property
    def default_language(self) -> str: ...

    @property
    def media_blobs(self) -> dict[str, bytes]:
        """storage path -> bytes, as ``media.view`` reads and ``media.add`` writes them."""
        ...

    def registered_task(self, name: str) -> Callable[..., Any] | None: ...

    def task_names(self) -> Iterable[str]: ...

    def module_access(self, module: str) -> list[dict[str, Any]]: ...

    def allowed_paths(self, module: str) -> list[str] | None: ...

    def publish(self, stream_id: str, data: Any) -> None:
        """Send *data* on a client stream (``effects.publish_to_stream``)."""
        ...
