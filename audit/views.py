"""Compliance pages: audit search, who-accessed report, disclosure accounting, exports. Thin:
selectors read, every view writes exactly one audit event (refusals are audited by
audit.access.decorators.staff_page)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from audit.access.answers import View
from audit.access.decorators import staff_page
from audit.access.policy import actor_from_request
from audit.fhir import audit_bundle_page
from audit.models import AuditEvent
from audit.selectors import (
    AuditFilters,
    audit_events,
    audit_filters_from,
    patient_accessors,
    patient_disclosures,
)
from audit.trail import audit_record
from audit.verify import chain_verify
from config.csv import csv_writer
from config.replica import on_replica, read_alias, replica_pick

PAGE_SIZE = 50
FHIR_PAGE_SIZE = 1000
FHIR_PAGE_MAX = 5000
CSV_COLUMNS = (
    "id",
    "occurred_at",
    "actor_username",
    "role",
    "action",
    "subject",
    "purpose",
    "outcome",
    "break_glass",
    "source_address",
    "user_agent",
    "detail",
    "hash",
)


def _querystring(filters: AuditFilters, **extra: Any) -> str:
    params = {k: v for k, v in filters.as_detail().items()}
    if filters.break_glass:
        params["break_glass"] = "1"
    params.update(extra)
    return urlencode(params)


def _compliance_page(action: str) -> Callable[[View], View]:
    """A compliance page: GET only, for users who may view the audit trail (a refusal is audited
    as `action`)."""

    def decorate(view: View) -> View:
        return require_GET(staff_page("view_audit_trail", action)(view))

    return decorate


def _audit_read(request: HttpRequest, action: str, filters: AuditFilters, **detail: Any) -> AuditEvent:
    return audit_record(
        actor=actor_from_request(request),
        action=action,
        subject=filters.patient,
        detail={"filters": filters.as_detail(), **detail},
    )


def _patient_read(request: HttpRequest, action: str, pseudonym: str) -> AuditFilters:
    """The request's filters narrowed to one patient, the read audited as `action`."""
    filters = audit_filters_from({**request.GET.dict(), "patient": pseudonym})
    _audit_read(request, action, filters)
    return filters


