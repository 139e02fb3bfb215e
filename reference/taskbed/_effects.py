"""``module_sdk.effects``: the effects an action returns, and UI messages it publishes live.

The builders return the platform's plain dicts (``{"type": "notify", ...}``); ``respond(*effects)``
wraps them as an action's response, ``{"effects": [...]}``, with components serialized. A toast
is a notification on the ``"toast"`` channel: ``notify("toast", {"level": "success",
"message": ...})``, as the platform's own modules write it. The ``publish_*`` coroutines send a
UI message on a client stream at once, through the runtime's ``publish`` (the harness records
them in ``taskbed.emitted``).
"""

from __future__ import annotations

from typing import Any

from . import ui


def _serialize(effect: Any) -> Any:
    if isinstance(effect, ui.Component):
        return effect.to_dict()
    if isinstance(effect, dict):
        return {key: _serialize(value) for key, value in effect.items()}
    if isinstance(effect, list | tuple):
        return [_serialize(value) for value in effect]
    return effect


class Effects:
    """``module_sdk.effects``: effect builders, ``respond``, and live ``publish_*`` messages."""

    def __init__(self, sdk: Any) -> None:
        self.sdk = sdk

    # ------------------------------------------------------------ the response

    def respond(self, *effects: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        """An action's response: ``{"effects": [...]}`` (what is not a dict is left out)."""
        return {"effects": [_serialize(e) for e in effects if isinstance(e, dict)]}

    def ui_messages(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """UI protocol messages (``stateUpdate``, ``surfaceUpdate``, ...) as one effect."""
        return {"type": "ui_messages", "messages": messages}

    def notify(
        self,
        channel: str,
        payload: dict[str, Any],
        user_id: Any = None,
        organization_id: Any = None,
    ) -> dict[str, Any]:
        """A notification; on channel ``"toast"`` the client shows it as a toast."""
        return {
            "type": "notify",
            "channel": channel,
            "payload": payload,
            "user_id": user_id,
            "organization_id": organization_id,
        }

    def navigate(self, path: str, render: bool = True) -> dict[str, Any]:
        return {"type": "navigate", "path": path, "render": render}

    def render(self, path: str | None = None) -> dict[str, Any]:
        effect: dict[str, Any] = {"type": "render"}
        if path:
            effect["path"] = path
        return effect

    def confirm(
        self,
        *,
        via: str = "dialog",
        path: str | None = None,
        params: dict[str, Any] | None = None,
        render: bool = True,
    ) -> dict[str, Any]:
        return {
            "type": "confirm",
            "via": via,
            "path": path,
            "params": {} if params is None else params,
            "render": render,
        }

    def pipeline(
        self, task: Any, label: str, args: dict[str, Any] | None = None, module: str | None = None
    ) -> dict[str, Any]:
        return {
            "type": "pipeline",
            "task": task,
            "label": label,
            "args": {} if args is None else args,
            "module": self.sdk.module_name if module is None else module,
        }

    def scroll(self, component_id: str) -> dict[str, Any]:
        return {"type": "scroll", "component_id": component_id}

    def refresh_modules(self) -> dict[str, Any]:
        return {"type": "refresh_modules"}

    def copy_to_clipboard(self, text: str) -> dict[str, Any]:
        return {"type": "window_action", "op": "copy_to_clipboard", "text": text}

    def open_url(self, url: str, *, download: bool = False, filename: str = "") -> dict[str, Any]:
        return {
            "type": "window_action",
            "op": "open_url",
            "url": url,
            "download": download,
            "filename": filename,
        }

    def ui_agent_commands(self, commands: list[dict[str, Any]]) -> dict[str, Any]:
        return {"agentUICommands": {"commands": commands}}

    # ------------------------------------------------------------ UI messages as effects

    def ui_property_update(
        self,
        component_id: str,
        property_name: str,
        value: Any,
        *,
        action: str = "set",
        surface_id: str = "main",
    ) -> dict[str, Any]:
        return ui.Builder.build_property_update_payload(
            component_id, property_name, value, action, surface_id
        )

    def ui_collection_append(
        self, component_id: str, property_name: str, value: Any, *, surface_id: str = "main"
    ) -> dict[str, Any]:
        return ui.Builder.build_collection_append_payload(
            component_id, property_name, value, surface_id=surface_id
        )

    def ui_collection_prepend(
        self, component_id: str, property_name: str, value: Any, *, surface_id: str = "main"
    ) -> dict[str, Any]:
        return ui.Builder.build_collection_prepend_payload(
            component_id, property_name, value, surface_id=surface_id
        )

    def ui_collection_remove(
        self, component_id: str, property_name: str, value: Any, *, surface_id: str = "main"
    ) -> dict[str, Any]:
        return ui.Builder.build_collection_remove_payload(
            component_id, property_name, value, surface_id=surface_id
        )

    def ui_collection_replace(
        self, component_id: str, property_name: str, value: Any, *, surface_id: str = "main"
    ) -> dict[str, Any]:
        return ui.Builder.build_collection_replace_payload(
            component_id, property_name, value, surface_id=surface_id
        )

    def ui_state_patch(
        self, path: str, action: str, value: Any, *, scope: str = "page"
    ) -> dict[str, Any]:
        return ui.Builder.build_state_patch_payload(path, action, value, scope=scope)

    # ------------------------------------------------------------ live messages

    async def publish_to_stream(self, stream_id: str, data: Any) -> None:
        """Send *data* on a client stream now."""
        self.sdk.host.publish(stream_id, _serialize(data))

    async def publish_ui_message(self, stream_id: str, message: dict[str, Any]) -> None:
        """Send one UI protocol message on a client stream now."""
        await self.publish_to_stream(stream_id, message)

    async def publish_property_update(
        self,
        stream_id: str,
        component_id: str,
        property_name: str,
        value: Any,
        *,
        action: str = "set",
        surface_id: str = "main",
    ) -> None:
        await self.publish_ui_message(
            stream_id,
            self.ui_property_update(
                component_id, property_name, value, action=action, surface_id=surface_id
            ),
        )

    async def publish_collection_append(
        self,
        stream_id: str,
        component_id: str,
        property_name: str,
        value: Any,
        *,
        surface_id: str = "main",
    ) -> None:
        await self._publish_collection(
            "append", stream_id, component_id, property_name, value, surface_id
        )

    async def publish_collection_prepend(
        self,
        stream_id: str,
        component_id: str,
        property_name: str,
        value: Any,
        *,
        surface_id: str = "main",
    ) -> None:
        await self._publish_collection(
            "prepend", stream_id, component_id, property_name, value, surface_id
        )

    async def publish_collection_remove(
        self,
        stream_id: str,
        component_id: str,
        property_name: str,
        value: Any,
        *,
        surface_id: str = "main",
    ) -> None:
        await self._publish_collection(
            "remove", stream_id, component_id, property_name, value, surface_id
        )

    async def publish_collection_replace(
        self,
        stream_id: str,
        component_id: str,
        property_name: str,
        value: Any,
        *,
        surface_id: str = "main",
    ) -> None:
        await self._publish_collection(
            "replace", stream_id, component_id, property_name, value, surface_id
        )

    async def _publish_collection(  # noqa: PLR0917 - the publish_collection_* arguments, in order
        self,
        action: str,
        stream_id: str,
        component_id: str,
        property_name: str,
        value: Any,
        surface_id: str,
    ) -> None:
        await self.publish_ui_message(
            stream_id,
            ui.Builder.build_property_update_payload(
                component_id, property_name, value, action, surface_id
            ),
        )

    async def publish_state_patch(
        self, stream_id: str, path: str, action: str, value: Any, *, scope: str = "page"
    ) -> None:
        await self.publish_ui_message(
            stream_id, self.ui_state_patch(path, action, value, scope=scope)
        )
