"""Audit events as FHIR R4 AuditEvent resources, exported as pages: searchset Bundles with
`total` and a `next` link (audit/views.py export_fhir).

Codes: event type from DICOM (DCM) — 110110 Patient Record for reads of patient data, 110114
User Authentication for sign-in/out, 110113 Security Alert for break-glass, 110100 Application
Activity otherwise; the Perfuse action as subtype; outcome 0 (success) or 4 (minor failure:
refused); purposeOfEvent TREAT or ETREAT (emergency treatment, i.e. break-glass) from v3
ActReason with the stated purpose as text. Each resource carries its chain hash as an extension
so an exported record can be matched against the live chain.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from audit.models import AuditEvent

DCM = "http://dicom.nema.org/resources/ontology/DCM"
PERFUSE_ACTIONS = "https://perfuse.example/fhir/CodeSystem/audit-action"
HASH_EXTENSION = "https://perfuse.example/fhir/StructureDefinition/audit-chain-hash"


def _type(event: AuditEvent) -> dict[str, str]:
    if event.action.startswith(("login.", "logout", "session.", "mfa.")):
        return {"system": DCM, "code": "110114", "display": "User Authentication"}
    if event.break_glass or event.action.startswith("break_glass."):
        return {"system": DCM, "code": "110113", "display": "Security Alert"}
    if event.action.startswith(("patient.", "identity.")):
        return {"system": DCM, "code": "110110", "display": "Patient Record"}
    return {"system": DCM, "code": "110100", "display": "Application Activity"}


def _crud(action: str) -> str:
    if action.endswith((".created", ".added", ".granted", ".admitted")):
        return "C"
    if action.endswith((".revoked", ".updated", ".acknowledged", ".ended")):
        return "U"
    if action.startswith(("patient.", "identity.", "audit.", "devices.")):
        return "R"
    return "E"


def audit_event_resource(event: AuditEvent) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                    "code": "humanuser" if event.actor_id is not None else "datacollector",
                }
            ]
        },
        "who": {
            "identifier": {"system": "urn:perfuse:staff", "value": event.actor_username or "anonymous"},
            "display": event.actor_username or "anonymous",
        },
        "requestor": True,
    }
    if event.role:
        agent["role"] = [{"text": event.role}]
    if event.source_address:
        agent["network"] = {"address": event.source_address, "type": "2"}
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(event.id),
        "extension": [{"url": HASH_EXTENSION, "valueString": event.hash}],
        "type": _type(event),
        "subtype": [{"system": PERFUSE_ACTIONS, "code": event.action}],
        "action": _crud(event.action),
        "recorded": event.occurred_at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "outcome": "0" if event.outcome == AuditEvent.Outcome.ALLOWED else "4",
        "agent": [agent],
        "source": {
            "observer": {"display": "Perfuse"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}],
        },
    }
    reason = (event.detail or {}).get("reason")
    if isinstance(reason, str) and reason:
        resource["outcomeDesc"] = reason
    if event.purpose or event.break_glass:
        code = "ETREAT" if event.break_glass else "TREAT"
        purpose: dict[str, Any] = {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": code}]
        }
        if event.purpose:
            purpose["text"] = event.purpose
        resource["purposeOfEvent"] = [purpose]
    if event.subject:
        is_patient = not event.subject.startswith("user:") and not event.action.startswith("device.")
        entity: dict[str, Any] = {
            "what": {
                "identifier": {
                    "system": "urn:perfuse:pseudonym" if is_patient else "urn:perfuse:object",
                    "value": event.subject,
                }
            },
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "1" if is_patient else "2",
                "display": "Person" if is_patient else "System Object",
            },
        }
        if is_patient:
            entity["role"] = {
                "system": "http://terminology.hl7.org/CodeSystem/object-role",
                "code": "1",
                "display": "Patient",
            }
        resource["entity"] = [entity]
    return resource


def audit_bundle_page(
    events: Iterable[AuditEvent], *, total: int, self_url: str, next_url: str | None
) -> dict[str, Any]:
    """One page of an export: a searchset Bundle with the number of matching events (`total`)
    and, while there are more, a `next` link — an export is never cut short without saying so."""
    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "total": total,
        "link": links,
        "entry": [
            {
                "fullUrl": f"urn:perfuse:audit-event:{e.id}",
                "resource": audit_event_resource(e),
                "search": {"mode": "match"},
            }
            for e in events
        ],
    }
