"""On-call roster routes for the authorization matrix (tests/authz_registry.py)."""

from __future__ import annotations

from tests.authz_registry import Route

ROUTES: list[Route] = [
    Route("on-call roster page", "page", "GET", "/alarms/oncall/", frozenset({"admin"})),
]
