"""Overload at the MQTT door (telemetry/mqtt_shed.py, telemetry/simulator/backoff.py) against the
real Mosquitto over mutual TLS: a message whose sender stopped waiting is discarded by the broker
(Message Expiry) or answered 503 by the bridge without the work, nothing of it stored; a later
copy of the same signed message is processed; the simulator's gateways honour the ack's
`retry_after` and back off."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from django.conf import settings

from telemetry import simulator
from telemetry.mqtt_bridge import batches_topic, properties_for, readings_topic
from telemetry.mqtt_shed import MIN_BYTES, Arrival, GatewayShedder, SojournShedder
from telemetry.simulator.backoff import Backoff
from telemetry.simulator.fleet import Gateway, hubs_spread
from tests import factories
from tests.mqtt_support import WAIT, Broker, Connection, bridge_identity
from tests.telemetry.test_mqtt_bridge import Device, Hub, _stored, bridge_running

pytestmark = pytest.mark.django_db(transaction=True)


def _publish(device: Device, body: bytes, *, expiry: int | None) -> None:
    properties = properties_for(device.sim.sign(body))
    if expiry is not None:
        properties.MessageExpiryInterval = expiry
    assert not device.connection.publish(readings_topic(device.device_id), body, properties=properties).is_failure


def test_messages_that_expired_while_the_bridge_was_away_are_never_processed(mqtt, tmp_path):
    device = Device(mqtt, tmp_path)
    try:
        with bridge_running(client_id="perfuse-bridge-expiry", discard=False):
            pass  # the persistent session and its shared subscription now exist at the broker
        bodies = {
            name: factories.batch_body(device.sim, factories.series(seq, 2), batch_id=name)
            for name, seq in (("expires", 1), ("no-expiry", 10), ("long-expiry", 20))
        }
        _publish(device, bodies["expires"], expiry=1)
        _publish(device, bodies["no-expiry"], expiry=None)
        _publish(device, bodies["long-expiry"], expiry=600)
        time.sleep(2.1)  # the first one's expiry runs out at the broker (whole seconds there)
        with bridge_running(client_id="perfuse-bridge-expiry") as bridge:
            acks = [device.ack(), device.ack()]
            assert bridge.received == 2  # queued in order: the expired one would have come first
        assert sorted((a["batch_id"], a["status"], a["accepted"]) for a in acks) == [
            ("long-expiry", 200, 2),
            ("no-expiry", 200, 2),
        ]
        assert _stored(device.device_id) == [10, 11, 20, 21]
    finally:
        device.close()


def test_a_gateway_message_that_cannot_be_answered_in_time_gets_the_overload_ack_and_stores_nothing(mqtt, tmp_path):
    hub = Hub(mqtt, tmp_path)
    worn = Device(mqtt, tmp_path, patient="p-shed-gw")
    try:
        inner = factories.inner(worn.sim, factories.batch_body(worn.sim, factories.series(1, 3), batch_id="shed-1"))
        body = hub.sim.envelope([inner])
        headers = hub.sim.sign(body)
        expiring = properties_for(headers)
        expiring.MessageExpiryInterval = 10
        expiring.CorrelationData = b"try-1"
        with bridge_running() as bridge:
            # As if each byte took the bridge a second: no message can be answered within its
            # sender's 10 s (with an expiry) or the door's 5 s (without one).
            bridge.gateway_shed.seconds_per_byte = 1.0
            assert not hub.connection.publish(batches_topic(hub.gateway_id), body, properties=expiring).is_failure
            ack, correlation = hub.ack()
            hub.publish(body, headers=headers, correlation=b"try-2")  # no expiry
            ack_no_expiry, _ = hub.ack()
            assert _stored(worn.device_id) == []
            # The same signed bytes sent again once there is capacity (within the 300 s window):
            # processed like any message.
            bridge.gateway_shed.seconds_per_byte = 0.0
            hub.publish(body, headers=headers, correlation=b"try-3")
            stored, _ = hub.ack()
            assert bridge.received == 3 and bridge.gateway_shed.shed == 2  # each shed one PUBACKed
        assert correlation == b"try-1"
        for shed in (ack, ack_no_expiry):
            assert (shed["status"], shed["gateway_id"], shed["error"]["code"]) == (
                503,
                hub.gateway_id,
                "storage_unavailable",
            )
            assert 1 <= shed["retry_after"] <= 30
        assert stored["status"] == 200 and stored["results"][0]["accepted"] == 3
        assert _stored(worn.device_id) == [1, 2, 3]
    finally:
        hub.connection.close()
        worn.close()


def test_a_device_message_behind_a_queue_older_than_its_wait_gets_the_overload_ack(mqtt, tmp_path):
    device = Device(mqtt, tmp_path)
    try:
        body = factories.batch_body(device.sim, factories.series(1, 2), batch_id="queued-behind")
        with bridge_running() as bridge:
            # A message the group writer has held unanswered for a minute: a newcomer would wait as long.
            assert bridge.device_shed.admit(-1, Arrival(time.monotonic() - 60, 3600))
            _publish(device, body, expiry=10)
            shed = device.ack()
            assert _stored(device.device_id) == []
            bridge.device_shed.answered(-1)
            _publish(device, body, expiry=10)  # the device sends it again: now taken
            taken = device.ack()
        assert (shed["batch_id"], shed["status"], shed["error"]["code"]) == (
            "queued-behind",
            503,
            "storage_unavailable",
        )
        assert shed["retry_after"] == 30  # the queue's age, capped
        assert (taken["status"], taken["accepted"]) == (200, 2)
        assert _stored(device.device_id) == [1, 2]
    finally:
        device.close()


def test_the_simulators_gateway_sets_its_wait_as_expiry_and_backs_off_on_the_overload_ack(mqtt, tmp_path):
    keyfile = tmp_path / "keys.json"
    fleet = simulator.provision_fleet(ward="sim-shed", count=2, keyfile=keyfile)
    hubs = simulator.provision_hubs(fleet, count=1, keyfile=keyfile)
    stats = simulator.Stats()
    config = simulator.GatewayConfig(retransmit=0.0, reorder=0.0)
    devices = [
        Gateway(d, hz=1, config=config, signal=simulator.SignalConfig(), seed=i, stats=stats)
        for i, d in enumerate(fleet)
    ]
    (hub,) = hubs_spread(devices, hubs, config=config, seed=1)
    sniffer = _sniffer(mqtt, batches_topic(hub.gateway.gateway_id))

    async def flush_twice(bridge_shed: GatewayShedder) -> None:
        transport = simulator.MqttTransport(
            settings.MQTT_URL,
            ca_file=settings.MQTT_CA_FILE,
            identities=simulator.identities(fleet, hubs),
            ack_timeout=8,
        )
        try:
            for device in devices:
                device.collect(time.time() + 2)
            bridge_shed.seconds_per_byte = 1.0  # overloaded: the 503 ack with retry_after 1
            await hub.flush(transport, time.time())
            assert (stats.backoffs, hub.backoff.failures) == (1, 1)
            assert all(device.outbox for device in devices)  # kept, to be sent again
            bridge_shed.seconds_per_byte = 0.0
            await hub.flush(transport, time.time())
        finally:
            await transport.close()

    try:
        with bridge_running() as bridge:
            asyncio.run(flush_twice(bridge.gateway_shed))
        message = sniffer.messages.get(timeout=WAIT)
        assert message.properties.MessageExpiryInterval in (7, 8)  # the ack timeout, counted down
        assert stats.backoff_seconds >= 1.0  # at least the ack's retry_after
        assert hub.backoff.failures == 0  # answered: backing off starts again from the beginning
        assert not any(device.outbox for device in devices)
        assert stats.accepted == stats.generated > 0
    finally:
        sniffer.close()


def _sniffer(broker: Broker, topic: str) -> Connection:
    """A plain (unshared) subscription with the bridge's identity: sees what the senders publish."""
    identity = bridge_identity(broker)
    connection = Connection(broker, cert=identity.cert, key=identity.key, client_id="perfuse-shed-sniffer")
    assert connection.open()
    connection.subscribe(topic)
    return connection


