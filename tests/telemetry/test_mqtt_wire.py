"""The bridge's own MQTT 5 client (telemetry/mqtt_wire.py) at the byte level.

Against the real Mosquitto the client is exercised by every bridge test (tests/telemetry/
test_mqtt_bridge.py, test_mqtt_shed.py, test_mqtt_faults.py: connections, shared subscription,
acks with correlation data, broker SIGKILL and reconnection). What a real broker cannot be made to
do is tested here with a transport that records what is written: packets split at every byte
boundary, packets it should never send, a Receive Maximum reached, a session lost or kept across
a reconnection. Packets are built with paho's own property encoder, so the two implementations
are checked against each other.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from telemetry.mqtt_wire import (
    Client,
    Endpoint,
    Incoming,
    connect_packet,
    properties_at,
    puback_packet,
    publish_packet,
    publish_parse,
    varint,
)


class Recorder(asyncio.Transport):
    """A transport that keeps every write (one entry per write) and whether it was aborted."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.aborted = False
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.aborted or self.closed


def _endpoint() -> Endpoint:
    return Endpoint(
        host="127.0.0.1",
        port=1,
        context=ssl.create_default_context(),
        client_id="perfuse-bridge-wire",
        keepalive=30,
        session_expiry=86400,
        receive_maximum=100,
        subscriptions=(("$share/g/perfuse/v1/devices/+/readings", 1),),
    )


def _frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def _publish(topic: str, payload: bytes, *, mid: int, properties: Properties | None = None) -> bytes:
    """A QoS 1 PUBLISH from the broker, its properties encoded by paho."""
    packed = properties.pack() if properties is not None else b"\x00"  # type: ignore[no-untyped-call]
    raw = topic.encode()
    return _frame(0x32, len(raw).to_bytes(2, "big") + raw + mid.to_bytes(2, "big") + packed + payload)


def _connack(*, session_present: bool = False, reason: int = 0, receive_maximum: int | None = None) -> bytes:
    properties = Properties(PacketTypes.CONNACK)  # type: ignore[no-untyped-call]
    if receive_maximum is not None:
        properties.ReceiveMaximum = receive_maximum
    return _frame(0x20, bytes((int(session_present), reason)) + properties.pack())  # type: ignore[no-untyped-call]


def _credentials() -> Properties:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.UserProperty = [("x-perfuse-key", "k1"), ("x-perfuse-timestamp", "1700000000")]
    properties.UserProperty = [("x-perfuse-signature", "c2ln")]  # paho appends user properties
    properties.MessageExpiryInterval = 9
    properties.CorrelationData = b"\x00corr"
    properties.ContentType = "application/json"  # properties the bridge does not use are skipped
    properties.PayloadFormatIndicator = 1
    properties.SubscriptionIdentifier = 300
    return properties


class Harness:
    """A client on a recording transport, driven by a private event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.messages: list[Incoming] = []
        self.events: list[Any] = []
        self.client = Client(
            _endpoint(),
            on_message=self.messages.append,
            on_connect=lambda present: self.events.append(("connect", present)),
            on_subscribe=lambda granted: self.events.append(("subscribe", granted)),
            on_disconnect=lambda reason: self.events.append(("disconnect", reason)),
        )
        self.transport = Recorder()

    def run(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Call `function` on the loop, then let the loop run what it scheduled (the flush)."""

        async def call() -> Any:
            result = function(*args, **kwargs)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return result

        return self.loop.run_until_complete(call())

    def connect(self, **connack: Any) -> None:
        self.transport = Recorder()
        self.run(self.client.connection_made, self.transport)
        self.run(self.client.data_received, _connack(**connack))

    def lose(self) -> None:
        self.run(self.client.connection_lost, None)

    def sent(self) -> bytes:
        return b"".join(self.transport.writes)

    def close(self) -> None:
        if self.client._timer is not None:
            self.client._timer.cancel()
        self.loop.close()


@pytest.fixture
def wire() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.close()


def test_a_publish_parsed_as_paho_encodes_it() -> None:
    packet = _publish("perfuse/v1/devices/d1/readings", b'{"a": 1}', mid=513, properties=_credentials())
    (incoming,) = _publishes(packet)  # a remaining length of two bytes
    assert incoming == Incoming(
        topic="perfuse/v1/devices/d1/readings",
        payload=b'{"a": 1}',
        mid=513,
        qos=1,
        user_properties=[
            ("x-perfuse-key", "k1"),
            ("x-perfuse-timestamp", "1700000000"),
            ("x-perfuse-signature", "c2ln"),
        ],
        correlation=b"\x00corr",
        expiry=9,
    )


