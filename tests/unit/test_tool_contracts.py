"""Tool schemas are contracts: changing one without bumping its version fails here.

Regenerate the snapshot after a deliberate, versioned change:
    .venv/bin/keel tools list --json > tests/unit/snapshots/tools.json
"""

import json
from pathlib import Path

import pytest

from agent.toolbox import default_tools

SNAPSHOT = json.loads((Path(__file__).parent / "snapshots" / "tools.json").read_text())
CURRENT = default_tools().schemas()


@pytest.mark.parametrize("name", sorted(set(SNAPSHOT) | set(CURRENT)))
def test_tool_schema_changes_bump_the_version(name):
    assert name in CURRENT, f"tool {name!r} was removed: update the snapshot deliberately"
    assert name in SNAPSHOT, f"new tool {name!r}: add it to tests/unit/snapshots/tools.json"
    old, new = SNAPSHOT[name], CURRENT[name]
    if old["version"] == new["version"]:
        assert old == new, (
            f"{name}@{new['version']} changed its contract without a version bump; "
            "bump ToolSpec.version and regenerate the snapshot"
        )
    else:
        pytest.fail(
            f"{name} is now version {new['version']} (snapshot {old['version']}): regenerate the snapshot"
        )


def test_every_tool_is_fully_declared():
    for name, s in CURRENT.items():
        assert s["description"] and s["version"], name
        assert s["side_effect"] in ("none", "read", "write", "external"), name
        assert s["input_schema"]["type"] == "object" and s["output_schema"]["type"] == "object", name
    effects = {n for n, s in CURRENT.items() if s["side_effect"] in ("write", "external")}
    assert {"create_ticket", "close_ticket", "send_webhook"} <= effects
    assert all(CURRENT[n]["needs_approval"] for n in ("create_ticket", "close_ticket", "send_webhook"))


def test_model_binding_and_registry_agree():
    for spec in default_tools().select(None):
        tool = spec.as_langchain_tool()
        assert tool.name == spec.name and tool.metadata["version"] == spec.version
        assert tool.args_schema is spec.input_model


def test_the_bound_form_of_a_tool_is_built_once_and_copied(monkeypatch):
    import dataclasses

    import tools.registry as registry

    built: list[str] = []
    convert = registry.convert_to_openai_tool

    def counting(tool):
        built.append(tool.name)
        return convert(tool)

    monkeypatch.setattr(registry, "convert_to_openai_tool", counting)
    spec = dataclasses.replace(default_tools().select(None)[0])  # a fresh instance: nothing cached yet
    first, second = spec.model_tool(), spec.model_tool()
    assert first == second == convert(spec.as_langchain_tool())
    assert first["function"]["name"] == spec.name
    first["function"]["description"] = "edited by a provider"
    assert spec.model_tool()["function"]["description"] == spec.description  # each call gets its own copy
    assert built == [spec.name]  # the JSON Schema was derived once
