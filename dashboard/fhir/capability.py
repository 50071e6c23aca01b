"""The CapabilityStatement: exactly the interactions, search parameters and operation that
dashboard/fhir/views.py implements (tests check each one listed answers)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from config.api_errors import FHIR_JSON
from config.live import iso
from dashboard.fhir.resources import FHIR_VERSION

BULK_DATA = "http://hl7.org/fhir/uv/bulkdata"


def _param(name: str, kind: str, documentation: str) -> dict[str, str]:
    return {"name": name, "type": kind, "documentation": documentation}


RESOURCES: list[dict[str, Any]] = [
    {"type": "Patient", "interaction": [{"code": "read"}]},
    {
        "type": "Observation",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": [
            _param("patient", "reference", "Required: the patient's pseudonym (or Patient/{pseudonym})"),
            _param("code", "token", "system|code or code; the metric code system, LOINC or MDC"),
            _param("date", "date", "ge, gt, le, lt, eq; at most 31 days; default the last hour"),
            _param("_count", "number", "entries per page, 1..1000 (default 100)"),
        ],
    },
    {"type": "Device", "interaction": [{"code": "read"}]},
    {
        "type": "DeviceMetric",
        "interaction": [{"code": "search-type"}],
        "searchParam": [_param("source", "reference", "Required: Device/{device_id}")],
    },
    {
        "type": "Provenance",
        "interaction": [{"code": "search-type"}],
        "searchParam": [_param("target", "reference", "Required: Observation/{id}")],
    },
    {
        "type": "Group",
        "operation": [{"name": "export", "definition": f"{BULK_DATA}/OperationDefinition/group-export"}],
    },
]


def capability_statement(*, base: str, now: dt.datetime) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": iso(now),
        "publisher": "Perfuse",
        "kind": "instance",
        "instantiates": [f"{BULK_DATA}/CapabilityStatement/bulk-data"],
        "software": {"name": "Perfuse"},
        "implementation": {"description": "Perfuse tissue-oxygen monitoring, FHIR R4 read API", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": [FHIR_JSON, "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "description": "The staff session (password and TOTP at /accounts/login/); ward-scoped, "
                    "every read audited. DELETE needs the CSRF token."
                },
                "resource": RESOURCES,
            }
        ],
    }
