"""The authorization registry: every URL, API route and WebSocket route with the roles allowed.

tests/audit/access/test_authz_matrix.py runs every route by every identity (each role verified, each role with
a password-only session, each role with an idle-expired session, anonymous, and a clinician of
another ward) and asserts allowed/denied plus exactly one audit event per attempt on audited
routes (on patient-data routes: exactly one event naming the patient, with the right outcome).

To add routes, create `tests/authz_routes_<area>.py` with a `ROUTES: list[Route]` (discovered
automatically, so areas do not edit one shared list). Paths may use `{patient}` (a patient on
the clinicians' ward), `{other_patient}` (a patient on another ward), `{key}` (an active device
key) and any name returned by the route's `setup(world)` (`world.caller` is the username of the
identity about to make the request, "" when anonymous).

Kind "fhir" is an API whose refusals are FHIR OperationOutcome resources (application/fhir+json)
instead of the {"error"} body; `headers` are sent with the request.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ALL_ROLES = frozenset({"clinician", "oncall", "compliance", "device_admin", "admin"})


@dataclass(frozen=True)
class Route:
    name: str
    kind: Literal["page", "api", "ws", "fhir"]
    method: str
    path: str
    allowed: frozenset[str]
    # Reads patient data: each attempt writes exactly one audit event with subject {patient}.
    patient_data: bool = False
    # Each attempt writes exactly one audit event (session.expired aside).
    audited: bool = True
    # Ward-scoped: a role in `allowed` is refused for a patient of another ward.
    ward_scoped: bool = False
    data: dict[str, Any] | None = None
    setup: Callable[[Any], dict[str, str]] | None = field(default=None, compare=False)
    headers: dict[str, str] | None = field(default=None, compare=False)


ACCESS_ROUTES: list[Route] = [
    Route("audit search", "page", "GET", "/audit/", frozenset({"compliance"})),
    Route(
        "audit patient report",
        "page",
        "GET",
        "/audit/patients/{patient}/",
        frozenset({"compliance"}),
        patient_data=True,
    ),
    Route(
        "audit disclosures",
        "page",
        "GET",
        "/audit/patients/{patient}/disclosures/",
        frozenset({"compliance"}),
        patient_data=True,
    ),
    Route("audit export csv", "page", "GET", "/audit/export.csv", frozenset({"compliance"})),
    Route("audit export fhir", "page", "GET", "/audit/export.fhir.json", frozenset({"compliance"})),
    Route("audit events api", "api", "GET", "/api/v1/audit/events", frozenset({"compliance"})),
    Route("break-glass form", "page", "GET", "/audit/break-glass/", frozenset({"compliance", "admin"})),
    Route("devices page", "page", "GET", "/devices/", frozenset({"device_admin", "admin"})),
    Route("revoke device key", "page", "POST", "/devices/keys/{key}/revoke", frozenset({"device_admin", "admin"})),
    Route(
        "identity reveal",
        "api",
        "POST",
        "/api/v1/patients/{patient}/identity",
        frozenset({"clinician"}),
        patient_data=True,
        ward_scoped=True,
        data={"purpose": "confirm identity at the bedside"},
    ),
    Route("session socket", "ws", "GET", "/ws/session", ALL_ROLES, audited=False),
]


def all_routes() -> list[Route]:
    routes = list(ACCESS_ROUTES)
    here = Path(__file__).parent
    for module in pkgutil.iter_modules([str(here)]):
        if module.name.startswith("authz_routes_"):
            routes.extend(importlib.import_module(f"tests.{module.name}").ROUTES)
    return routes
