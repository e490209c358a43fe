"""Issue 12: the offline engine answers the kind of question asked (a how-to gets the instruction or the code,
a how-long gets the number), its critic rejects a draft that lacks that kind of answer, and a short follow-up
is searched with the previous question too."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from agent.nodes.retrieve import followup_query, interleave, search_query
from agent.offline.critic import critique
from agent.offline.extract import extractive_answer
from agent.offline.messages import Document
from agent.offline.questions import question_kind
from agent.offline.semantic import EmbeddingCache
from memory.embeddings import get_embeddings

FLAGS = [
    Document(
        "1",
        "api.html",
        "API > Parameters",
        "- is_flag (Optional[bool]) – forces this option to act as a flag. The default is auto detection.\n"
        "- count (bool) – this flag makes an option increment an integer.\n",
    ),
    Document(
        "2",
        "parameters.html",
        "Parameters > Parameter Types",
        "bool / click.BOOL:\n\nA parameter that accepts boolean values. This is automatically used for "
        "boolean flags. The string values “1”, “true”, “t” convert to True.\n",
    ),
    Document(
        "3",
        "options.html",
        "Options > Basic Value Options",
        "For single option boolean flags, the default remains hidden if the default value is False.\n\n"
        "```\n@click.command()\n"
        '@click.option("--gr", is_flag=True, show_default=True, default=False, help="Greet the world.")\n'
        "def dots(gr):\n    click.echo('Hello world!')\n```\n",
    ),
]

RETENTION = [
    Document(
        "1",
        "docs/operations.md",
        "Running Keel > The event log",
        "Every stream event of a run is stored in Postgres, in the table `keel_run_events`. A long-lived "
        "thread would still keep every streamed token, so events also have a retention period of their own.",
    ),
    Document(
        "2",
        "docs/operations.md",
        "Running Keel > Event retention",
        "A finished run's events are deleted `KEEL_EVENTS_TTL_SECONDS` after it finished (default 604800, "
        "7 days).",
    ),
]


@pytest.fixture(scope="module")
def embedder() -> object:
    return EmbeddingCache().wrap(get_embeddings())


def test_questions_are_told_apart_by_the_kind_of_answer_they_ask_for() -> None:
    assert question_kind("How long are a finished run's stream events kept?") == "quantity"
    assert question_kind("How many dimensions do its vectors have?") == "quantity"
    assert question_kind("How do I define a boolean flag?") == "how"
    assert question_kind("Which endpoint should I use as a liveness probe?") == "which"
    assert question_kind("What is the offline engine?") == ""


def test_a_how_to_answer_shows_the_code_that_does_it(embedder: object) -> None:
    answer = extractive_answer("How do I define a boolean flag?", FLAGS, 3, embedder)  # type: ignore[arg-type]
    assert "is_flag=True" in answer


def test_a_how_long_answer_states_the_duration(embedder: object) -> None:
    question = "How long are a finished run's stream events kept?"
    answer = extractive_answer(question, RETENTION, 3, embedder)  # type: ignore[arg-type]
    assert "7 days" in answer


def test_the_critic_rejects_a_how_long_draft_without_a_number(embedder: object) -> None:
    question = "How long are a finished run's stream events kept?"
    draft = (
        "A long-lived thread would still keep every streamed token, so events also have a retention period "
        "of their own [1].\n\nSources:\n[1] docs/operations.md — Running Keel > The event log"
    )
    verdict = critique(question, draft, RETENTION, embedder)  # type: ignore[arg-type]
    assert not verdict["answers_question"]
    assert any("a number" in r for r in verdict["reasons"])
    good = "A finished run's events are deleted after 7 days [2].\n\nSources:\n[2] docs/operations.md"
    assert critique(question, good, RETENTION, embedder)["answers_question"]  # type: ignore[arg-type]


def test_a_short_follow_up_is_searched_alone_and_with_the_previous_question() -> None:
    earlier = HumanMessage("How does Keel recover a run after a worker crash?", id="h1")
    short = HumanMessage("How long does detection take?", id="h2")
    messages = [earlier, AIMessage("..."), short]
    assert search_query(str(short.content), messages) == short.content
    assert followup_query(str(short.content), messages) == f"{short.content} {earlier.content}"
    referring = HumanMessage("How many dimensions do its vectors have?", id="h3")
    # A question that refers back is searched with the previous question already: no second search.
    assert followup_query(str(referring.content), [earlier, AIMessage("..."), referring]) == ""
    assert followup_query(str(short.content), [short]) == ""

    a = [{"key": "a", "text": "1"}, {"key": "b", "text": "2"}, {"key": "c", "text": "3"}]
    b = [{"key": "b", "text": "2"}, {"key": "d", "text": "4"}]
    assert [h["key"] for h in interleave(a, b, 4)] == ["a", "b", "d", "c"]


GROUPS = [
    Document(
        "1",
        "commands.html",
        "Commands and Groups > Multi Command Pipelines",
        "This callback will be invoked with an argument which is the list of all return values of all "
        "subcommands and then the same keyword parameters as our group itself.",
    ),
    Document(
        "2",
        "commands.html",
        "Commands and Groups > Group Invocation Without Command",
        "By default, a group or multi command is not invoked unless a subcommand is passed. In fact, not "
        "providing a command automatically passes --help by default. This behavior can be changed by passing "
        "invoke_without_command=True to a group. In that case, the callback is always invoked instead of "
        "showing the help page.",
    ),
]


def test_a_how_to_answer_quotes_the_solution_after_the_sentence_that_restates_the_problem(
    embedder: object,
) -> None:
    question = "How do I make a group callback run even when no subcommand is given?"
    assert question_kind(question) == "how"  # "even when" does not make it a question about time
    answer = extractive_answer(question, GROUPS, 3, embedder)  # type: ignore[arg-type]
    assert "invoke_without_command=True" in answer
