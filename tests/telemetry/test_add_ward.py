"""`manage.py add_ward` (contract section 2): creates or renames a ward, audited, idempotent."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.models import AuditEvent
from telemetry.models import Ward

pytestmark = pytest.mark.django_db


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, str]:
    call_command("add_ward", *args, "--json")
    out: dict[str, str] = json.loads(capsys.readouterr().out)
    return out


def _events(code: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(subject=code, action__startswith="ward.").order_by("id"))


def test_creates_a_ward_on_the_main_site_and_audits_it(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(capsys, "cardio-3", "--name", "Cardiology 3")
    assert out == {"code": "cardio-3", "name": "Cardiology 3", "site": "main"}
    ward = Ward.objects.get(code="cardio-3")
    assert (ward.name, ward.site) == ("Cardiology 3", "main")
    [event] = _events("cardio-3")
    assert event.action == "ward.created"
    assert event.detail["changed"] == ["name", "site"]


def test_renames_keeps_the_site_unless_given_and_audits_only_changes(capsys: pytest.CaptureFixture[str]) -> None:
    _run(capsys, "neuro", "--name", "Neuro", "--site", "north")
    renamed = _run(capsys, "neuro", "--name", "Neurology ICU")
    assert renamed == {"code": "neuro", "name": "Neurology ICU", "site": "north"}
    moved = _run(capsys, "neuro", "--name", "Neurology ICU", "--site", "south")
    assert moved["site"] == "south"
    _run(capsys, "neuro", "--name", "Neurology ICU", "--site", "south")
    assert Ward.objects.filter(code="neuro").count() == 1
    events = _events("neuro")
    assert [e.action for e in events] == ["ward.created", "ward.updated", "ward.updated"]
    assert [e.detail["changed"] for e in events[1:]] == [["name"], ["site"]]


def test_the_person_sees_what_happened(capsys: pytest.CaptureFixture[str]) -> None:
    call_command("add_ward", "ortho", "--name", "Ortho")
    assert "ward ortho (Ortho, site main) created" in capsys.readouterr().out
    call_command("add_ward", "ortho", "--name", "Ortho")
    assert "unchanged" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad/code", "--name", "X"], "ward code"),
        (["a" * 41, "--name", "X"], "ward code"),
        (["ok", "--name", "   "], "ward name"),
        (["ok", "--name", "x" * 121], "ward name"),
        (["ok", "--name", "X", "--site", "two words"], "site"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("add_ward", *args)
    assert not Ward.objects.filter(code__in=["ok", "bad/code", "a" * 41]).exists()
    assert not AuditEvent.objects.filter(action__startswith="ward.").exists()
