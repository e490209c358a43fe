"""OfflineChatModel: the LangChain chat model that decides, from messages and bound tools, which job answers."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolCall, UsageMetadata
from langchain_core.messages.tool import tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from agent.offline.critic import critique, is_critic_schema
from agent.offline.extract import NO_ANSWER_TEXT, extractive_answer
from agent.offline.messages import (
    DOCS_BLOCK_RE,
    Document,
    documents_in,
    earlier_question,
    message_text,
    parse_documents,
    question_index,
    tagged,
)
from agent.offline.summary import SUMMARY_TAG, history_summary
from agent.offline.tools import (
    call_id,
    default_for,
    forced_tool,
    last_tool_run,
    parse_tool_command,
    summarise_tool_messages,
    tool_specs,
    trailing_tool_messages,
)


@dataclass(frozen=True)
class _Reply:
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


@lru_cache(maxsize=64)
def _class_tool(cls: type) -> dict[str, Any]:
    return convert_to_openai_tool(cls)


def openai_tool(tool: dict[str, Any] | type | Any) -> dict[str, Any]:
    """A tool in the OpenAI format. A class (the critic's `with_structured_output(Critique)`, every turn) is
    converted once: its JSON Schema costs about 0.5 ms to build. Each call gets its own copy."""
    if isinstance(tool, type):
        return copy.deepcopy(_class_tool(tool))
    return convert_to_openai_tool(tool)


class OfflineChatModel(BaseChatModel):
    """A deterministic chat model that answers from its prompt alone (no LLM, no network).

    Rules, decided only from the messages and the bound tools:

    - Forced tool (`tool_choice` "any"/"required"/a name/a dict, as `with_structured_output` does):
      if the tool is the critic's `Critique` schema (or has `score` and `revised_query` fields), grade
      the draft in the `<question>`/`<draft>` message against the `<retrieved_documents>` block:
      support = share of the draft's content words found in the documents, coverage = share of the
      question's content words found in the draft, score = 0.5*support + 0.5*coverage (0 for an empty
      or "no answer" draft), plus reasons and a revised query that leads with the missing words. A
      `/tool` question scores 1.0 when the draft reports that tool's outcome (retrieval cannot improve
      it), else 0.0. Any other forced tool gets the schema's defaults / empty values.
    - Tool command: when the last human message is `/tool NAME {json args}` (args optional, default
      `{}`, one JSON object, may span lines), nothing has answered it yet, and NAME is a bound tool,
      reply with one tool call `NAME(args)`. An unbound NAME or invalid JSON gets a text reply saying
      so, listing the available tools or the JSON error.
    - Tool results: when the conversation after the last human message ends with tool messages, reply
      with one line per result: "NAME returned: RESULT" or, for status "error", "NAME failed: ERROR".
    - History summary: when the last human message holds a `<conversation_to_summarize>` block (agent/history),
      reply with the `<previous_summary>` lines followed by one line per turn: "- The user asked: Q" with the
      tools it used and the first sentence of its answer, each clipped to 200 characters.
    - Otherwise, an extractive answer: the 1-3 sentences of the `<retrieved_documents>` passages that
      best match the question's content words, each cited as [index], then a "Sources:" section
      ("[i] source — heading"). With no matching sentence the answer is exactly `NO_ANSWER_TEXT`.

    Text streams word by word; a tool call streams as one chunk. `invoke` equals the joined stream.
    """

    model_name: str = "keel-offline"
    """Reported in traces; there is only one engine."""
    max_sentences: int = 3
    """Most sentences an extractive answer quotes."""
    embeddings: Any = Field(default=None, exclude=True)
    """The embedder (a LangChain `Embeddings`) answers and grades rank sentences with, by meaning; None = by
    word overlap. The graph's nodes pass the store's, the one retrieval embeds queries with."""

    @property
    def _llm_type(self) -> str:
        return "keel-offline"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "max_sentences": self.max_sentences}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Any],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (any LangChain tool form) the way provider models do, as OpenAI tool specs."""
        return self.bind(tools=[openai_tool(t) for t in tools], tool_choice=tool_choice, **kwargs)

    # -- the engine

    def _reply(self, messages: Sequence[BaseMessage], stop: list[str] | None = None, **kwargs: Any) -> _Reply:
        specs = tool_specs(kwargs.get("tools"))
        forced = forced_tool(specs, kwargs.get("tool_choice"))
        if forced is not None:
            args = self._structured_args(forced, messages)
            return _Reply(tool_calls=(self._tool_call(forced["name"], args, messages),))

        h = question_index(messages)
        if h is None:
            return _Reply(text=_apply_stop(NO_ANSWER_TEXT, stop))
        if f"<{SUMMARY_TAG}>" in message_text(messages[h]):
            return _Reply(text=_apply_stop(history_summary(message_text(messages[h])), stop))
        question = DOCS_BLOCK_RE.sub("", message_text(messages[h])).strip()
        after = messages[h + 1 :]

        trailing = trailing_tool_messages(after)
        if trailing:
            return _Reply(text=_apply_stop(summarise_tool_messages(messages, trailing), stop))

        command = parse_tool_command(question)
        if command is not None:
            if command.error:
                return _Reply(text=_apply_stop(command.error, stop))
            names = [str(s.get("name")) for s in specs]
            if command.name not in names:
                available = ", ".join(names) if names else "none"
                return _Reply(
                    text=_apply_stop(f"Unknown tool '{command.name}'. Available tools: {available}.", stop)
                )
            if not any(m.type == "ai" for m in after):
                return _Reply(tool_calls=(self._tool_call(command.name, command.args or {}, messages),))
            last_results = last_tool_run(after)
            if last_results:
                return _Reply(text=_apply_stop(summarise_tool_messages(messages, last_results), stop))

        answer = extractive_answer(
            question,
            documents_in(messages),
            self.max_sentences,
            self.embeddings,
            context=earlier_question(messages, h),
        )
        return _Reply(text=_apply_stop(answer, stop))

    def _structured_args(self, spec: dict[str, Any], messages: Sequence[BaseMessage]) -> dict[str, Any]:
        parameters = spec.get("parameters") or {}
        if not is_critic_schema(spec):
            args: dict[str, Any] = default_for({**parameters, "type": "object"})  # an object schema's value
            return args
        question = draft = None
        context = ""
        docs: list[Document] = []
        for message in reversed(messages):
            text = message_text(message)
            if "<draft>" in text:
                question, draft = tagged(text, "question"), tagged(text, "draft")
                context = tagged(text, "earlier_question") or ""
                docs = parse_documents(text)
                break
        if question is None:
            h = question_index(messages)
            question = DOCS_BLOCK_RE.sub("", message_text(messages[h])).strip() if h is not None else ""
        if draft is None:
            ai = [m for m in messages if m.type == "ai" and not getattr(m, "tool_calls", None)]
            draft = message_text(ai[-1]) if ai else ""
        if not docs:
            docs = documents_in(messages)
        result = critique(question, draft, docs, self.embeddings, context=context)
        properties = parameters.get("properties") or {}
        if not properties:
            return result
        args = {k: v for k, v in result.items() if k in properties}
        for name, schema in properties.items():
            args.setdefault(name, default_for(schema))
        return args

    @staticmethod
    def _tool_call(name: str, args: dict[str, Any], messages: Sequence[BaseMessage]) -> ToolCall:
        return tool_call(name=name, args=args, id=call_id(name, args, len(messages)))

    @staticmethod
    def _usage(messages: Sequence[BaseMessage], reply: _Reply) -> UsageMetadata:
        prompt = sum(len(message_text(m).split()) for m in messages)
        out = len(reply.text.split()) + sum(len(json.dumps(c["args"]).split()) + 1 for c in reply.tool_calls)
        return {"input_tokens": prompt, "output_tokens": out, "total_tokens": prompt + out}

    # -- LangChain interface

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = self._reply(messages, stop=stop, **kwargs)
        message = AIMessage(
            content=reply.text,
            tool_calls=[dict(c) for c in reply.tool_calls],
            usage_metadata=self._usage(messages, reply),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        reply = self._reply(messages, stop=stop, **kwargs)
        chunks: list[AIMessageChunk] = [AIMessageChunk(content=piece) for piece in _pieces(reply.text)]
        if reply.tool_calls:
            chunks.append(
                AIMessageChunk(
                    content="",
                    tool_call_chunks=[
                        tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
                        for i, c in enumerate(reply.tool_calls)
                    ],
                )
            )
        if not chunks:
            chunks.append(AIMessageChunk(content=""))
        last = chunks[-1]
        last.usage_metadata = self._usage(messages, reply)
        last.chunk_position = "last"
        for chunk in chunks:
            yield ChatGenerationChunk(message=chunk)


def _pieces(text: str) -> list[str]:
    """Words with their trailing whitespace; joined they give back `text` exactly."""
    return re.findall(r"\s+|\S+\s*", text) if text else []


def _apply_stop(text: str, stop: list[str] | None) -> str:
    for token in stop or []:
        if token and token in text:
            text = text[: text.index(token)]
    return text
