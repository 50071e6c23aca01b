"""Gateway identities at the broker (contract 1c, 2): provision_gateway prints a client certificate
for the gateway's key (CN = gateway id) that connects to the real Mosquitto and may publish only to its
own gateway topic; revoke_gateway_key revokes that key's certificate alone, drops the open
connection and refuses the next, while the gateway's other key keeps working."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from django.core.management import call_command

from audit.models import AuditEvent
from telemetry.models import GatewayKey, IssuedCertificate, Ward
from telemetry.mqtt_broker import GATEWAY_ACKS, GATEWAY_BATCHES
from tests.mqtt_support import WAIT, Broker, Connection, Identity, connected, identity_files

pytestmark = pytest.mark.django_db


def _provision(gateway_id: str, directory: Path) -> tuple[dict[str, Any], Identity]:
    out = io.StringIO()
    call_command("provision_gateway", gateway_id, "--ward", "icu-a", "--json", stdout=out)
    result: dict[str, Any] = json.loads(out.getvalue())
    identity = identity_files(
        directory / result["key_id"],
        gateway_id,
        private_key_pem=result["private_key_pem"],
        certificate_pem=result["certificate_pem"],
    )
    return result, identity


def test_provision_gateway_prints_a_certificate_that_connects_to_its_own_topics(
    mqtt: Broker, ward_a: Ward, tmp_path: Path
) -> None:
    result, identity = _provision("hub-c1", tmp_path)
    assert set(result) == {"gateway_id", "key_id", "private_key_pem", "certificate_pem", "ca_pem"}
    certificate = x509.load_pem_x509_certificate(result["certificate_pem"].encode())
    certificate.verify_directly_issued_by(x509.load_pem_x509_certificate(result["ca_pem"].encode()))
    assert certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "hub-c1"
    key = GatewayKey.objects.get(key_id=result["key_id"])
    assert key.certificate_serial == f"{certificate.serial_number:x}"
    assert IssuedCertificate.objects.get(serial=key.certificate_serial).cn == "hub-c1"
    with connected(mqtt, identity) as hub:
        assert not hub.subscribe(GATEWAY_ACKS.format(id="hub-c1"))[0].is_failure
        assert hub.publish(GATEWAY_BATCHES.format(id="hub-other"), b"forged").is_failure
        assert not hub.publish(GATEWAY_BATCHES.format(id="hub-c1"), b"{}").is_failure


def test_revoking_a_gateway_key_cuts_off_that_certificate_only(
    mqtt: Broker, ward_a: Ward, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    old, old_identity = _provision("hub-c2", tmp_path)
    new, new_identity = _provision("hub-c2", tmp_path)  # key rotation: a second key and certificate
    with connected(mqtt, old_identity, client_id="hub-c2-old") as hub:
        with django_capture_on_commit_callbacks(execute=True):
            call_command("revoke_gateway_key", old["key_id"], "--json", stdout=io.StringIO())
        assert hub.disconnected.wait(WAIT), "the revoked gateway's open connection was not dropped"
        assert not hub.connected.wait(1.5)
    again = Connection(mqtt, cert=old_identity.cert, key=old_identity.key, client_id="hub-c2-old")
    try:
        assert not again.open()
    finally:
        again.close()
    with connected(mqtt, new_identity, client_id="hub-c2-new") as hub:
        assert not hub.subscribe(GATEWAY_ACKS.format(id="hub-c2"))[0].is_failure
        assert not hub.publish(GATEWAY_BATCHES.format(id="hub-c2"), b"{}").is_failure
    serials = {k.key_id: k.certificate_serial for k in GatewayKey.objects.all()}
    assert IssuedCertificate.objects.get(serial=serials[old["key_id"]]).revoked_at is not None
    assert IssuedCertificate.objects.get(serial=serials[new["key_id"]]).revoked_at is None
    event = AuditEvent.objects.get(action="gateway.key_revoked")
    assert event.detail["certificates"] == [serials[old["key_id"]]]
