"""The provider path: KEEL_MODEL=openai:... through init_chat_model, against a local fake of the OpenAI API.

Nothing leaves the machine: the fake speaks the Chat Completions wire format (JSON and SSE) on 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver

import agent.models
from agent.context import Context
from agent.graph import builder

pytest.importorskip("langchain_openai", reason="langchain-openai is a dev dependency (pyproject [dev])")


def _reply(body: dict, server=None) -> dict:
    """Decide like a tiny model: critic -> JSON verdict; '/calc' -> tool call; tool result -> answer. A test may
    script the critic's verdicts and the answers (server.verdicts / server.answers, used in order)."""
    messages = body["messages"]
    last = messages[-1]
    verdicts, answers = getattr(server, "verdicts", []), getattr(server, "answers", [])
    if body.get("response_format") or body.get("tool_choice") not in (None, "auto"):
        verdict = (
            verdicts.pop(0)
            if verdicts
            else {"score": 0.9, "reasons": ["supported by [1]"], "revised_query": ""}
        )
        if body.get("response_format"):
            return {"role": "assistant", "content": json.dumps(verdict)}
        name = body["tool_choice"]["function"]["name"]
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_critic",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(verdict)},
                }
            ],
        }
    if last["role"] == "tool":
        return {"role": "assistant", "content": f"The result is {last['content']}."}
    if "/calc" in str(last.get("content")):
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": json.dumps({"expression": "6*7"})},
                }
            ],
        }
    if answers:
        return {"role": "assistant", "content": answers.pop(0)}
    return {"role": "assistant", "content": "Workers scale out by claiming runs [1]."}


class FakeOpenAI(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        msg = _reply(body, self.server)
        base = {"id": "chatcmpl-1", "created": 0, "model": body["model"], "system_fingerprint": None}
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            delta = {k: v for k, v in msg.items() if v is not None}
            if "tool_calls" in delta:
                delta["tool_calls"] = [{**tc, "index": i} for i, tc in enumerate(delta["tool_calls"])]
            finish = "tool_calls" if "tool_calls" in delta else "stop"
            for chunk in (
                {"index": 0, "delta": delta, "finish_reason": None},
                {"index": 0, "delta": {}, "finish_reason": finish},
            ):
                data = {**base, "object": "chat.completion.chunk", "choices": [chunk]}
                self.wfile.write(b"data: " + json.dumps(data).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            return
        finish = "tool_calls" if msg.get("tool_calls") else "stop"
        data = {
            **base,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": msg, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
        raw = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_openai(monkeypatch):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    srv.requests = []
    srv.verdicts, srv.answers = [], []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{srv.server_port}/v1")
    agent.models._cache.clear()
    yield srv
    srv.shutdown()
    agent.models._cache.clear()


async def run_graph(text: str, store=None):
    graph = builder.compile(checkpointer=InMemorySaver(), store=store, name="agent")
    ctx = Context(model="openai:gpt-4o-mini")
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    return await graph.ainvoke({"messages": [HumanMessage(content=text)]}, config, context=ctx)


async def test_openai_provider_answers_and_critic_uses_structured_output(fake_openai):
    out = await run_graph("How do workers scale out?")
    assert out["status"] == "done" and out["answer"] == "Workers scale out by claiming runs [1]."
    paths = [p for p, _, _ in fake_openai.requests]
    assert paths == ["/v1/chat/completions", "/v1/chat/completions"]
    _, headers, answer_req = fake_openai.requests[0]
    assert headers["authorization"] == "Bearer sk-test-key" and answer_req["model"] == "gpt-4o-mini"
    assert {t["function"]["name"] for t in answer_req["tools"]} >= {
        "calculator",
        "search_docs",
        "create_ticket",
        "researcher",
    }
    roles = [m["role"] for m in answer_req["messages"]]
    assert roles[0] == "system" and roles[-1] == "user"
    assert "<retrieved_documents" in answer_req["messages"][-2]["content"]
    critic_req = fake_openai.requests[1][2]
    assert critic_req.get("response_format") or critic_req.get("tool_choice")


async def test_openai_provider_tool_loop(fake_openai):
    out = await run_graph("/calc please")
    tool_msgs = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert [m.content for m in tool_msgs] == ["42"]
    assert out["answer"] == "The result is 42."
    second = fake_openai.requests[1][2]["messages"]
    assert second[-1] == {"role": "tool", "content": "42", "tool_call_id": "call_1"} or (
        second[-1]["role"] == "tool" and second[-1]["tool_call_id"] == "call_1"
    )


async def test_critic_structured_verdict_revises_the_query_then_accepts(fake_openai):
    """The critic's schema (answers_question, grounded, missing, revised_query) drives the revision."""
    fake_openai.answers += ["Keel has workers [1].", "Run more `keel worker` processes [1]."]
    fake_openai.verdicts += [
        {
            "score": 0.4,
            "answers_question": False,
            "grounded": True,
            "abstained": False,
            "missing": ["how to add capacity"],
            "reasons": ["restates the topic, names no way to scale"],
            "revised_query": "run more keel worker processes",
        },
        {"score": 0.95, "answers_question": True, "grounded": True, "abstained": False, "missing": []},
    ]
    out = await run_graph("How do I scale Keel out?")
    assert out["status"] == "done" and out["answer"] == "Run more `keel worker` processes [1]."
    critic_req = fake_openai.requests[1][2]
    schema = json.dumps(critic_req.get("response_format") or critic_req.get("tools"))
    assert all(field in schema for field in ("answers_question", "grounded", "missing", "revised_query"))
    assert "Answer only from" not in critic_req["messages"][0]["content"]  # the critic's own instructions
    answer_system = fake_openai.requests[0][2]["messages"][0]["content"]
    assert "I could not find this in the documents." in answer_system


async def test_a_provider_abstention_ends_not_found_after_one_widened_retrieval(fake_openai):
    abstain = {
        "score": 0.0,
        "answers_question": False,
        "grounded": True,
        "abstained": True,
        "missing": ["sourdough"],
        "reasons": ["the documents do not mention bread"],
        "revised_query": "",
    }
    fake_openai.answers += ["I could not find this in the documents."] * 2
    fake_openai.verdicts += [dict(abstain), dict(abstain)]
    out = await run_graph("How do I bake sourdough bread?")
    assert out["status"] == "not_found" and out["answer"] == "I could not find this in the documents."
    assert out["messages"][-1].content == "I could not find this in the documents."
    assert len(fake_openai.requests) == 4  # answer, critic, one widened retry (answer, critic), no more
