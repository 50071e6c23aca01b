"""No existence oracle: whoever may not see a patient gets exactly the same answer for a real
pseudonym as for one that names nobody (status, code, detail, redirect), on every patient route;
identity reveal decides access before it looks at the purpose. The reason stays in the audit
trail (`unknown_patient` vs `other_ward`), which only compliance reads."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from audit.models import AuditEvent
from telemetry.models import Ward
from tests import factories, personas

pytestmark = pytest.mark.django_db

REAL, UNKNOWN = "pt-real", "pt-nobody"
# (method, path, JSON body or None)
ROUTES = [
    ("get", "/api/v1/patients/{p}/series", None),
    ("get", "/api/v1/patients/{p}/annotations", None),
    ("get", "/patients/{p}/", None),
    ("post", "/api/v1/patients/{p}/identity", {"purpose": "bedside check"}),
    ("post", "/api/v1/patients/{p}/identity", {"purpose": ""}),
    ("post", "/api/v1/patients/{p}/identity", {}),
]
_TOKEN = re.compile(rb"[A-Za-z0-9]{64}")  # masked CSRF tokens differ on every page


@pytest.fixture
def callers(
    ward_a: Ward, other_ward_clinician: User, other_ward_nurse: User, compliance_officer: User, device_admin: User
) -> dict[str, Any]:
    factories.device(ward_code=ward_a.code, patient=REAL)
    return {
        "anonymous": lambda: Client(),
        "password_only": lambda: personas.verified_client(
            personas.staff("clin-pw", "clinician", [ward_a.code]), otp=False
        ),
        "other_ward_clinician": lambda: personas.verified_client(other_ward_clinician),
        "other_ward_oncall": lambda: personas.verified_client(other_ward_nurse),
        "compliance": lambda: personas.verified_client(compliance_officer),
        "device_admin": lambda: personas.verified_client(device_admin),
    }


def _answer(client: Client, method: str, path: str, body: dict[str, Any] | None, pseudonym: str) -> tuple[Any, ...]:
    url = path.format(p=pseudonym)
    r = client.get(url) if method == "get" else client.post(url, body, content_type="application/json")
    location = r.get("Location", "").replace(pseudonym, "{p}")
    content = _TOKEN.sub(b"", r.content).replace(pseudonym.encode(), b"{p}")
    return r.status_code, r.get("Content-Type"), location, content


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize(
    "who",
    ["anonymous", "password_only", "other_ward_clinician", "other_ward_oncall", "compliance", "device_admin"],
)
def test_refusal_is_the_same_for_a_real_and_an_unknown_patient(callers, who, method, path, body):
    client = callers[who]()
    real = _answer(client, method, path, body, REAL)
    unknown = _answer(client, method, path, body, UNKNOWN)
    assert real[0] in (302, 401, 403)
    assert real == unknown


def test_identity_reveal_decides_access_before_the_purpose(callers):
    client = callers["other_ward_clinician"]()
    r = client.post(f"/api/v1/patients/{REAL}/identity", {"purpose": ""}, content_type="application/json")
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    event = AuditEvent.objects.get(action="identity.reveal")
    assert (event.outcome, event.detail["reason"]) == ("denied", "not_permitted")


def test_ward_clinician_still_needs_a_purpose(callers, ward_clinician):
    client = personas.verified_client(ward_clinician)
    r = client.post(f"/api/v1/patients/{REAL}/identity", {"purpose": " "}, content_type="application/json")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "purpose_required")
    r = client.post(f"/api/v1/patients/{REAL}/identity", {"purpose": "a\u0000b"}, content_type="application/json")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_purpose")
    assert AuditEvent.objects.filter(action="identity.reveal", outcome="denied").count() == 2


def test_the_audit_trail_keeps_the_reason(callers):
    client = callers["other_ward_clinician"]()
    client.get(f"/api/v1/patients/{REAL}/series")
    client.get(f"/api/v1/patients/{UNKNOWN}/series")
    reasons = list(
        AuditEvent.objects.filter(action="series.read").order_by("id").values_list("detail__reason", flat=True)
    )
    assert reasons == ["other_ward", "unknown_patient"]
