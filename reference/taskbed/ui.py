"""A minimal UI vocabulary: enough to build confirmation surfaces and task cards.

Components are plain dicts on the wire. ``Builder`` collects them in order::

    >>> from taskbed import ui
    >>> ui.Builder().add(ui.Text("Delete?")).add(ui.Button("Yes", value="yes")).build()
    [{'type': 'text', 'text': 'Delete?'}, {'type': 'button', 'label': 'Yes', 'value': 'yes'}]
"""

from __future__ import annotations

from typing import Any

Component = dict[str, Any]

__all__ = ("BackgroundTask", "Builder", "Button", "Component", "Text")


def Text(text: str) -> Component:
    """A paragraph of text."""
    return {"type": "text", "text": str(text)}


def Button(label: str, *, value: Any = None, action: str | None = None) -> Component:
    """A button; its *value* is what the client sends back as the response when pressed."""
    component: Component = {
        "type": "button",
        "label": str(label),
        "value": label if value is None else value,
    }
    if action is not None:
        component["action"] = action
    return component


def BackgroundTask(task_id: str, *, label: str | None = None) -> Component:
    """A live card that shows a background task's progress and outcome."""
    component: Component = {"type": "backgroundTask", "taskId": task_id}
    if label is not None:
        component["label"] = label
    return component


class Builder:
    """An ordered list of components, built fluently."""

    def __init__(self, *components: Component) -> None:
        self._components: list[Component] = list(components)

    def add(self, component: Component) -> Builder:
        """Append *component* and return the builder."""
        if not isinstance(component, dict) or "type" not in component:
            raise TypeError(f"expected a component such as ui.Text('...'), got {component!r}")
        self._components.append(component)
        return self

    def build(self) -> list[Component]:
        """The components, as the plain dicts sent to the client."""
        return [dict(c) for c in self._components]

    def __len__(self) -> int:
        return len(self._components)