def test_what_the_client_writes_paho_reads_back() -> None:
    packet = publish_packet("perfuse/v1/gateways/g1/acks", b"{}", mid=7, correlation=b"xy")
    assert packet[0] == 0x32
    incoming = publish_parse(0x02, packet, 2, len(packet))
    assert (incoming.topic, incoming.payload, incoming.mid, incoming.correlation) == (
        "perfuse/v1/gateways/g1/acks",
        b"{}",
        7,
        b"xy",
    )
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    start = 2 + 2 + len("perfuse/v1/gateways/g1/acks") + 2
    properties.unpack(packet[start:])  # type: ignore[no-untyped-call]
    assert properties.CorrelationData == b"xy"
    assert puback_packet(258) == b"\x40\x02\x01\x02"
    connect = connect_packet(client_id="c", keepalive=30, session_expiry=86400, receive_maximum=5000)
    found, _, _ = properties_at(connect, 2 + 10, len(connect))
    assert found == {0x11: 86400, 0x21: 5000}
    assert connect[2 + 7] == 0x00  # clean start off: the broker resumes the session


def test_a_publish_with_expiry_and_user_properties_paho_reads_back() -> None:
    credentials = [("x-perfuse-key", "k1"), ("x-perfuse-timestamp", "1700000000"), ("x-perfuse-signature", "c2ln")]
    packet = publish_packet("perfuse/v1/devices/d1/readings", b'{"a":1}', mid=9, expiry=10, user_properties=credentials)
    header = 3  # the fixed header: type and flags, then the remaining length (> 127: two bytes)
    assert packet[1] & 0x80 and not packet[2] & 0x80
    incoming = publish_parse(0x02, packet, header, len(packet))
    assert (incoming.payload, incoming.mid, incoming.expiry, incoming.user_properties, incoming.correlation) == (
        b'{"a":1}',
        9,
        10,
        credentials,
        None,
    )
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    start = header + 2 + len("perfuse/v1/devices/d1/readings") + 2
    properties.unpack(packet[start:])  # type: ignore[no-untyped-call]
    assert properties.MessageExpiryInterval == 10
    assert properties.UserProperty == credentials


def test_packets_split_at_every_byte_arrive_whole_and_in_order(wire: Harness) -> None:
    wire.connect()
    stream = b"".join(
        _publish(f"perfuse/v1/devices/d{n}/readings", bytes(300 * n), mid=n, properties=_credentials())
        for n in range(1, 4)
    )
    for size in (1, 2, 7, len(stream)):
        wire.messages.clear()
        for i in range(0, len(stream), size):
            wire.run(wire.client.data_received, stream[i : i + size])
        assert [(m.topic, len(m.payload), m.mid) for m in wire.messages] == [
            (f"perfuse/v1/devices/d{n}/readings", 300 * n, n) for n in range(1, 4)
        ]
    assert not wire.transport.aborted


def test_a_large_payload_over_many_reads(wire: Harness) -> None:
    wire.connect()
    body = bytes(range(256)) * 5000  # 1.28 MB: a remaining length of 3 bytes
    packet = _publish("perfuse/v1/gateways/g1/batches", body, mid=9)
    for i in range(0, len(packet), 16384):
        wire.run(wire.client.data_received, packet[i : i + 16384])
    assert [m.payload for m in wire.messages] == [body]


@pytest.mark.parametrize(
    "packet",
    [
        _frame(0x32, b"\x00\x05abc"),  # topic longer than the packet
        _frame(0x32, b"\x00\x01t\x00\x01\x02\x63\x00"),  # an unknown property (0x63)
        _frame(0x34, b"\x00\x01t\x00\x01\x00"),  # QoS 2
        _frame(0xF0, b""),  # AUTH: not spoken
        b"\x32\xff\xff\xff\xff\x01",  # a remaining length of five bytes
    ],
)
def test_a_packet_it_cannot_parse_ends_the_connection_without_raising(wire: Harness, packet: bytes) -> None:
    wire.connect()
    wire.run(wire.client.data_received, packet + _publish("perfuse/v1/devices/d1/readings", b"x", mid=1))
    assert wire.transport.aborted
    assert wire.messages == []  # nothing after it is taken either


def test_a_callback_that_raises_leaves_the_connection_up(wire: Harness) -> None:
    wire.connect()

    def broken(message: Incoming) -> None:
        raise RuntimeError("bridge bug")

    wire.client.on_message = broken
    wire.run(wire.client.data_received, _publish("perfuse/v1/devices/d1/readings", b"x", mid=1))
    assert not wire.transport.aborted


def test_acks_and_pubacks_queued_together_leave_in_one_write_in_order(wire: Harness) -> None:
    wire.connect()
    connected_writes = len(wire.transport.writes)

    def answer_group() -> None:
        for n in range(1, 51):
            wire.client.publish(f"perfuse/v1/devices/d{n}/acks", b'{"status": 200}')
            assert wire.client.puback(n, wire.client.generation)

    wire.run(answer_group)
    assert len(wire.transport.writes) == connected_writes + 1
    expected = b"".join(
        publish_packet(f"perfuse/v1/devices/d{n}/acks", b'{"status": 200}', mid=n + 1) + puback_packet(n)
        for n in range(1, 51)
    )
    assert wire.transport.writes[-1] == expected  # mid 1 went to the SUBSCRIBE


