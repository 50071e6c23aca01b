"""The MQTT bridge (contract 1b) against the real Mosquitto over mutual TLS: devices publish signed
batches, the bridge stores them by group commit and acks each only after its commit; refusals get
their error acks without harming their group; a bridge that was away finds what the broker kept;
two bridges on the shared subscription split the stream."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from config import metrics
from telemetry import db, simulator
from telemetry.mqtt_bridge import (
    Bridge,
    BrokerConfig,
    acks_topic,
    batches_topic,
    gateway_acks_topic,
    properties_for,
    readings_topic,
    session_discard,
)
from telemetry.services import device_provision, gateway_provision, patient_admit
from tests import factories
from tests.mqtt_support import WAIT, Broker, Connection, identity_files

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def bridge_running(client_id: str = "perfuse-bridge-test", *, discard: bool = True, **options: Any) -> Iterator[Bridge]:
    """A bridge in a thread of its own (its own event loop and ingest pool), subscribed."""
    bridge = Bridge(BrokerConfig.from_settings(client_id=client_id), **options)
    started: queue.Queue[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = queue.Queue()

    async def main() -> None:
        stop = asyncio.Event()
        started.put((asyncio.get_running_loop(), stop))
        try:
            await bridge.run(stop)
        finally:
            await db.close_clients()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    loop, stop = started.get(timeout=WAIT)
    try:
        assert bridge.subscribed.wait(WAIT), "the bridge did not subscribe"
        yield bridge
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(WAIT)
        assert not thread.is_alive(), "the bridge did not stop"
        if discard:
            # Mosquitto keeps sharing messages out to a stopped member's session: end it, or it
            # takes its share of the next tests' messages.
            assert session_discard(bridge.config)


class Device:
    """A provisioned device with its client certificate, connected and subscribed to its acks."""

    def __init__(self, broker: Broker, directory: Path, *, patient: str | None = None) -> None:
        ward = factories.ward("icu-a")
        device_id = f"lumee-mq-{next(factories._counter):04d}"
        provisioned = device_provision(device_id=device_id, ward_code=ward.code)
        assert provisioned.private_key_pem is not None and provisioned.certificate_pem is not None
        if patient:
            patient_admit(
                pseudonym=patient,
                ward_code=ward.code,
                device_id=device_id,
                at=dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
            )
        private = serialization.load_pem_private_key(provisioned.private_key_pem.encode(), password=None)
        assert isinstance(private, Ed25519PrivateKey)
        self.sim = factories.SimDevice(device_id, provisioned.key.key_id, private, ward.code)
        self.device_id = device_id
        identity = identity_files(
            directory,
            device_id,
            private_key_pem=provisioned.private_key_pem,
            certificate_pem=provisioned.certificate_pem,
        )
        self.connection = Connection(broker, cert=identity.cert, key=identity.key, client_id=device_id)
        assert self.connection.open(), "the broker refused the device"
        self.connection.subscribe(acks_topic(device_id))

    def publish(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        credentials = self.sim.sign(body) if headers is None else headers
        self.connection.publish(
            readings_topic(self.device_id), body, properties=properties_for(credentials) if credentials else None
        )

    def ack(self) -> dict[str, Any]:
        message = self.connection.messages.get(timeout=WAIT)
        assert message.topic == acks_topic(self.device_id)
        result: dict[str, Any] = json.loads(message.payload)
        return result

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def devices(mqtt: Broker, tmp_path: Path) -> Iterator[list[Device]]:
    made: list[Device] = []
    yield made
    for device in made:
        device.close()


def _device(mqtt: Broker, tmp_path: Path, made: list[Device], **kw: Any) -> Device:
    device = Device(mqtt, tmp_path, **kw)
    made.append(device)
    return device


def _stored(device_id: str) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT r.seq FROM telemetry_reading r JOIN telemetry_device d ON d.id = r.device_id "
            "WHERE d.device_id = %s ORDER BY r.seq",
            [device_id],
        )
        return [row[0] for row in cursor.fetchall()]


def test_a_signed_batch_is_stored_then_acknowledged_and_a_resend_is_a_duplicate(mqtt, tmp_path, devices):
    device = _device(mqtt, tmp_path, devices, patient="p-mqtt-1")
    body = factories.batch_body(device.sim, factories.series(1, 5), batch_id="b-1", firmware="fw-1")
    with bridge_running():
        device.publish(body)
        ack = device.ack()
        # Sent only after the commit: the readings are visible to any other connection by now.
        assert _stored(device.device_id) == [1, 2, 3, 4, 5]
        device.publish(body)
        again = device.ack()
    assert {k: ack[k] for k in ("batch_id", "status", "accepted", "duplicates", "rejected")} == {
        "batch_id": "b-1",
        "status": 200,
        "accepted": 5,
        "duplicates": 0,
        "rejected": [],
    }
    assert ack["ingest_time"].endswith("Z")
    assert (again["status"], again["accepted"], again["duplicates"]) == (200, 0, 5)
    assert _stored(device.device_id) == [1, 2, 3, 4, 5]


def test_refused_messages_get_error_acks_and_never_poison_their_group(mqtt, tmp_path, devices, settings):
    settings.PERFUSE_INGEST_GROUP_WINDOW_MS = 300  # the messages below share groups
    device = _device(mqtt, tmp_path, devices)
    good = factories.batch_body(device.sim, factories.series(1, 3), batch_id="good-1")
    later = factories.batch_body(device.sim, factories.series(10, 2), batch_id="good-2")
    forged = dict(device.sim.sign(good))
    forged["X-Perfuse-Signature"] = device.sim.sign(later)["X-Perfuse-Signature"]
    huge = b'{"batch_id": "huge", "pad": "' + b"x" * (1024 * 1024) + b'"}'
    with bridge_running() as bridge:
        device.publish(good)
        device.publish(b"not json at all")
        device.publish(factories.batch_body(device.sim, factories.series(5, 1), batch_id="unsigned"), headers={})
        device.publish(good, headers=forged)
        device.publish(huge)
        device.publish(factories.batch_body(device.sim, [factories.reading(7, metric="glucose")], batch_id="item"))
        device.publish(later)
        acks = [device.ack() for _ in range(7)]
        assert bridge.acked == 7
    outcomes = sorted(
        ((a["batch_id"] or "", a["status"], a["error"]["code"] if "error" in a else a["accepted"]) for a in acks),
        key=str,
    )
    assert outcomes == sorted(
        [
            ("good-1", 200, 3),
            ("good-1", 401, "bad_signature"),  # the forged twin of a good batch
            ("", 400, "malformed_json"),  # no batch id to be had
            ("unsigned", 401, "missing_credentials"),
            ("huge", 413, "body_too_large"),
            ("item", 200, 0),  # its one reading rejected item by item
            ("good-2", 200, 2),
        ],
        key=str,
    )
    item = next(a for a in acks if a["batch_id"] == "item")
    assert [r["code"] for r in item["rejected"]] == ["unknown_metric"]
    assert _stored(device.device_id) == [1, 2, 3, 10, 11]


def test_another_devices_key_on_a_devices_topic_is_refused_as_misaddressed(mqtt, tmp_path, devices):
    sender, other = _device(mqtt, tmp_path, devices), _device(mqtt, tmp_path, devices)
    body = factories.batch_body(other.sim, factories.series(1, 2), batch_id="theirs")
    with bridge_running():
        sender.publish(body, headers=other.sim.sign(body))  # the broker lets it publish to its own topic only
        ack = sender.ack()
    assert (ack["batch_id"], ack["status"], ack["error"]["code"]) == ("theirs", 403, "device_mismatch")
    assert _stored(other.device_id) == []


def test_over_the_rate_limit_the_ack_is_a_throttle_control_message(mqtt, tmp_path, devices, settings):
    settings.PERFUSE_RATE_DEVICE_BURST = 10
    settings.PERFUSE_RATE_DEVICE_PER_SECOND = 5
    device = _device(mqtt, tmp_path, devices)
    body = factories.batch_body(device.sim, factories.series(1, 20), batch_id="too-much")
    with bridge_running():
        device.publish(body)
        ack = device.ack()
    assert (ack["status"], ack["error"]["code"]) == (429, "rate_limited")
    assert ack["retry_after"] >= 1
    assert ack["suggested_interval_ms"] == 4000  # 20 readings at 5 per second
    assert _stored(device.device_id) == []


def test_the_broker_keeps_messages_for_a_bridge_that_is_away(mqtt, tmp_path, devices):
    device = _device(mqtt, tmp_path, devices)
    with bridge_running(client_id="perfuse-bridge-away", discard=False):
        pass  # the persistent session and its shared subscription now exist at the broker
    bodies = [factories.batch_body(device.sim, factories.series(i * 10, 3), batch_id=f"away-{i}") for i in range(3)]
    for body in bodies:
        device.publish(body)  # PUBACKed by the broker, queued for the absent bridge
    assert _stored(device.device_id) == []
    with bridge_running(client_id="perfuse-bridge-away"):
        acks = [device.ack() for _ in bodies]
    assert sorted(a["batch_id"] for a in acks) == ["away-0", "away-1", "away-2"]
    assert all(a["status"] == 200 and a["accepted"] == 3 for a in acks)
    assert len(_stored(device.device_id)) == 9


def test_two_bridges_on_the_shared_subscription_split_the_stream(mqtt, tmp_path, devices):
    fleet = [_device(mqtt, tmp_path, devices) for _ in range(3)]
    with bridge_running(client_id="perfuse-bridge-a") as a, bridge_running(client_id="perfuse-bridge-b") as b:
        for n in range(8):
            for device in fleet:
                device.publish(factories.batch_body(device.sim, [factories.reading(n)], batch_id=f"s-{n}"))
        acks = [device.ack() for device in fleet for _ in range(8)]
        assert a.received + b.received == 24
        assert a.received > 0 and b.received > 0
    assert all(x["status"] == 200 and x["accepted"] == 1 for x in acks)
    assert all(_stored(device.device_id) == list(range(8)) for device in fleet)


def test_a_batch_ingested_over_mqtt_is_kept_as_signed_and_verify_batch_proves_it(mqtt, tmp_path, devices):
    device = _device(mqtt, tmp_path, devices, patient="p-mqtt-kept")
    body = factories.batch_body(device.sim, factories.series(1, 3), batch_id="kept-1")
    credentials = device.sim.sign(body)
    with bridge_running():
        device.publish(body, headers=credentials)
        ack = device.ack()
    assert (ack["status"], ack["accepted"]) == (200, 3)
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, door, key_id, signed_at, body_size FROM telemetry_signed_batch")
        ((batch_pk, door, key_id, signed_at, size),) = cursor.fetchall()
    assert (door, key_id, str(signed_at), size) == (
        "mqtt",
        credentials["X-Perfuse-Key"],
        credentials["X-Perfuse-Timestamp"],
        len(body),
    )
    out = StringIO()
    call_command("verify_batch", "--batch", str(batch_pk), "--json", stdout=out)
    answer = json.loads(out.getvalue())
    assert answer["ok"] and answer["batches"][0]["signature_valid"]
    assert answer["batches"][0]["matched"] == answer["batches"][0]["readings"] == 3


class Hub:
    """A provisioned edge gateway with its client certificate (provision_gateway's), connected and
    subscribed to its acks topic."""

    def __init__(self, broker: Broker, directory: Path) -> None:
        ward = factories.ward("icu-a")
        gateway_id = f"hub-mq-{next(factories._counter):04d}"
        provisioned = gateway_provision(gateway_id=gateway_id, ward_code=ward.code)
        assert provisioned.private_key_pem is not None and provisioned.certificate_pem is not None
        private = serialization.load_pem_private_key(provisioned.private_key_pem.encode(), password=None)
        assert isinstance(private, Ed25519PrivateKey)
        self.sim = factories.SimGateway(gateway_id, provisioned.key.key_id, private, ward.code)
        self.gateway_id = gateway_id
        identity = identity_files(
            directory,
            gateway_id,
            private_key_pem=provisioned.private_key_pem,
            certificate_pem=provisioned.certificate_pem,
        )
        self.connection = Connection(broker, cert=identity.cert, key=identity.key, client_id=gateway_id)
        assert self.connection.open(), "the broker refused the gateway"
        self.connection.subscribe(gateway_acks_topic(gateway_id))

    def publish(self, body: bytes, *, headers: dict[str, str] | None = None, correlation: bytes | None = None) -> None:
        credentials = self.sim.sign(body) if headers is None else headers
        properties = properties_for(credentials) if credentials else Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            properties.CorrelationData = correlation
        assert not self.connection.publish(batches_topic(self.gateway_id), body, properties=properties).is_failure

    def ack(self) -> tuple[dict[str, Any], bytes | None]:
        message = self.connection.messages.get(timeout=WAIT)
        assert message.topic == gateway_acks_topic(self.gateway_id)
        result: dict[str, Any] = json.loads(message.payload)
        return result, getattr(message.properties, "CorrelationData", None)


def test_a_gateway_message_over_mqtt_is_stored_then_acknowledged_on_the_gateways_acks_topic(mqtt, tmp_path, devices):
    hub = Hub(mqtt, tmp_path)
    try:
        worn = _device(mqtt, tmp_path, devices, patient="p-mqtt-gw-1")
        other = _device(mqtt, tmp_path, devices)
        forged = factories.inner(other.sim, factories.batch_body(other.sim, factories.series(1, 2)))
        forged["signature"] = factories.inner(worn.sim, b"{}")["signature"]
        first = factories.batch_body(worn.sim, factories.series(1, 3), batch_id="gw-b1")
        body = hub.sim.envelope([factories.inner(worn.sim, first), forged])
        with bridge_running() as bridge:
            hub.publish(body, correlation=b"req-1")
            ack, correlation = hub.ack()
            # Sent only after the commit: the readings are visible to any other connection by now.
            assert _stored(worn.device_id) == [1, 2, 3]
            hub.publish(body, correlation=b"req-2")  # a retransmit: duplicates, nothing stored twice
            again, correlation_again = hub.ack()
            assert bridge.acked == 2
        assert correlation == b"req-1" and correlation_again == b"req-2"
        assert (ack["status"], ack["gateway_id"]) == (200, hub.gateway_id)
        results = [(r["index"], r["device_id"], r["status"]) for r in ack["results"]]
        assert results == [(0, worn.device_id, 200), (1, other.device_id, 401)]
        assert (ack["results"][0]["batch_id"], ack["results"][0]["accepted"]) == ("gw-b1", 3)
        assert ack["results"][1]["error"]["code"] == "bad_signature"
        assert (again["results"][0]["accepted"], again["results"][0]["duplicates"]) == (0, 3)
        assert _stored(worn.device_id) == [1, 2, 3] and _stored(other.device_id) == []
        with connection.cursor() as cursor:  # each inner batch kept as its device signed it
            cursor.execute("SELECT door, count(*) FROM telemetry_signed_batch GROUP BY door")
            assert cursor.fetchall() == [("gateway", 2)]
    finally:
        hub.connection.close()


def test_malformed_gateway_messages_get_error_acks_and_never_stop_the_bridge(mqtt, tmp_path, devices):
    hub, other = Hub(mqtt, tmp_path), Hub(mqtt, tmp_path)
    try:
        worn = _device(mqtt, tmp_path, devices, patient="p-mqtt-gw-2")
        good = hub.sim.envelope([factories.inner(worn.sim, factories.batch_body(worn.sim, factories.series(1, 2)))])
        # Another gateway's key and envelope on this gateway's topic (the broker lets it publish to
        # its own topic only, so this hub publishes what the other signed).
        theirs = other.sim.envelope([])
        huge = b'{"schema": "perfuse.gateway/1", "pad": "' + b"x" * (1024 * 1024) + b'"}'
        with bridge_running() as bridge:
            hub.publish(b"not json at all")
            hub.publish(good, headers={})
            hub.publish(theirs, headers=other.sim.sign(theirs))
            hub.publish(huge)
            hub.publish(hub.sim.envelope([], schema="other/1"))
            hub.publish(good)
            acks = [hub.ack()[0] for _ in range(6)]
            assert bridge.acked == 6
        outcomes = sorted((a["status"], (a.get("error") or {}).get("code", "")) for a in acks)
        assert outcomes == [
            (200, ""),
            (400, "malformed_json"),
            (400, "wrong_schema"),
            (401, "missing_credentials"),
            (403, "gateway_mismatch"),
            (413, "body_too_large"),
        ]
        assert all(a["gateway_id"] == hub.gateway_id for a in acks)
        assert _stored(worn.device_id) == [1, 2]
    finally:
        hub.connection.close()
        other.connection.close()


def test_the_simulated_fleet_through_gateways_over_mqtt_lands_every_reading_once(mqtt, tmp_path):
    keyfile = tmp_path / "keys.json"
    fleet = simulator.provision_fleet(ward="sim-mq-gw", count=4, keyfile=keyfile)
    hubs = simulator.provision_hubs(fleet, count=2, keyfile=keyfile)
    assert all(h.certificate_pem is not None for h in hubs)
    assert [h.key_id for h in simulator.provision_hubs(fleet, count=2, keyfile=keyfile)] == [h.key_id for h in hubs]
    transport = simulator.MqttTransport(
        settings.MQTT_URL, ca_file=settings.MQTT_CA_FILE, identities=simulator.identities(fleet, hubs), ack_timeout=20
    )
    gateway = simulator.GatewayConfig(batch_seconds=0.25, retransmit=0.3, temperature_every=0.5, battery_every=0.5)
    with bridge_running():
        stats = asyncio.run(
            simulator.run_fleet(
                fleet,
                url="http://unused",
                hz=10,
                duration=3.0,
                gateway=gateway,
                progress=None,
                hubs=hubs,
                sender=transport,
                drain_seconds=60,
            )
        )
    assert stats.errors == 0 and stats.rejected == 0 and stats.throttled == 0
    assert stats.retransmits > 0 and stats.duplicates > 0  # outer messages sent again: inner duplicates
    assert 0 < stats.gateway_requests < stats.batches  # many devices' batches per outer message
    assert stats.accepted == stats.generated  # every reading produced landed exactly once
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), count(DISTINCT (device_id, metric, seq)) FROM telemetry_reading")
        assert cursor.fetchone() == (stats.accepted, stats.accepted)
        cursor.execute("SELECT DISTINCT door FROM telemetry_signed_batch")
        assert cursor.fetchall() == [("gateway",)]


def test_simulate_fleet_sends_through_gateways_over_mqtt(mqtt, tmp_path, capsys):
    with bridge_running():
        call_command(
            "simulate_fleet",
            "--transport=mqtt",
            "--devices=3",
            "--gateways=1",
            "--ward=sim-mq-cmd",
            "--hz=4",
            "--duration=1.5",
            f"--keyfile={tmp_path / 'k.json'}",
            "--drain=60",
            "--json",
        )
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert f"3 devices at 4.0 Hz through 1 gateways -> {settings.MQTT_URL}" in captured.err
    assert summary["gateway_requests"] > 0 and summary["errors"] == 0
    assert summary["accepted"] == summary["generated"] > 0


def test_the_bridge_reports_its_subscription_to_metrics(mqtt):
    # perfuse_mqtt_bridges_subscribed: 1 while subscribed, 0 once disconnected (config/metrics.py).
    with bridge_running("perfuse-bridge-metrics"):
        assert metrics.current(metrics.MQTT_BRIDGES_SUBSCRIBED) == 1
    assert metrics.current(metrics.MQTT_BRIDGES_SUBSCRIBED) == 0
