"""The MQTT bridge behind `manage.py run_mqtt_ingest` (contract section 1b).

Devices keep a mutual-TLS MQTT 5 connection to the broker and publish signed batches (QoS 1) to
`perfuse/v1/devices/{device_id}/readings`, the credentials in the user properties
`x-perfuse-key`, `x-perfuse-timestamp`, `x-perfuse-signature`. The bridge:

- connects with its own client certificate, MQTT 5, `clean_start=False` and a session expiry, so
  the broker keeps its subscription and queues messages (QoS 1) while the bridge is down;
- subscribes to `$share/perfuse-ingest/perfuse/v1/devices/+/readings`: several bridges on one
  shared subscription split the messages between them, unchanged on any clustered broker;
- acknowledges nothing early: every PUBACK is held until the message's group
  has committed. A bridge killed before then never sent it, so the broker delivers the message
  again (to this bridge when it reconnects, or to another of the share); a reading sent twice is
  stored once and counted as a duplicate;
- runs the same pipeline as HTTP through the group-commit writer (telemetry/ingest/group.py), the
  topic's device being one more check (a key of another device: 403 `device_mismatch`);
- answers on `perfuse/v1/devices/{device_id}/acks` (QoS 1) after the commit, then PUBACKs:
  `{"batch_id", "status": 200, "accepted", "duplicates", "rejected", "ingest_time"}` or
  `{"batch_id", "status", "error": {"code", "detail"}}`; a throttled message's ack also carries
  `retry_after` (s) and `suggested_interval_ms` (how often batches of its size fit the device's
  sustained rate). A message that cannot be attributed (a topic that names no device) is PUBACKed
  and dropped, with a log line;
- takes edge gateways' messages (contract 1c) from `$share/perfuse-ingest/perfuse/v1/gateways/+/batches`
  the same way: each through `gateway_handle` (its own transaction per message, the topic's
  gateway checked against the outer key's: 403 `gateway_mismatch`), at most
  PERFUSE_MQTT_GATEWAY_CONCURRENCY at once, answered on `perfuse/v1/gateways/{gateway_id}/acks` after
  the commit, then PUBACKed: `{"status": 200, "gateway_id", "results": [...]}` as the HTTP
  endpoint answers, or `{"gateway_id", "status", "error": {"code", "detail"}}`. A gateway
  matches an ack to its message by the MQTT 5 correlation data, echoed when it sent one (an outer
  message has no id of its own).
- sheds overload (telemetry/mqtt_shed.py): a message that cannot be answered before its sender
  stops waiting (its MQTT 5 Message Expiry Interval as the broker delivered it; without one, the
  HTTP door's PERFUSE_INGEST_POOL_TIMEOUT_SECONDS from its arrival here) is answered at once with
  503 `storage_unavailable` and `retry_after`, without verifying, parsing or storing anything,
  then PUBACKed; the sender sends it again later.

One thread. The MQTT connection is the bridge's own small MQTT 5 client on its asyncio event
loop (telemetry/mqtt_wire.py, which says why not paho): each PUBLISH parsed from what TLS
delivered is handed to `_arrived` by a direct call, the writer gathers groups and runs the async
pipeline on the ingest pool (psycopg async, the same code and pool as the HTTP door), and a
group's acks and PUBACKs, issued in turn after its commit, leave the process in one write. An
MQTT reconnect starts a new generation: a PUBACK for a message of an earlier connection is not
sent (its packet id may have been reused; the broker redelivers that message on the new
connection anyway).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
import paho.mqtt.client as mqtt
from django.conf import settings
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from config import metrics
from telemetry.ingest.answers import Answer, storage_unavailable, too_large
from telemetry.ingest.gateway import gateway_handle
from telemetry.ingest.group import GroupWriter, Message
from telemetry.mqtt_broker import DEVICE_ACKS, DEVICE_READINGS, GATEWAY_ACKS, GATEWAY_BATCHES, tls_context
from telemetry.mqtt_shed import Arrival, GatewayShedder, SojournShedder, overloaded
from telemetry.mqtt_wire import Client, Endpoint, Incoming

log = logging.getLogger(__name__)

SHARE_GROUP = "perfuse-ingest"
READINGS_FILTER = DEVICE_READINGS.format(id="+")
BATCHES_FILTER = GATEWAY_BATCHES.format(id="+")
CREDENTIAL_PROPERTIES = ("x-perfuse-key", "x-perfuse-timestamp", "x-perfuse-signature")


def readings_topic(device_id: str) -> str:
    return DEVICE_READINGS.format(id=device_id)


def acks_topic(device_id: str) -> str:
    return DEVICE_ACKS.format(id=device_id)


def batches_topic(gateway_id: str) -> str:
    return GATEWAY_BATCHES.format(id=gateway_id)


def gateway_acks_topic(gateway_id: str) -> str:
    return GATEWAY_ACKS.format(id=gateway_id)


def _topic_id(topic: str, kind: str, leaf: str) -> str | None:
    parts = topic.split("/")
    if len(parts) != 5 or parts[:3] != ["perfuse", "v1", kind] or parts[4] != leaf or not parts[3]:
        return None
    return parts[3]


def topic_device(topic: str) -> str | None:
    """The device a readings topic names, or None when the topic names none."""
    return _topic_id(topic, "devices", "readings")


def topic_gateway(topic: str) -> str | None:
    """The gateway a gateway batches topic names, or None when it is no such topic."""
    return _topic_id(topic, "gateways", "batches")


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    port: int
    ca_file: str
    cert_file: str
    key_file: str
    client_id: str
    session_expiry: int  # seconds the broker keeps the session (and queues for it) while we are away
    receive_maximum: int  # unacknowledged QoS 1 messages the broker may send us at once
    keepalive: int = 30

    @classmethod
    def from_settings(cls, *, client_id: str | None = None) -> BrokerConfig:
        url = urlsplit(settings.MQTT_URL)
        if url.scheme != "mqtts":
            raise ValueError(f"MQTT_URL must be mqtts://host:port (TLS only), got {settings.MQTT_URL!r}")
        return cls(
            host=url.hostname or "127.0.0.1",
            port=url.port or 8883,
            ca_file=settings.MQTT_CA_FILE,
            cert_file=settings.MQTT_CERT_FILE,
            key_file=settings.MQTT_KEY_FILE,
            client_id=client_id or settings.MQTT_CLIENT_ID,
            session_expiry=settings.MQTT_SESSION_EXPIRY_SECONDS,
            receive_maximum=settings.MQTT_RECEIVE_MAXIMUM,
        )


def ack_payload(answer: Answer, *, batch_id: str | None, readings: int) -> bytes:
    """The ack of contract 1b for an answer of the pipeline."""
    body: dict[str, Any] = {"batch_id": batch_id, "status": answer.status}
    if answer.status == 200:
        body.update(answer.body)
    else:
        body["error"] = answer.body["error"]
    if answer.status in (429, 503):
        body["retry_after"] = int(answer.headers.get("Retry-After", "1"))
    if answer.status == 429:
        # Batches of this size fit the device's sustained rate at this interval (never below 1 s).
        rate = max(1, settings.PERFUSE_RATE_DEVICE_PER_SECOND)
        body["suggested_interval_ms"] = max(1000, math.ceil(1000 * max(1, readings) / rate))
    return orjson.dumps(body)


def gateway_ack_payload(answer: Answer, *, gateway_id: str) -> bytes:
    """The ack of a gateway message: the HTTP endpoint's answer (contract 1c) with its status."""
    if answer.status == 200:
        return orjson.dumps({"status": 200, **answer.body})
    body: dict[str, Any] = {"gateway_id": gateway_id, "status": answer.status, "error": answer.body["error"]}
    if answer.status in (429, 503):  # when to send again (an overloaded bridge's estimate, docs/mqtt.md)
        body["retry_after"] = int(answer.headers.get("Retry-After", "1"))
    return orjson.dumps(body)


