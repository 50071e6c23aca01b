"""No 5xx and no non-JSON error from content: query parameters PostgreSQL cannot store, path ids
no row can have, bodies that are not JSON and CSRF refusals all answer a JSON 4xx (pages: their
HTML refusal), audited where the route audits."""

import datetime as dt
import json

import pytest
import yaml
from django.test import Client, RequestFactory
from django.test.client import MULTIPART_CONTENT

from alerts.services import alarm_raise, rule_current_ward
from audit.models import AuditEvent
from audit.trail import SYSTEM, audit_record
from audit.verify import chain_verify
from config.api_errors import csrf_failure
from telemetry.models import Patient
from tests import factories
from tests.factories import ward
from tests.personas import staff, verified_client

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("role", "url"),
    [
        ("clinician", "/api/v1/alarms/?patient=%00"),
        ("clinician", "/api/v1/alarms/?ward=a%00b"),
        ("clinician", "/api/v1/patients/?x%00=1"),
        ("compliance", "/api/v1/audit/events?user=%00"),
        ("compliance", "/audit/?action=%00"),
    ],
)
def test_nul_in_query_is_400_json_for_a_signed_in_user(role, url):
    w = ward()
    client = verified_client(staff(f"{role}-nul", role, [w.code]))
    r = client.get(url)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_parameter"


# ---- ids no row can have ---------------------------------------------------------------------

# (role, method, path, the action its refusal is audited as)
ID_ROUTES = [
    ("clinician", "get", "/api/v1/alarms/{id}", "alarm.viewed"),
    ("clinician", "post", "/api/v1/alarms/{id}/acknowledge", "alarm.acknowledged"),
    ("oncall", "post", "/api/v1/alarms/{id}/accept", "alarm.accepted"),
    ("oncall", "post", "/api/v1/alarms/{id}/decline", "alarm.declined"),
    ("clinician", "get", "/alarms/{id}/", "alarm.explained"),
    ("compliance", "post", "/audit/break-glass/{id}/end", "break_glass.ended"),
]


@pytest.mark.parametrize("big", [2**63, 2**64, 10**30])
@pytest.mark.parametrize(("role", "method", "path", "action"), ID_ROUTES)
def test_path_ids_beyond_bigint_are_audited_404s(role, method, path, action, big):
    w = ward()
    client = verified_client(staff(f"{role}-big", role, [w.code]))
    url = path.format(id=big)
    r = client.get(url) if method == "get" else client.post(url, {}, content_type="application/json")
    assert r.status_code == 404
    if url.startswith("/api/"):
        assert r.json()["error"]["code"] == "not_found"
    assert AuditEvent.objects.filter(action=action, outcome="denied").count() == 1
    assert chain_verify().ok


def test_audit_writer_stores_what_postgres_and_the_hash_cannot_take_as_is():
    event = audit_record(actor=SYSTEM, action="test.odd", subject="a\x00b", detail={"id": 2**70, "n\x00": ["\x00"]})
    event.refresh_from_db()
    assert (event.subject, event.detail) == ("a\ufffdb", {"id": str(2**70), "n\ufffd": ["\ufffd"]})
    assert chain_verify().ok


# ---- JSON endpoints take JSON ----------------------------------------------------------------

JSON_ENDPOINTS = [
    ("clinician", "/api/v1/patients/pt-h/identity"),
    ("clinician", "/api/v1/alarms/{alarm}/acknowledge"),
    ("oncall", "/api/v1/alarms/{alarm}/decline"),
    ("clinician", "/api/v1/alarms/pauses"),
]


@pytest.fixture
def alarm_id():
    ward("icu-h")
    factories.device(ward_code="icu-h", patient="pt-h")
    patient = Patient.objects.select_related("ward").get(pseudonym="pt-h")
    now = dt.datetime.now(dt.UTC)
    rule = rule_current_ward(patient.ward)
    return alarm_raise(patient=patient, rule=rule, kind="low", onset=now, now=now, explain={"samples": []}).pk


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (MULTIPART_CONTENT, None),  # the test client encodes `data` as multipart/form-data
        ("multipart/form-data", b"--x\r\nbroken"),  # no boundary
        ("multipart/form-data; boundary=x", b"--x\r\nbroken"),
        ("application/x-www-form-urlencoded", b"purpose=x&note=y&patient=pt-h&seconds=5"),
        ("text/plain", b'{"purpose": "x"}'),
    ],
)
@pytest.mark.parametrize(("role", "path"), JSON_ENDPOINTS)
def test_non_json_bodies_get_a_json_415(alarm_id, role, path, content_type, body):
    client = verified_client(staff(f"{role}-mp", role, ["icu-h"]))
    url = path.format(alarm=alarm_id)
    data = {"purpose": "bedside check", "note": "x", "patient": "pt-h", "seconds": "5"} if body is None else body
    r = client.post(url, data, content_type=content_type)
    assert r.status_code == 415
    assert r["Content-Type"] == "application/json"
    assert r.json()["error"]["code"] == "unsupported_media_type"


def test_openapi_advertises_json_request_bodies_only():
    schema = yaml.safe_load(Client().get("/api/schema/").content)
    bodies = {
        (method, path): sorted(op["requestBody"]["content"])
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
        if "requestBody" in op
    }
    assert ("post", "/api/v1/patients/{pseudonym}/identity") in bodies
    assert set(map(tuple, bodies.values())) == {("application/json",)}
    assert "cookieAuth" in schema["components"]["securitySchemes"]  # the session is still documented


# ---- CSRF refusals answer in the client's language -------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/v1/alarms/pauses", {}),  # DRF's session authentication decides
        ("/api/v1/patients/pt-h/identity", {}),
        ("/accounts/session/ping", {"HTTP_ACCEPT": "application/json"}),  # Django's middleware decides
    ],
)
def test_csrf_failure_on_a_json_endpoint_is_json(alarm_id, path, headers):
    client = verified_client(staff("clin-csrf", "clinician", ["icu-h"]), enforce_csrf_checks=True)
    r = client.post(path, "{}", content_type="application/json", **headers)
    assert r.status_code == 403
    assert r["Content-Type"] == "application/json"
    assert r.json()["error"]["code"] == "csrf_failed"


def test_csrf_failure_view_answers_json_on_api_paths_and_html_elsewhere():
    factory = RequestFactory()
    api = csrf_failure(factory.post("/api/v1/anything"), reason="CSRF cookie not set.")
    assert (api.status_code, api["Content-Type"]) == (403, "application/json")
    assert json.loads(api.content) == {
        "error": {"code": "csrf_failed", "detail": "CSRF check failed: CSRF cookie not set."}
    }
    page = csrf_failure(factory.post("/accounts/logout/", HTTP_ACCEPT="text/html,*/*"), reason="x")
    assert page.status_code == 403 and page["Content-Type"].startswith("text/html")


def test_csrf_failure_on_a_form_page_stays_html(ward_clinician):
    client = verified_client(ward_clinician, enforce_csrf_checks=True)
    r = client.post("/accounts/logout/", {}, HTTP_ACCEPT="text/html,application/xhtml+xml")
    assert r.status_code == 403 and r["Content-Type"].startswith("text/html")
