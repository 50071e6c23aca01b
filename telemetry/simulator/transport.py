"""How simulated devices reach Perfuse: the HTTP ingest API, or MQTT 5 over mutual TLS.

`Transport.send` delivers one signed batch and returns the server's answer (a `Reply`), or None
when none came (a connection error, or no ack within the timeout): the gateway then sends the
same batch again later, which is how a real device treats an unacknowledged message.

MQTT: one persistent connection per device, because the broker's ACL lets a device publish only
under its own certificate's CN (many devices on one connection is what a gateway is for). The
connections are not a thread each: paho's sockets are driven by the simulator's asyncio loop
(paho's "external event loop" interface: `loop_read`/`loop_write`/`loop_misc` called from
`add_reader`/`add_writer` callbacks), so thousands of devices cost one thread. Each device
publishes to its readings topic at QoS 1 with its credentials as MQTT 5 user properties, and
takes its acks from its own acks topic, matched to the outstanding batch by `batch_id`; its
session is persistent (clean_start False), so acks published while it was cut off still reach it.
A connection the broker dropped (a broker restart) is re-established every second until it
comes back.

Edge gateways (`GatewayTransport.send_gateway`): over HTTP a POST to the gateway endpoint; over
MQTT each gateway has its own connection like a device, publishes its outer messages to its
batches topic and takes the acks from its own acks topic. An outer message has no id, so each
attempt carries a fresh MQTT 5 correlation data, which the bridge echoes on its ack.

Every publish carries an MQTT 5 Message Expiry Interval equal to the ack timeout: how long this
sender waits for the ack, after which it sends again (backing off, backoff.py). The broker drops
a copy nobody waits for any more, and an overloaded bridge answers it 503 without the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from telemetry.mqtt_bridge import acks_topic, batches_topic, gateway_acks_topic, properties_for, readings_topic
from telemetry.mqtt_broker import tls_context

log = logging.getLogger(__name__)

INGEST_PATH = "/api/v1/ingest/readings"
GATEWAY_INGEST_PATH = "/api/v1/ingest/gateway"


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    retry_after: float = 1.0
    suggested_interval_s: float | None = None


@dataclass(frozen=True)
class Identity:
    """What a device needs for MQTT: its TLS key and certificate (PEM), and the CA's."""

    certificate_pem: str
    private_key_pem: str


class Transport(Protocol):
    async def send(self, device_id: str, body: bytes, headers: dict[str, str]) -> Reply | None: ...

    async def close(self) -> None: ...


@runtime_checkable
class GatewayTransport(Transport, Protocol):
    """A transport that also carries edge gateways' messages (contract section 1c)."""

    async def send_gateway(self, gateway_id: str, body: bytes, headers: dict[str, str]) -> Reply | None: ...


