"""drf-spectacular hook describing /fhir/R4/ (plain Django views, so the generator does not see
them). The paths come from the CapabilityStatement's own table (dashboard/fhir/capability.py),
so the OpenAPI schema and `metadata` list the same interactions; the resources themselves are
FHIR R4's (linked, not restated)."""

from __future__ import annotations

from typing import Any

from config.api_errors import FHIR_JSON
from dashboard.fhir.capability import RESOURCES

BASE = "/fhir/R4"
_RESOURCE = {"type": "object", "required": ["resourceType"], "properties": {"resourceType": {"type": "string"}}}
_ERRORS = {
    status: {"description": f"OperationOutcome ({why})", "content": {FHIR_JSON: {"schema": _RESOURCE}}}
    for status, why in (
        ("400", "a bad parameter, with a stable code"),
        ("401", "not_authenticated"),
        ("403", "mfa_required, or forbidden: role, other ward, unknown patient or device"),
        ("404", "not_found / not_supported"),
    )
}


def _get(summary: str, resource: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    ok = {"description": f"{resource} (https://hl7.org/fhir/R4/{resource.lower()}.html)"}
    return {
        "get": {
            "tags": ["fhir"],
            "summary": summary,
            "operationId": f"fhir_{summary.lower().replace(' ', '_')}",
            "parameters": params or [],
            "responses": {"200": {**ok, "content": {FHIR_JSON: {"schema": _RESOURCE}}}, **_ERRORS},
        }
    }


def _param(name: str, where: str, description: str, *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "description": description,
            "schema": {"type": "string"}}  # fmt: skip


def fhir_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {f"{BASE}/metadata": _get("CapabilityStatement", "CapabilityStatement")}
    for resource in RESOURCES:
        kind = resource["type"]
        codes = [i["code"] for i in resource.get("interaction", [])]
        if "read" in codes:
            paths[f"{BASE}/{kind}/{{id}}"] = _get(f"Read {kind}", kind, [_param("id", "path", f"the {kind} id")])
        if "search-type" in codes:
            params = [_param(p["name"], "query", p["documentation"]) for p in resource["searchParam"]]
            paths[f"{BASE}/{kind}"] = _get(f"Search {kind}", "Bundle", params)
    export = _get("Group export", "OperationOutcome", [_param("ward", "path", "the ward code")])
    export["get"]["description"] = "Bulk Data kick-off (Prefer: respond-async): 202 with Content-Location."
    paths[f"{BASE}/Group/{{ward}}/$export"] = export
    status = _get("Export status", "OperationOutcome", [_param("export_id", "path", "from Content-Location")])
    status["get"]["description"] = "202 with X-Progress while running; 200 with the Bulk Data manifest; DELETE cancels."
    status["delete"] = {
        **status["get"],
        "summary": "Cancel export",
        "operationId": "fhir_cancel_export",
        "description": "Deletes the job and its files (202); needs the CSRF token.",
    }
    paths[f"{BASE}/$export-status/{{export_id}}"] = status
    file = _get(
        "Export file",
        "Observation",
        [_param("export_id", "path", "the export"), _param("type", "path", "Patient, Device or Observation")],
    )
    file["get"]["responses"]["200"] = {
        "description": "NDJSON: one resource per line (requester only)",
        "content": {"application/fhir+ndjson": {"schema": {"type": "string"}}},
    }
    paths[f"{BASE}/$export-file/{{export_id}}/{{type}}.ndjson"] = file
    return paths


def add_fhir_endpoints(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    result.setdefault("paths", {}).update(fhir_paths())
    return result
