"""The offline engine: a deterministic chat model that needs no LLM, no network and no API key.

It reads only the messages it is given (plus the tools bound to it), exactly as an LLM would, so the
graph cannot tell it from a real model: it calls tools, answers with citations, streams token by token
and grades drafts through `with_structured_output`. Same input, same output, every time.

One module per job: `model` (the chat model, which decides which job answers), `extract` (the cited
extractive answer), `critic` (grading a draft), `tools` (tool commands, forced tools, tool results),
`summary` (the history summary), `messages` (reading the prompt) and `text` (words and stems).
"""

from agent.offline.citations import NO_ANSWER_TEXT, SOURCES_HEADER
from agent.offline.critic import CRITIC_TOOL_NAME
from agent.offline.model import OfflineChatModel
from agent.offline.tools import TOOL_COMMAND

__all__ = ["CRITIC_TOOL_NAME", "NO_ANSWER_TEXT", "SOURCES_HEADER", "TOOL_COMMAND", "OfflineChatModel"]
