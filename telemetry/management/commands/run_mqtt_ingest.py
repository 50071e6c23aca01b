from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from telemetry import db
from telemetry.mqtt_bridge import Bridge, BrokerConfig, session_discard


class Command(BaseCommand):
    help = (
        "Run the MQTT bridge: take device batches from the broker's shared subscription, store them "
        "by group commit and acknowledge each after its commit, until SIGTERM."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--client-id", default=None, help="MQTT client id (default MQTT_CLIENT_ID); one per bridge")
        parser.add_argument(
            "--window-ms", type=float, default=None, help="group window (PERFUSE_INGEST_GROUP_WINDOW_MS)"
        )
        parser.add_argument("--max-rows", type=int, default=None, help="group row cap (PERFUSE_INGEST_GROUP_MAX_ROWS)")
        parser.add_argument(
            "--discard-session",
            action="store_true",
            help="end this bridge's session at the broker (taking it out of the shared subscription) and exit",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = BrokerConfig.from_settings(client_id=options["client_id"])
            if options["discard_session"]:
                if not session_discard(config):
                    raise CommandError(f"the broker at {config.host}:{config.port} did not answer")
                self.stderr.write(f"MQTT bridge {config.client_id}: session discarded")
                return
            bridge = Bridge(config, window_ms=options["window_ms"], max_rows=options["max_rows"])
        except (ValueError, OSError) as exc:
            raise CommandError(f"MQTT bridge: {exc}") from exc
        self.stderr.write(f"MQTT bridge {config.client_id} -> {config.host}:{config.port}")
        asyncio.run(self._run(bridge))
        shed = bridge.gateway_shed.shed + bridge.device_shed.shed
        self.stderr.write(
            f"MQTT bridge stopped: {bridge.received} messages received, {bridge.acked} acknowledged "
            f"({shed} of them shed as overloaded, 503); device messages stored in {bridge.writer.groups} "
            f"groups, {bridge.client.writes} writes to the broker"
        )

    async def _run(self, bridge: Bridge) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # What the bridge has taken is committed and acknowledged; what it has not is left to
            # the broker, which delivers it again.
            loop.add_signal_handler(sig, stop.set)
        try:
            await bridge.run(stop)
        finally:
            await db.close_clients()
