"""The OpenAPI schema at /api/schema/ describes the ingest endpoint as it behaves."""

from __future__ import annotations

import pytest
import yaml
from django.test import Client

pytestmark = pytest.mark.django_db


def test_schema_describes_ingest_with_every_answer_and_header():
    response = Client().get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    operation = schema["paths"]["/api/v1/ingest/readings"]["post"]
    assert {p["name"] for p in operation["parameters"] if p["in"] == "header"} == {
        "X-Perfuse-Key",
        "X-Perfuse-Timestamp",
        "X-Perfuse-Signature",
    }
    responses = operation["responses"]
    assert set(responses) == {"200", "400", "401", "403", "405", "413", "415", "429", "503"}
    rate_headers = {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}
    assert set(responses["200"]["headers"]) == rate_headers
    assert set(responses["429"]["headers"]) == rate_headers | {"Retry-After"}
    assert "Retry-After" in responses["503"]["headers"]
    for code, codes in {
        "400": ["malformed_json", "wrong_schema", "invalid_batch"],
        "401": ["missing_credentials", "malformed_credentials", "unknown_key", "revoked_key", "stale_timestamp"],
        "403": ["device_mismatch"],
        "413": ["body_too_large", "too_many_readings"],
        "415": ["unsupported_media_type"],
        "429": ["rate_limited"],
    }.items():
        assert all(f"`{c}`" in responses[code]["description"] for c in codes), code
    components = schema["components"]["schemas"]
    assert {"ReadingBatch", "ReadingIn", "IngestResult", "IngestError"} <= set(components)
    rejection = components["IngestResult"]["properties"]["rejected"]["items"]["properties"]["code"]["enum"]
    assert "out_of_range" in rejection and "future_sample_time" in rejection
    assert components["ReadingIn"]["properties"]["metric"]["enum"] == sorted(
        ["tissue_o2", "tissue_po2", "spo2", "skin_temp", "battery"]
    )


def test_schema_rejection_codes_include_too_old_and_come_from_the_validator():
    from telemetry.schemas import REJECTION_CODES

    schema = yaml.safe_load(Client().get("/api/schema/").content)
    components = schema["components"]["schemas"]
    rejection = components["IngestResult"]["properties"]["rejected"]["items"]["properties"]["code"]["enum"]
    assert "too_old" in rejection
    assert sorted(rejection) == sorted(REJECTION_CODES)
    reading = components["ReadingIn"]
    assert reading["additionalProperties"] is False
    assert reading["properties"]["seq"] == {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
    assert reading["properties"]["signal_quality"]["nullable"] is True
    batch = components["ReadingBatch"]
    assert batch["properties"]["readings"]["items"] == {"$ref": "#/components/schemas/ReadingIn"}
    assert set(batch["required"]) == {"schema", "device_id", "readings"}
