"""Alarm-history routes for the authorization matrix (tests/authz_registry.py): the alarm
console's roles, and per patient only for a patient of the caller's wards."""

from __future__ import annotations

from tests.authz_registry import Route

CONSOLE = frozenset({"clinician", "oncall", "admin"})

ROUTES: list[Route] = [
    Route("alarm history page", "page", "GET", "/alarms/history/", CONSOLE),
    Route("alarm history csv", "page", "GET", "/alarms/history.csv", CONSOLE),
    Route("alarm history api", "api", "GET", "/api/v1/alarms/history", CONSOLE),
    *(
        Route(
            f"{name} of a patient",
            kind,
            "GET",
            f"{path}?patient={{patient}}",
            CONSOLE,
            patient_data=True,
            ward_scoped=True,
        )
        for name, kind, path in (
            ("alarm history page", "page", "/alarms/history/"),
            ("alarm history csv", "page", "/alarms/history.csv"),
            ("alarm history api", "api", "/api/v1/alarms/history"),
        )
    ),
]
