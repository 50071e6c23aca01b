"""A real Mosquitto over mutual TLS for the tests, and paho MQTT 5 clients that talk to it.

The broker is the one `scripts/test.sh` started (MQTT_URL, PERFUSE_PKI_DIR, MQTT_CA_FILE,
MQTT_CERT_FILE/MQTT_KEY_FILE for the bridge identity, PERFUSE_MQTT_PIDFILE, the admin identity),
or, when those are not set, one the session fixture starts itself with a throwaway CA through the
same `telemetry.mqtt_broker.broker_setup` that `make run` uses. Fixtures (tests/conftest.py):
`mqtt_broker` (session) and `mqtt` (points the settings at it for one test).

Identities: `identity_make` signs a certificate for a fresh (or a given) Ed25519 key straight
from the CA files (no database record: for tests of the broker alone, or to give a
tests.factories device a broker identity); a provisioned device's own PEMs (what
provision_device printed) become files with `identity_files`. `Connection` wraps a paho client
with events a test can wait on.
"""

from __future__ import annotations

import os
import pwd
import queue
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from telemetry import pki
from telemetry.mqtt_broker import broker_setup, tls_context

WAIT = 10.0  # seconds a test waits for something the broker must do (an upper bound, not a target)


@dataclass(frozen=True)
class Broker:
    url: str
    pki_dir: Path
    ca_file: Path
    bridge_cert: Path
    bridge_key: Path
    admin_cert: Path
    admin_key: Path
    pidfile: Path
    log: Path | None  # None for a broker we did not start (its log is elsewhere)
    config: Path | None = None  # the configuration of a broker this module started

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlparse(self.url).port or 8883

    def settings(self) -> dict[str, str]:
        """The settings that point Perfuse at this broker and its CA."""
        return {
            "PERFUSE_PKI_DIR": str(self.pki_dir),
            "MQTT_URL": self.url,
            "MQTT_CA_FILE": str(self.ca_file),
            "MQTT_CERT_FILE": str(self.bridge_cert),
            "MQTT_KEY_FILE": str(self.bridge_key),
            "PERFUSE_MQTT_PIDFILE": str(self.pidfile),
            "PERFUSE_MQTT_RELOAD_COMMAND": "",
            "PERFUSE_MQTT_ADMIN_CERT_FILE": str(self.admin_cert),
            "PERFUSE_MQTT_ADMIN_KEY_FILE": str(self.admin_key),
        }

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log is not None else ""


