"""The Content-Security-Policy header is on every answer, and no template needs what it refuses:
no inline <script>, no on*= event handler, no style= attribute, no <style> element.
(tests/audit/access/test_browser_security.py loads the pages in Chromium, which enforces the policy.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from tests.personas import verified_client

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted(p for p in ROOT.glob("*/templates/**/*.html") if ".venv" not in p.parts) + sorted(
    (ROOT / "templates").glob("**/*.html")
)
_INLINE = {
    "inline <script>": re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE),
    "event handler": re.compile(r"<[^>]+\son[a-z]+\s*=", re.IGNORECASE),
    "style attribute": re.compile(r"<[^>]+\sstyle\s*=", re.IGNORECASE),
    "<style> element": re.compile(r"<style[\s>]", re.IGNORECASE),
}


def test_templates_are_found():
    names = {p.name for p in TEMPLATES}
    assert {"base.html", "chart.html", "explain.html", "login.html", "devices.html"} <= names


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: str(p.relative_to(ROOT)))
def test_template_has_nothing_the_policy_refuses(template):
    text = template.read_text()
    found = [kind for kind, pattern in _INLINE.items() if pattern.search(text)]
    assert found == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    ["/accounts/login/", "/", "/alarms/", "/api/v1/patients/", "/api/v1/alarms/?state=nonsense", "/no-such-page/"],
)
def test_every_answer_carries_the_policy(path, ward_clinician):
    client = verified_client(ward_clinician)
    for c in (client, Client()):
        r = c.get(path)
        assert r["Content-Security-Policy"] == settings.PERFUSE_CONTENT_SECURITY_POLICY, (path, r.status_code)
    policy = dict(d.strip().split(" ", 1) for d in settings.PERFUSE_CONTENT_SECURITY_POLICY.split(";"))
    assert policy["default-src"] == policy["script-src"] == policy["style-src"] == "'self'"
    assert policy["object-src"] == policy["base-uri"] == policy["frame-ancestors"] == "'none'"