class HttpTransport:
    """One shared keep-alive httpx client for the whole fleet."""

    def __init__(self, url: str, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self.client = httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0, transport=transport)

    async def send(self, device_id: str, body: bytes, headers: dict[str, str]) -> Reply | None:
        return await self._post(INGEST_PATH, body, headers)

    async def send_gateway(self, gateway_id: str, body: bytes, headers: dict[str, str]) -> Reply | None:
        return await self._post(GATEWAY_INGEST_PATH, body, headers)

    async def _post(self, path: str, body: bytes, headers: dict[str, str]) -> Reply | None:
        try:
            response = await self.client.post(
                path, content=body, headers={"Content-Type": "application/json", **headers}
            )
        except httpx.HTTPError:
            return None
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        return Reply(response.status_code, answer if isinstance(answer, dict) else {}, _retry_after(response))

    async def close(self) -> None:
        await self.client.aclose()


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, min(60.0, float(response.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


class MqttTransport:
    """One MQTT 5 connection per device, all driven by the running asyncio loop."""

    def __init__(self, url: str, *, ca_file: str, identities: dict[str, Identity], ack_timeout: float = 10.0) -> None:
        target = urlsplit(url)
        if target.scheme != "mqtts" or not target.hostname:
            raise ValueError(f"the MQTT URL must be mqtts://host:port, got {url!r}")
        self.host, self.port = target.hostname, target.port or 8883
        self.ca_file = ca_file
        self.identities = identities
        self.ack_timeout = ack_timeout
        self.links: dict[str, _Link] = {}
        # The TLS files of every device, for the life of the transport (ssl loads files only).
        self._files = tempfile.TemporaryDirectory(prefix="perfuse-sim-mqtt-")

    async def send(self, device_id: str, body: bytes, headers: dict[str, str]) -> Reply | None:
        return await self._link(device_id, gateway=False).send(body, headers)

    async def send_gateway(self, gateway_id: str, body: bytes, headers: dict[str, str]) -> Reply | None:
        return await self._link(gateway_id, gateway=True).send(body, headers)

    def _link(self, owner_id: str, *, gateway: bool) -> _Link:
        link = self.links.get(owner_id)
        if link is None:
            link = self.links[owner_id] = _Link(self, owner_id, gateway=gateway)
            link.start()
        return link

    async def close(self) -> None:
        for link in self.links.values():
            link.stop()
        self.links.clear()
        self._files.cleanup()

    def context(self, device_id: str) -> ssl.SSLContext:
        identity = self.identities[device_id]
        directory = Path(self._files.name)
        cert, key = directory / f"{device_id}.pem", directory / f"{device_id}.key"
        cert.write_text(identity.certificate_pem)
        key.write_text(identity.private_key_pem)
        key.chmod(0o600)
        return tls_context(ca=self.ca_file, cert=str(cert), key=str(key))


class _Link:
    """One device's (or gateway's) connection: paho's client on the asyncio loop, and its
    outstanding messages, by batch id (a device) or correlation data (a gateway)."""

    def __init__(self, transport: MqttTransport, device_id: str, *, gateway: bool = False) -> None:
        self.transport = transport
        self.device_id = device_id
        self.gateway = gateway
        self.publish_topic = batches_topic(device_id) if gateway else readings_topic(device_id)
        self.acks_topic = gateway_acks_topic(device_id) if gateway else acks_topic(device_id)
        self._attempts = itertools.count(1)
        self.loop = asyncio.get_running_loop()
        self.connected = asyncio.Event()
        self.waiting: dict[str, asyncio.Future[Reply]] = {}
        self.stopped = False
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5
        )
        client.tls_set_context(transport.context(device_id))
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self.client = client
        self._misc: asyncio.Task[None] | None = None
        self._connector: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._connector = self.loop.create_task(self._connect_until_up())

    def stop(self) -> None:
        self.stopped = True
        for task in (self._connector, self._misc):
            if task is not None:
                task.cancel()
        with contextlib.suppress(Exception):
            self.client.disconnect()
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(sock)
                self.loop.remove_writer(sock)

    async def _connect_until_up(self) -> None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600  # acks published while we were cut off still reach us
        first = True
        while not self.stopped and not self.connected.is_set():
            try:
                if first:
                    # Blocking for one TCP + TLS handshake on loopback (milliseconds).
                    self.client.connect(
                        self.transport.host, self.transport.port, keepalive=30, clean_start=False, properties=properties
                    )
                    first = False
                else:
                    self.client.reconnect()
            except (OSError, ssl.SSLError) as exc:
                log.debug("%s: MQTT connect failed: %s", self.device_id, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), 1.0)

    # ---- paho callbacks (all on the asyncio thread) ----------------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.add_reader(sock, self._readable)
        if self._misc is None or self._misc.done():
            self._misc = self.loop.create_task(self._misc_loop())

    def _readable(self) -> None:
        self.client.loop_read()
        sock = self.client.socket()
        # TLS may hold whole records already read from the socket: the selector would not see them.
        while sock is not None and hasattr(sock, "pending") and sock.pending() > 0:
            if self.client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                break
            sock = self.client.socket()

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.remove_writer(sock)

    async def _misc_loop(self) -> None:
        while not self.stopped:
            self.client.loop_misc()
            await asyncio.sleep(1.0)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            log.warning("%s: the broker refused the connection: %s", self.device_id, reason)
            return
        client.subscribe(self.acks_topic, qos=1)
        self.connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        self.connected.clear()
        if not self.stopped and (self._connector is None or self._connector.done()):
            self._connector = self.loop.create_task(self._connect_until_up())

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            ack = orjson.loads(message.payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(ack, dict):
            return
        if self.gateway:
            correlation = getattr(message.properties, "CorrelationData", None)
            token = correlation.decode("ascii", "replace") if isinstance(correlation, bytes) else ""
        else:
            token = str(ack.get("batch_id"))
        future = self.waiting.pop(token, None)
        if future is None or future.done():
            return  # the ack of an attempt already answered (a retransmit's twin)
        status = int(ack.get("status", 0))
        interval = ack.get("suggested_interval_ms")
        future.set_result(
            Reply(
                status,
                ack,
                retry_after=float(ack.get("retry_after", 1.0)),
                suggested_interval_s=float(interval) / 1000 if isinstance(interval, int | float) else None,
            )
        )

    # ---- sending ---------------------------------------------------------------------------

    async def send(self, body: bytes, headers: dict[str, str]) -> Reply | None:
        # A gateway's attempts each have their own token: a late ack of an earlier attempt is
        # not this one's answer (the gateway sends the outer message again, its inner batches
        # then counted as duplicates).
        token = f"{self.device_id}-{next(self._attempts)}" if self.gateway else _batch_id(body)
        if not self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), self.transport.ack_timeout)
            if not self.connected.is_set():
                return None
        future = self.waiting.get(token)
        if future is None or future.done():
            future = self.waiting[token] = self.loop.create_future()
        properties = properties_for(headers)
        # The sender's wait, as the message's lifetime (docs/mqtt.md): the broker discards a copy
        # still queued when we stop waiting for its ack, and the bridge sheds one it cannot answer
        # by then (telemetry/mqtt_shed.py) instead of storing it for nobody.
        properties.MessageExpiryInterval = max(1, math.ceil(self.transport.ack_timeout))
        if self.gateway:
            properties.CorrelationData = token.encode()
        self.client.publish(self.publish_topic, body, qos=1, properties=properties)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.transport.ack_timeout)
        except TimeoutError:
            if self.gateway:
                self.waiting.pop(token, None)  # this attempt is over
            return None  # a device's stays waiting: a late ack of this attempt still answers the batch


def _batch_id(body: bytes) -> str:
    document = orjson.loads(body)
    return str(document.get("batch_id"))
