"""Deploy check of the HL7 listener: ADT carries names, MRNs and birth dates, so off loopback it
must be TLS (contract section 4: "TLS in production")."""

from __future__ import annotations

import ipaddress
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or 0.0.0.0-style wildcard: reachable from elsewhere


def hl7_tls_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    host = settings.PERFUSE_HL7_LISTEN.rpartition(":")[0].strip("[]")
    if _loopback(host) or (settings.PERFUSE_HL7_TLS_CERT and settings.PERFUSE_HL7_TLS_KEY):
        return []
    return [
        Error(
            f"PERFUSE_HL7_LISTEN={settings.PERFUSE_HL7_LISTEN} is off loopback without TLS: "
            "ADT messages (names, MRNs, birth dates) would travel in clear",
            hint="Set PERFUSE_HL7_TLS_CERT and PERFUSE_HL7_TLS_KEY "
            "(and PERFUSE_HL7_TLS_CLIENT_CA to require client certificates).",
            id="telemetry.E101",
        )
    ]
