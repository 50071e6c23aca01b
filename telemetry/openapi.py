"""OpenAPI of `POST /api/v1/ingest/readings` (contract section 1) and `POST /api/v1/ingest/gateway`
(section 1c), a drf-spectacular hook: the endpoints are served by the ingest pipeline, not by DRF,
so the generator does not see them.

The bodies are generated from the msgspec structs the pipeline decodes and answers with
(telemetry/schemas.py), so the schema cannot drift from the validator; the error codes of each
status come from the pipeline's one table of them (`ERROR_STATUS`). msgspec writes JSON Schema
2020-12, which spells an optional value `anyOf: [X, {"type": "null"}]`; the schema served here is
OpenAPI 3.0, so that becomes `X` with `nullable: true`. Structs that are not published under a
name of their own (a rejection item) are inlined where they are used.
"""

from __future__ import annotations

from typing import Any

import msgspec
from django.conf import settings

from telemetry.ingest.answers import ERROR_STATUS, GATEWAY_CODES
from telemetry.schemas import (
    ErrorBody,
    GatewayItemResult,
    GatewayResult,
    IngestResult,
    InnerBatchIn,
    ReadingIn,
    TypedBatchIn,
    TypedGatewayBatchIn,
)

PATH = "/api/v1/ingest/readings"
GATEWAY_PATH = "/api/v1/ingest/gateway"
_REF = "#/components/schemas/"
# Published component name -> the struct it is generated from.
_COMPONENTS: dict[str, type[msgspec.Struct]] = {
    "ReadingBatch": TypedBatchIn,
    "ReadingIn": ReadingIn,
    "IngestResult": IngestResult,
    "IngestError": ErrorBody,
    "GatewayBatch": TypedGatewayBatchIn,
    "GatewayInnerBatch": InnerBatchIn,
    "GatewayResult": GatewayResult,
    "GatewayItemResult": GatewayItemResult,
}
_DESCRIPTIONS = {
    "ReadingBatch": "One device's signed batch of readings.",
    "ReadingIn": "One reading; each is accepted or rejected on its own.",
    "GatewayBatch": "An edge gateway's signed request carrying its devices' signed batches.",
}


def _openapi_30(node: Any, generated: dict[str, Any], names: dict[str, str]) -> Any:
    """Rewrite msgspec's JSON Schema for OpenAPI 3.0: published refs renamed, others inlined,
    `anyOf` with null as `nullable`, string enums typed."""
    if isinstance(node, list):
        return [_openapi_30(item, generated, names) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if ref is not None:
        return {"$ref": _REF + names[ref]} if ref in names else _openapi_30(generated[ref], generated, names)
    options = node.get("anyOf")
    if options is not None and {"type": "null"} in options and len(options) == 2:
        (kept,) = (option for option in options if option != {"type": "null"})
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return _openapi_30({**kept, **rest, "nullable": True}, generated, names)
    if "enum" in node and "type" not in node:  # a Literal: msgspec leaves the type out
        node = {"type": "string", **node}
    return {key: _openapi_30(value, generated, names) for key, value in node.items()}


def ingest_components() -> dict[str, Any]:
    _, generated = msgspec.json.schema_components(_COMPONENTS.values(), ref_template="{name}")
    names = {struct.__name__: name for name, struct in _COMPONENTS.items()}
    components = {
        name: _openapi_30(generated[struct.__name__], generated, names) for name, struct in _COMPONENTS.items()
    }
    for name, schema in components.items():
        schema["title"] = name
        if name in _DESCRIPTIONS:
            schema["description"] = _DESCRIPTIONS[name]
    # A limit the pipeline enforces (413), not the decoder.
    components["ReadingBatch"]["properties"]["readings"]["maxItems"] = settings.PERFUSE_INGEST_MAX_READINGS
    components["GatewayBatch"]["properties"]["batches"]["maxItems"] = settings.PERFUSE_INGEST_MAX_READINGS
    return components


def _error(
    description: str, status: int, headers: dict[str, Any] | None = None, *, codes: list[str] | None = None
) -> dict[str, Any]:
    """An error answer listing the codes of `status` the readings endpoint gives (or `codes`)."""
    if codes is None:
        codes = [c for c, c_status in ERROR_STATUS.items() if c_status == status and c not in GATEWAY_CODES]
    answer: dict[str, Any] = {
        "description": description + " Codes: " + ", ".join(f"`{c}`" for c in codes) + ".",
        "content": {"application/json": {"schema": {"$ref": _REF + "IngestError"}}},
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
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds"}}


def _header(name: str, schema_type: str, description: str) -> dict[str, Any]:
    return {"in": "header", "required": True, "name": name, "schema": {"type": schema_type}, "description": description}


def _signed_by(what: str) -> list[dict[str, Any]]:
    return [
        _header("X-Perfuse-Key", "string", f"Key id issued when the {what} was provisioned"),
        _header("X-Perfuse-Timestamp", "integer", "Unix seconds; rejected when more than 300 s from server time"),
        _header(
            "X-Perfuse-Signature",
            "string",
            'Base64 (standard, padded) Ed25519 signature of TIMESTAMP + "\\n" + BODY',
        ),
    ]


def ingest_operation() -> dict[str, Any]:
    return {
        "operationId": "ingest_readings",
        "tags": ["ingest"],
        "summary": "Push a signed batch of readings from one device",
        "security": [],
        "parameters": _signed_by("device"),
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF + "ReadingBatch"}}},
        },
        "responses": {
            "200": {
                "description": "Batch processed; counts reflect what was committed. Items are rejected one by one, "
                "among them `future_sample_time` (more than 300 s ahead) and `too_old` (older than "
                f"{settings.PERFUSE_INGEST_MAX_AGE_DAYS} days, PERFUSE_INGEST_MAX_AGE_DAYS).",
                "headers": _RATE_HEADERS,
                "content": {"application/json": {"schema": {"$ref": _REF + "IngestResult"}}},
            },
            "400": _error("Body is not JSON, wrong schema, or readings missing / not a list.", 400),
            "401": _error("Missing, malformed, unknown, revoked or wrongly signed key; stale timestamp.", 401),
            "403": _error("device_id does not match the key.", 403),
            "405": _error("Method other than POST.", 405),
            "413": _error("Body above 1 MiB or more than 5,000 readings.", 413),
            "415": _error("Content-Type is not application/json.", 415),
            "503": _error(
                "Storage unavailable or saturated; nothing was committed, send the batch again.", 503, _RETRY_AFTER
            ),
            "429": _error("Device or site rate limit exceeded.", 429, {**_RATE_HEADERS, **_RETRY_AFTER}),
        },
    }