def _batch_id(body: bytes) -> str | None:
    """The batch id of a body the pipeline refused before parsing it into a batch, if it has one."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    batch_id = document.get("batch_id") if isinstance(document, dict) else None
    return batch_id if isinstance(batch_id, str) and len(batch_id) <= 64 else None


def _readings(body: bytes) -> int:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    readings = document.get("readings") if isinstance(document, dict) else None
    return len(readings) if isinstance(readings, list) else 0


@dataclass
class Delivery:
    """What the bridge needs to answer one MQTT message: its packet id on its connection."""

    mid: int
    qos: int
    generation: int
    correlation: bytes | None  # MQTT 5 correlation data, echoed on a gateway's ack
    arrival: Arrival  # when it came, how long its sender still waits (telemetry/mqtt_shed.py)


class Bridge:
    """One bridge process: its MQTT client (telemetry/mqtt_wire.py) feeding a group-commit writer,
    both on one asyncio event loop."""

    def __init__(self, config: BrokerConfig, *, window_ms: float | None = None, max_rows: int | None = None) -> None:
        self.config = config
        self.writer = GroupWriter(self._deliver, window_ms=window_ms, max_rows=max_rows)
        # Set from the event loop, waited on by other threads (tests, the command).
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker confirmed the shared subscription
        self.received = 0
        self.acked = 0
        self.dropped = 0
        self._stop = asyncio.Event()
        # Gateway messages in flight (each holds an ingest connection while it is stored).
        self._gateway_tasks: set[asyncio.Task[None]] = set()
        self._gateway_slots: asyncio.Semaphore | None = None
        # Overload shedding (telemetry/mqtt_shed.py): what cannot be answered before its sender
        # stops waiting is answered 503 at once, without the work.
        max_wait = float(settings.PERFUSE_INGEST_POOL_TIMEOUT_SECONDS)
        self.gateway_shed = GatewayShedder(slots=settings.PERFUSE_MQTT_GATEWAY_CONCURRENCY, max_wait=max_wait)
        self.device_shed = SojournShedder(max_wait=max_wait)
        self.client = self._client()

    def _client(self) -> Client:
        c = self.config
        endpoint = Endpoint(
            host=c.host,
            port=c.port,
            context=tls_context(ca=c.ca_file, cert=c.cert_file, key=c.key_file),
            client_id=c.client_id,
            keepalive=c.keepalive,
            session_expiry=c.session_expiry,
            receive_maximum=c.receive_maximum,
            subscriptions=(
                (f"$share/{SHARE_GROUP}/{READINGS_FILTER}", 1),
                (f"$share/{SHARE_GROUP}/{BATCHES_FILTER}", 1),
            ),
        )
        return Client(
            endpoint,
            on_message=self._on_message,
            on_connect=self._on_connect,
            on_subscribe=self._on_subscribe,
            on_disconnect=self._on_disconnect,
        )

    # ---- the MQTT connection's callbacks (on the event loop) ------------------------------

    def _on_connect(self, session_present: bool) -> None:
        # The client subscribes again on every connection: harmless on a resumed session, and it
        # covers a session the broker lost.
        log.info(
            "MQTT bridge connected (session present: %s, the broker takes %d acks in flight)",
            session_present,
            self.client.window,
        )
        self.connected.set()

    def _on_subscribe(self, granted: bool) -> None:
        if granted:
            metrics.mqtt_bridge_subscribed(True)
            self.subscribed.set()

    def _on_disconnect(self, reason: str) -> None:
        self.connected.clear()
        self.subscribed.clear()
        metrics.mqtt_bridge_subscribed(False)
        if not self._stop.is_set():  # else it is the bridge's own DISCONNECT on its way out
            log.warning("MQTT bridge disconnected: %s (reconnecting)", reason)

    def _on_message(self, message: Incoming) -> None:
        arrival = Arrival(time.monotonic(), message.expiry)
        delivery = Delivery(message.mid, message.qos, self.client.generation, message.correlation, arrival)
        self._arrived(message.topic, message.payload, _user_properties(message.user_properties), delivery)

    # ---- the asyncio thread ----------------------------------------------------------------

    def _arrived(self, topic: str, payload: bytes, properties: dict[str, str], delivery: Delivery) -> None:
        if self._stop.is_set():
            return  # stopping: not taken, not PUBACKed, so the broker delivers it again
        self.received += 1
        gateway = topic_gateway(topic)
        if gateway is not None:
            small = len(payload) <= settings.PERFUSE_INGEST_MAX_BYTES  # else its 413 is as cheap
            if small and not self.gateway_shed.admit(delivery.arrival, len(payload)):
                self._gateway_ack(gateway, overloaded(self.gateway_shed.retry_after()), delivery)
                return
            task = asyncio.get_running_loop().create_task(self._gateway(gateway, payload, properties, delivery))
            self._gateway_tasks.add(task)
            task.add_done_callback(self._gateway_tasks.discard)
            return
        device = topic_device(topic)
        if device is None:
            log.warning("MQTT message on %r names no device: dropped", topic[:200])
            self.dropped += 1
            self._puback(delivery)
            return
        message = Message(payload, properties, topic_device=device, token=delivery)
        if len(payload) > settings.PERFUSE_INGEST_MAX_BYTES:
            self._answer(message, too_large())
            return
        if not self.device_shed.admit(id(message), delivery.arrival):
            self._answer(message, overloaded(self.device_shed.retry_after()))
            return
        self.writer.put(message)

    async def _deliver(self, message: Message, answer: Answer) -> None:
        self._answer(message, answer)

    def _answer(self, message: Message, answer: Answer) -> None:
        """The ack to the device, then the PUBACK to the broker (both after the commit)."""
        assert message.topic_device is not None and isinstance(message.token, Delivery)
        self.device_shed.answered(id(message))
        batch_id = answer.body.get("batch_id") if answer.status == 200 else _batch_id(message.body)
        readings = _readings(message.body) if answer.status == 429 else 0
        payload = ack_payload(answer, batch_id=batch_id, readings=readings)
        # Counted before the publish: the network thread may deliver the ack before the next line runs.
        self.acked += 1
        self.client.publish(acks_topic(message.topic_device), payload)
        self._puback(message.token)

    async def _gateway(self, gateway_id: str, payload: bytes, properties: dict[str, str], delivery: Delivery) -> None:
        """One gateway message: stored (its own transaction), then its ack, then the PUBACK; or,
        when its turn came too late for its sender, the overload ack without the work."""
        if self._gateway_slots is None:
            self._gateway_slots = asyncio.Semaphore(self.gateway_shed.slots)
        async with self._gateway_slots:
            small = len(payload) <= settings.PERFUSE_INGEST_MAX_BYTES  # as in _arrived
            if small and not self.gateway_shed.start(delivery.arrival, len(payload)):
                answer = overloaded(self.gateway_shed.retry_after())
            else:
                began = time.monotonic()
                try:
                    answer = await gateway_handle(body=payload, headers=properties, gateway_id=gateway_id)
                except Exception:  # a bug must not stop the bridge: committed nothing, the gateway resends
                    log.exception("MQTT gateway message of %s failed", gateway_id)
                    answer = storage_unavailable()
                if small:  # an oversized one is refused unread: not what a message costs
                    self.gateway_shed.done(len(payload), time.monotonic() - began)
        self._gateway_ack(gateway_id, answer, delivery)

    def _gateway_ack(self, gateway_id: str, answer: Answer, delivery: Delivery) -> None:
        self.acked += 1
        payload = gateway_ack_payload(answer, gateway_id=gateway_id)
        self.client.publish(gateway_acks_topic(gateway_id), payload, correlation=delivery.correlation)
        self._puback(delivery)

    def _puback(self, delivery: Delivery) -> None:
        if delivery.qos > 0:
            self.client.puback(delivery.mid, delivery.generation)

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: connect (and keep reconnecting), gather, commit, answer."""
        self._stop = stop
        done = asyncio.Event()  # set once every message taken is answered: then the MQTT client stops
        connection = asyncio.get_running_loop().create_task(self.client.run(done))
        try:
            # Once `stop` is set no message is taken any more; those taken are committed and answered.
            await self.writer.run(stop)
            while self._gateway_tasks:
                await asyncio.gather(*self._gateway_tasks, return_exceptions=True)
        finally:
            done.set()
            await connection  # the last acks and PUBACKs leave before the DISCONNECT


