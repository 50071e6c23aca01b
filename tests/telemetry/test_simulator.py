"""The fleet simulator: its signal model, idempotent provisioning, and a short run against the ASGI app."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
import statistics
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from asgiref.sync import sync_to_async
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command

from alerts.evaluation import ConditionEvent, PatientEvaluator, RuleParams, Sample
from alerts.models import RULE_DEFAULTS
from alerts.vocabulary import Kind
from config.asgi import application
from telemetry import simulator
from telemetry.models import Annotation, Assignment, DeviceKey, Ward
from telemetry.services import device_key_revoke
from telemetry.simulator.fleet import Gateway
from tests.ingest_helpers import query


def test_signal_has_baseline_episodes_artifacts_and_dropouts():
    signal = simulator.PatientSignal(random.Random(3))
    samples = [signal.sample(float(t)) for t in range(4 * 3600)]  # four hours at 1 Hz
    present = [s for s in samples if s is not None]
    values = [v for v, _ in present]
    assert 55 <= signal.baseline <= 75
    assert all(0 <= v <= 100 for v in values)
    assert abs(statistics.median(values) - signal.baseline) < 8
    assert min(values) < 40  # desaturation episodes dip well below the baseline
    good = [q for _, q in present if q >= 0.6]
    poor = [q for _, q in present if q < 0.5]
    assert len(good) > 0.9 * len(present) and poor  # motion artifacts flag low signal quality
    gaps = len(samples) - len(present)
    assert 0 < gaps < 0.2 * len(samples)  # dropouts: stretches with no samples at all


def test_episode_shape_falls_holds_and_recovers():
    episode = simulator.Episode(start=100, duration=100, floor=30)
    depths = [episode.depth(t) for t in range(90, 211, 5)]
    assert depths[0] == 0 and depths[-1] == 0
    assert max(depths) == 1.0 and depths.index(1.0) > 2


T0 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC).timestamp()


def _run(signal: simulator.PatientSignal, *, seconds: int, hz: float) -> Iterator[tuple[float, float, Sample | None]]:
    """(time, physiological value, the sample or None) of `seconds` of signal from T0."""
    for i in range(int(seconds * hz)):
        t = T0 + i / hz
        sample = signal.sample(t)
        at = dt.datetime.fromtimestamp(t, dt.UTC)
        yield t, signal.true_value, None if sample is None else Sample(at, sample[0], sample[1], seq=i)


def _evaluated(signal: simulator.PatientSignal, *, seconds: int, hz: float) -> tuple[list[float], list[ConditionEvent]]:
    """The physiological values (one per sample time) and the conditions the shipped defaults raise."""
    evaluator = PatientEvaluator(RuleParams.from_values(RULE_DEFAULTS))
    truth: list[float] = []
    events: list[ConditionEvent] = []
    for _, value, sample in _run(signal, seconds=seconds, hz=hz):
        truth.append(value)
        if sample is not None:
            events += evaluator.feed([sample])
    return truth, events


def test_episodes_fall_at_the_pace_of_tissue_oxygen_and_only_designed_ones_raise_a_rapid_fall():
    # Tissue O2 changes over minutes: outside the rare acute-ischaemia (`rapid`) episodes, no 20 s
    # of a simulated day falls as fast as the shipped rapid-fall rule (15 points in 60 s), and
    # the only rapid-fall alarms are those of the designed episodes (docs/simulator.md).
    hz = 0.5
    step = int(20 * hz)  # samples in 20 s
    limit = 20 * float(RULE_DEFAULTS["rapid_fall_drop"]) / float(RULE_DEFAULTS["rapid_fall_window_s"])
    steepest, rapid_episodes, rapid_alarms = 0.0, 0, 0
    for patient in range(4):  # four patient-days; these seeds give a rapid episode among them
        signal = simulator.PatientSignal(random.Random(300 + patient))
        truth, events = _evaluated(signal, seconds=86400, hz=hz)
        rapid = [e for e in signal.episodes if e.kind == "rapid"]
        for i in range(step, len(truth)):
            t = T0 + i / hz
            if not any(e.start <= t <= e.end for e in rapid):
                steepest = max(steepest, truth[i - step] - truth[i])
        raised = [e for e in events if e.kind == Kind.RAPID_FALL and e.change == "raised"]
        assert all(any(r.start <= e.onset.timestamp() <= r.end for r in rapid) for e in raised)
        rapid_episodes += len(rapid)
        rapid_alarms += len(raised)
    assert 0 < steepest < limit
    assert rapid_episodes > 0 and rapid_alarms == rapid_episodes  # each designed one is caught


def test_critical_episodes_occur_at_the_documented_rate():
    kinds = {k.name: k for k in simulator.EPISODE_KINDS}
    assert kinds["critical"].per_day == 0.5  # docs/simulator.md: one every two patient-days
    assert max(kinds["critical"].floor) < float(RULE_DEFAULTS["critical_threshold"])
    episodes: list[simulator.Episode] = []
    for patient in range(8):  # a week of the demo ward
        signal = simulator.PatientSignal(random.Random(1000 + patient))
        for _ in _run(signal, seconds=7 * 86400, hz=0.1):
            pass
        assert all(a.end <= b.start for a, b in itertools.pairwise(signal.episodes))  # one at a time
        episodes += signal.episodes
    critical = [e for e in episodes if e.kind == "critical"]
    expected = kinds["critical"].per_day * 8 * 7  # 28; a Poisson count, so within three sigma
    assert abs(len(critical) - expected) < 3 * expected**0.5
    assert all(e.floor < float(RULE_DEFAULTS["critical_threshold"]) for e in critical)


def test_the_demo_showcase_raises_low_then_critical_within_minutes():
    signal = simulator.PatientSignal(
        random.Random(5), simulator.SignalConfig(showcase_after_s=simulator.DEMO_SHOWCASE_S)
    )
    _, events = _evaluated(signal, seconds=1800, hz=1)
    raised = {e.kind: e.at.timestamp() - T0 for e in events if e.change == "raised"}
    assert Kind.RAPID_FALL not in raised  # a paced fall, however deep
    assert raised[Kind.LOW] < raised[Kind.CRITICAL_LOW] < 11 * 60
    assert {e.kind for e in events if e.change == "cleared"} >= {Kind.LOW, Kind.CRITICAL_LOW}  # and it recovers


def test_only_the_first_worn_device_plays_the_showcase():
    key = Ed25519PrivateKey.generate()
    fleet = [
        simulator.FleetDevice("spare", "k0", key, None),
        simulator.FleetDevice("worn-1", "k1", key, "bed-01"),
        simulator.FleetDevice("worn-2", "k2", key, "bed-02"),
    ]
    config = simulator.SignalConfig()
    shown = simulator.device_signals(fleet, config, showcase_after_s=60.0)
    assert [s.showcase_after_s for s in shown] == [None, 60.0, None]
    assert simulator.device_signals(fleet, config, showcase_after_s=None) == [config] * 3


def _metrics_sent(config: simulator.GatewayConfig, seconds: int) -> dict[str, list[float]]:
    device = simulator.FleetDevice("worn-1", "k1", Ed25519PrivateKey.generate(), "bed-01")
    gateway = Gateway(device, hz=1.0, config=config, signal=simulator.SignalConfig(), seed=3, stats=simulator.Stats())
    start = gateway.next_sample
    for second in range(seconds):
        gateway.collect(start + second)
    values: dict[str, list[float]] = {}
    for batch in gateway.outbox:
        for item in orjson.loads(batch.body)["readings"]:
            values.setdefault(item["metric"], []).append(item["value"])
    return values


def test_a_reader_with_a_pulse_oximeter_sends_spo2_and_one_without_does_not():
    with_oximeter = _metrics_sent(simulator.GatewayConfig(spo2_every=5.0), 120)
    assert 20 <= len(with_oximeter["spo2"]) <= 25  # one every 5 s over two minutes
    assert all(90 <= v <= 100 for v in with_oximeter["spo2"])
    assert "spo2" not in _metrics_sent(simulator.GatewayConfig(), 120)


@pytest.mark.django_db(transaction=True)
def test_provisioning_is_idempotent_and_replaces_lost_or_revoked_keys(tmp_path: Path):
    keyfile = tmp_path / "keys.json"
    first = simulator.provision_fleet(ward="sim-test", count=3, keyfile=keyfile)
    assert Ward.objects.filter(code="sim-test").exists()
    assert oct(keyfile.stat().st_mode & 0o777) == "0o600"
    again = simulator.provision_fleet(ward="sim-test", count=3, keyfile=keyfile)
    assert [d.key_id for d in again] == [d.key_id for d in first]
    assert DeviceKey.objects.count() == 3 and Assignment.objects.filter(end__isnull=True).count() == 3

    device_key_revoke(key_id=first[0].key_id)
    keys = json.loads(keyfile.read_text())
    del keys[first[1].device_id]  # a key lost from the keyfile
    keyfile.write_text(json.dumps(keys))
    third = simulator.provision_fleet(ward="sim-test", count=3, keyfile=keyfile)
    assert third[0].key_id != first[0].key_id and third[1].key_id != first[1].key_id
    assert third[2].key_id == first[2].key_id
    assert [d.pseudonym for d in third] == ["sim-test-bed-01", "sim-test-bed-02", "sim-test-bed-03"]
    assert Assignment.objects.count() == 3  # re-running does not re-admit


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("ingest_clients")
async def test_fleet_run_through_the_asgi_app_sends_misbehaving_batches_that_all_land(tmp_path: Path):
    fleet = await sync_to_async(simulator.provision_fleet)(ward="sim-run", count=3, keyfile=tmp_path / "k.json")
    gateway = simulator.GatewayConfig(
        batch_seconds=0.25,
        retransmit=0.3,
        reorder=0.3,
        offline_rate=3600 * 4 * 0.1,  # one tick in ten, a gateway goes offline
        offline_seconds=(1.6, 2.0),
        firmware_rate=3600 * 4,
        calibration_rate=3600 * 4,
        temperature_every=0.5,
        battery_every=0.5,
    )
    stats = await simulator.run_fleet(
        fleet,
        url="http://localhost",
        hz=20,
        duration=3.5,
        gateway=gateway,
        progress=None,
        transport=httpx.ASGITransport(app=application),
    )
    assert stats.errors == 0 and stats.rejected == 0 and stats.throttled == 0
    assert stats.duplicates > 0 and stats.retransmits > 0 and stats.reordered > 0
    assert stats.offline_periods > 0 and stats.late_batches > 0
    assert stats.accepted + stats.duplicates == stats.readings
    assert stats.accepted == stats.generated  # every reading produced landed exactly once
    ((rows, patients, metrics),) = await query(
        "SELECT count(*), count(DISTINCT patient_id), array_agg(DISTINCT metric ORDER BY metric) FROM telemetry_reading"
    )
    assert rows == stats.accepted > 100
    assert patients == 3 and metrics == ["battery", "skin_temp", "tissue_o2"]
    kinds = await sync_to_async(lambda: set(Annotation.objects.values_list("kind", flat=True)))()
    assert kinds == {"firmware", "calibration"}


@pytest.mark.django_db(transaction=True)
def test_command_creates_the_demo_ward_and_reports_a_summary(tmp_path: Path, capsys):
    # Nothing listens on port 1: every batch fails to send and the summary says so, without a crash.
    call_command(
        "simulate_fleet",
        "--demo",
        "--devices=2",
        "--hz=2",
        "--duration=1",
        "--url=http://127.0.0.1:1",
        f"--keyfile={tmp_path / 'k.json'}",
        "--drain=0",
        "--quiet",
        "--json",
    )
    summary = json.loads(capsys.readouterr().out)
    assert Ward.objects.filter(code=simulator.DEMO_WARD).exists()
    assert summary["accepted"] == 0 and summary["errors"] > 0


@pytest.mark.django_db(transaction=True)
def test_demo_fleet_spans_two_wards_with_a_spare_device(tmp_path: Path):
    keyfile = tmp_path / "k.json"
    fleet = [
        d
        for ward, count, spares in simulator.DEMO_FLEET
        for d in simulator.provision_fleet(ward=ward, count=count, keyfile=keyfile, spares=spares)
    ]
    assert {d.device_id.rsplit("-", 1)[0] for d in fleet} >= {"lumee-icu-demo", "lumee-ward-b", "lumee-icu-demo-spare"}
    spares = [d for d in fleet if d.pseudonym is None]
    assert len(spares) == 1
    assert not Assignment.objects.filter(device__device_id=spares[0].device_id).exists()
    assert set(Assignment.objects.values_list("patient__ward__code", flat=True)) == {"icu-demo", "ward-b"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("ingest_clients")
async def test_fleet_honours_429_retry_after_and_drops_nothing(tmp_path: Path, settings):
    settings.PERFUSE_RATE_DEVICE_BURST = 40
    settings.PERFUSE_RATE_DEVICE_PER_SECOND = 40
    fleet = await sync_to_async(simulator.provision_fleet)(ward="sim-429", count=1, keyfile=tmp_path / "k.json")
    quiet = simulator.GatewayConfig(
        batch_seconds=0.25, retransmit=0, reorder=0, offline_rate=0, firmware_rate=0, calibration_rate=0
    )
    stats = await simulator.run_fleet(
        fleet,
        url="http://localhost",
        hz=80,  # twice what the device bucket refills
        duration=1.5,
        gateway=quiet,
        progress=None,
        transport=httpx.ASGITransport(app=application),
    )
    assert stats.throttled > 0 and stats.errors == 0
    ((rows,),) = await query("SELECT count(*) FROM telemetry_reading")
    # Every reading the gateway produced was eventually accepted, after waiting as told.
    assert rows == stats.accepted == stats.generated > 50 and stats.duplicates == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("ingest_clients")
async def test_fleet_through_gateways_lands_every_reading_once(tmp_path: Path):
    keyfile = tmp_path / "k.json"
    fleet = [
        *await sync_to_async(simulator.provision_fleet)(ward="sim-gw-a", count=4, keyfile=keyfile),
        *await sync_to_async(simulator.provision_fleet)(ward="sim-gw-b", count=2, keyfile=keyfile),
    ]
    hubs = await sync_to_async(simulator.provision_hubs)(fleet, count=3, keyfile=keyfile)
    assert sorted(h.gateway_id for h in hubs) == ["hub-sim-gw-a-01", "hub-sim-gw-a-02", "hub-sim-gw-b-01"]
    again = await sync_to_async(simulator.provision_hubs)(fleet, count=3, keyfile=keyfile)
    assert [h.key_id for h in again] == [h.key_id for h in hubs]  # idempotent, keys kept
    gateway = simulator.GatewayConfig(
        batch_seconds=0.25,
        retransmit=0.3,
        offline_rate=3600 * 4 * 0.1,
        offline_seconds=(1.6, 2.0),
        firmware_rate=3600 * 4,
        calibration_rate=3600 * 4,
        temperature_every=0.5,
        battery_every=0.5,
    )
    stats = await simulator.run_fleet(
        fleet,
        url="http://localhost",
        hz=20,
        duration=3.5,
        gateway=gateway,
        progress=None,
        transport=httpx.ASGITransport(app=application),
        hubs=hubs,
    )
    assert stats.errors == 0 and stats.rejected == 0 and stats.throttled == 0
    assert stats.retransmits > 0 and stats.duplicates > 0 and stats.offline_periods > 0 and stats.late_batches > 0
    assert 0 < stats.gateway_requests < stats.batches  # many devices' batches per outer request
    assert stats.accepted + stats.duplicates == stats.readings
    assert stats.accepted == stats.generated  # every reading produced landed exactly once
    ((rows, patients),) = await query("SELECT count(*), count(DISTINCT patient_id) FROM telemetry_reading")
    assert rows == stats.accepted > 100 and patients == 6
    ((logged, transactions),) = await query("SELECT count(*), count(DISTINCT txid) FROM telemetry_ingest_log")
    assert logged > transactions  # devices of one gateway request share its commit


@pytest.mark.django_db(transaction=True)
def test_command_spreads_the_fleet_over_gateways(tmp_path: Path, capsys):
    call_command(
        "simulate_fleet",
        "--devices=3",
        "--gateways=2",
        "--ward=sim-gw-cmd",
        "--hz=2",
        "--duration=1",
        "--url=http://127.0.0.1:1",
        f"--keyfile={tmp_path / 'k.json'}",
        "--drain=0",
        "--json",
    )
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "3 devices at 2.0 Hz through 2 gateways" in captured.err
    assert summary["gateway_requests"] > 0 and summary["errors"] > 0 and summary["accepted"] == 0
