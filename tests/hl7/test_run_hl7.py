"""`manage.py run_hl7` as a process, fed by the shell command of docs/hl7.md exactly as written
there (`python -m telemetry.hl7.send`): the newcomer's A01 for MRN 12345 to ward icu-demo, then
a clean SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from telemetry.hl7.send import ack_code, message_text
from telemetry.models import PatientIdentity, Ward
from tests.hl7.support import valid_ack, valid_adt

ROOT = Path(__file__).resolve().parents[2]


def documented_command(port: int) -> str:
    """The first sh block of docs/hl7.md, pointed at `port` and this interpreter."""
    text = (ROOT / "docs" / "hl7.md").read_text(encoding="utf-8")
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    assert "--port 12575" in block and ".venv/bin/python" in block
    return block.replace("--port 12575", f"--port {port}").replace(".venv/bin/python", sys.executable)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}:{s['PASSWORD']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


@pytest.mark.django_db(transaction=True)
def test_run_hl7_applies_the_documented_a01_and_stops_on_sigterm() -> None:
    Ward.objects.create(code="icu-demo", name="ICU demo")
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "PERFUSE_HL7_LISTEN": f"127.0.0.1:{port}",
    }
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_hl7"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not any("HL7 listener on" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, lines
            time.sleep(0.05)
        command = documented_command(port)
        producer = command.split("\n  | ", 1)[0].rstrip(" \\\n")  # the printf before the pipe
        message = subprocess.run(["/bin/bash", "-c", producer], capture_output=True, check=True).stdout
        valid_adt(message_text(message).decode())  # the documented message is valid HL7 v2.5
        sent = subprocess.run(["/bin/bash", "-c", command], cwd=ROOT, capture_output=True, timeout=60, check=False)
        assert sent.returncode == 0, sent.stderr
        reply = sent.stdout.decode().strip().replace("\n", "\r")
        assert "MSA|AA|MSG00001" in valid_ack(reply)
        patient = PatientIdentity.objects.select_related("patient__ward").get(mrn="12345").patient
        assert (patient.ward.code, patient.bed) == ("icu-demo", "bed-1")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, lines


def test_the_sender_reads_the_ack_code_it_exits_with() -> None:
    assert ack_code(b"MSH|^~\\&|P|P\rMSA|AR|X\rERR||MSH^1^12") == "AR"
    assert ack_code(b"MSH|^~\\&|P|P\rMSA|AA|X") == "AA"
    assert ack_code(b"not an ack") == ""
