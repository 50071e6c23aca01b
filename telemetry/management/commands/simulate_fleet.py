"""`manage.py simulate_fleet`: a realistic device fleet sending signed batches over the real HTTP API
or (`--transport mqtt`) the MQTT broker, each device itself or (`--gateways G`) through G edge
gateways (the gateway endpoint, or each gateway's own MQTT connection and topic)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from telemetry import simulator


class Command(BaseCommand):
    help = "Simulate N tissue-O2 devices at F Hz sending signed batches to the ingest API."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--devices", type=int, default=None, help="number of devices (default 10; --demo: the demo fleet)"
        )
        parser.add_argument("--hz", type=float, default=1.0, help="tissue-O2 samples per second per device")
        parser.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the Perfuse server")
        parser.add_argument("--ward", default=None, help="ward code (created if missing; default 'sim')")
        parser.add_argument(
            "--demo", action="store_true", help=f"the demo fleet of `make run` (ward {simulator.DEMO_WARD})"
        )
        parser.add_argument("--quiet", action="store_true", help="no progress line")
        parser.add_argument("--keyfile", type=Path, default=None, help="JSON file keeping the devices' private keys")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument(
            "--drain", type=float, default=30.0, help="seconds allowed at the end to flush batches gateways still hold"
        )
        parser.add_argument("--json", action="store_true", help="print the summary as JSON")
        parser.add_argument(
            "--gateways",
            type=int,
            default=0,
            help="spread the devices over G edge gateways of their wards (default 0: each device sends itself)",
        )
        parser.add_argument(
            "--transport",
            choices=["http", "mqtt"],
            default="http",
            help="HTTP requests to --url, or MQTT 5 over mutual TLS to --mqtt-url (a connection per device or gateway)",
        )
        parser.add_argument("--mqtt-url", default=None, help="the broker (default MQTT_URL)")
        parser.add_argument(
            "--ack-timeout", type=float, default=10.0, help="MQTT: seconds without an ack before a batch is sent again"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
        if (options["devices"] is not None and options["devices"] < 1) or options["hz"] <= 0:
            raise CommandError("--devices and --hz must be positive")
        if options["gateways"] < 0:
            raise CommandError("--gateways must not be negative")
        if options["demo"] and options["ward"] is None and options["devices"] is None:
            plan = simulator.DEMO_FLEET
        else:
            plan = [
                (options["ward"] or (simulator.DEMO_WARD if options["demo"] else "sim"), options["devices"] or 10, 0)
            ]
        # One keyfile for every fleet: keys are kept per device id.
        keyfile = options["keyfile"] or Path(settings.BASE_DIR) / ".data" / "simulator-keys.json"
        fleet: list[simulator.FleetDevice] = []
        for ward, count, spares in plan:
            fleet += simulator.provision_fleet(ward=ward, count=count, keyfile=keyfile, spares=spares)
            if not options["quiet"]:
                self.stderr.write(f"ward {ward}: {count} devices on patients, {spares} spare (keys in {keyfile})")
        hubs = (
            simulator.provision_hubs(fleet, count=options["gateways"], keyfile=keyfile) if options["gateways"] else []
        )
        target = options["url"] if options["transport"] == "http" else options["mqtt_url"] or settings.MQTT_URL
        if options["transport"] == "mqtt":
            options["sender"] = self._mqtt(fleet, hubs, url=target, ack_timeout=options["ack_timeout"])
        if not options["quiet"]:
            via = f" through {len(hubs)} gateways" if hubs else ""
            self.stderr.write(f"{len(fleet)} devices at {options['hz']} Hz{via} -> {target}")
        stats = asyncio.run(self._run(fleet, hubs, options))
        summary = stats.summary()
        if options["json"]:
            self.stdout.write(json.dumps(summary))
        else:
            labels = {"batches": "sent batches", "readings": "sent readings", "throttled": "429s"}
            self.stdout.write("summary: " + "  ".join(f"{labels.get(k, k)} {v}" for k, v in summary.items()))

    def _mqtt(
        self,
        fleet: list[simulator.FleetDevice],
        hubs: list[simulator.FleetGateway],
        *,
        url: str,
        ack_timeout: float,
    ) -> simulator.MqttTransport:
        missing = [d.device_id for d in fleet if d.certificate_pem is None]
        missing += [h.gateway_id for h in hubs if h.certificate_pem is None]
        if missing:
            raise CommandError(
                f"no client certificate for {len(missing)} devices or gateways (e.g. {missing[0]}): MQTT needs "
                "the deployment CA (PERFUSE_PKI_DIR), which issues them when they are provisioned"
            )
        if not settings.MQTT_CA_FILE:
            raise CommandError("MQTT_CA_FILE is not set: the broker's CA is needed to connect")
        try:
            return simulator.MqttTransport(
                url,
                ca_file=settings.MQTT_CA_FILE,
                identities=simulator.identities(fleet, hubs),
                ack_timeout=ack_timeout,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

    async def _run(
        self, fleet: list[simulator.FleetDevice], hubs: list[simulator.FleetGateway], options: dict[str, Any]
    ) -> simulator.Stats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)  # stop cleanly: flush what gateways hold, then summarise
        return await simulator.run_fleet(
            fleet,
            url=options["url"],
            hz=options["hz"],
            duration=options["duration"],
            seed=options["seed"],
            progress=None if options["quiet"] else sys.stderr,
            stop=stop,
            drain_seconds=options["drain"],
            # The demo scripts one critically low desaturation so that `make run` is heard early.
            showcase_after_s=simulator.DEMO_SHOWCASE_S if options["demo"] else None,
            # The demo's wearable readers carry a pulse oximeter, so the chart's SpO2 panel has data.
            gateway=simulator.GatewayConfig(spo2_every=5.0) if options["demo"] else None,
            hubs=hubs or None,
            sender=options.get("sender"),
        )
