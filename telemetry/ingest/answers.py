"""What the ingest steps answer, whatever door the batch came through.

An `Answer` is a status, a JSON body and headers: the HTTP doors (telemetry/asgi.py,
telemetry/api.py) write it as a response; a broker door would publish it as an ack. A step that
refuses raises `IngestError` with a code from `ERROR_STATUS`, the one table of error codes and
their statuses (contract section 1); the OpenAPI schema lists the codes of each status from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from telemetry.schemas import ErrorBody, ErrorDetail

ErrorCode = Literal[
    "malformed_json",
    "wrong_schema",
    "invalid_batch",
    "missing_credentials",
    "malformed_credentials",
    "malformed_signature",
    "stale_timestamp",
    "unknown_key",
    "revoked_key",
    "bad_signature",
    "device_mismatch",
    "gateway_mismatch",
    "foreign_device",
    "method_not_allowed",
    "body_too_large",
    "too_many_readings",
    "unsupported_media_type",
    "rate_limited",
    "storage_unavailable",
]

ERROR_STATUS: dict[ErrorCode, int] = {
    "malformed_json": 400,
    "wrong_schema": 400,
    "invalid_batch": 400,
    "missing_credentials": 401,
    "malformed_credentials": 401,
    "malformed_signature": 401,
    "stale_timestamp": 401,
    "unknown_key": 401,
    "revoked_key": 401,
    "bad_signature": 401,
    "device_mismatch": 403,
    "gateway_mismatch": 403,
    "foreign_device": 403,
    "method_not_allowed": 405,
    "body_too_large": 413,
    "too_many_readings": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "storage_unavailable": 503,
}


# Codes only the gateway door answers (contract section 1c): the gateway_id is not the signing
# key's gateway; an inner batch's device is of a ward (or site) the gateway may not carry.
GATEWAY_CODES: frozenset[ErrorCode] = frozenset({"gateway_mismatch", "foreign_device"})


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def error(code: ErrorCode, detail: str, headers: dict[str, str] | None = None) -> Answer:
    body = msgspec.to_builtins(ErrorBody(ErrorDetail(code, detail)))
    return Answer(ERROR_STATUS[code], body, headers or {})


class IngestError(Exception):
    """A refusal by one step; `answer` is what the door sends back."""

    def __init__(self, code: ErrorCode, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.answer = error(code, detail, headers)


def too_large() -> Answer:
    return error("body_too_large", "at most 1 MiB per request")


def storage_unavailable() -> Answer:
    # Not the device's fault, and nothing was committed: Retry-After makes it send the batch again.
    return error("storage_unavailable", "storage is unavailable; retry later", {"Retry-After": "1"})


def answer_counts(answer: Answer) -> tuple[int, int, list[str]]:
    """Accepted, duplicates and rejection codes an answer told its sender (for /metrics): a
    section-1 200, or the 200 results of a gateway answer's inner batches (section 1c)."""
    if answer.status != 200:
        return 0, 0, []
    parts = (
        [r for r in answer.body.get("results", ()) if r["status"] == 200] if "results" in answer.body else [answer.body]
    )
    return (
        sum(p["accepted"] for p in parts),
        sum(p["duplicates"] for p in parts),
        [item["code"] for p in parts for item in p["rejected"]],
    )
