"""Pure tool governance: policy decisions, the HITL request shape, applying human decisions."""

from __future__ import annotations

import pytest

from tools.builtin import default_registry
from tools.execute import PreparedCall, apply_decisions, approval_request
from tools.policy import UserAttrs, decide
from tools.tickets import CREATE_TICKET, CreateTicketInput

REG = default_registry()


def spec(name):
    return REG.get(name)


def test_policy_allow_deny_approve():
    alice = UserAttrs("alice")
    calc = spec("calculator")
    args = calc.input_model(expression="1+1")
    assert decide(alice, calc, args).kind == "allow"
    assert decide(alice, calc, args, allowed={"search_docs"}).kind == "deny"
    ticket = spec("create_ticket")
    d = decide(alice, ticket, CreateTicketInput(title="x"))
    assert d.kind == "approve" and "human" in d.reason


def test_policy_roles_and_callable_rules():
    from dataclasses import replace

    admin_only = replace(
        CREATE_TICKET,
        allowed_roles=frozenset({"admin"}),
        needs_approval=lambda args, user: "urgent" in args.title,
    )
    args = CreateTicketInput(title="routine")
    assert decide(UserAttrs("bob"), admin_only, args).kind == "deny"
    assert "admin" in decide(UserAttrs("bob"), admin_only, args).reason
    assert decide(UserAttrs("ann", frozenset({"admin"})), admin_only, args).kind == "allow"
    assert (
        decide(UserAttrs("ann", frozenset({"admin"})), admin_only, CreateTicketInput(title="urgent!")).kind
        == "approve"
    )


def test_policy_tenants():
    from dataclasses import replace

    acme_only = replace(CREATE_TICKET, allowed_tenants=frozenset({"acme"}), needs_approval=False)
    args = CreateTicketInput(title="x")
    assert decide(UserAttrs("a", tenant="acme"), acme_only, args).kind == "allow"
    for user in (UserAttrs("b", tenant="globex"), UserAttrs("c")):
        d = decide(user, acme_only, args)
        assert (
            d.kind == "deny" and "tenant" in d.reason and "acme" not in d.reason
        )  # tenant names not disclosed
    assert decide(UserAttrs("c"), CREATE_TICKET, args).kind == "approve", (
        "no tenant rule: tenants don't matter"
    )


def pending(name="create_ticket", args=None, human="approval"):
    s = spec(name)
    a = args or {"title": "Printer on fire"}
    return PreparedCall(
        call={"name": name, "args": a, "id": "c1"},
        spec=s,
        args=s.input_model.model_validate(a),
        decision=decide(UserAttrs("u"), s, s.input_model.model_validate(a)),
        human=human,
    )


def test_approval_request_is_the_agent_chat_ui_shape():
    req = approval_request([pending(), pending(human="unknown_outcome")])
    assert set(req) == {"action_requests", "review_configs"}
    a0, a1 = req["action_requests"]
    assert a0["name"] == "create_ticket" and a0["args"] == {"title": "Printer on fire"} and a0["description"]
    assert req["review_configs"][0] == {
        "action_name": "create_ticket",
        "allowed_decisions": ["approve", "edit", "reject"],
    }
    assert req["review_configs"][1]["allowed_decisions"] == ["approve", "reject"]
    assert "unknown" in a1["description"]


@pytest.mark.parametrize(
    "decision,check",
    [
        ({"type": "approve"}, lambda p: p.approved_by_human and p.error is None),
        ({"type": "reject", "message": "not now"}, lambda p: p.error and "not now" in p.error),
        (
            {"type": "edit", "edited_action": {"name": "create_ticket", "args": {"title": "Edited"}}},
            lambda p: (
                p.approved_by_human and p.args.title == "Edited" and p.call["args"] == {"title": "Edited"}
            ),
        ),
        (
            {"type": "edit", "edited_action": {"name": "create_ticket", "args": {"title": ""}}},
            lambda p: p.error and "invalid arguments" in p.error,
        ),
        (
            {"type": "edit", "edited_action": {"name": "close_ticket", "args": {"ticket_id": 1}}},
            lambda p: p.error and "not the tool" in p.error,
        ),
        ({"type": "maybe"}, lambda p: p.error and "unsupported decision" in p.error),
    ],
)
def test_apply_decisions(decision, check):
    p = pending()
    apply_decisions([p], {"decisions": [decision]})
    assert check(p)


def test_decisions_must_match_the_requests():
    ps = [pending(), pending()]
    apply_decisions(ps, {"decisions": [{"type": "approve"}]})
    assert all(p.error and "one decision per action" in p.error for p in ps)
    p = pending()
    apply_decisions([p], "yes")
    assert p.error
