"""Deploy checks: the HL7 listener (ADT carries names, MRNs and birth dates, so off loopback it
must be TLS: contract section 4, "TLS in production"), and the readings retention against the
ingest horizon (docs/retention.md)."""

from __future__ import annotations

import ipaddress
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning


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


def retention_horizon_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Readings may arrive up to PERFUSE_INGEST_MAX_AGE_DAYS late: a day dropped before that
    horizon can receive rows its archive does not hold (the day then stays, unverified)."""
    retention, horizon = settings.PERFUSE_RETENTION_READINGS_DAYS, settings.PERFUSE_INGEST_MAX_AGE_DAYS
    if retention > horizon:
        return []
    return [
        Warning(
            f"PERFUSE_RETENTION_READINGS_DAYS={retention} is not above PERFUSE_INGEST_MAX_AGE_DAYS={horizon}: "
            "late readings can reach a day after retention dropped it",
            hint="Keep hot readings longer than ingest accepts late data (docs/retention.md).",
            id="telemetry.W102",
        )
    ]


TLS_SSLMODES = frozenset({"require", "verify-ca", "verify-full"})


def replica_in_clear(entry: dict[str, Any]) -> str | None:
    """The host of a DATABASES entry that may talk to it in clear off loopback, else None."""
    host = str(entry.get("HOST") or "")
    sslmode = str((entry.get("OPTIONS") or {}).get("sslmode", ""))
    if not host or host.startswith("/") or _loopback(host) or sslmode in TLS_SSLMODES:
        return None
    return host


def replica_tls_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """The replica serves the same patient data as the primary: off loopback its connection must
    insist on TLS (`prefer`, libpq's default, falls back to clear text without a word)."""
    entry = settings.DATABASES.get("replica")
    host = replica_in_clear(entry) if entry is not None else None
    if host is None:
        return []
    return [
        Warning(
            f"DATABASE_REPLICA_URL names {host} without sslmode=require/verify-ca/verify-full: "
            "history and exports would cross the network in clear",
            hint="Add ?sslmode=verify-full&sslrootcert=… to DATABASE_REPLICA_URL (docs/replica.md).",
            id="telemetry.W103",
        )
    ]
