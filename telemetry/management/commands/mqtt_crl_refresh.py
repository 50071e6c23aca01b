from __future__ import annotations

from typing import Any

from config.commands import ResultCommand
from telemetry.mqtt_broker import BrokerError, broker_revoked
from telemetry.pki import PkiError


class Command(ResultCommand):
    help = (
        "Rebuild crl.pem from the certificates on record and make the broker re-read it. The CRL is "
        "valid for 30 days: run this daily (cron), or the broker refuses every client when it expires."
    )
    errors = (PkiError, BrokerError)

    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        told = broker_revoked([])
        if not told.crl:
            raise PkiError("no deployment CA: set PERFUSE_PKI_DIR (docs/mqtt.md)")
        result = {"crl": True, "reloaded": told.reloaded}
        return result, "CRL rebuilt" + (", broker reloaded" if told.reloaded else ", no broker to reload")
