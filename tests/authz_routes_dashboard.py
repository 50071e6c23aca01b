"""Dashboard routes for the authorization matrix (tests/audit/access/test_authz_matrix.py)."""

from __future__ import annotations

from tests.authz_registry import Route

CARE = frozenset({"clinician", "oncall"})

ROUTES: list[Route] = [
    Route("ward overview", "page", "GET", "/", CARE),
    Route("patient chart", "page", "GET", "/patients/{patient}/", CARE, patient_data=True, ward_scoped=True),
    Route("patient list api", "api", "GET", "/api/v1/patients/", CARE),
    Route(
        "series api",
        "api",
        "GET",
        "/api/v1/patients/{patient}/series?start=2026-01-01T00:00:00Z&end=2026-01-01T01:00:00Z",
        CARE,
        patient_data=True,
        ward_scoped=True,
    ),
    Route(
        "annotations api",
        "api",
        "GET",
        "/api/v1/patients/{patient}/annotations",
        CARE,
        patient_data=True,
        ward_scoped=True,
    ),
    Route("patient socket", "ws", "GET", "/ws/patients/{patient}/live", CARE, patient_data=True, ward_scoped=True),
    Route("ward socket", "ws", "GET", "/ws/ward/live", CARE),
]