def test_backoff_doubles_with_jitter_honours_retry_after_and_resets_on_success():
    backoff = Backoff(base=1.0, cap=60.0, rng=random.Random(7))
    waits = [backoff.failed() for _ in range(8)]
    for n, wait in enumerate(waits):
        window = min(60.0, 2.0**n)
        assert window / 2 <= wait <= window
    assert len(set(waits)) == len(waits)  # jittered
    assert backoff.failed(retry_after=45) >= 45
    backoff.succeeded()
    assert 0.5 <= backoff.failed() <= 1.0
    assert 7.0 <= backoff.failed(retry_after=7) <= 8.0


def test_the_shedders_judge_by_the_senders_wait_and_the_work_ahead():
    shed = GatewayShedder(slots=2, max_wait=5.0)
    now = 100.0
    assert shed.admit(Arrival(now, 10), 10_000, now=now)  # no estimate yet: admitted
    shed.done(10_000, 1.0)  # a millisecond per 10 bytes
    assert shed.seconds_per_byte == pytest.approx(1e-4)
    assert shed.admit(Arrival(now, 10), 50_000, now=now)  # 0.5 s ahead (2 slots) + its own 5 s
    assert not shed.admit(Arrival(now, 10), 90_000, now=now)  # 3 s ahead + 9 s > its sender's 10 s
    assert not shed.admit(Arrival(now, None), 25_000, now=now)  # without expiry: 5.5 s > the door's 5 s
    assert shed.admit(Arrival(now, None), 15_000, now=now)  # 4.5 s
    assert shed.start(Arrival(now, 10), 50_000, now=now + 4.0)  # its turn: 5 s left for 5 s of work
    assert not shed.start(Arrival(now, 10), 10_000, now=now + 9.5)  # too late for its sender
    assert shed.shed == 3
    assert shed.retry_after() == pytest.approx(15_000 / 2 * 1e-4)  # what still waits, on 2 slots
    # A tiny message costs what a message of MIN_BYTES does (its fixed part), and teaches as much.
    assert shed.finish_estimate(10, now=0.0, waiting=0) == pytest.approx(MIN_BYTES * 1e-4)
    shed.done(15, 0.005)
    assert shed.seconds_per_byte == pytest.approx(1e-4 + 0.2 * (0.005 / MIN_BYTES - 1e-4))

    queue = SojournShedder(max_wait=5.0)
    assert queue.admit(1, Arrival(now, None), now=now)
    assert queue.admit(2, Arrival(now + 3, 10), now=now + 3)  # waits ~3 s of its 10
    assert not queue.admit(3, Arrival(now + 3, 2), now=now + 3)  # would wait 3 s of its 2
    queue.answered(1)
    assert queue.sojourn(now=now + 3) == 0.0
    assert queue.admit(3, Arrival(now + 3, 2), now=now + 3)
