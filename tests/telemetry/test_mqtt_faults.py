"""Faults with real processes (issue 10.6): a device fleet streams over MQTT while the bridge, the
broker and PostgreSQL are each killed with SIGKILL and started again. Devices send again what was
not acknowledged; afterwards every reading produced was acknowledged, what was acknowledged is
exactly what is stored, and nothing is stored twice.

Everything runs as its own process: PostgreSQL (a private cluster, tests/process_support.py),
Mosquitto (a private broker with its own CA, tests/mqtt_support.py), `manage.py run_mqtt_ingest`
and `manage.py simulate_fleet --transport mqtt`. The test waits for the stream to make progress
between faults rather than for fixed times, so a slow machine only makes it take longer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from tests import mqtt_support
from tests.process_support import WAIT, Cluster, Managed, cluster_started, manage

STALL = 120.0  # seconds the stream may take to resume after a fault (an upper bound, not a target)


@pytest.fixture
def broker() -> Iterator[mqtt_support.Broker]:
    """A broker of this test's own: it is going to be killed."""
    with mqtt_support.broker_started() as started:
        yield started


def _stored(cluster: Cluster) -> int:
    try:
        ((count,),) = cluster.query("SELECT count(*) FROM telemetry_reading")
    except Exception:
        return -1
    return int(count)  # type: ignore[call-overload]


def _progress(cluster: Cluster, *, beyond: int, what: str) -> int:
    """Wait until more than `beyond` readings are stored; the new count."""
    deadline = time.monotonic() + STALL
    while (count := _stored(cluster)) <= beyond:
        assert time.monotonic() < deadline, f"no readings stored since {what}"
        time.sleep(0.25)
    return count


def _broker_kill(broker: mqtt_support.Broker) -> None:
    pid = int(broker.pidfile.read_text().strip())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower():
        assert time.monotonic() < deadline, "mosquitto survived SIGKILL"
        time.sleep(0.05)


def _broker_start(broker: mqtt_support.Broker) -> subprocess.Popen[bytes]:
    assert broker.config is not None
    process = subprocess.Popen(["mosquitto", "-c", str(broker.config)], stderr=subprocess.DEVNULL)
    mqtt_support._wait_listening(broker.port, process)
    return process


def test_sigkill_of_bridge_broker_and_postgresql_loses_no_acknowledged_reading_and_stores_none_twice(
    broker: mqtt_support.Broker, tmp_path: Path
) -> None:
    restarted: list[subprocess.Popen[bytes]] = []
    with cluster_started() as cluster:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.dev",
            "DATABASE_URL": cluster.url,
            "REDIS_URL": settings.REDIS_URL,
            "PERFUSE_AUDIT_ANCHOR": (tmp_path / "anchor.log").as_uri(),
            "MQTT_CLIENT_ID": "perfuse-bridge-faults",
            **broker.settings(),
        }
        manage(["migrate", "--noinput"], env=env)
        bridge = Managed(["run_mqtt_ingest"], env=env, log=tmp_path / "bridge.log").start()
        fleet = Managed(
            [
                "simulate_fleet",
                "--transport=mqtt",
                "--devices=10",
                "--hz=2",
                "--ward=faults",
                f"--keyfile={tmp_path / 'keys.json'}",
                "--ack-timeout=3",
                "--drain=90",
                "--quiet",
                "--json",
            ],
            env=env,
            log=tmp_path / "fleet.log",
        ).start()
        try:
            count = _progress(cluster, beyond=0, what="the start")

            bridge.kill()  # SIGKILL: what it had not PUBACKed, the broker delivers again
            time.sleep(2)
            bridge = Managed(["run_mqtt_ingest"], env=env, log=tmp_path / "bridge.log").start()
            count = _progress(cluster, beyond=count, what="the bridge was killed")

            _broker_kill(broker)  # what it held in memory is gone: the devices send it again
            time.sleep(2)
            restarted.append(_broker_start(broker))
            count = _progress(cluster, beyond=count, what="the broker was killed")

            cluster.kill()  # the transaction in flight is lost, nothing committed is
            time.sleep(2)
            cluster.start()
            count = _progress(cluster, beyond=count, what="PostgreSQL was killed")
            time.sleep(3)

            assert fleet.process is not None
            fleet.process.send_signal(signal.SIGTERM)  # stop producing; drain what is unacknowledged
            summary = json.loads(fleet.output(timeout=180).strip().splitlines()[-1])
        finally:
            fleet.terminate()
            bridge.terminate()
            for process in restarted:
                process.terminate()
                process.wait(timeout=WAIT)

        ((stored, distinct, logged),) = cluster.query(
            "SELECT count(*), count(DISTINCT (device_id, metric, seq)), "
            "(SELECT coalesce(sum(accepted), 0) FROM telemetry_ingest_log) FROM telemetry_reading"
        )
    assert summary["generated"] > 100 and summary["rejected"] == 0
    # Every reading produced was acknowledged in the end, and what was acknowledged is stored,
    # once: retransmits (a killed bridge, a killed broker, 503s while PostgreSQL was down) were
    # counted as duplicates, never stored again.
    assert summary["acknowledged_readings"] == summary["generated"]
    assert stored == summary["acknowledged_readings"]
    assert distinct == stored
    assert logged == stored  # the engine's work queue saw each committed reading once
    assert summary["duplicates"] > 0  # the faults did make devices resend