def session_discard(config: BrokerConfig, *, timeout: float = 10.0) -> bool:
    """End the bridge's persistent session at the broker: it leaves the shared subscription for
    good. Mosquitto (2.0) keeps sharing messages out to a disconnected member's session, so a
    bridge taken out of service must say so, or it keeps its share queued until the session
    expires (the devices, unacknowledged, send those batches again). True once done."""
    done = threading.Event()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=config.client_id, protocol=mqtt.MQTTv5
    )
    client.tls_set_context(tls_context(ca=config.ca_file, cert=config.cert_file, key=config.key_file))
    client.on_connect = lambda c, u, f, reason, p: done.set() if not reason.is_failure else None
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 0  # clean start discards the old session; this one ends with us
    try:
        client.connect(config.host, config.port, keepalive=config.keepalive, clean_start=True, properties=properties)
    except OSError:
        return False
    client.loop_start()
    try:
        return done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()


def _user_properties(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """The credentials among the MQTT 5 user properties (the first of each name counts)."""
    found: dict[str, str] = {}
    for name, value in pairs:
        lowered = name.lower()
        if lowered in CREDENTIAL_PROPERTIES and lowered not in found:
            found[lowered] = value
    return found


def properties_for(credentials: Mapping[str, str]) -> Properties:
    """MQTT 5 PUBLISH properties carrying a device's credentials (the simulator and tests)."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.UserProperty = [(name.lower(), value) for name, value in credentials.items()]
    return properties
