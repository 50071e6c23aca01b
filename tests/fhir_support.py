"""FHIR validation for tests: every resource Perfuse emits is parsed by fhir.resources' models.

fhir.resources 8 ships R5 at its root, and R4B (4.3.0) and STU3 as subpackages; there is no
4.0.1 package. R4B is R4 with changes confined to resources Perfuse does not emit (medication
definitions, subscriptions, evidence); the resources here (Patient, Observation, Device,
DeviceMetric, Provenance, Bundle, OperationOutcome, CapabilityStatement) have the same elements
in both, so the R4B models are the R4 check available. Bundles are validated as a whole and each
entry's resource again on its own model.
"""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import async_to_sync
from django.http import HttpResponse, StreamingHttpResponse
from fhir.resources.R4B import get_fhir_model_class

FHIR_JSON = "application/fhir+json"


def valid(resource: dict[str, Any]) -> Any:
    """The resource parsed by its R4B model (raises on any invalid or unknown element)."""
    model = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    if resource["resourceType"] == "Bundle":
        for entry in resource.get("entry", []):
            valid(entry["resource"])
    return model


def body(response: HttpResponse, status: int = 200) -> dict[str, Any]:
    """The FHIR JSON of a response with `status`, validated."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"] == FHIR_JSON
    data = json.loads(response.content)
    valid(data)
    return data


def outcome_code(response: HttpResponse, status: int) -> str:
    """The Perfuse error code of an OperationOutcome answer with `status`."""
    data = body(response, status)
    assert data["resourceType"] == "OperationOutcome"
    return str(data["issue"][0]["details"]["coding"][0]["code"])


def ndjson(content: bytes) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in content.decode().splitlines() if line]
    for line in lines:
        valid(line)
    return lines


def streamed(response: StreamingHttpResponse) -> bytes:
    """The body of a streamed file (an async iterator, as Daphne consumes it: chunk by chunk)."""

    async def collect() -> bytes:
        return b"".join([part async for part in response.streaming_content])  # type: ignore[union-attr]

    return async_to_sync(collect)()