def test_a_puback_of_an_earlier_connection_is_never_sent(wire: Harness) -> None:
    wire.connect()
    generation = wire.client.generation
    wire.lose()
    wire.connect()
    before = wire.sent()
    assert not wire.run(wire.client.puback, 5, generation)
    assert wire.sent() == before


def test_publishes_beyond_the_brokers_receive_maximum_wait_for_its_pubacks(wire: Harness) -> None:
    wire.connect(receive_maximum=2)
    for n in range(5):
        wire.run(wire.client.publish, "perfuse/v1/devices/d/acks", str(n).encode())
    assert len(wire.client._inflight) == 2 and wire.client.unacknowledged == 5
    wire.run(wire.client.data_received, _frame(0x40, (2).to_bytes(2, "big")))  # the broker acks mid 2
    assert len(wire.client._inflight) == 2 and wire.client.unacknowledged == 4
    sent = wire.sent()
    payloads = [m.payload for m in _publishes(sent)]
    assert payloads == [b"0", b"1", b"2"]


def _publishes(stream: bytes, *, first_bytes: list[int] | None = None) -> list[Incoming]:
    """The PUBLISH packets in a written stream (their first bytes into `first_bytes`)."""
    found, p = [], 0
    while p < len(stream):
        length = shift = 0
        q = p + 1
        while True:
            byte = stream[q]
            q += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if stream[p] & 0xF0 == 0x30:
            found.append(publish_parse(stream[p] & 0x0F, stream, q, q + length))
            if first_bytes is not None:
                first_bytes.append(stream[p])
        p = q + length
    return found


def test_unacknowledged_publishes_go_again_after_a_reconnection(wire: Harness) -> None:
    wire.connect()
    wire.run(wire.client.publish, "perfuse/v1/gateways/g/acks", b"a", correlation=b"c1")
    wire.run(wire.client.publish, "perfuse/v1/devices/d/acks", b"b", expiry=7, user_properties=[("k", "v")])
    (first, second) = _publishes(wire.sent())
    wire.lose()
    assert wire.events[-1][0] == "disconnect"

    wire.connect(session_present=True)  # kept: the same packets with DUP, the same ids
    flags: list[int] = []
    again = _publishes(wire.transport.writes[-1], first_bytes=flags)
    assert [(m.mid, m.payload, m.correlation) for m in again] == [(first.mid, b"a", b"c1"), (second.mid, b"b", None)]
    assert flags == [0x3A, 0x3A]  # PUBLISH, QoS 1, DUP

    wire.lose()
    wire.connect(session_present=False)  # lost: sent again as new publishes
    flags.clear()
    renewed = _publishes(wire.transport.writes[-1], first_bytes=flags)
    assert [(m.payload, m.correlation, m.expiry, m.user_properties) for m in renewed] == [
        (b"a", b"c1", None, []),
        (b"b", None, 7, [("k", "v")]),
    ]
    assert flags == [0x32, 0x32]
    assert wire.events.count(("connect", True)) == 1 and wire.events.count(("connect", False)) == 2


def test_a_refused_connect_and_a_broker_disconnect_end_the_connection(wire: Harness) -> None:
    wire.transport = Recorder()
    wire.run(wire.client.connection_made, wire.transport)
    wire.run(wire.client.data_received, _connack(reason=0x87))  # not authorized
    assert wire.transport.aborted and wire.client.generation == 0
    wire.connect()
    wire.run(wire.client.data_received, _frame(0xE0, b"\x8e\x00"))  # session taken over
    assert wire.transport.aborted


def test_the_keepalive_pings_when_idle_and_gives_up_on_a_silent_broker(wire: Harness) -> None:
    wire.connect()
    client = wire.client
    client._last_sent -= 20  # more than half the 30 s keep-alive since the last write
    wire.run(client._tick)
    assert wire.transport.writes[-1] == b"\xc0\x00"
    client._last_received -= 50  # more than 1.5 keep-alives without a byte from the broker
    wire.run(client._tick)
    assert wire.transport.aborted


def test_a_suback_refusal_is_reported(wire: Harness) -> None:
    wire.connect()
    wire.run(wire.client.data_received, _frame(0x90, b"\x00\x01\x00\x01"))
    wire.run(wire.client.data_received, _frame(0x90, b"\x00\x01\x00\x87"))
    assert [e for e in wire.events if e[0] == "subscribe"] == [("subscribe", True), ("subscribe", False)]


def test_stopping_while_the_tls_handshake_hangs_ends_the_client() -> None:
    # A listener that accepts and never answers: the handshake would wait out its 30 s timeout.
    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # until the client goes away
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        endpoint = Endpoint(**{**_endpoint().__dict__, "port": port})
        client = Client(endpoint, on_message=lambda message: None)
        stop = asyncio.Event()
        running = asyncio.get_running_loop().create_task(client.run(stop))
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(running, timeout=5)  # a bound, not a speed: the handshake's is 30 s
        server.close()
        await server.wait_closed()

    asyncio.run(main())
