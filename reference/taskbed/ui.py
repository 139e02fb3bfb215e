"""The platform's UI vocabulary: components, the ``Builder`` and its protocol payloads.

Module code writes ``module_sdk.ui.Text("t", "Replace?")``, ``module_sdk.ui.Button(...)``,
``module_sdk.ui.BackgroundTask("card", task_id=task_id)`` and
``module_sdk.ui.Builder.build_state_update_payload({...}, scope="page")`` as the platform
documents them. The names, signatures and serialized dicts follow the platform's Apache-2.0 SDK
(``democrai/sdk/components`` and ``democrai/sdk/ui.py``, 0.0.1b4); the code is ours.

A component serializes to one dict: its id, ``{"<Type>": props}`` and its children::

    >>> from taskbed import ui
    >>> ui.Text("q", "Delete?").to_dict()
    {'id': 'q', 'component': {'Text': {'text': {'literalString': 'Delete?'}}}, 'children': {'explicitList': []}}
    >>> [c["id"] for c in ui.Builder().add(ui.Text("q", "Delete?")).add(ui.Button("y", "Yes")).build()]
    ['q', 'y']

``components_of(...)`` finds the component dicts inside anything a module returns or a client
receives (a response, a confirmation message, a surface update), for assertions.
"""  # noqa: E501 - the doctest output is one line

# The platform's constructors take their options positionally; ours keep its signatures.
# ruff: noqa: PLR0917

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

__all__ = (
    "Alert",
    "BackgroundTask",
    "Badge",
    "Builder",
    "Button",
    "Column",
    "Component",
    "Progress",
    "Row",
    "Text",
    "Title",
    "bound_text",
    "components_of",
    "props_of",
    "serialize_components",
)

_BOUND_KINDS = frozenset({"store", "data", "action", "literal"})


def bound_text(value: Any) -> Any:
    """A text prop as the platform sends it: a binding stays as is, anything else is literal."""
    if isinstance(value, dict) and (value.get("type") in _BOUND_KINDS or "path" in value):
        return value
    if hasattr(value, "to_dict"):
        return value
    return {"literalString": "" if value is None else str(value)}


