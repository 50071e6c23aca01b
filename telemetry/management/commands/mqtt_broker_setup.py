from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandParser

from config.commands import ResultCommand
from telemetry.mqtt_broker import broker_setup
from telemetry.pki import PkiError, authority_load, crl_refresh


class Command(ResultCommand):
    help = (
        "Write the project Mosquitto's configuration into STATE, creating the deployment CA "
        "(PERFUSE_PKI_DIR or --pki-dir), the broker's certificate and the service identities once."
    )
    errors = (PkiError, OSError, KeyError)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("state", type=Path, help="the broker's state directory (config, persistence, log)")
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--pki-dir", type=Path, help="default: PERFUSE_PKI_DIR")
        parser.add_argument("--run-as", help="the user Mosquitto drops to when started as root")
        parser.add_argument(
            "--refresh-crl",
            action="store_true",
            help="rebuild crl.pem from the certificates on record (needs the database)",
        )

    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        pki_dir = options["pki_dir"] or (Path(settings.PERFUSE_PKI_DIR) if settings.PERFUSE_PKI_DIR else None)
        if pki_dir is None:
            raise PkiError("no PKI directory: give --pki-dir or set PERFUSE_PKI_DIR")
        pki_dir = pki_dir.resolve()
        files = broker_setup(
            state=options["state"].resolve(), pki_dir=pki_dir, port=options["port"], run_as=options["run_as"]
        )
        if options["refresh_crl"]:
            crl_refresh(authority_load(pki_dir))
        env = {
            "PERFUSE_PKI_DIR": str(pki_dir),
            "MQTT_URL": files.url,
            "MQTT_CA_FILE": str(files.ca),
            "MQTT_CERT_FILE": str(files.bridge_cert),
            "MQTT_KEY_FILE": str(files.bridge_key),
            "PERFUSE_MQTT_PIDFILE": str(files.pidfile),
            "PERFUSE_MQTT_ADMIN_CERT_FILE": str(files.admin_cert),
            "PERFUSE_MQTT_ADMIN_KEY_FILE": str(files.admin_key),
        }
        result = {"config": str(files.config), "log": str(files.log), "env": env}
        text = f"mosquitto -c {files.config}\n" + "\n".join(f"{name}={value}" for name, value in env.items())
        return result, text
