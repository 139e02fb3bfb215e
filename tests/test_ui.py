"""The ``ui`` vocabulary is the platform's: constructors, signatures and serialized dicts.

The expected dicts are written out by hand from the platform's SDK (democrai 0.0.1b4,
``democrai/sdk/components`` and ``democrai/sdk/ui.py``); tests/test_platform_parity.py compares
them with the platform's own classes where an interpreter with the platform is given.
"""

from __future__ import annotations

import pytest

from taskbed import ui

EMPTY: dict[str, list[object]] = {"explicitList": []}
BUTTON_PROPS = {
    "label": {"literalString": "Yes"},
    "variant": "default",
    "mode": "solid",
    "btnsize": "normal",
    "shape": "default",
    "capabilities": ["enabled.set", "visible.set"],
}


def test_text_takes_an_id_and_the_text() -> None:
    # issue 9, item 5: module code for the platform writes ui.Text("t", "Replace?")
    assert ui.Text("t", "Replace?").to_dict() == {
        "id": "t",
        "component": {"Text": {"text": {"literalString": "Replace?"}}},
        "children": EMPTY,
    }


def test_text_keeps_a_bound_value_as_is() -> None:
    bound = {"type": "store", "path": "/title", "scope": "page", "default": ""}
    assert ui.Text("t", bound).props == {"text": bound}
    assert ui.Text("n", 3).props == {"text": {"literalString": "3"}}


def test_a_component_without_an_id_says_how_to_write_it() -> None:
    with pytest.raises(TypeError, match=r"ui\.Text\('my_id', \.\.\.\)"):
        ui.Text(["Replace?"], "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ui.Text("Replace?")  # type: ignore[call-arg]  # the old one-argument form is gone


def test_button_with_an_action_and_params() -> None:
    assert ui.Button("yes", "Yes").to_dict() == {
        "id": "yes",
        "component": {"Button": BUTTON_PROPS},
        "children": EMPTY,
    }
    pressed = ui.Button("go", "Go", action="mod.go", params={"row": 3}, icon="play").props
    assert pressed["action"] == {"name": "mod.go", "context": {"row": 3}}
    assert pressed["icon"] == {"iconName": "play"}
    spec = {"name": "mod.go", "context": {}}
    assert ui.Button("g", "Go", action=spec, params={"a": 1}).props["action"] is spec
    assert ui.Button("g", "Go", action=spec, params={"a": 1}).props["params"] == {"a": 1}


def test_background_task_card_takes_task_id_by_keyword() -> None:
    # the page: sdk.ui.BackgroundTask(..., task_id=task_id)
    card = ui.BackgroundTask("card", task_id="t-1", on_completed="mod.refresh")
    assert card.to_dict() == {
        "id": "card",
        "component": {"BackgroundTask": {"task_id": "t-1", "on_completed": "mod.refresh"}},
        "children": EMPTY,
    }


def test_layout_children_and_other_components() -> None:
    col = ui.Column("col", [ui.Text("a", "A"), "b"])
    assert col.to_dict()["children"] == {"explicitList": [ui.Text("a", "A").to_dict(), "b"]}
    assert ui.Progress("p", 40).props["value"] == 40
    assert ui.Alert("al", "Done", variant="success").props["title"] == {"literalString": "Done"}
    assert ui.Badge("b", "new").props["variant"] == "default"
    assert ui.Title("h", "Models", level=2).props == {
        "text": {"literalString": "Models"},
        "level": 2,
    }


def test_builder_payloads_match_the_platform() -> None:
    assert ui.Builder.build_state_update_payload({"/manifest_preview": {"a": 1}}, scope="page") == {
        "stateUpdate": {"scope": "page", "values": {"/manifest_preview": {"a": 1}}}
    }
    assert ui.Builder.build_state_patch_payload("/rows", "append", 1) == {
        "statePatch": {"scope": "page", "path": "/rows", "action": "append", "value": 1}
    }
    assert ui.Builder.build_property_update_payload("t", "text", "x") == {
        "propertyUpdate": {
            "surfaceId": "main",
            "componentId": "t",
            "propertyName": "text",
            "action": "set",
            "value": "x",
        }
    }
    builder = ui.Builder().add(ui.Text("q", "Go?")).add(ui.Button("yes", "Yes"))
    assert builder.build_surface_update_payload() == [
        {"surfaceUpdate": {"surfaceId": "main", "components": builder.build()}}
    ]
    assert builder.get_component("yes") is not None
    assert len(builder) == 2


def test_builder_add_refuses_what_is_not_a_component() -> None:
    with pytest.raises(TypeError, match=r"^Builder\.add\(\) takes a component such as"):
        ui.Builder().add({"type": "text", "text": "Go?"})  # type: ignore[arg-type]


def test_builder_store_scopes() -> None:
    builder = ui.Builder().set_store("/a/b", 1).set_store("/c", 2, scope="global")
    assert builder._store_data == {"page": {"a": {"b": 1}}, "global": {"c": 2}}
    with pytest.raises(ValueError, match="Unsupported store scope"):
        builder.set_store("/x", 1, scope="tab")


def test_components_of_finds_nested_components_by_type() -> None:
    response = {
        "effects": [
            {
                "type": "ui_messages",
                "messages": [
                    {
                        "surfaceUpdate": {
                            "components": [ui.Column("c", [ui.Text("t", "x")]).to_dict()]
                        }
                    }
                ],
            }
        ]
    }
    assert [c["id"] for c in ui.components_of(response)] == ["c", "t"]
    (text,) = ui.components_of(response, "Text")
    assert ui.props_of([text]) == [{"text": {"literalString": "x"}}]
    assert ui.components_of(ui.Builder().add(ui.Text("q", "?")), "Button") == []


def test_serialize_components_accepts_builders_and_lists() -> None:
    one = ui.Text("q", "Go?")
    assert ui.serialize_components([one]) == [one.to_dict()]
    assert ui.serialize_components((one.to_dict(),)) == [one.to_dict()]
    with pytest.raises(TypeError, match=r"expected a ui\.Builder"):
        ui.serialize_components("Go?")
    with pytest.raises(TypeError, match=r"expected a ui\.Builder"):
        ui.serialize_components([{"type": "text"}])
