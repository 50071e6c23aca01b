"""OpenAPI description of `POST /api/v1/ingest/readings` (contract section 1)."""

from __future__ import annotations

from typing import Any

from telemetry.schemas import REJECTION_CODES
from telemetry.units import METRICS


def _error(description: str, codes: list[str], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description + " Codes: " + ", ".join(f"`{c}`" for c in codes) + ".",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/IngestError"}}},
    }
    if headers:
        answer["headers"] = headers
    return answer


_RATE_HEADERS = {
    name: {"schema": {"type": "integer"}, "description": text}
    for name, text in {
        "X-RateLimit-Limit": "Bucket size (readings) of the tighter of the device and site buckets.",
        "X-RateLimit-Remaining": "Readings left in that bucket.",
        "X-RateLimit-Reset": "Seconds until that bucket is full again.",
    }.items()
}


def ingest_openapi() -> tuple[dict[str, Any], dict[str, Any]]:
    components = {
        "ReadingIn": {
            "type": "object",
            "additionalProperties": False,
            "required": ["seq", "sample_time", "metric", "value", "unit"],
            "properties": {
                "seq": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                "sample_time": {"type": "string", "format": "date-time", "description": "RFC 3339 with offset"},
                "metric": {"type": "string", "enum": sorted(METRICS)},
                "value": {"type": "number"},
                "unit": {
                    "type": "string",
                    "description": "; ".join(f"{name}: {', '.join(m.converters)}" for name, m in METRICS.items()),
                },
                "signal_quality": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True},
                "calibration_id": {"type": "string", "maxLength": 64, "nullable": True},
            },
        },
        "ReadingBatch": {
            "type": "object",
            "additionalProperties": False,
            "required": ["schema", "device_id", "readings"],
            "properties": {
                "schema": {"type": "string", "enum": ["perfuse.readings/1"]},
                "batch_id": {"type": "string", "maxLength": 64, "nullable": True},
                "device_id": {"type": "string"},
                "firmware": {"type": "string", "maxLength": 64, "nullable": True},
                "readings": {"type": "array", "maxItems": 5000, "items": {"$ref": "#/components/schemas/ReadingIn"}},
            },
        },
        "IngestResult": {
            "type": "object",
            "required": ["batch_id", "accepted", "duplicates", "rejected", "ingest_time"],
            "properties": {
                "batch_id": {"type": "string", "nullable": True},
                "accepted": {"type": "integer", "description": "Readings committed by this request"},
                "duplicates": {"type": "integer", "description": "Valid readings already stored"},
                "rejected": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["index", "seq", "code", "detail"],
                        "properties": {
                            "index": {"type": "integer"},
                            "seq": {"type": "integer", "nullable": True},
                            "code": {
                                "type": "string",
                                "enum": list(REJECTION_CODES),
                            },
                            "detail": {"type": "string"},
                        },
                    },
                },
                "ingest_time": {"type": "string", "format": "date-time"},
            },
        },
        "IngestError": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "detail"],
                    "properties": {"code": {"type": "string"}, "detail": {"type": "string"}},
                }
            },
        },
    }
    header = {"in": "header", "required": True}
    operation = {
        "operationId": "ingest_readings",
        "tags": ["ingest"],
        "summary": "Push a signed batch of readings from one device",
        "security": [],
        "parameters": [
            {
                **header,
                "name": "X-Perfuse-Key",
                "schema": {"type": "string"},
                "description": "Key id issued at provisioning",
            },
            {
                **header,
                "name": "X-Perfuse-Timestamp",
                "schema": {"type": "integer"},
                "description": "Unix seconds; rejected when more than 300 s from server time",
            },
            {
                **header,
                "name": "X-Perfuse-Signature",
                "schema": {"type": "string"},
                "description": 'Base64 (standard, padded) Ed25519 signature of TIMESTAMP + "\\n" + BODY',
            },
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReadingBatch"}}},
        },
        "responses": {
            "200": {
                "description": "Batch processed; counts reflect what was committed.",
                "headers": _RATE_HEADERS,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/IngestResult"}}},
            },
            "400": _error(
                "Body is not JSON, wrong schema, or readings missing / not a list.",
                ["malformed_json", "wrong_schema", "invalid_batch"],
            ),
            "401": _error(
                "Missing, malformed, unknown, revoked or wrongly signed key; stale timestamp.",
                [
                    "missing_credentials",
                    "malformed_credentials",
                    "malformed_signature",
                    "stale_timestamp",
                    "unknown_key",
                    "revoked_key",
                    "bad_signature",
                ],
            ),
            "403": _error("device_id does not match the key.", ["device_mismatch"]),
            "405": _error("Method other than POST.", ["method_not_allowed"]),
            "413": _error("Body above 1 MiB or more than 5,000 readings.", ["body_too_large", "too_many_readings"]),
            "415": _error("Content-Type is not application/json.", ["unsupported_media_type"]),
            "503": _error(
                "Storage unavailable or saturated; nothing was committed, send the batch again.",
                ["storage_unavailable"],
                {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds"}},
            ),
            "429": _error(
                "Device or site rate limit exceeded.",
                ["rate_limited"],
                {**_RATE_HEADERS, "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds"}},
            ),
        },
    }
    return {"/api/v1/ingest/readings": {"post": operation}}, components
