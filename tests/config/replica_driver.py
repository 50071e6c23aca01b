"""The Django side of tests/config/test_replica.py, run as a child process whose settings come
from its environment: DATABASE_URL names a private primary and DATABASE_REPLICA_URL its streaming
replica, so Django holds both aliases exactly as a deployment would. Each line on stdin is one
JSON command, each answer one JSON line on stdout.

Requests go through Django's test client into the real URLconf, middleware, access layer, views
and selectors. Every SQL statement is recorded per alias with `execute_wrapper` (which, unlike
CaptureQueriesContext, does not connect, so a stopped replica stays untouched), and the answer
says which server each alias's connection reached (`pg_is_in_recovery()` on it).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

import django
import psycopg

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.db import connections, transaction  # noqa: E402
from django.test import Client  # noqa: E402

from audit.access.roles import CLINICIAN, COMPLIANCE  # noqa: E402
from audit.trail import SYSTEM  # noqa: E402
from config import replica  # noqa: E402
from dashboard.models import FhirExport  # noqa: E402
from telemetry.engine import engine_tick, load_processors  # noqa: E402
from telemetry.lifecycle.research import research_export_create  # noqa: E402
from telemetry.models import Device, Patient  # noqa: E402
from tests import factories, personas  # noqa: E402
from tests.readings import Row, insert_readings  # noqa: E402

FHIR = "application/fhir+json"
clients: dict[str, Client] = {}
settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]  # the test client's host, as pytest-django does


class Recorder:
    def __init__(self) -> None:
        self.sql: list[str] = []

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        self.sql.append(sql)
        return execute(sql, params, many, context)


def setup(*, ward: str, pseudonym: str, device: str) -> dict[str, Any]:
    factories.ward(ward)
    factories.device(ward, device, patient=pseudonym)
    clients["clinician"] = personas.verified_client(personas.staff("replica-clinician", CLINICIAN, [ward]))
    clients["officer"] = personas.verified_client(personas.staff("replica-officer", COMPLIANCE))
    return {}


def admit(*, ward: str, pseudonym: str, device: str) -> dict[str, Any]:
    factories.device(ward, device, patient=pseudonym)
    return {}


def insert(*, device: str, pseudonym: str, seq: int, t: str, value: float) -> dict[str, Any]:
    device_pk = Device.objects.get(device_id=device).pk
    patient_pk = Patient.objects.get(pseudonym=pseudonym).pk
    row = Row(device_pk, patient_pk, "tissue_o2", seq, dt.datetime.fromisoformat(t), value, 0.9)
    with transaction.atomic(), connections["default"].cursor() as cursor:
        return {"stored": insert_readings(cursor, [row])}


def _server_in_recovery(alias: str) -> bool | None:
    connection = connections[alias]
    if connection.connection is None:
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        return bool(cursor.fetchone()[0])


class Saboteur:
    """Before the replica connection's first read of readings, its backend is terminated from
    another session: the connection dies on the server's side midway through a request."""

    def __init__(self) -> None:
        self.done = False

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        if not self.done and "telemetry_reading" in sql:
            self.done = True
            pid = context["connection"].connection.info.backend_pid
            with psycopg.connect(os.environ["DATABASE_REPLICA_URL"], autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", [pid])
        return execute(sql, params, many, context)


def _recorded(act: Callable[[], dict[str, Any]], *, sabotage: bool = False) -> dict[str, Any]:
    """What `act` answers, with the SQL each alias ran meanwhile and whose server it reached."""
    recorders = {alias: Recorder() for alias in settings.DATABASES}
    with ExitStack() as stack:
        if sabotage:
            stack.enter_context(connections[replica.REPLICA].execute_wrapper(Saboteur()))
        for alias, recorder in recorders.items():
            stack.enter_context(connections[alias].execute_wrapper(recorder))
        answer = act()
    return {
        **answer,
        "sql": {alias: recorder.sql for alias, recorder in recorders.items()},
        "in_recovery": {alias: _server_in_recovery(alias) for alias in settings.DATABASES},
    }


def get(*, who: str, url: str, sabotage: bool = False) -> dict[str, Any]:
    def act() -> dict[str, Any]:
        response = clients[who].get(url)
        body = b"".join(response.streaming_content) if response.streaming else response.content
        return {"status": response.status_code, "body": body.decode()}

    return _recorded(act, sabotage=sabotage)


def bulk_export(*, ward: str, replayed: bool) -> dict[str, Any]:
    """A FHIR bulk export of the ward, requested by the clinician and built by engine loops as
    run_engine runs them; the manifest's count of each resource type. `replayed`: the first loop
    waits until the replica holds the job, as a loop a moment after the request would find it."""
    client = clients["clinician"]
    kick = client.get(f"/fhir/R4/Group/{ward}/$export", headers={"Prefer": "respond-async", "Accept": FHIR})
    assert kick.status_code == 202, kick.content
    status_url = urlsplit(kick["Content-Location"]).path
    queued = FhirExport.objects.using(replica.REPLICA).filter(state=FhirExport.State.QUEUED)
    deadline = time.monotonic() + 30
    while replayed and not queued.exists():
        assert time.monotonic() < deadline, "the replica did not replay the export request"
        time.sleep(0.01)

    def act() -> dict[str, Any]:
        processors = load_processors()
        for _ in range(50):
            engine_tick(processors, now=dt.datetime.now(dt.UTC))
            if not FhirExport.objects.filter(state=FhirExport.State.QUEUED).exists():
                break
        return {}

    answer = _recorded(act)
    manifest = json.loads(client.get(status_url).content)
    return {**answer, "counts": {o["type"]: o["count"] for o in manifest["output"]}}


def research(*, ward: str) -> dict[str, Any]:
    """A de-identified research export of the ward's last two hours (the service, as the
    research page calls it once it has decided the requester may export)."""
    requester = User.objects.get(username="replica-clinician")
    now = dt.datetime.now(dt.UTC)

    def act() -> dict[str, Any]:
        export = research_export_create(
            requester_id=requester.pk,
            actor=SYSTEM,
            ward_code=ward,
            start=now - dt.timedelta(hours=2),
            end=now,
            purpose="replica test",
        )
        return {"rows": export.rows, "patients": export.patients}

    return _recorded(act)


def configure(**values: Any) -> dict[str, Any]:
    for name, value in values.items():
        setattr(settings, name, value)
    return {}


def state() -> dict[str, Any]:
    return {"down": replica.replica_down_reason(), "pick": replica.replica_pick()}


COMMANDS: dict[str, Callable[..., dict[str, Any]]] = {
    "setup": setup,
    "admit": admit,
    "insert": insert,
    "get": get,
    "bulk_export": bulk_export,
    "research": research,
    "configure": configure,
    "state": state,
}


def main() -> None:
    for line in sys.stdin:
        command = json.loads(line)
        try:
            answer = COMMANDS[command.pop("op")](**command)
        except Exception as exc:  # the parent shows it with the command that failed
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
