"""The project's Mosquitto (contract 1b): TLS only, a client certificate from the deployment CA
required, CN = username, each device and gateway confined to its own topics, the bridge identity
reading everyone's through the shared subscription, persistence across a restart."""

from __future__ import annotations

import dataclasses
import socket
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from telemetry import pki
from telemetry.mqtt_broker import DEVICE_ACKS, DEVICE_READINGS, GATEWAY_ACKS, GATEWAY_BATCHES, SHARE_GROUP
from tests import mqtt_support
from tests.mqtt_support import WAIT, Broker, Connection, bridge_identity, connected, identity_make

READINGS_SHARED = f"$share/{SHARE_GROUP}/{DEVICE_READINGS.format(id='+')}"
BATCHES_SHARED = f"$share/{SHARE_GROUP}/{GATEWAY_BATCHES.format(id='+')}"
# MQTT 5 CONNECT, client id "x", no TLS: what a device without TLS would send.
PLAIN_CONNECT = bytes([0x10, 14, 0, 4]) + b"MQTT" + bytes([5, 2, 0, 30, 0, 0, 1]) + b"x"


def _granted(reasons: list[object]) -> bool:
    return all(not getattr(reason, "is_failure", True) for reason in reasons)


def test_plain_tcp_gets_no_mqtt_answer(mqtt_broker: Broker) -> None:
    with socket.create_connection((mqtt_broker.host, mqtt_broker.port), timeout=WAIT) as sock:
        sock.sendall(PLAIN_CONNECT)
        try:
            answer = sock.recv(64)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"\x20")  # no CONNACK: the listener speaks TLS only


def test_tls_without_a_client_certificate_is_refused(mqtt_broker: Broker) -> None:
    anonymous = Connection(mqtt_broker, cert=None, key=None, client_id="anonymous")
    try:
        assert not anonymous.open()
    finally:
        anonymous.close()


def test_a_certificate_of_another_ca_is_refused(mqtt_broker: Broker, tmp_path: Path) -> None:
    stranger = dataclasses.replace(mqtt_broker, pki_dir=tmp_path / "other-ca")
    pki.authority_create(stranger.pki_dir)
    impostor = identity_make(stranger, tmp_path, "lumee-impostor")
    attempt = Connection(mqtt_broker, cert=impostor.cert, key=impostor.key, client_id="lumee-impostor")
    try:
        assert not attempt.open()
    finally:
        attempt.close()


def test_a_device_publishes_only_to_its_own_readings_topic(mqtt_broker: Broker, tmp_path: Path) -> None:
    own, other = identity_make(mqtt_broker, tmp_path, "lumee-a1"), identity_make(mqtt_broker, tmp_path, "lumee-a2")
    with connected(mqtt_broker, bridge_identity(mqtt_broker), client_id="bridge-test") as bridge:
        assert _granted(bridge.subscribe(READINGS_SHARED))
        with connected(mqtt_broker, own) as device:
            properties = Properties(PacketTypes.PUBLISH)
            properties.UserProperty = [("x-perfuse-key", "k_test")]
            forged = device.publish(DEVICE_READINGS.format(id=other.cn), b"forged")
            assert forged.is_failure and forged.getName() == "Not authorized"
            assert not device.publish(DEVICE_READINGS.format(id=own.cn), b"mine", properties=properties).is_failure
        # One publisher's messages arrive in order: had the forged one passed, it would come first.
        first = bridge.messages.get(timeout=WAIT)
    assert (first.topic, first.payload) == (DEVICE_READINGS.format(id=own.cn), b"mine")
    assert first.properties.UserProperty == [("x-perfuse-key", "k_test")]
    assert bridge.messages.empty()


def _received(connection: Connection, until_topic: str) -> list[str]:
    """Topics received up to and including the first on `until_topic`, then whatever is queued."""
    topics = []
    while not topics or topics[-1] != until_topic:
        topics.append(connection.messages.get(timeout=WAIT).topic)
    while not connection.messages.empty():
        topics.append(connection.messages.get_nowait().topic)
    return topics


