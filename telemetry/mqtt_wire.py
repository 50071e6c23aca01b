"""The MQTT bridge's own MQTT 5 client: the few packets it needs, on its asyncio event loop.

Why not paho. With paho's threaded loop about 43 % of the bridge's CPU for direct device messages
(one reading each; ~1 ms a message in all) went to paho and the hand-overs between its thread and
the pipeline's (docs/benchmarks.md, "The bridge's own MQTT client"): paho's network thread
parsing each PUBLISH through its generic property objects and reading the fixed header a byte
at a time; a hand-over to the asyncio loop per message (`call_soon_threadsafe`, a self-pipe write
each); and, back from the asyncio thread, the ack
PUBLISH and the PUBACK each queued with a self-pipe write to wake the network thread, which then
wrote them with one TLS `send` each; two threads taking turns at the GIL all along. Here
everything runs on the bridge's event loop: whatever TLS delivers in one read is parsed in one
pass (`data_received`), each PUBLISH handed to the bridge by a direct call, and the packets the
bridge sends while the loop runs one burst of callbacks (a group's acks and PUBACKs) leave in
ONE write at the end of it (`_flush`, scheduled by the first).

What it speaks (MQTT 5.0, as a client): CONNECT (clean start off, session expiry, receive
maximum), SUBSCRIBE, PUBLISH in at QoS 0/1 and out at QoS 1 (with correlation data), PUBACK both
ways, PINGREQ/PINGRESP, DISCONNECT both ways. Not: QoS 2 (the bridge subscribes at QoS 1, so the
broker never sends it one), topic aliases (none announced, so none sent), AUTH, wills, retained
messages. A packet it cannot parse ends the connection (the broker delivers again what was not
PUBACKed). Outgoing QoS 1 publishes stay within the broker's Receive Maximum (the rest wait in
order) and, unacknowledged when the connection drops, are sent again after the reconnection
(with DUP and their ids when the broker kept the session, as MQTT 5 requires; as new ones when it
did not). Reconnects after 1 s, doubling to 10 s, as paho was configured; every connection is a
new `generation`, and a PUBACK for a message of an earlier one is never sent (its id may have
been reused; the broker delivers that message again on the new connection).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 0x10, 0x20, 0x30, 0x40, 0x80, 0x90
PINGREQ, PINGRESP, DISCONNECT = 0xC0, 0xD0, 0xE0
PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"  # normal disconnection: the broker keeps the session

# MQTT 5 property identifiers → how their value is encoded (section 2.2.2.2).
_BYTE, _TWO, _FOUR, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
PROPERTY_TYPES = {
    0x01: _BYTE,  # payload format indicator
    0x02: _FOUR,  # message expiry interval
    0x03: _UTF8,  # content type
    0x08: _UTF8,  # response topic
    0x09: _BINARY,  # correlation data
    0x0B: _VARINT,  # subscription identifier
    0x11: _FOUR,  # session expiry interval
    0x12: _UTF8,  # assigned client identifier
    0x13: _TWO,  # server keep alive
    0x15: _UTF8,  # authentication method
    0x16: _BINARY,  # authentication data
    0x17: _BYTE,  # request problem information
    0x18: _FOUR,  # will delay interval
    0x19: _BYTE,  # request response information
    0x1A: _UTF8,  # response information
    0x1C: _UTF8,  # server reference
    0x1F: _UTF8,  # reason string
    0x21: _TWO,  # receive maximum
    0x22: _TWO,  # topic alias maximum
    0x23: _TWO,  # topic alias
    0x24: _BYTE,  # maximum QoS
    0x25: _BYTE,  # retain available
    0x26: _PAIR,  # user property
    0x27: _FOUR,  # maximum packet size
    0x28: _BYTE,  # wildcard subscription available
    0x29: _BYTE,  # subscription identifier available
    0x2A: _BYTE,  # shared subscription available
}
MESSAGE_EXPIRY, CORRELATION_DATA, SERVER_KEEP_ALIVE, REASON_STRING = 0x02, 0x09, 0x13, 0x1F
RECEIVE_MAXIMUM, USER_PROPERTY = 0x21, 0x26


class ProtocolError(Exception):
    """The broker sent what this client cannot parse: the connection ends."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """One PUBLISH from the broker."""

    topic: str
    payload: bytes
    mid: int  # its packet id (0 at QoS 0)
    qos: int
    user_properties: list[tuple[str, str]]
    correlation: bytes | None
    expiry: int | None  # the remaining Message Expiry Interval as delivered (seconds), None when unset


def varint(value: int) -> bytes:
    """A Variable Byte Integer (section 1.5.5)."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _varint_at(data: bytes, p: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if p >= len(data) or shift > 21:
            raise ProtocolError("malformed variable byte integer")
        byte = data[p]
        p += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, p
        shift += 7


