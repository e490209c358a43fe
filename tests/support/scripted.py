"""A scripted chat model for tests: it replays a fixed list of responses and fails loudly when done.

    model = ScriptedChatModel(responses=[
        AIMessage("", tool_calls=[{"name": "calculator", "args": {"expression": "6*7"}, "id": "c1"}]),
        "The answer is 42.",
        {"score": 0.9, "reasons": ["ok"], "revised_query": ""},   # structured output (the critic)
        TimeoutError("provider timed out"),                         # raised, to test retries
    ])

One script is consumed in order across every call (and every node sharing the model), so a test reads
like the conversation it expects. `.calls` records the messages of each call for assertions.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

ScriptItem = AIMessage | str | BaseModel | dict | BaseException | type | Callable[[list[BaseMessage]], Any]
"""What a script may hold; see ScriptedChatModel."""


def _tool_name(spec: Any) -> str:
    spec = convert_to_openai_tool(spec)
    return str(spec.get("function", spec).get("name"))


def forced_tool_name(tools: Sequence[Any] | None, tool_choice: Any) -> str | None:
    """The tool name that `tool_choice` forces ("any"/"required"/True/a name/a dict), else None."""
    names = [_tool_name(t) for t in tools or []]
    if tool_choice in (None, False, "auto", "none") or not names:
        return None
    if tool_choice is True or tool_choice in ("any", "required"):
        return names[0]
    if isinstance(tool_choice, str):
        return tool_choice
    if isinstance(tool_choice, dict):
        if tool_choice.get("type") in ("auto", "none"):
            return None
        return (tool_choice.get("function") or {}).get("name") or tool_choice.get("name") or names[0]
    return None


def _describe(messages: Sequence[BaseMessage], limit: int = 600) -> str:
    parts = []
    for message in messages:
        text = message.content if isinstance(message.content, str) else str(message.content)
        text = " ".join(text.split())
        parts.append(f"[{message.type}] {text[:120]}{'…' if len(text) > 120 else ''}")
    joined = " | ".join(parts)
    return joined if len(joined) <= limit else "…" + joined[-limit:]


class ScriptedChatModel(BaseChatModel):
    """Replays `responses` one per call; raises AssertionError when the script runs out.

    Items: an AIMessage (returned as is), a str (an AIMessage with that text), a callable taking the
    call's messages (its result is handled like any item), an exception instance or class (raised), or
    a pydantic model / dict (returned as a tool call to the forced tool, for `with_structured_output`).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    responses: list[Any] = Field(default_factory=list)
    """The script, consumed in order."""
    calls: list[list[BaseMessage]] = Field(default_factory=list, repr=False)
    """The messages of every call, including a call that found the script exhausted."""
    call_options: list[dict[str, Any]] = Field(default_factory=list, repr=False)
    """Per call: the bound tool names and the tool_choice."""
    bound_tools: list[str] = Field(default_factory=list)
    """Names of every tool ever bound through `bind_tools`, in first-bound order."""

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _position: int = PrivateAttr(default=0)

    def __init__(self, responses: Sequence[ScriptItem] | None = None, /, **kwargs: Any) -> None:
        if responses is not None:
            kwargs["responses"] = list(responses)
        super().__init__(**kwargs)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def remaining(self) -> int:
        """How many scripted responses have not been used yet."""
        return len(self.responses) - self._position

    def assert_exhausted(self) -> None:
        """Fail if the test did not consume the whole script."""
        assert self.remaining == 0, (
            f"ScriptedChatModel has {self.remaining} unused responses: {self.responses[self._position :]!r}"
        )

    def bind_tools(
        self,
        tools: Sequence[Any],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        specs = [convert_to_openai_tool(t) for t in tools]
        for spec in specs:
            name = _tool_name(spec)
            if name not in self.bound_tools:
                self.bound_tools.append(name)
        return self.bind(tools=specs, tool_choice=tool_choice, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        tools = kwargs.get("tools")
        forced = forced_tool_name(tools, kwargs.get("tool_choice"))
        with self._lock:
            self.calls.append(list(messages))
            self.call_options.append(
                {"tools": [_tool_name(t) for t in tools or []], "tool_choice": kwargs.get("tool_choice")}
            )
            number = len(self.calls)
            if self._position >= len(self.responses):
                raise AssertionError(
                    f"ScriptedChatModel script exhausted after {len(self.responses)} calls; "
                    f"last messages: {_describe(messages)}"
                )
            item = self.responses[self._position]
            self._position += 1
        message = self._to_message(item, messages, forced, number)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _to_message(
        self, item: Any, messages: list[BaseMessage], forced: str | None, number: int
    ) -> AIMessage:
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, type) and issubclass(item, BaseException):
            raise item(f"scripted failure at call {number}")
        if isinstance(item, AIMessage):
            return item.model_copy(deep=True)
        if isinstance(item, str):
            return AIMessage(content=item)
        if isinstance(item, BaseModel | dict):
            if forced is None:
                raise AssertionError(
                    f"ScriptedChatModel call {number}: scripted structured output {item!r} but the call "
                    f"forced no tool (use with_structured_output, or script an AIMessage)"
                )
            args = item.model_dump(mode="json") if isinstance(item, BaseModel) else dict(item)
            return AIMessage(
                content="",
                tool_calls=[
                    {"name": forced, "args": args, "id": f"call_scripted_{number}", "type": "tool_call"}
                ],
            )
        if callable(item):
            return self._to_message(item(messages), messages, forced, number)
        raise TypeError(f"ScriptedChatModel call {number}: cannot use scripted item {item!r}")


@contextmanager
def scripted_models() -> Iterator[Callable[..., tuple[Any, ScriptedChatModel, ScriptedChatModel]]]:
    """`make(answer, critic=None, **context)`: scripted answer and critic models registered under unique names,
    returned with a Context that selects them; all unregistered afterwards."""
    from agent.context import Context
    from agent.models import register_model, unregister_model

    names: list[str] = []

    def make(answer: list, critic: list | None = None, **context: Any):
        a, c = ScriptedChatModel(answer), ScriptedChatModel(critic or [])
        an, cn = f"test:answer-{uuid.uuid4()}", f"test:critic-{uuid.uuid4()}"
        register_model(an, a)
        register_model(cn, c)
        names.extend([an, cn])
        return Context(model=an, critic_model=cn, **context), a, c

    try:
        yield make
    finally:
        for n in names:
            unregister_model(n)
