"""Lifecycle routes for the authorization matrix (tests/authz_registry.py): legal holds for
compliance only, the retention page for compliance and administrators."""

from __future__ import annotations

import datetime as dt
from typing import Any

from audit.trail import Actor
from telemetry.lifecycle.holds import legal_hold_set
from tests.authz_registry import Route

COMPLIANCE = frozenset({"compliance"})
RETENTION = frozenset({"compliance", "admin"})


def _hold(world: Any) -> dict[str, str]:
    officer = Actor(user_id=None, username="matrix", role="compliance")
    hold = legal_hold_set(pseudonym=world.other_patient, reason="matrix", actor=officer, at=dt.datetime.now(dt.UTC))
    return {"hold": str(hold.pk)}


ROUTES: list[Route] = [
    Route("legal holds page", "page", "GET", "/lifecycle/holds/", COMPLIANCE),
    Route(
        "set a legal hold",
        "page",
        "POST",
        "/lifecycle/holds/",
        COMPLIANCE,
        data={"ward": "ward-a", "reason": "matrix"},
    ),
    Route(
        "release a legal hold",
        "page",
        "POST",
        "/lifecycle/holds/{hold}/release",
        COMPLIANCE,
        data={"reason": "matrix"},
        setup=_hold,
    ),
    Route("retention page", "page", "GET", "/lifecycle/retention/", RETENTION),
]