def test_a_device_receives_only_its_own_acks(mqtt_broker: Broker, tmp_path: Path) -> None:
    # Mosquitto's ACL file grants every SUBSCRIBE and checks `read` on each message it would
    # deliver: a device may ask for others' acks, it never gets one.
    own = identity_make(mqtt_broker, tmp_path, "lumee-b1")
    own_acks, other_acks = DEVICE_ACKS.format(id=own.cn), DEVICE_ACKS.format(id="lumee-b2")
    with connected(mqtt_broker, own) as device:
        for topic in (other_acks, DEVICE_ACKS.format(id="+"), "#", DEVICE_READINGS.format(id="+"), own_acks):
            assert _granted(device.subscribe(topic)), topic
        with connected(mqtt_broker, bridge_identity(mqtt_broker), client_id="bridge-acks") as bridge:
            assert bridge.publish("perfuse/v1/elsewhere", b"x").is_failure
            assert not bridge.publish(other_acks, b'{"status": 200}').is_failure
            assert not bridge.publish(own_acks, b'{"status": 200}').is_failure
            received = _received(device, own_acks)
    assert set(received) == {own_acks}


def test_a_gateway_is_confined_to_its_own_batches_and_acks(mqtt_broker: Broker, tmp_path: Path) -> None:
    gateway = identity_make(mqtt_broker, tmp_path, "gw-icu-a")
    with connected(mqtt_broker, bridge_identity(mqtt_broker), client_id="bridge-gw") as bridge:
        assert _granted(bridge.subscribe(BATCHES_SHARED))
        with connected(mqtt_broker, gateway) as hub:
            assert hub.publish(GATEWAY_BATCHES.format(id="gw-icu-b"), b"forged").is_failure
            assert not hub.publish(GATEWAY_BATCHES.format(id=gateway.cn), b"batch").is_failure
            assert _granted(hub.subscribe(GATEWAY_ACKS.format(id="+")))
            batch = bridge.messages.get(timeout=WAIT)
            assert not bridge.publish(GATEWAY_ACKS.format(id="gw-icu-b"), b"theirs").is_failure
            assert not bridge.publish(GATEWAY_ACKS.format(id=gateway.cn), b"ours").is_failure
            received = _received(hub, GATEWAY_ACKS.format(id=gateway.cn))
    assert (batch.topic, batch.payload) == (GATEWAY_BATCHES.format(id=gateway.cn), b"batch")
    assert bridge.messages.empty()
    assert set(received) == {GATEWAY_ACKS.format(id=gateway.cn)}


def test_queued_qos1_messages_survive_a_broker_restart(tmp_path: Path) -> None:
    with mqtt_support.broker_started() as broker:
        device = identity_make(broker, tmp_path, "lumee-p1")
        session = Properties(PacketTypes.CONNECT)
        session.SessionExpiryInterval = 3600
        bridge = Connection(
            broker, cert=broker.bridge_cert, key=broker.bridge_key, client_id="bridge-persist", clean_start=False
        )
        bridge.connect_properties = session
        assert bridge.open()
        assert _granted(bridge.subscribe(READINGS_SHARED))
        bridge.close()
        with connected(broker, device) as sender:
            assert not sender.publish(DEVICE_READINGS.format(id=device.cn), b"kept").is_failure
        mqtt_support.broker_restart(broker)
        again = Connection(
            broker, cert=broker.bridge_cert, key=broker.bridge_key, client_id="bridge-persist", clean_start=False
        )
        again.connect_properties = session
        try:
            assert again.open()
            message = again.messages.get(timeout=WAIT)
        finally:
            again.close()
    assert (message.topic, message.payload) == (DEVICE_READINGS.format(id=device.cn), b"kept")


@pytest.mark.parametrize("cn", ["perfuse-bridge", "perfuse-admin", "a/b", "dev+", "#", ""])
def test_a_service_name_or_topic_syntax_is_no_certificate_cn(mqtt: Broker, cn: str) -> None:
    with pytest.raises(pki.PkiError):
        pki.certificate_issue(cn=cn, public_key=Ed25519PrivateKey.generate().public_key())


def test_the_authority_is_created_once_with_private_files(tmp_path: Path) -> None:
    first = pki.authority_create(tmp_path / "ca")
    again = pki.authority_create(tmp_path / "ca")
    assert again.certificate == first.certificate
    assert (tmp_path / "ca").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    (tmp_path / "ca" / "ca.pem").unlink()
    with pytest.raises(pki.PkiError):
        pki.authority_create(tmp_path / "ca")


def test_the_broker_server_certificate_names_loopback(mqtt_broker: Broker) -> None:
    context = ssl.create_default_context(cafile=str(mqtt_broker.ca_file))
    context.load_cert_chain(str(mqtt_broker.bridge_cert), str(mqtt_broker.bridge_key))
    for name in ("127.0.0.1", "localhost"):
        with (
            socket.create_connection((mqtt_broker.host, mqtt_broker.port), timeout=WAIT) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            assert tls.version() in {"TLSv1.2", "TLSv1.3"}