def broker_from_env() -> Broker | None:
    env = os.environ
    if not env.get("MQTT_URL"):
        return None
    missing = [
        name for name in ("PERFUSE_PKI_DIR", "MQTT_CA_FILE", "MQTT_CERT_FILE", "MQTT_KEY_FILE") if not env.get(name)
    ]
    if missing:
        raise RuntimeError(f"MQTT_URL is set without {', '.join(missing)} (docs/mqtt.md)")
    pki_dir = Path(env["PERFUSE_PKI_DIR"])
    pidfile = Path(env.get("PERFUSE_MQTT_PIDFILE", ""))
    return Broker(
        url=env["MQTT_URL"],
        pki_dir=pki_dir,
        ca_file=Path(env["MQTT_CA_FILE"]),
        bridge_cert=Path(env["MQTT_CERT_FILE"]),
        bridge_key=Path(env["MQTT_KEY_FILE"]),
        admin_cert=Path(env.get("PERFUSE_MQTT_ADMIN_CERT_FILE") or pki_dir / "admin.pem"),
        admin_key=Path(env.get("PERFUSE_MQTT_ADMIN_KEY_FILE") or pki_dir / "admin.key"),
        pidfile=pidfile,
        log=pidfile.parent / "mosquitto.log" if pidfile.name else None,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run_as() -> str | None:
    """Mosquitto will not keep root: started as root it drops to this user."""
    if os.geteuid() != 0:
        return None
    with suppress(KeyError):
        return pwd.getpwnam("mosquitto").pw_name
    return os.environ.get("PERFUSE_SERVICE_USER", "postgres")


# The brokers this module started, by configuration file (broker_restart replaces one).
_STARTED: dict[Path, subprocess.Popen[bytes]] = {}


def _spawn(config: Path, port: int) -> None:
    process = subprocess.Popen(["mosquitto", "-c", str(config)], stderr=subprocess.DEVNULL)
    _STARTED[config] = process
    _wait_listening(port, process)


def _stop(config: Path) -> None:
    process = _STARTED.pop(config, None)
    if process is not None:
        process.terminate()  # SIGTERM: Mosquitto writes its persistence file on the way out
        process.wait(timeout=WAIT)


@contextmanager
def broker_started() -> Iterator[Broker]:
    """Our own Mosquitto with a throwaway CA, for as long as the block runs."""
    # Not pytest's tmp_path: its 0700 parents keep the unprivileged broker out.
    root = Path(tempfile.mkdtemp(prefix="perfuse-mqtt-"))
    os.chmod(root, 0o755)  # noqa: S103 (a throwaway directory; the CA inside is 0700)
    port = _free_port()
    files = broker_setup(state=root / "mqtt", pki_dir=root / "pki", port=port, run_as=_run_as())
    try:
        _spawn(files.config, port)
        yield Broker(
            url=files.url,
            pki_dir=root / "pki",
            ca_file=files.ca,
            bridge_cert=files.bridge_cert,
            bridge_key=files.bridge_key,
            admin_cert=files.admin_cert,
            admin_key=files.admin_key,
            pidfile=files.pidfile,
            log=files.log,
            config=files.config,
        )
    finally:
        _stop(files.config)
        shutil.rmtree(root, ignore_errors=True)


def broker_restart(broker: Broker) -> None:
    """Stop a broker `broker_started` started (cleanly: it saves its state) and start it again."""
    assert broker.config is not None and broker.config in _STARTED, "only a broker this module started"
    _stop(broker.config)
    _spawn(broker.config, broker.port)


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {process.returncode}")
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError("mosquitto did not start listening")


@dataclass(frozen=True)
class Identity:
    cn: str
    cert: Path
    key: Path


def identity_files(directory: Path, cn: str, *, private_key_pem: str, certificate_pem: str) -> Identity:
    """A key and certificate (e.g. what provision_device printed) as the files TLS loads."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{cn}.pem", directory / f"{cn}.key"
    cert.write_text(certificate_pem)
    key.write_text(private_key_pem)
    key.chmod(0o600)
    return Identity(cn=cn, cert=cert, key=key)


def identity_make(broker: Broker, directory: Path, cn: str, private: Ed25519PrivateKey | None = None) -> Identity:
    """A certificate for CN `cn` from the broker's CA (not recorded) for `private` — e.g. a
    tests.factories device's signing key — or for a fresh Ed25519 key."""
    authority = pki.authority_load(broker.pki_dir)
    assert authority is not None, f"no CA in {broker.pki_dir}"
    private = private or Ed25519PrivateKey.generate()
    certificate = pki.certificate_build(authority, cn=cn, public_key=private.public_key(), days=1)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return identity_files(
        directory,
        cn,
        private_key_pem=private_pem,
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
    )


class Connection:
    """A paho MQTT 5 client over TLS with what the broker did to it, as waitable events.

    `disconnected` is set at the first drop; paho's network thread then keeps trying to reconnect
    (as a device would) until `close`, and `connected` tells whether one such attempt got in."""

    def __init__(
        self, broker: Broker, *, cert: Path | None, key: Path | None, client_id: str, clean_start: bool = True
    ):
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if cert is not None and key is not None:
            self.client.tls_set_context(tls_context(ca=str(broker.ca_file), cert=str(cert), key=str(key)))
        else:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(broker.ca_file))
            self.client.tls_set_context(context)
        self.broker, self.clean_start = broker, clean_start
        self.connect_properties: Properties | None = None  # e.g. a SessionExpiryInterval
        self.connected, self.disconnected = threading.Event(), threading.Event()
        self.connack: ReasonCode | None = None
        self.disconnect_reason: ReasonCode | None = None
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._acks: dict[int, tuple[threading.Event, list[Any]]] = {}
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        self.client.on_subscribe = self._on_ack
        self.client.on_publish = self._on_publish

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
        self.connack = reason
        if not reason.is_failure:
            self.connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
        if not self.disconnected.is_set():
            self.disconnect_reason = reason
        self.connected.clear()
        self.disconnected.set()

    def _on_ack(self, _c: Any, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        event, box = self._acks.setdefault(mid, (threading.Event(), []))
        box.extend(reasons)
        event.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        self._on_ack(_c, _u, mid, [reason], _p)

    def _wait_ack(self, mid: int) -> list[Any]:
        event, box = self._acks.setdefault(mid, (threading.Event(), []))
        assert event.wait(WAIT), f"no acknowledgement for message {mid}"
        return box

    def open(self) -> bool:
        """Connect; True once the broker accepted us, False when it refused or cut us off."""
        try:
            self.client.connect(
                self.broker.host,
                self.broker.port,
                keepalive=30,
                clean_start=self.clean_start,
                properties=self.connect_properties,
            )
        except (OSError, ssl.SSLError):
            return False
        self.client.loop_start()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.connected.is_set():
                return True
            if self.disconnected.is_set() or (self.connack is not None and self.connack.is_failure):
                return False
            time.sleep(0.01)
        return False

    def subscribe(self, topic: str, qos: int = 1) -> list[ReasonCode]:
        _result, mid = self.client.subscribe(topic, qos=qos)
        return self._wait_ack(mid)

    def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, properties: Properties | None = None
    ) -> ReasonCode:
        """Publish at QoS 1 and return the broker's PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=qos, properties=properties)
        (reason,) = self._wait_ack(info.mid)
        assert isinstance(reason, ReasonCode)
        return reason

    def close(self) -> None:
        with suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def connected(broker: Broker, identity: Identity, *, client_id: str | None = None) -> Iterator[Connection]:
    """A connection as `identity`, open for the block (the test fails if the broker refuses)."""
    connection = Connection(broker, cert=identity.cert, key=identity.key, client_id=client_id or identity.cn)
    try:
        assert connection.open(), f"the broker refused {identity.cn}"
        yield connection
    finally:
        connection.close()


def bridge_identity(broker: Broker) -> Identity:
    return Identity(cn=pki.BRIDGE_CN, cert=broker.bridge_cert, key=broker.bridge_key)
