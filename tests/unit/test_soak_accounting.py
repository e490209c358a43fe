"""The chaos soak's counting (tests/soak/chaos.py): what is lost, duplicated, stray, a fork."""

from __future__ import annotations

from tests.soak.chaos import RunRow, account, chain_problems, markers_in


def human(marker: str) -> dict:
    return {"type": "human", "content": f"How do I scale out workers? [soak:{marker}]"}


def ai(text: str) -> dict:
    return {"type": "ai", "content": text}


def test_markers_are_read_from_human_messages_only():
    values = {"messages": [human("t-1"), ai("echo [soak:t-1]"), {"role": "user", "content": "[soak:t-2]"}]}
    assert markers_in(values) == ["t-1", "t-2"]
    assert markers_in(None) == [] and markers_in({"__error__": {}}) == []


def test_a_success_run_whose_message_is_missing_is_lost_but_an_interrupted_one_is_not():
    runs = [
        RunRow("r1", "th", "t-1", "success"),
        RunRow("r2", "th", "t-2", "success"),
        RunRow("r3", "th", "t-3", "interrupted"),
        RunRow("r4", "th", "t-4", "interrupted"),
    ]
    acc = account(runs, {"th": ["t-1", "t-4"]})
    assert [r.run_id for r in acc.lost] == ["r2"]
    assert acc.found_once == 1 and dict(acc.absent_ok) == {"interrupted": 1}
    assert not acc.duplicated and not acc.stray and not acc.unchecked


def test_a_marker_twice_is_duplicated_whatever_the_status_and_an_unknown_one_is_stray():
    runs = [RunRow("r1", "th", "t-1", "success"), RunRow("r2", "th", "t-2", "error")]
    acc = account(runs, {"th": ["t-1", "t-2", "t-2", "t-9"]})
    assert acc.duplicated == [("th", "t-2", 2)] and acc.stray == [("th", "t-9")] and not acc.lost


def test_stateless_runs_are_checked_against_their_recorded_result():
    ok = RunRow("r1", "tmp1", "t-1", "success", temporary=True, result={"messages": [human("t-1"), ai("x")]})
    lost = RunRow("r2", "tmp2", "t-2", "success", temporary=True, result={"messages": [human("t-7")]})
    acc = account([ok, lost], {})
    assert [r.run_id for r in acc.lost] == ["r2"] and acc.stray == [("tmp2", "t-7")] and acc.found_once == 1


def test_a_thread_whose_state_could_not_be_read_is_reported_unchecked():
    acc = account([RunRow("r1", "th", "t-1", "success")], {"th": None})
    assert acc.unchecked == ["th"] and not acc.lost


def test_chain_problems_finds_branches_and_second_heads_but_accepts_a_trimmed_chain():
    single = [("a", "1", None), ("a", "2", "1"), ("a", "3", "2")]
    trimmed = [("b", "5", "4"), ("b", "6", "5")]  # 1..4 deleted by checkpoint trimming
    branch = [("c", "1", None), ("c", "2", "1"), ("c", "3", "1")]
    two_roots = [("d", "1", None), ("d", "2", None)]
    problems = chain_problems(single + trimmed + branch + two_roots)
    assert set(problems) == {"c", "d"}
    assert "'1': 2" in problems["c"] and problems["d"].startswith("2 head(s)")