@_compliance_page("audit.search")
def audit_search(request: HttpRequest) -> HttpResponse:
    filters = audit_filters_from(request.GET)
    paginator = Paginator(audit_events(filters), PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    _audit_read(request, "audit.search", filters, page=page.number)
    context = {
        "filters": filters,
        "page": page,
        "chain": chain_verify(incremental=True),
        "query": _querystring(filters),
        "actions": sorted(set(AuditEvent.objects.values_list("action", flat=True).distinct()[:200])),
    }
    return render(request, "audit/events.html", context)


@_compliance_page("audit.patient_report")
def patient_report(request: HttpRequest, pseudonym: str) -> HttpResponse:
    filters = _patient_read(request, "audit.patient_report", pseudonym)
    context = {
        "pseudonym": pseudonym,
        "filters": filters,
        "accessors": patient_accessors(pseudonym=pseudonym, start=filters.start, end=filters.end),
        "events": audit_events(filters)[:200],
        "query": _querystring(filters),
    }
    return render(request, "audit/patient_report.html", context)


@_compliance_page("audit.disclosures")
def disclosures(request: HttpRequest, pseudonym: str) -> HttpResponse:
    filters = _patient_read(request, "audit.disclosures", pseudonym)
    rows = patient_disclosures(pseudonym=pseudonym, start=filters.start, end=filters.end)
    if request.GET.get("format") == "csv":
        response = HttpResponse(content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="disclosures-{pseudonym}.csv"'
        writer = csv_writer(response)
        writer.writerow(["date", "recipient", "description", "purpose"])
        for row in rows:
            writer.writerow([row["date"].isoformat(), row["recipient"], row["description"], row["purpose"]])
        return response
    return render(request, "audit/disclosures.html", {"pseudonym": pseudonym, "filters": filters, "rows": rows})


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv_rows(events: Any) -> Iterator[str]:
    writer = csv_writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    for event in events.iterator(chunk_size=2000):
        yield writer.writerow(
            [
                event.id,
                event.occurred_at.isoformat(),
                event.actor_username,
                event.role,
                event.action,
                event.subject,
                event.purpose,
                event.outcome,
                "yes" if event.break_glass else "",
                event.source_address,
                event.user_agent,
                JsonResponse(event.detail).content.decode(),
                event.hash,
            ]
        )


@_compliance_page("audit.export")
def export_csv(request: HttpRequest) -> StreamingHttpResponse:
    filters = audit_filters_from(request.GET)
    # Audited (and committed) before any row is served. The rows may stream from the replica
    # once it holds that audit event, and with it every event before (config.replica).
    event = _audit_read(request, "audit.export", filters, format="csv")
    rows = audit_events(filters).using(replica_pick(seen=event)).order_by("id")
    response = StreamingHttpResponse(_csv_rows(rows), content_type="text/csv")
    response["Content-Disposition"] = 'attachment; filename="perfuse-audit.csv"'
    return response


@dataclass(frozen=True)
class _FhirPage:
    """Keyset paging of a FHIR export: events with after < id <= until, `count` per page. The
    first page fixes `until` (the newest matching event then, its own audit event included), so
    the export is a stable snapshot although each page request is audited itself."""

    count: int
    after: int
    until: int | None


def _fhir_page_from(params: Any) -> _FhirPage:
    count = int(params.get("_count") or FHIR_PAGE_SIZE)
    until = params.get("until")
    if not 1 <= count <= FHIR_PAGE_MAX:
        raise ValueError("_count")
    return _FhirPage(count=count, after=int(params.get("after") or 0), until=int(until) if until else None)


def _fhir_error(detail: str) -> JsonResponse:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": detail}],
    }
    return JsonResponse(outcome, status=400, content_type="application/fhir+json")


def _fhir_events(filters: AuditFilters, page: _FhirPage) -> tuple[int, list[AuditEvent], int]:
    """(until, the page's events plus one to tell whether more follow, the snapshot's size)."""
    matching = audit_events(filters).using(read_alias()).order_by("id")
    until = page.until if page.until is not None else matching.values_list("id", flat=True).last() or 0
    snapshot = matching.filter(id__lte=until)
    return until, list(snapshot.filter(id__gt=page.after)[: page.count + 1]), snapshot.count()


@_compliance_page("audit.export")
def export_fhir(request: HttpRequest) -> HttpResponse:
    filters = audit_filters_from(request.GET)
    try:
        page = _fhir_page_from(request.GET)
    except (ValueError, OverflowError):
        audit_record(
            actor=actor_from_request(request),
            action="audit.export",
            outcome=AuditEvent.Outcome.DENIED,
            detail={"reason": "invalid_query", "format": "fhir"},
        )
        return _fhir_error(f"_count is 1 to {FHIR_PAGE_MAX}; after and until are event ids")
    event = _audit_read(request, "audit.export", filters, format="fhir", after=page.after)
    # From the replica once it holds this page's own audit event (config.replica).
    until, events, total = on_replica(lambda: _fhir_events(filters, page), seen=event)
    more, events = len(events) > page.count, events[: page.count]

    def url(after: int) -> str:
        return request.build_absolute_uri(
            f"{request.path}?{_querystring(filters, _count=page.count, after=after, until=until)}"
        )

    bundle = audit_bundle_page(
        events,
        total=total,
        self_url=url(page.after),
        next_url=url(events[-1].id) if more else None,
    )
    response = JsonResponse(bundle, content_type="application/fhir+json")
    response["Content-Disposition"] = 'attachment; filename="perfuse-audit.fhir.json"'
    return response