def _serialize(value: Any) -> Any:
    if isinstance(value, Component):
        return value.to_dict()
    if isinstance(value, dict):
        return {key: _serialize(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_serialize(item) for item in value]
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return _serialize(to_dict())
    return value


class Component:
    """The base of every component: an id, props, children, and capabilities.

    Args:
        id: the component's id on its surface (the platform requires one for every component).
        permissions: permissions the client needs to see it.
    """

    type: ClassVar[str] = "Component"

    def __init__(self, id: str, permissions: list[str] | None = None) -> None:
        if not isinstance(id, str):
            raise TypeError(
                f"a component's first argument is its id (a str), got {id!r}; the platform's "
                f"components take the id first: ui.{type(self).__name__}('my_id', ...) "
                "(see docs/guides/testing-modules.md#the-module-surface)"
            )
        self.id = id
        self.props: dict[str, Any] = {}
        self.permissions = list(permissions) if permissions is not None else []
        self.children: list[str | Component] = []
        self._capabilities: set[str] = set()

    def set_prop(self, key: str, value: Any) -> Component:
        """Set a prop; returns the component."""
        self.props[key] = value
        return self

    def set_action(self, name: str, context: dict[str, Any] | None = None) -> Component:
        """The action the client dispatches, with its context (``{"name", "context"}``)."""
        return self.set_prop(
            "action", {"name": name, "context": {} if context is None else context}
        )

    def allow(self, *capabilities: str) -> Component:
        """Let the client update these ``prop.action`` capabilities (e.g. ``"value.set"``)."""
        self._capabilities.update(c for c in capabilities if c)
        return self

    def interactive(self) -> Component:
        """Mark the component interactive (``visible.set`` and ``enabled.set``)."""
        return self.allow("visible.set", "enabled.set")

    def to_dict(self) -> dict[str, Any]:
        """The component as sent to the client."""
        props = {key: _serialize(value) for key, value in self.props.items()}
        if self.permissions and "required_permissions" not in props:
            props["required_permissions"] = list(self.permissions)
        if self._capabilities:
            props["capabilities"] = sorted(self._capabilities)
        data: dict[str, Any] = {
            "id": self.id,
            "component": {self.type: props},
            "children": {
                "explicitList": [_serialize(c) if isinstance(c, Component) else c
                                 for c in self.children],
            },
        }  # fmt: skip
        if self.permissions:
            data["permissions"] = list(self.permissions)
        return data

    def __repr__(self) -> str:
        return f"<ui.{type(self).__name__} id={self.id!r}>"


# ---------------------------------------------------------------- components


class Text(Component):
    """Plain text: ``Text(id, text)``; *text* is a string or a bound value."""

    type = "Text"

    def __init__(self, id: str, text: Any) -> None:
        super().__init__(id)
        self.set_prop("text", bound_text(text))


class Title(Component):
    """A heading: ``Title(id, text, level=3)``."""

    type = "Title"

    def __init__(self, id: str, text: Any, level: int = 3) -> None:
        super().__init__(id)
        self.set_prop("text", bound_text(text))
        self.set_prop("level", level)


class Button(Component):
    """A button that dispatches *action* with *params* as its context when pressed.

    ``Button(id, label, action=None, params=None, icon=None, variant="default", mode="solid",
    appearance=None, btnsize="normal", shape="default")``, as the platform's. An *action*
    given as a dict (an action spec) is kept as is, with *params* as the ``params`` prop.
    """

    type = "Button"

    def __init__(
        self,
        id: str,
        label: str,
        action: str | dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        icon: str | None = None,
        variant: str = "default",
        mode: str = "solid",
        appearance: str | None = None,
        btnsize: str = "normal",
        shape: str = "default",
    ) -> None:
        super().__init__(id)
        self.interactive()
        self.set_prop("label", {"literalString": label})
        self.set_prop("variant", variant)
        self.set_prop("mode", mode)
        if appearance:
            self.set_prop("appearance", appearance)
        self.set_prop("btnsize", btnsize)
        self.set_prop("shape", shape)
        if icon:
            self.set_prop("icon", {"iconName": icon})
        if isinstance(action, dict):
            self.set_prop("action", action)
            if params is not None:
                self.set_prop("params", dict(params))
        elif action:
            self.set_action(action, params)


class BackgroundTask(Component):
    """A live card of a background task: ``BackgroundTask(id, task_id=..., on_...=...)``.

    The ``on_*`` handlers (action names or specs) are sent only when given.
    """

    type = "BackgroundTask"

    def __init__(
        self,
        id: str,
        task_id: str,
        on_finish: Any = None,
        on_started: Any = None,
        on_progress: Any = None,
        on_completed: Any = None,
        on_error: Any = None,
        on_confirmation: Any = None,
        on_update: Any = None,
        on_event_notification: Any = None,
    ) -> None:
        super().__init__(id)
        self.set_prop("task_id", task_id)
        handlers = {
            "on_finish": on_finish,
            "on_started": on_started,
            "on_progress": on_progress,
            "on_completed": on_completed,
            "on_error": on_error,
            "on_confirmation": on_confirmation,
            "on_update": on_update,
            "on_event_notification": on_event_notification,
        }
        for name, handler in handlers.items():
            if handler:
                self.set_prop(name, handler)


class Progress(Component):
    """A progress bar: ``Progress(id, value=0, maximum=100, label="", show_label=True)``."""

    type = "Progress"

    def __init__(
        self,
        id: str,
        value: int = 0,
        maximum: int = 100,
        label: str = "",
        show_label: bool = True,
    ) -> None:
        super().__init__(id)
        self.allow("value.set", "value.append", "maximum.set", "label.set").interactive()
        self.set_prop("value", value)
        self.set_prop("maximum", maximum)
        self.set_prop("label", {"literalString": label})
        self.set_prop("show_label", show_label)


class Alert(Component):
    """A banner: ``Alert(id, title, description="", variant="info")``."""

    type = "Alert"

    def __init__(
        self,
        id: str,
        title: Any,
        description: Any = "",
        variant: Any = "info",
    ) -> None:
        super().__init__(id)
        self.allow("title.set", "description.set", "variant.set").interactive()
        self.set_prop("title", bound_text(title))
        self.set_prop("description", bound_text(description))
        self.set_prop("variant", _bound_word(variant, "info"))


class Badge(Component):
    """A compact badge: ``Badge(id, text, variant="default")``."""

    type = "Badge"

    def __init__(self, id: str, text: Any, variant: Any = "default") -> None:
        super().__init__(id)
        self.allow("text.set", "text.append", "variant.set").interactive()
        self.set_prop("text", bound_text(text))
        self.set_prop("variant", _bound_word(variant, "default"))


def _bound_word(value: Any, default: str) -> Any:
    if isinstance(value, dict) and (value.get("type") in _BOUND_KINDS or "path" in value):
        return value
    if hasattr(value, "to_dict"):
        return value
    return default if value is None else str(value)


class _Container(Component):
    def __init__(
        self,
        id: str,
        children: list[str | Component] | None = None,
    ) -> None:
        super().__init__(id)
        if children:
            self.children = list(children)


class Column(_Container):
    """Children stacked top to bottom: ``Column(id, children=None)`` (ids or components)."""

    type = "Column"


class Row(_Container):
    """Children side by side: ``Row(id, children=None)`` (ids or components)."""

    type = "Row"


# ---------------------------------------------------------------- the builder


class Builder:
    """The components of one surface, in order, and the protocol payloads around them.

    ``Builder().add(c1).add(c2)`` as on the platform; ``request_confirmation(task_id,
    builder)`` sends ``build()``. The static ``build_*_payload`` methods make the raw UI
    messages module code wraps in ``effects.ui_messages([...])``.
    """

    def __init__(self) -> None:
        self._components: list[Component] = []
        self._data_model: dict[str, Any] = {}
        self._store_data: dict[str, dict[str, Any]] = {"page": {}, "global": {}}
        self.surface_id = "main"

    def add(self, component: Component) -> Builder:
        """Append *component*; returns the builder."""
        if not isinstance(component, Component):
            raise TypeError(
                f"Builder.add() takes a component such as ui.Text('q', 'Proceed?'), got "
                f"{component!r} (see docs/guides/testing-modules.md#the-module-surface)"
            )
        self._components.append(component)
        return self

    def get_component(self, component_id: str) -> Component | None:
        """The added component with this id, or None."""
        return next((c for c in self._components if c.id == component_id), None)

    def build(self) -> list[dict[str, Any]]:
        """The components as the client receives them (what a confirmation carries)."""
        return [c.to_dict() for c in self._components]

    def set_data(self, path: str, value: Any) -> Builder:
        """Set a value in the surface's data model (slash-separated *path*)."""
        _set_nested(self._data_model, path, value)
        return self

    def set_store(self, path: str, value: Any, *, scope: str = "page") -> Builder:
        """Seed the client store of *scope* (``"page"`` or ``"global"``)."""
        key = str(scope or "page").strip().lower()
        if key not in self._store_data:
            raise ValueError(f"Unsupported store scope: {scope!r}; use 'page' or 'global'")
        _set_nested(self._store_data[key], path, value)
        return self

    def build_surface_update_payload(self, surface_id: str = "main") -> list[dict[str, Any]]:
        """The ``surfaceUpdate`` message of every component."""
        return [{"surfaceUpdate": {"surfaceId": surface_id, "components": self.build()}}]

    @staticmethod
    def build_state_update_payload(
        values: dict[str, Any], *, scope: str = "page"
    ) -> dict[str, Any]:
        """A ``stateUpdate`` message: set client store *values* in *scope*."""
        return {"stateUpdate": {"scope": scope, "values": values}}

    @staticmethod
    def build_state_patch_payload(
        path: str, action: str, value: Any, *, scope: str = "page"
    ) -> dict[str, Any]:
        """A ``statePatch`` message: change a store collection at *path*."""
        return {"statePatch": {"scope": scope, "path": path, "action": action, "value": value}}

    @staticmethod
    def build_data_model_update_payload(
        surface_id: str = "main", *, data: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A ``dataModelUpdate`` message for a surface."""
        return {"dataModelUpdate": {"surfaceId": surface_id, "data": {} if data is None else data}}

    @staticmethod
    def build_property_update_payload(
        component_id: str,
        property_name: str,
        value: Any,
        action: str = "set",
        surface_id: str = "main",
    ) -> dict[str, Any]:
        """A ``propertyUpdate`` message for one prop of one component."""
        return {
            "propertyUpdate": {
                "surfaceId": surface_id,
                "componentId": component_id,
                "propertyName": property_name,
                "action": action,
                "value": value,
            }
        }

    @staticmethod
    def build_collection_append_payload(
        component_id: str, property_name: str, value: Any, *, surface_id: str = "main"
    ) -> dict[str, Any]:
        """A ``propertyUpdate`` appending *value* to a collection prop."""
        return Builder.build_property_update_payload(
            component_id, property_name, value, "append", surface_id
        )

    @staticmethod
    def build_collection_prepend_payload(
        component_id: str, property_name: str, value: Any, *, surface_id: str = "main"
    ) -> dict[str, Any]:
        """A ``propertyUpdate`` prepending *value* to a collection prop."""
        return Builder.build_property_update_payload(
            component_id, property_name, value, "prepend", surface_id
        )

    @staticmethod
    def build_collection_remove_payload(
        component_id: str, property_name: str, value: Any, *, surface_id: str = "main"
    ) -> dict[str, Any]:
        """A ``propertyUpdate`` removing *value* from a collection prop."""
        return Builder.build_property_update_payload(
            component_id, property_name, value, "remove", surface_id
        )

    @staticmethod
    def build_collection_replace_payload(
        component_id: str, property_name: str, value: Any, *, surface_id: str = "main"
    ) -> dict[str, Any]:
        """A ``propertyUpdate`` replacing a collection prop by *value*."""
        return Builder.build_property_update_payload(
            component_id, property_name, value, "replace", surface_id
        )

    def __len__(self) -> int:
        return len(self._components)


def _set_nested(root: dict[str, Any], path: str, value: Any) -> None:
    keys = [k for k in str(path).strip("/").split("/") if k]
    if not keys:
        raise ValueError(f"a path such as '/preview/title' is needed, got {path!r}")
    node = root
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[keys[-1]] = value


# ---------------------------------------------------------------- assertions


def _is_component(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("id"), str)
        and isinstance(value.get("component"), dict)
        and len(value["component"]) == 1
    )


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, Component | Builder):
        value = value.to_dict() if isinstance(value, Component) else value.build()
    if _is_component(value):
        yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _walk(item)


def components_of(value: Any, type: str | None = None) -> list[dict[str, Any]]:
    """Every component dict inside *value*, depth first, optionally only of one *type*.

    *value* is anything: an action's response, a client message, a list of components, a
    ``Builder`` or a component. ``components_of(response, "BackgroundTask")[0]["component"]
    ["BackgroundTask"]["task_id"]`` is the task a card shows.
    """
    found = list(_walk(value))
    if type is None:
        return found
    return [c for c in found if type in c["component"]]


def props_of(components: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The props of each component dict (``{"text": {...}}`` of a ``Text``)."""
    return [next(iter(c["component"].values())) for c in components]


def serialize_components(builder: object) -> list[dict[str, Any]]:
    """The component dicts of a ``Builder`` or of a list of components (or their dicts).

    Raises:
        TypeError: *builder* is neither.
    """
    if isinstance(builder, Builder):
        return builder.build()
    if isinstance(builder, list | tuple):
        out = [c.to_dict() if isinstance(c, Component) else c for c in builder]
        if all(_is_component(c) for c in out):
            return [dict(c) for c in out]
    raise TypeError(
        f"expected a ui.Builder, got {builder!r}; build one as on the platform: "
        "ui.Builder().add(ui.Text('q', 'Proceed?')).add(ui.Button('yes', 'Yes')) "
        "(see docs/guides/testing-modules.md#the-module-surface)"
    )
