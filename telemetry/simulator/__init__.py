"""The demo and test fleet simulator (`manage.py simulate_fleet`, tests, benchmarks): not part of
the production telemetry path, which never imports it. signals.py models a patient's tissue-O2
signal (its sources and alarm rate: docs/simulator.md); fleet.py provisions devices through the
registry services and plays their gateways against the real ingest API, each device on its own
link or, with `--gateways`, behind edge gateways that forward its signed batches."""

from telemetry.simulator.fleet import (
    DEMO_FLEET,
    DEMO_SHOWCASE_S,
    DEMO_WARD,
    FleetDevice,
    FleetGateway,
    GatewayConfig,
    Stats,
    device_ids,
    device_signals,
    identities,
    provision_fleet,
    provision_gateways,
    provision_hubs,
    run_fleet,
)
from telemetry.simulator.signals import EPISODE_KINDS, Episode, EpisodeKind, PatientSignal, SignalConfig
from telemetry.simulator.transport import (
    GATEWAY_INGEST_PATH,
    INGEST_PATH,
    GatewayTransport,
    HttpTransport,
    MqttTransport,
    Reply,
    Transport,
)

__all__ = [
    "DEMO_FLEET",
    "DEMO_SHOWCASE_S",
    "DEMO_WARD",
    "EPISODE_KINDS",
    "GATEWAY_INGEST_PATH",
    "INGEST_PATH",
    "Episode",
    "EpisodeKind",
    "FleetDevice",
    "FleetGateway",
    "GatewayConfig",
    "GatewayTransport",
    "HttpTransport",
    "MqttTransport",
    "PatientSignal",
    "Reply",
    "SignalConfig",
    "Stats",
    "Transport",
    "device_ids",
    "device_signals",
    "identities",
    "provision_fleet",
    "provision_gateways",
    "provision_hubs",
    "run_fleet",
]
