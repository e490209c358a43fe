"""LangSmith `evaluate` over a finished evaluation: the set becomes a dataset, the runs an experiment.

The engine is not run again: the target returns each question's recorded answer, and three evaluators score
it as `keel eval` does (fact present, correct abstention, acceptable source retrieved).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.evaluation.scoring import Scored, abstained, answer_body

if TYPE_CHECKING:
    from langsmith import Client


def _reference(s: Scored) -> dict[str, Any]:
    t = s.result.turn
    return {"answerable": t.answerable, "expected": t.expected, "sources": list(t.sources)}


def _outputs(s: Scored) -> dict[str, Any]:
    r = s.result
    return {
        "answer": r.answer,
        "status": r.status,
        "retrieved": [p["source"] for p in (r.retrievals[0] if r.retrievals else [])],
        "hit_first": s.hit_first,
    }


def fact(outputs: dict[str, Any], reference_outputs: dict[str, Any]) -> dict[str, Any]:
    from server.evaluation.dataset import fact_present

    if not reference_outputs["answerable"]:
        return {"key": "fact", "score": None}
    return {
        "key": "fact",
        "score": int(fact_present(reference_outputs["expected"], answer_body(outputs["answer"]))),
    }


def abstention(outputs: dict[str, Any], reference_outputs: dict[str, Any]) -> dict[str, Any]:
    """1 when the turn abstained exactly when the documents cannot answer it."""
    from server.evaluation.dataset import Turn
    from server.evaluation.runner import TurnResult

    probe = TurnResult(Turn("", 0, "", True), "", status=outputs["status"], answer=outputs["answer"])
    return {"key": "correct_abstention", "score": int(abstained(probe) != reference_outputs["answerable"])}


def recall(outputs: dict[str, Any], reference_outputs: dict[str, Any]) -> dict[str, Any]:
    if not reference_outputs["answerable"]:
        return {"key": "recall_at_k", "score": None}
    return {"key": "recall_at_k", "score": int(bool(outputs["hit_first"]))}


def examples(scored: list[Scored]) -> list[dict[str, Any]]:
    """The dataset rows: inputs (question and its key) and reference outputs."""
    return [
        {"inputs": {"key": s.result.turn.key, "question": s.result.turn.question}, "outputs": _reference(s)}
        for s in scored
    ]


def publish(
    scored: list[Scored], set_name: str, client: Client, *, metadata: dict[str, Any], upload: bool = True
) -> Any:
    """Run `langsmith.evaluate` on the recorded answers. With `upload`, the set is synced to the dataset
    `keel-eval-<set>` and the experiment uploaded; without, examples stay local (nothing is sent)."""
    from langsmith import evaluate
    from langsmith.schemas import Example

    by_key = {s.result.turn.key: _outputs(s) for s in scored}
    rows = examples(scored)

    def target(inputs: dict[str, Any]) -> dict[str, Any]:
        return by_key[inputs["key"]]

    data: Any
    if upload:
        name = f"keel-eval-{set_name}"
        if client.has_dataset(dataset_name=name):
            dataset = client.read_dataset(dataset_name=name)
            for ex in client.list_examples(dataset_id=dataset.id):
                client.delete_example(ex.id)
        else:
            dataset = client.create_dataset(name, description=f"keel eval question set {set_name}")
        client.create_examples(
            inputs=[r["inputs"] for r in rows], outputs=[r["outputs"] for r in rows], dataset_id=dataset.id
        )
        data = name
    else:
        import uuid

        data = [Example(id=uuid.uuid4(), inputs=r["inputs"], outputs=r["outputs"]) for r in rows]
    return evaluate(
        target,
        data=data,
        evaluators=[fact, abstention, recall],
        experiment_prefix=f"keel-{set_name}",
        metadata=metadata,
        client=client,
        upload_results=upload,
        max_concurrency=0,
    )
