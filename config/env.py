"""Typed helpers that read settings from the environment and fail loudly on nonsense."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured


def envstr(name: str, default: str) -> str:
    return os.environ.get(name, default)


def envbool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean, got {raw!r}")


def _envnumber(name: str, default: float, convert: Callable[[str], float], kind: str, minimum: float | None) -> Any:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = convert(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be {kind}, got {raw!r}") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def envint(name: str, default: int, *, minimum: int | None = None) -> int:
    return int(_envnumber(name, default, int, "an integer", minimum))


def envfloat(name: str, default: float, *, minimum: float | None = None) -> float:
    return float(_envnumber(name, default, float, "a number", minimum))


def envsecret(name: str, default: str = "") -> str:
    """A secret from NAME, or from the file NAME_FILE names (a mounted secret: the value stays out
    of the process environment). Setting both is a mistake, refused."""
    path = os.environ.get(f"{name}_FILE")
    if path is None:
        return os.environ.get(name, default)
    if name in os.environ:
        raise ImproperlyConfigured(f"set {name} or {name}_FILE, not both")
    try:
        with open(path, encoding="utf-8") as secret:
            return secret.read().strip()
    except OSError as exc:
        raise ImproperlyConfigured(f"{name}_FILE: cannot read {path!r}: {exc}") from exc


def envlist(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def database_from_url(url: str, *, connect_timeout: int = 5) -> dict[str, Any]:
    """A Django DATABASES entry from postgres://user:pass@host:port/name?libpq-params.

    Parsed by dj-database-url, so every libpq parameter in the query string survives into
    OPTIONS (`sslmode=verify-full`, `sslrootcert`, `target_session_attrs`, `host=/socket/dir`…);
    dropping them silently would turn a TLS requirement into a plain connection. The ingest
    pool takes the same parameters (telemetry/db.py reads Django's connection params).
    `connect_timeout` applies unless the URL sets its own: without one libpq waits on an
    unreachable host as long as TCP does, and /readyz must answer.
    """
    scheme = url.split("://", 1)[0]
    if scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured(f"DATABASE_URL must be postgres://…, got {scheme!r}")
    try:
        entry: dict[str, Any] = dict(dj_database_url.parse(url))
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL cannot be parsed: {exc}") from exc
    entry["NAME"] = entry.get("NAME") or "perfuse"
    entry["PORT"] = str(entry.get("PORT") or "")
    entry["OPTIONS"] = {"connect_timeout": connect_timeout, **(entry.get("OPTIONS") or {})}
    # Connection lifetime is the settings' business, not the URL's.
    for key in ("CONN_MAX_AGE", "CONN_HEALTH_CHECKS", "DISABLE_SERVER_SIDE_CURSORS"):
        entry.pop(key, None)
    return entry