def _text(value: str) -> bytes:
    raw = value.encode()
    return len(raw).to_bytes(2, "big") + raw


def _text_at(data: bytes, p: int, end: int) -> tuple[str, int]:
    n = int.from_bytes(data[p : p + 2], "big")
    q = p + 2 + n
    if q > end:
        raise ProtocolError("string past the end of its packet")
    # Mosquitto checks UTF-8 itself; a bad byte must still not end the bridge (it becomes U+FFFD,
    # so a topic no longer names a device and credentials no longer verify).
    return data[p + 2 : q].decode("utf-8", "replace"), q


def properties_at(data: bytes, p: int, end: int) -> tuple[dict[int, object], list[tuple[str, str]], int]:
    """The properties starting at `p` (their length first): single-valued ones by identifier, the
    user properties in order, and where the properties end."""
    length, p = _varint_at(data, p)
    stop = p + length
    if stop > end:
        raise ProtocolError("properties past the end of their packet")
    found: dict[int, object] = {}
    pairs: list[tuple[str, str]] = []
    while p < stop:
        ident = data[p]
        p += 1
        kind = PROPERTY_TYPES.get(ident)
        value: object
        if kind == _PAIR:
            name, p = _text_at(data, p, stop)
            text, p = _text_at(data, p, stop)
            pairs.append((name, text))
            continue
        if kind == _BYTE:
            value, p = data[p], p + 1
        elif kind == _TWO:
            value, p = int.from_bytes(data[p : p + 2], "big"), p + 2
        elif kind == _FOUR:
            value, p = int.from_bytes(data[p : p + 4], "big"), p + 4
        elif kind == _VARINT:
            value, p = _varint_at(data, p)
        elif kind == _UTF8:
            value, p = _text_at(data, p, stop)
        elif kind == _BINARY:
            n = int.from_bytes(data[p : p + 2], "big")
            value, p = data[p + 2 : p + 2 + n], p + 2 + n
        else:
            raise ProtocolError(f"unknown property 0x{ident:02x}")
        found[ident] = value
    if p != stop:
        raise ProtocolError("properties overrun their length")
    return found, pairs, stop


def publish_parse(flags: int, data: bytes, start: int, end: int) -> Incoming:
    """A PUBLISH packet's variable header and payload, `data[start:end]`."""
    qos = (flags >> 1) & 3
    if qos > 1:
        raise ProtocolError("QoS 2 PUBLISH on a QoS 1 subscription")
    topic, p = _text_at(data, start, end)
    mid = 0
    if qos:
        mid, p = int.from_bytes(data[p : p + 2], "big"), p + 2
    found, pairs, p = properties_at(data, p, end)
    correlation = found.get(CORRELATION_DATA)
    expiry = found.get(MESSAGE_EXPIRY)
    return Incoming(
        topic,
        data[p:end],
        mid,
        qos,
        pairs,
        correlation if isinstance(correlation, bytes) else None,
        expiry if isinstance(expiry, int) else None,
    )


def publish_properties(
    *, correlation: bytes | None = None, expiry: int | None = None, user_properties: Sequence[tuple[str, str]] = ()
) -> bytes:
    """A PUBLISH's properties, encoded (without their length): Message Expiry Interval, Correlation
    Data, User Properties in order."""
    out = b"" if expiry is None else b"\x02" + expiry.to_bytes(4, "big")
    if correlation is not None:
        out += b"\x09" + len(correlation).to_bytes(2, "big") + correlation
    for name, value in user_properties:
        out += b"\x26" + _text(name) + _text(value)
    return out


