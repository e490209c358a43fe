"""The OpenAPI document describes what the server does: error body, 4xx codes, id formats, API-key schemes.

(The fuzz tests in tests/fuzz check the live server's answers against this same document.)
"""

from __future__ import annotations

import pytest

from server.app import create_app
from server.settings import Settings

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
PUBLIC = {"/ok", "/info"}


@pytest.fixture(scope="module")
def doc() -> dict:
    return create_app(Settings(keel_api_keys="")).openapi()


def operations(doc: dict):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method, op


def test_errors_are_documented_as_a_detail_string(doc):
    body = doc["components"]["schemas"]["ErrorBody"]
    assert body["required"] == ["detail"] and body["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in doc["components"]["schemas"], (
        "FastAPI's list-shaped 422 is not what we send"
    )
    for path, method, op in operations(doc):
        for status, response in op["responses"].items():
            if status.startswith("4"):
                assert response["content"]["application/json"]["schema"] == ERROR_REF, (method, path, status)


def test_api_key_schemes_are_declared_on_every_authenticated_route(doc):
    schemes = doc["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "apiKey", "in": "header", "name": "x-api-key"}
    assert schemes["Bearer"] == {**schemes["Bearer"], "type": "http", "scheme": "bearer"}
    for path, method, op in operations(doc):
        if path in PUBLIC:
            assert "security" not in op and "401" not in op["responses"]
            continue
        assert sorted(op["security"], key=str) == [{"ApiKey": []}, {"Bearer": []}], (method, path)
        assert {"401", "422"} <= set(op["responses"]), (method, path)


def test_each_route_lists_its_4xx_codes(doc):
    for path, method, op in operations(doc):
        codes = set(op["responses"])
        if "requestBody" in op and method != "delete":
            assert {"400", "413"} <= codes, (method, path)  # malformed JSON, body too large
        if path == "/threads/{thread_id}/copy":  # an unknown thread is 409 there, as the reference answers
            assert "409" in codes and "404" not in codes, (method, path)
        elif "{thread_id}" in path or "{run_id}" in path:
            assert "404" in codes, (method, path)
    assert "409" in doc["paths"]["/threads"]["post"]["responses"]
    assert "409" in doc["paths"]["/threads/{thread_id}/runs/wait"]["post"]["responses"]
    assert "403" in doc["paths"]["/knowledge/ingest"]["post"]["responses"]
    assert "404" not in doc["paths"]["/store/items"]["get"]["responses"]  # a missing key is 200 null


def test_thread_and_run_ids_are_uuids(doc):
    seen = 0
    for path, method, op in operations(doc):
        for param in op.get("parameters", []):
            if param["name"] in ("thread_id", "run_id") and param["in"] == "path":
                assert param["schema"]["type"] == "string" and param["schema"]["format"] == "uuid", (
                    method,
                    path,
                )
                seen += 1
    assert seen >= 20


def test_streams_are_documented_as_server_sent_events(doc):
    for path in ("/runs/stream", "/threads/{thread_id}/runs/stream"):
        ok = doc["paths"][path]["post"]["responses"]["200"]["content"]
        assert set(ok) == {"text/event-stream"}
    ok = doc["paths"]["/threads/{thread_id}/runs/{run_id}/stream"]["get"]["responses"]["200"]["content"]
    assert set(ok) == {"text/event-stream"}
