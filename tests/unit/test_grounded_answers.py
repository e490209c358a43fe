"""Issue 12: the offline engine answers by meaning (the bundled embedding model), abstains when the passages do
not answer, and its critic judges whether a draft answers the question."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from pydantic import BaseModel

from agent.offline import NO_ANSWER_TEXT, OfflineChatModel
from agent.offline.text import followup_context
from agent.prompts import CRITIC_CONTEXT, CRITIC_SYSTEM_PROMPT, CRITIC_TEMPLATE
from agent.render import documents_block
from agent.schemas import Critique
from memory.embeddings import get_embeddings

SCALING = {
    "index": 1,
    "source": "docs/operations.md",
    "heading": "Running Keel > Scaling out",
    "text": (
        "Sooner or later one process cannot keep up with the runs users send.\n\n"
        "To scale Keel out, run more `keel worker` processes against the same Postgres; each worker claims "
        "runs with a lease.\n\n"
        "To start a worker, run:\n\n```bash\nkeel worker --concurrency 4\nkeel serve --workers 0\n```\n"
    ),
}
DURABILITY = {
    "index": 2,
    "source": "docs/operations.md",
    "heading": "Running Keel > Durability",
    "text": "KEEL_DURABILITY sets when Keel writes checkpoints: sync, async or exit. The default is sync.",
}
CRASH = {
    "index": 3,
    "source": "docs/operations.md",
    "heading": "Crash recovery",
    "text": (
        "After a worker crash another worker resumes the run from its last checkpoint. A dead worker is "
        "detected when its lease expires, about 5 to 7 seconds after the crash."
    ),
}
CUT = {
    "index": 4,
    "source": "docs/api.md",
    "heading": "Scaling the API",
    "text": "processes behind a load balancer scale the API out. Each API process serves every route and the",
}


@pytest.fixture(scope="module")
def model() -> OfflineChatModel:
    return OfflineChatModel(embeddings=get_embeddings())


def ask(model: OfflineChatModel, question: str, passages: list[dict], earlier: str = "") -> str:
    block = documents_block(passages)
    history = [HumanMessage(earlier), AIMessage("(earlier answer)")] if earlier else []
    return str(
        model.invoke(
            [SystemMessage("system"), *history, SystemMessage(block), HumanMessage(question)]
        ).content
    )


def grade(
    model: OfflineChatModel, question: str, draft: str, passages: list[dict], earlier: str = ""
) -> Critique:
    block = documents_block(passages)
    prompt = CRITIC_TEMPLATE.format(question=question, draft=draft, documents=block)
    if earlier:
        prompt = CRITIC_CONTEXT.format(earlier=earlier) + prompt
    result = model.with_structured_output(Critique).invoke(
        [SystemMessage(CRITIC_SYSTEM_PROMPT), HumanMessage(prompt)]
    )
    assert isinstance(result, Critique)
    return result


def test_the_answer_names_the_solution_with_its_code_and_cites_its_source(model):
    answer = ask(model, "How do I scale Keel out?", [DURABILITY, SCALING])

    body, _, sources = answer.partition("\n\nSources:\n")
    assert "run more `keel worker` processes against the same Postgres" in body
    assert "cannot keep up" not in body  # the sentence restating the problem is not the answer
    assert "KEEL_DURABILITY" not in body
    assert sources.splitlines() == ["[1] docs/operations.md — Running Keel > Scaling out"]


def test_a_sentence_that_introduces_code_brings_the_code(model):
    answer = ask(model, "Which command starts a worker?", [SCALING, DURABILITY])

    assert (
        "To start a worker, run: [1]\n\n```\nkeel worker --concurrency 4\nkeel serve --workers 0\n```"
        in answer
    )


def test_an_answer_spanning_passages_cites_each(model):
    answer = ask(
        model, "What happens after a worker crash, and when does Keel write checkpoints?", [CRASH, DURABILITY]
    )

    assert "another worker resumes the run from its last checkpoint [3]" in answer
    assert "KEEL_DURABILITY sets when Keel writes checkpoints: sync, async or exit [2]" in answer


def test_cut_off_sentences_are_never_quoted(model):
    answer = ask(model, "How do I scale the API out?", [CUT, SCALING])

    assert "processes behind a load balancer" not in answer
    assert "every route and the" not in answer


@pytest.mark.parametrize(
    "question",
    [
        "How do I bake sourdough bread?",  # off the corpus
        "Can Keel use MySQL instead of Postgres?",  # on topic, but the passages never name MySQL
        "How do I turn on two-factor authentication for Keel?",
    ],
)
def test_unanswered_questions_get_a_plain_abstention(model, question):
    assert ask(model, question, [SCALING, DURABILITY, CRASH]) == NO_ANSWER_TEXT


def test_a_follow_up_is_read_with_the_earlier_question(model):
    earlier = "How does Keel recover a run after a worker crash?"
    answer = ask(model, "How long does detection take?", [DURABILITY, CRASH], earlier=earlier)

    assert "about 5 to 7 seconds after the crash [3]" in answer


def test_follow_ups_are_recognised_by_reference_or_brevity():
    earlier = "How do I connect Keel to Slack?"
    assert followup_context("And to Microsoft Teams?", earlier, strict=True) == earlier
    assert followup_context("How many dimensions do its vectors have?", earlier, strict=True) == earlier
    assert followup_context("How do I send traces?", earlier, strict=True) == ""
    assert followup_context("How long does detection take?", earlier) == earlier
    assert followup_context("How long does detection take?", "") == ""


def test_the_critic_passes_an_answer_and_fails_an_off_topic_draft(model):
    question = "How do I scale Keel out?"
    good = grade(model, question, ask(model, question, [SCALING, DURABILITY]), [SCALING, DURABILITY])
    assert good.answers_question and good.grounded and not good.abstained and good.score >= 0.7

    # Quoted from the documents and sharing the question's words, but about something else.
    off = grade(
        model, question, "KEEL_DURABILITY sets when Keel writes checkpoints [2].", [SCALING, DURABILITY]
    )
    assert not off.answers_question and off.score < 0.7


def test_the_critic_judges_abstentions(model):
    right = grade(model, "How do I bake sourdough bread?", NO_ANSWER_TEXT, [SCALING, DURABILITY])
    assert right.abstained and right.score == 0.0
    assert any(r.startswith("abstention is right") for r in right.reasons)

    wrong = grade(model, "How do I scale Keel out?", NO_ANSWER_TEXT, [SCALING, DURABILITY])
    assert wrong.abstained and any(r.startswith("abstention is wrong") for r in wrong.reasons)


def test_the_critic_rewrites_a_follow_up_with_the_earlier_topic(model):
    earlier = "How does Keel recover a run after a worker crash?"
    verdict = grade(model, "How long does detection take?", NO_ANSWER_TEXT, [DURABILITY], earlier=earlier)
    assert verdict.revised_query == f"How long does detection take? {earlier}"


def test_critique_schema_fields_have_defaults_for_terse_providers():
    class Terse(BaseModel):
        score: float

    verdict = Critique.model_validate(Terse(score=0.9).model_dump())
    assert verdict.answers_question and verdict.grounded and not verdict.abstained and verdict.missing == []


def test_the_code_example_after_the_answering_paragraph_is_quoted(model):
    counting = {
        "index": 5,
        "source": "options.html",
        "heading": "Options > Counting",
        "text": (
            "Options can count how many times they are repeated, which suits verbosity flags.\n\n"
            "```python\n@click.option('-v', '--verbose', count=True)\ndef log(verbose): ...\n```\n\n"
            "Boolean flags are options that take no value."
        ),
    }
    answer = ask(
        model, "How do I count how many times an option like -v is repeated?", [counting, DURABILITY]
    )

    assert "which suits verbosity flags [5].\n\n```\n@click.option('-v', '--verbose', count=True)" in answer


def test_a_what_is_question_is_answered_by_the_sentence_that_defines_it(model):
    engine = {
        "index": 6,
        "source": "docs/offline.md",
        "heading": "The offline engine",
        "text": (
            "Unset, Keel answers with the offline engine. The offline engine is a deterministic chat model "
            "that is not an LLM. It reads the same prompt a real model reads."
        ),
    }
    answer = ask(model, "What is the offline engine?", [engine, DURABILITY])

    assert "The offline engine is a deterministic chat model that is not an LLM [6]." in answer