def publish_packet(
    topic: str,
    payload: bytes,
    *,
    mid: int,
    correlation: bytes | None = None,
    expiry: int | None = None,
    user_properties: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A QoS 1 PUBLISH."""
    properties = publish_properties(correlation=correlation, expiry=expiry, user_properties=user_properties)
    return _publish_packet(topic, payload, mid, properties)


def _publish_packet(topic: str, payload: bytes, mid: int, properties: bytes) -> bytes:
    header = _text(topic) + mid.to_bytes(2, "big") + varint(len(properties)) + properties
    return bytes((PUBLISH | 0x02,)) + varint(len(header) + len(payload)) + header + payload


def puback_packet(mid: int) -> bytes:
    """A PUBACK with reason Success (MQTT 5 allows the reason and properties to be left out)."""
    return b"\x40\x02" + mid.to_bytes(2, "big")


def connect_packet(*, client_id: str, keepalive: int, session_expiry: int, receive_maximum: int) -> bytes:
    properties = b"\x11" + session_expiry.to_bytes(4, "big") + b"\x21" + receive_maximum.to_bytes(2, "big")
    # Flags 0: clean start off (the broker resumes our session), no will, no username/password
    # (the broker takes the certificate's CN as the username).
    header = b"\x00\x04MQTT\x05\x00" + keepalive.to_bytes(2, "big") + varint(len(properties)) + properties
    body = header + _text(client_id)
    return bytes((CONNECT,)) + varint(len(body)) + body


def subscribe_packet(mid: int, filters: Sequence[tuple[str, int]]) -> bytes:
    body = mid.to_bytes(2, "big") + b"\x00" + b"".join(_text(f) + bytes((qos,)) for f, qos in filters)
    return bytes((SUBSCRIBE | 0x02,)) + varint(len(body)) + body


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    context: ssl.SSLContext
    client_id: str
    keepalive: int
    session_expiry: int
    receive_maximum: int  # how many unacknowledged QoS 1 messages the broker may send us
    subscriptions: tuple[tuple[str, int], ...]


class Client(asyncio.Protocol):
    """One MQTT 5 client, reconnecting until `run` is stopped. Callbacks run on the event loop:
    `on_message(incoming)` for each PUBLISH, `on_connect(session_present)` after each CONNACK,
    `on_subscribe(granted)` after each SUBACK, `on_disconnect(reason)` when a connection ends."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        on_message: Callable[[Incoming], None],
        on_connect: Callable[[bool], None] = lambda session_present: None,
        on_subscribe: Callable[[bool], None] = lambda granted: None,
        on_disconnect: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.endpoint = endpoint
        self.on_message = on_message
        self.on_connect = on_connect
        self.on_subscribe = on_subscribe
        self.on_disconnect = on_disconnect
        self.generation = 0  # connections that reached CONNACK
        self.writes = 0  # transport writes (each carries every packet queued since the last)
        self._transport: asyncio.Transport | None = None
        self._connected = False  # CONNACK received on this transport, and still usable
        self._reached = False  # this transport got its CONNACK (even if we are closing it now)
        self._lost: asyncio.Event = asyncio.Event()
        # The start of a packet not received in full yet: its pieces, their size, the size needed.
        self._pending: list[bytes] = []
        self._have = self._need = 0
        self._out: list[bytes] = []
        self._flush_scheduled = False
        # Our QoS 1 publishes the broker has not acknowledged: packet id → packet, in send order.
        self._inflight: dict[int, bytes] = {}
        # Beyond the broker's window: topic, payload, encoded properties.
        self._waiting: deque[tuple[str, bytes, bytes]] = deque()
        self._window = 65535  # the broker's Receive Maximum (its CONNACK says; 65,535 when it does not)
        self._next_mid = 0
        self._last_sent = self._last_received = 0.0
        self._keepalive = endpoint.keepalive
        self._timer: asyncio.TimerHandle | None = None

    # ---- what the bridge calls (on the event loop) -------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        correlation: bytes | None = None,
        expiry: int | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Queue a QoS 1 PUBLISH; it leaves with the next write (or after the reconnection)."""
        properties = publish_properties(correlation=correlation, expiry=expiry, user_properties=user_properties)
        if len(self._inflight) >= self._window or self._waiting or not self._connected:
            self._waiting.append((topic, payload, properties))
            self._drain_waiting()
            return
        self._send_publish(topic, payload, properties)

    def puback(self, mid: int, generation: int) -> bool:
        """PUBACK a message received on connection `generation`: only on that same connection."""
        if generation != self.generation or not self._connected:
            return False
        self._send(puback_packet(mid))
        return True

    @property
    def window(self) -> int:
        """How many of our QoS 1 publishes the broker takes unacknowledged (its Receive Maximum)."""
        return self._window

    @property
    def unacknowledged(self) -> int:
        """Our publishes not yet acknowledged by the broker (in flight or waiting for the window)."""
        return len(self._inflight) + len(self._waiting)

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, and connect again whenever the connection ends, until `stop` is set; then
        disconnect (what was queued to send leaves first)."""
        loop = asyncio.get_running_loop()
        delay = 1.0
        stopping = loop.create_task(stop.wait())
        try:
            while not stop.is_set():
                e = self.endpoint
                self._lost = asyncio.Event()
                before = self.generation
                connecting = loop.create_task(
                    asyncio.wait_for(
                        loop.create_connection(lambda: self, e.host, e.port, ssl=e.context, server_hostname=e.host),
                        timeout=max(10, e.keepalive),
                    )
                )
                await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not connecting.done():  # stopped while connecting
                    connecting.cancel()
                    break
                if (exc := connecting.exception()) is not None:
                    if not isinstance(exc, OSError | TimeoutError):  # ssl.SSLError is an OSError
                        raise exc
                    log.warning("MQTT connection to %s:%s failed: %s", e.host, e.port, exc)
                else:
                    lost = loop.create_task(self._lost.wait())
                    await asyncio.wait({lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    lost.cancel()
                    if self.generation > before:  # that connection worked: the next attempt waits 1 s again
                        delay = 1.0
                if stop.is_set():
                    break
                await asyncio.wait({stopping}, timeout=delay)
                delay = min(10.0, delay * 2)
            if self.close():
                # The DISCONNECT and what was queued before it are written before the socket closes.
                await asyncio.wait({loop.create_task(self._lost.wait())}, timeout=5)
        finally:
            stopping.cancel()
            self.close()

    def close(self) -> bool:
        """DISCONNECT (normal: the broker keeps the session) after whatever is queued, and close;
        False when there was no connection."""
        transport = self._transport
        if transport is None:
            return False
        if self._connected:
            self._out.append(DISCONNECT_PACKET)
            self._flush()
        self._connected = False
        transport.close()  # writes what is buffered first
        return True

    # ---- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._pending = []
        self._have = self._need = 0
        self._out = []
        self._connected = self._reached = False
        self._last_received = time.monotonic()
        e = self.endpoint
        self._keepalive = e.keepalive
        self._send(
            connect_packet(
                client_id=e.client_id,
                keepalive=e.keepalive,
                session_expiry=e.session_expiry,
                receive_maximum=e.receive_maximum,
            )
        )
        self._flush()
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        was_connected = self._reached  # reached CONNACK (ended by us or by the broker)
        self._transport = None
        self._connected = self._reached = False
        self._out = []  # PUBACKs of this connection must not go on the next; publishes are kept
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._lost.set()
        if was_connected:
            self.on_disconnect(str(exc) if exc else "connection closed")

    def data_received(self, data: bytes) -> None:
        self._last_received = time.monotonic()
        if self._pending:
            # A packet larger than one read (a gateway's message): gathered, joined once complete.
            self._pending.append(data)
            self._have += len(data)
            if self._have < self._need:
                return
            data = b"".join(self._pending)
            self._pending = []
        p, n = 0, len(data)
        q = length = 0
        complete = False
        try:
            while p < n:
                # The fixed header: the type and flags, then the remaining length, a variable
                # byte integer of at most 4 bytes (inlined: this runs for every packet).
                q = p + 1
                length = shift = 0
                complete = False
                while q < n:
                    byte = data[q]
                    q += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        complete = True
                        break
                    shift += 7
                    if shift > 21:
                        raise ProtocolError("malformed remaining length")
                if not complete or q + length > n:
                    break  # incomplete: wait for the rest
                self._packet(data[p], data, q, q + length)
                p = q + length
                if self._transport is None:
                    return  # that packet ended the connection
        except (ProtocolError, IndexError) as exc:
            log.error("MQTT: unparseable packet from the broker (%s): closing the connection", exc)
            self._abort()
            return
        if p < n:
            rest = data[p:]
            self._pending = [rest]
            self._have = len(rest)
            self._need = (q + length - p) if complete else len(rest) + 1
        else:
            self._have = self._need = 0

    def eof_received(self) -> bool | None:
        return None  # close

    # ---- internals ----------------------------------------------------------------------------

    def _packet(self, first: int, data: bytes, start: int, end: int) -> None:
        kind = first & 0xF0
        if kind == PUBLISH:
            if not self._connected:
                raise ProtocolError("PUBLISH before CONNACK")
            incoming = publish_parse(first & 0x0F, data, start, end)
            try:
                self.on_message(incoming)
            except Exception:  # a bug in the bridge must not end the connection: not PUBACKed, redelivered
                log.exception("MQTT: handling a message on %r failed", incoming.topic[:200])
        elif kind == PUBACK:
            self._inflight.pop(int.from_bytes(data[start : start + 2], "big"), None)
            if self._waiting:
                self._drain_waiting()
        elif kind == CONNACK:
            self._connack(data, start, end)
        elif kind == SUBACK:
            _, _, p = properties_at(data, start + 2, end)
            codes = data[p:end]
            granted = bool(codes) and all(code < 0x80 for code in codes)
            if not granted:
                log.error("MQTT: the broker refused a subscription: %s", list(codes))
            self.on_subscribe(granted)
        elif kind == PINGRESP:
            pass
        elif kind == DISCONNECT:
            reason = data[start] if end > start else 0
            found: dict[int, object] = {}
            if end - start > 1:
                found, _, _ = properties_at(data, start + 1, end)
            log.warning("MQTT: the broker disconnected us: reason 0x%02x %s", reason, found.get(REASON_STRING, ""))
            self._abort()
        else:
            raise ProtocolError(f"unexpected packet type 0x{kind:02x}")

    def _connack(self, data: bytes, start: int, end: int) -> None:
        session_present = bool(data[start] & 0x01)
        reason = data[start + 1]
        found, _, _ = properties_at(data, start + 2, end) if end > start + 2 else ({}, [], end)
        if reason >= 0x80:
            log.warning("MQTT connect refused: reason 0x%02x %s", reason, found.get(REASON_STRING, ""))
            self._abort()
            return
        window = found.get(RECEIVE_MAXIMUM)
        self._window = window if isinstance(window, int) and window > 0 else 65535
        keepalive = found.get(SERVER_KEEP_ALIVE)
        if isinstance(keepalive, int):
            self._keepalive = keepalive
        self._connected = self._reached = True
        self.generation += 1
        self._send(subscribe_packet(self._mid(), self.endpoint.subscriptions))
        # Our publishes the broker did not acknowledge on the last connection: again, before any
        # new one. With the session kept, as they were (DUP set, same ids); else as new publishes.
        resend = list(self._inflight.items())
        if session_present:
            for _, packet in resend:
                self._send(bytes((packet[0] | 0x08,)) + packet[1:])
        else:
            self._inflight.clear()
            self._waiting.extendleft(reversed([self._unpublished(packet) for _, packet in resend]))
        self.on_connect(session_present)
        self._drain_waiting()

    @staticmethod
    def _unpublished(packet: bytes) -> tuple[str, bytes, bytes]:
        """What an unacknowledged publish of a lost session carried (topic, payload, encoded
        properties), to send it again as new."""
        topic, p = _text_at(packet, _varint_at(packet, 1)[1], len(packet))
        length, p = _varint_at(packet, p + 2)  # after the packet id
        return topic, packet[p + length :], packet[p : p + length]

    def _drain_waiting(self) -> None:
        while self._waiting and self._connected and len(self._inflight) < self._window:
            topic, payload, properties = self._waiting.popleft()
            self._send_publish(topic, payload, properties)

    def _send_publish(self, topic: str, payload: bytes, properties: bytes) -> None:
        mid = self._mid()
        packet = _publish_packet(topic, payload, mid, properties)
        self._inflight[mid] = packet
        self._send(packet)

    def _mid(self) -> int:
        """A packet id (1..65535) none of our unacknowledged publishes holds."""
        for _ in range(65536):
            self._next_mid = self._next_mid % 65535 + 1
            if self._next_mid not in self._inflight:
                return self._next_mid
        raise RuntimeError("no MQTT packet id free")  # not reached: the window is at most 65,535

    def _send(self, packet: bytes) -> None:
        self._out.append(packet)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Everything queued since the last write, in one write."""
        self._flush_scheduled = False
        if not self._out or self._transport is None:
            return
        data = b"".join(self._out)
        self._out = []
        self._transport.write(data)
        self.writes += 1
        self._last_sent = time.monotonic()

    def _arm_timer(self) -> None:
        interval = max(1.0, (self._keepalive or 60) / 2)
        self._timer = asyncio.get_running_loop().call_later(interval, self._tick)

    def _tick(self) -> None:
        """Keep the connection alive (PINGREQ when nothing was sent for half the keep-alive) and
        end it when the broker said nothing for 1.5 keep-alives (it would have answered a ping)."""
        self._timer = None
        if self._transport is None:
            return
        now = time.monotonic()
        keepalive = self._keepalive or 60
        if now - self._last_received > 1.5 * keepalive:
            log.warning("MQTT: nothing from the broker for %.0f s: reconnecting", now - self._last_received)
            self._abort()
            return
        if self._connected and now - self._last_sent >= keepalive / 2:
            self._send(PINGREQ_PACKET)
        self._arm_timer()

    def _abort(self) -> None:
        """End the connection at once (connection_lost follows); nothing more is parsed or sent."""
        self._connected = False
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