def gateway_operation() -> dict[str, Any]:
    inner_codes = ", ".join(f"`{c}`" for c in ERROR_STATUS)
    return {
        "operationId": "ingest_gateway",
        "tags": ["ingest"],
        "summary": "Push an edge gateway's batches, each signed by its own device",
        "description": "The outer request is signed by the gateway's key as a device's request is; each inner "
        'batch carries its device\'s key id, timestamp and signature over TIMESTAMP + "\\n" + BODY. Inner '
        f"timestamps may be up to {settings.PERFUSE_GATEWAY_MAX_BUFFER_SECONDS} s old "
        "(PERFUSE_GATEWAY_MAX_BUFFER_SECONDS). A gateway carries only devices of its own ward (or site, when "
        "provisioned site-wide). At most 5,000 readings and 1 MiB in all.",
        "security": [],
        "parameters": _signed_by("gateway"),
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF + "GatewayBatch"}}},
        },
        "responses": {
            "200": {
                "description": "The outer request is valid: one result per inner batch, by index, with what "
                "POST /api/v1/ingest/readings would have answered for it (its status and body; `retry_after` "
                f"seconds with a 429). Inner error codes: {inner_codes}.",
                "content": {"application/json": {"schema": {"$ref": _REF + "GatewayResult"}}},
            },
            "400": _error("Body is not JSON, wrong schema, or batches missing / not a list.", 400),
            "401": _error("Missing, malformed, unknown, revoked or wrongly signed gateway key; stale timestamp.", 401),
            "403": _error("gateway_id does not match the key.", 403, codes=["gateway_mismatch"]),
            "405": _error("Method other than POST.", 405),
            "413": _error("Body above 1 MiB, or more than 5,000 readings (or batches) in all.", 413),
            "415": _error("Content-Type is not application/json.", 415),
            "503": _error(
                "Storage unavailable or saturated; nothing was committed, send the request again.", 503, _RETRY_AFTER
            ),
        },
    }


def add_ingest_endpoint(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    result.setdefault("paths", {})[PATH] = {"post": ingest_operation()}
    result["paths"][GATEWAY_PATH] = {"post": gateway_operation()}
    result.setdefault("components", {}).setdefault("schemas", {}).update(ingest_components())
    return result
