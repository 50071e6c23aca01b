"""Lifecycle routes for the authorization matrix (tests/authz_registry.py): legal holds and the
research export for compliance only, the retention page for compliance and administrators; a
research export's files only for the officer who made it (anyone else's: 404 for everyone)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth.models import User

from audit.trail import Actor
from telemetry.lifecycle.holds import legal_hold_set
from telemetry.lifecycle.models import ResearchExport, ResearchFile
from telemetry.models import Ward
from tests import personas
from tests.authz_registry import Route
from tests.lifecycle.research_support import START, cohort

COMPLIANCE = frozenset({"compliance"})
RETENTION = frozenset({"compliance", "admin"})


def _hold(world: Any) -> dict[str, str]:
    officer = Actor(user_id=None, username="matrix", role="compliance")
    hold = legal_hold_set(pseudonym=world.other_patient, reason="matrix", actor=officer, at=dt.datetime.now(dt.UTC))
    return {"hold": str(hold.pk)}


def _cohort(world: Any) -> dict[str, str]:
    cohort("ward-a", 5, prefix=f"rx-{world.caller or 'anon'}-")
    return {}


def _export(world: Any, *, own: bool) -> dict[str, str]:
    user = User.objects.filter(username=world.caller).first() if own else None
    now = dt.datetime.now(dt.UTC)
    export = ResearchExport.objects.create(
        requester=user or personas.staff("research-someone-else", "compliance"),
        ward=Ward.objects.get(code="ward-a"),
        start=now - dt.timedelta(hours=1),
        end=now,
        purpose="matrix",
        created_at=now,
        expires_at=now + dt.timedelta(hours=1),
        patients=5,
        rows=0,
    )
    ResearchFile.objects.create(export=export, name="readings.csv", content_type="text/csv", content=b"", sha256="")
    return {"export": str(export.pk)}


RESEARCH_SPAN = {
    "ward": "ward-a",
    "start": (START - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
    "end": (START + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
    "purpose": "matrix study",
}

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
    Route("research export page", "page", "GET", "/lifecycle/research/", COMPLIANCE),
    # One event per patient of the cohort (each a disclosure) plus the export's: not one per attempt.
    Route(
        "research export request",
        "page",
        "POST",
        "/lifecycle/research/",
        COMPLIANCE,
        audited=False,
        data=RESEARCH_SPAN,
        setup=_cohort,
    ),
    Route(
        "research export file (own)",
        "page",
        "GET",
        "/lifecycle/research/{export}/readings.csv",
        COMPLIANCE,
        setup=lambda world: _export(world, own=True),
    ),
    Route(
        "research export file (someone else's)",
        "page",
        "GET",
        "/lifecycle/research/{export}/readings.csv",
        frozenset(),
        setup=lambda world: _export(world, own=False),
    ),
]
