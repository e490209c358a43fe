"""Small pure pieces: safe arithmetic, tool execution errors, auth, ids, settings, SSE framing."""

import pytest
from pydantic import ValidationError

from server.auth import LOCAL_USER, user_for
from server.errors import ApiError, parse_uuid
from server.routes.runs import sse
from server.runs.events import Event
from server.settings import Settings
from tools.builtin import default_registry, safe_eval
from tools.execute import execute_tool_call
from tools.policy import UserAttrs
from tools.registry import ToolContext


@pytest.mark.parametrize(
    "expr,value",
    [
        ("1+2*3", 7),
        ("(2+3)*7", 35),
        ("2**10", 1024),
        ("-4/2", -2.0),
        ("sqrt(16)", 4.0),
        ("max(1, 5, 3)", 5),
        ("7 // 2", 3),
    ],
)
def test_safe_eval(expr, value):
    assert safe_eval(expr) == value


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('true')",
        "open('x')",
        "a.b",
        "[1,2]",
        "2**100000",
        "lambda: 1",
        "'x' * 3",
        "True + 1",
    ],
)
def test_safe_eval_rejects_everything_else(expr):
    with pytest.raises((ValueError, SyntaxError)):
        safe_eval(expr)


async def test_execute_tool_call_validation_and_unknown():
    reg, ctx = default_registry(), ToolContext(user=UserAttrs("u"), namespace="default")
    ok = await execute_tool_call(reg, {"name": "calculator", "args": {"expression": "2+2"}, "id": "1"}, ctx)
    assert (ok.status, ok.content, ok.version) == ("success", "4", "1")
    bad = await execute_tool_call(reg, {"name": "calculator", "args": {"expr": "2"}, "id": "2"}, ctx)
    assert bad.status == "error" and "invalid arguments" in bad.content and "expression" in bad.content
    unknown = await execute_tool_call(reg, {"name": "rm_rf", "args": {}, "id": "3"}, ctx)
    assert unknown.status == "error" and "unknown tool" in unknown.content
    denied = await execute_tool_call(
        reg, {"name": "calculator", "args": {"expression": "1"}, "id": "4"}, ctx, allowed={"search_docs"}
    )
    assert denied.status == "error" and "not enabled" in denied.content


def test_auth_modes():
    assert user_for({}, None, None).id == LOCAL_USER
    keys = {"ka": "alice", "kb": "bob"}
    assert user_for(keys, "Bearer ka", None).id == "alice"
    assert user_for(keys, None, "kb").id == "bob"
    # A LangSmith key in x-api-key next to a valid bearer token must not lock the caller out.
    assert user_for(keys, "Bearer ka", "lsv2-something").id == "alice"
    with pytest.raises(ApiError) as e:
        user_for(keys, None, None)
    assert e.value.status == 401
    with pytest.raises(ApiError):
        user_for(keys, "Bearer nope", None)


def test_parse_uuid():
    assert (
        parse_uuid("8B224786-400A-4B6A-B285-F3EBCF94849E", "thread") == "8b224786-400a-4b6a-b285-f3ebcf94849e"
    )
    with pytest.raises(ApiError) as e:
        parse_uuid("not-a-uuid", "thread")
    assert e.value.status == 422 and e.value.detail == "Invalid thread ID: must be a UUID"


def test_settings_validation():
    assert Settings(keel_api_keys="a:alice, b:bob").api_keys == {"a": "alice", "b": "bob"}
    with pytest.raises(ValidationError):
        Settings(keel_api_keys="justakey")
    with pytest.raises(ValidationError):
        Settings(keel_critic_threshold=1.5)


def test_sse_framing_is_crlf_with_optional_id():
    raw = sse(Event(5, "values", {"a": 1}), with_id=True)
    assert raw == b'event: values\r\ndata: {"a":1}\r\nid: 5\r\n\r\n'
    assert b"id:" not in sse(Event(0, "end", None), with_id=False)
    assert sse(Event(0, "bad\r\nname", None), with_id=False).startswith(b"event: badname\r\n")
