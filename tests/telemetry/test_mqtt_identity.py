"""Device identities at the broker (contract 1b, 2): provision_device prints the key's client
certificate and the CA; revoke_device_key revokes key and certificate at once — the CRL the broker
enforces is rewritten and reloaded, the device's open connection is dropped and its next one
refused, and the revocation outlives the CRL file (rebuilt from the records)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.access.roles import DEVICE_ADMIN
from audit.models import AuditEvent
from telemetry import pki
from telemetry.models import DeviceKey, IssuedCertificate, Ward
from telemetry.mqtt_broker import DEVICE_ACKS
from tests import factories, personas
from tests.mqtt_support import WAIT, Broker, Connection, Identity, connected, identity_files

pytestmark = pytest.mark.django_db


def _command(*args: str) -> dict[str, Any]:
    out = io.StringIO()
    call_command(*args, "--json", stdout=out)
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


def _provision(device_id: str, *extra: str) -> dict[str, Any]:
    return _command("provision_device", device_id, "--ward", "icu-a", *extra)


def _identity(result: dict[str, Any], directory: Path) -> Identity:
    return identity_files(
        directory,
        result["device_id"],
        private_key_pem=result["private_key_pem"],
        certificate_pem=result["certificate_pem"],
    )


def _revoked_serials(broker: Broker) -> set[int]:
    crl = x509.load_pem_x509_crl((broker.pki_dir / "crl.pem").read_bytes())
    return {entry.serial_number for entry in crl}


def test_provision_device_prints_a_certificate_for_the_generated_key_and_the_ca(mqtt: Broker, ward_a: Ward) -> None:
    result = _provision("lumee-c1")
    certificate = x509.load_pem_x509_certificate(result["certificate_pem"].encode())
    private = serialization.load_pem_private_key(result["private_key_pem"].encode(), password=None)
    ca = x509.load_pem_x509_certificate(result["ca_pem"].encode())
    assert result["ca_pem"] == mqtt.ca_file.read_text()
    certificate.verify_directly_issued_by(ca)
    assert certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "lumee-c1"
    assert certificate.public_key() == private.public_key()
    record = IssuedCertificate.objects.get(serial=f"{certificate.serial_number:x}")
    assert (record.cn, record.key, record.revoked_at) == (
        "lumee-c1",
        DeviceKey.objects.get(key_id=result["key_id"]),
        None,
    )
    assert AuditEvent.objects.get(action="device.key_added", subject="lumee-c1").detail["certificate"] is True


def test_a_given_public_key_gets_a_certificate_for_that_key(mqtt: Broker, ward_a: Ward, tmp_path: Path) -> None:
    private = Ed25519PrivateKey.generate()
    pem = tmp_path / "key.pub"
    pem.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    result = _provision("lumee-c2", "--public-key-file", str(pem))
    assert "private_key_pem" not in result
    assert x509.load_pem_x509_certificate(result["certificate_pem"].encode()).public_key() == private.public_key()


def test_without_a_deployment_ca_no_certificate_is_printed(ward_a: Ward, settings: Any) -> None:
    settings.PERFUSE_PKI_DIR = ""
    result = _provision("lumee-c3")
    assert set(result) == {"device_id", "key_id", "private_key_pem"}
    assert not IssuedCertificate.objects.exists()


def test_the_printed_identity_connects_to_the_broker(mqtt: Broker, ward_a: Ward, tmp_path: Path) -> None:
    identity = _identity(_provision("lumee-c4"), tmp_path)
    with connected(mqtt, identity) as device:
        assert not device.subscribe(DEVICE_ACKS.format(id="lumee-c4"))[0].is_failure


def test_revoking_the_key_drops_the_open_connection_and_refuses_the_next(
    mqtt: Broker, ward_a: Ward, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    revoked = _identity(_provision("lumee-c5"), tmp_path)
    bystander = _identity(_provision("lumee-c6"), tmp_path)
    key_id = DeviceKey.objects.get(device__device_id="lumee-c5").key_id
    serial = int(IssuedCertificate.objects.get(cn="lumee-c5").serial, 16)
    with connected(mqtt, revoked) as device, connected(mqtt, bystander) as other:
        with django_capture_on_commit_callbacks(execute=True):
            answer = _command("revoke_device_key", key_id)
        assert answer["key_id"] == key_id and answer["revoked_at"]
        assert device.disconnected.wait(WAIT), "the revoked device's open connection was not dropped"
        assert other.connected.is_set() and not other.disconnected.is_set()
        assert not other.subscribe(DEVICE_ACKS.format(id="lumee-c6"))[0].is_failure
        # paho retries at once, as a device would: the reloaded CRL keeps it out.
        assert not device.connected.wait(1.5)
    assert serial in _revoked_serials(mqtt)
    again = Connection(mqtt, cert=revoked.cert, key=revoked.key, client_id="lumee-c5")
    try:
        assert not again.open()
    finally:
        again.close()
    assert IssuedCertificate.objects.get(cn="lumee-c5").revoked_at is not None
    assert AuditEvent.objects.get(action="device.key_revoked").detail["certificates"] == [f"{serial:x}"]


def test_the_crl_is_rebuilt_from_the_records(
    mqtt: Broker, ward_a: Ward, django_capture_on_commit_callbacks: Any
) -> None:
    _provision("lumee-c7")
    key = DeviceKey.objects.get(device__device_id="lumee-c7")
    with django_capture_on_commit_callbacks(execute=True):
        _command("revoke_device_key", key.key_id)
    serial = int(IssuedCertificate.objects.get(cn="lumee-c7").serial, 16)
    authority = pki.authority_load(mqtt.pki_dir)
    assert authority is not None
    pki.crl_write(authority, [])  # a lost or stale file, e.g. restored from an old backup
    assert serial not in _revoked_serials(mqtt)
    pki.crl_refresh(authority)
    assert serial in _revoked_serials(mqtt)


def test_a_device_id_that_is_a_service_identity_gets_no_certificate(mqtt: Broker, ward_a: Ward) -> None:
    with pytest.raises(CommandError, match="cannot be a certificate's CN"):
        _provision("perfuse-bridge")
    assert not DeviceKey.objects.filter(device__device_id="perfuse-bridge").exists()


@pytest.mark.django_db(transaction=True)
def test_a_broker_that_cannot_be_told_fails_the_command_after_the_revocation(mqtt: Broker, settings: Any) -> None:
    factories.ward("icu-a")
    _provision("lumee-c8")
    key = DeviceKey.objects.get(device__device_id="lumee-c8")
    settings.PERFUSE_MQTT_RELOAD_COMMAND = "false"  # e.g. `systemctl reload` of a broker that is down
    with pytest.raises(CommandError, match="revoked, but the broker was not told"):
        _command("revoke_device_key", key.key_id)
    key.refresh_from_db()
    assert key.revoked_at is not None  # committed: HTTP refuses the key whatever the broker does
    assert int(IssuedCertificate.objects.get(cn="lumee-c8").serial, 16) in _revoked_serials(mqtt)
    kicked = "deleteClient | username=lumee-c8"
    assert kicked not in mqtt.log_text()
    settings.PERFUSE_MQTT_RELOAD_COMMAND = ""  # the broker is back: the operator runs it again
    _command("revoke_device_key", key.key_id)
    assert kicked in mqtt.log_text()


def test_the_daily_crl_refresh_keeps_revocations_and_reloads_the_broker(
    mqtt: Broker, ward_a: Ward, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    _provision("lumee-c9")
    with django_capture_on_commit_callbacks(execute=True):
        _command("revoke_device_key", DeviceKey.objects.get(device__device_id="lumee-c9").key_id)
    serial = int(IssuedCertificate.objects.get(cn="lumee-c9").serial, 16)
    before = x509.load_pem_x509_crl((mqtt.pki_dir / "crl.pem").read_bytes()).last_update_utc
    assert _command("mqtt_crl_refresh") == {"crl": True, "reloaded": True}
    crl = x509.load_pem_x509_crl((mqtt.pki_dir / "crl.pem").read_bytes())
    assert serial in {entry.serial_number for entry in crl} and crl.last_update_utc >= before
    with connected(mqtt, _identity(_provision("lumee-c10"), tmp_path)) as device:
        assert device.connected.is_set()


@pytest.mark.django_db(transaction=True)
def test_the_devices_page_says_when_the_broker_was_not_told(mqtt: Broker, settings: Any) -> None:
    factories.ward("icu-a")
    admin = personas.staff("devadmin-mqtt", DEVICE_ADMIN)
    _provision("lumee-c11")
    key = DeviceKey.objects.get(device__device_id="lumee-c11")
    settings.PERFUSE_MQTT_RELOAD_COMMAND = "false"
    page = personas.verified_client(admin).post(f"/devices/keys/{key.key_id}/revoke", follow=True)
    assert "revoked, but the broker was not told" in page.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is not None
