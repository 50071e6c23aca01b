"""Auditing refusals (config/refusal.py): the one function that writes a denial event, and the
wrapper that gives a service act its transaction and audits the act's refusals.

A refused act must leave no partial write, yet its denial must be committed. So a service act
raises Refusal inside its transaction; `refusals_audited` lets that transaction roll back and then
writes the denial event in a transaction of its own, before passing the refusal on. Refusals
raised outside a service act (a guard, a selector deciding access) are audited the same way by
whoever answers them (audit/access/answers.py). `refusal_audit` marks the refusal, so one that
travels through several layers is audited once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import transaction

from audit.models import AuditEvent
from audit.trail import Actor, audit_record
from config.refusal import Refusal

P = ParamSpec("P")
R = TypeVar("R")


def refusal_audit(refusal: Refusal, actor: Actor) -> None:
    """Write the denial event of `refusal` (once). Call it after the refused act's transaction
    ended: inside it, the event would roll back with the act."""
    if refusal.audited:
        return
    with transaction.atomic():
        audit_record(
            actor=actor,
            action=refusal.action,
            outcome=AuditEvent.Outcome.DENIED,
            subject=refusal.subject[:80],
            purpose=refusal.purpose,
            break_glass=refusal.break_glass,
            detail={"reason": refusal.reason, **refusal.facts},
        )
    refusal.audited = True


def refusals_audited(act: Callable[P, R]) -> Callable[P, R]:
    """Run a keyword-only service act (it takes `actor=`) in one transaction; a Refusal it raises
    rolls the transaction back, is audited, and is raised on."""

    @functools.wraps(act)
    def audited(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            with transaction.atomic():
                return act(*args, **kwargs)
        except Refusal as refusal:
            actor = kwargs["actor"]
            assert isinstance(actor, Actor), f"{act.__name__} is called with actor=Actor(...)"
            refusal_audit(refusal, actor)
            raise

    return audited
