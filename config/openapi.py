"""drf-spectacular hook describing the operational endpoints (plain Django views, not DRF, so
the generator does not see them): /healthz, /readyz and /metrics (docs/operations.md)."""

from __future__ import annotations

from typing import Any

_CHECK_STATE = {
    "type": "string",
    "description": '"ok", or why not: "unreachable", "telemetry_reading missing", "unapplied migrations", '
    '"not checked" (migrations, when the database check failed).',
}
_READINESS = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]},
        "checks": {
            "type": "object",
            "required": ["database", "migrations", "redis"],
            "properties": {name: _CHECK_STATE for name in ("database", "migrations", "redis")},
        },
        "error": {
            "type": "object",
            "description": "Only with 503: code `not_ready`, detail naming the failing checks.",
            "properties": {"code": {"type": "string"}, "detail": {"type": "string"}},
        },
    },
}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "detail"],
            "properties": {"code": {"type": "string"}, "detail": {"type": "string"}},
        }
    },
}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def ops_paths() -> dict[str, Any]:
    common = {"tags": ["operations"], "security": []}
    return {
        "/healthz": {
            "get": {
                **common,
                "operationId": "healthz",
                "summary": "Liveness: the process answers. Touches neither PostgreSQL nor Redis.",
                "responses": {
                    "200": _json(
                        "Alive.",
                        {"type": "object", "properties": {"status": {"type": "string", "enum": ["ok"]}}},
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                **common,
                "operationId": "readyz",
                "summary": "Readiness: PostgreSQL reachable and migrated, Redis reachable.",
                "responses": {
                    "200": _json("Ready to serve.", _READINESS),
                    "503": _json("Not ready; the failing checks are named.", _READINESS),
                },
            }
        },
        "/metrics": {
            "get": {
                **common,
                "operationId": "metrics",
                "summary": "Prometheus metrics (text format 0.0.4), aggregate only. Served to the addresses "
                "in PERFUSE_METRICS_ALLOWED_NETS, without authentication.",
                "responses": {
                    "200": {
                        "description": "The exposition page of the process that answered.",
                        "content": {"text/plain; version=0.0.4; charset=utf-8": {"schema": {"type": "string"}}},
                    },
                    "403": _json("Client address outside the allowed networks (`metrics_forbidden`).", _ERROR),
                    "405": _json("Not GET or HEAD (`method_not_allowed`).", _ERROR),
                },
            }
        },
    }


def add_ops_endpoints(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    result.setdefault("paths", {}).update(ops_paths())
    return result
