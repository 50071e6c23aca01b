"""Alarm history: a page, a CSV export and a JSON API over past and present alarms, per ward and
per patient, filtered by priority, kind, state and time span.

Each row says who acknowledged (and with what note) and who accepted, the response times from
raise to first acknowledgement and to acceptance, and the escalation levels the alarm reached.

Access is the alarm console's (alerts.selectors.alarm_console): a ward care role sees the alarms of
its wards, on-call staff also the escalated ones everywhere, administrators all; filters only
narrow that. A patient's history is refused (404, like an unknown pseudonym) unless the patient
is on the viewer's wards or has an alarm the viewer sees. Every view is audited
(`alarm.history_viewed`, in the transaction that reads the page); an export is a disclosure and
is audited as `alarm.history_exported` (with the patients it covers) and committed before the
first row is sent. Invalid filters are a 400 (the page shows them; the API answers the contract's
{"error": {"code", "detail"}}), not an audited refusal.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from django.core.paginator import Page, Paginator
from django.db import transaction
from django.http import HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import render
from django.utils.dateparse import parse_date, parse_datetime
from django.views.decorators.http import require_GET
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from alerts import selectors
from alerts.api import AlarmSerializer
from alerts.models import Alarm
from alerts.schemas import alarm_out
from alerts.selectors import HISTORY_STATES, AlarmScope, HistoryFilters, HistoryRow
from alerts.vocabulary import Kind, Priority
from audit.access.answers import refusal_pages
from audit.access.policy import actor_from_request
from audit.trail import audit_record
from config.api_errors import ApiError
from config.csv import csv_writer
from config.live import iso
from telemetry.models import Ward

PAGE_SIZE = 100
DEFAULT_SPAN = dt.timedelta(days=7)
MAX_SPAN = dt.timedelta(days=366)
AUDITED_PATIENTS = 1000  # pseudonyms named in one audit event; the count is always exact
VIEWED, EXPORTED = "alarm.history_viewed", "alarm.history_exported"
CSV_COLUMNS = (
    "id",
    "ward",
    "patient",
    "kind",
    "priority",
    "category",
    "state",
    "raised_at",
    "condition_started_at",
    "condition_cleared_at",
    "resolved_at",
    "recurrences",
    "first_acknowledged_by",
    "first_acknowledged_at",
    "acknowledgements",
    "note",
    "first_accepted_by",
    "first_accepted_at",
    "seconds_to_acknowledge",
    "seconds_to_accept",
    "highest_escalation_level",
    "escalations",
    "deliveries",
)


class FilterErrors(Exception):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(errors)
        self.errors = errors


# --- filters ---------------------------------------------------------------------------------


def _time(raw: str, name: str, *, end: bool) -> dt.datetime:
    """A date (the day's start; for `end`, the next day's, so the day is included) or an ISO-8601
    time with a UTC offset (a time without one would be a guess)."""
    day = parse_date(raw) if len(raw) <= 10 else None
    if day is not None:
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        return start + dt.timedelta(days=1) if end else start
    try:
        value = parse_datetime(raw.replace(" ", "+"))
    except ValueError:
        value = None
    if value is None:
        raise FilterErrors({name: "not a date or an ISO-8601 time"})
    if value.tzinfo is None:
        raise FilterErrors({name: "a time needs a UTC offset (e.g. Z)"})
    return value.astimezone(dt.UTC)


def _choices(params: QueryDict, name: str, allowed: list[str]) -> tuple[str, ...]:
    values = tuple(v for v in params.getlist(name) if v)
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise FilterErrors({name: f"must be among {', '.join(allowed)}"})
    return values


def history_filters(params: QueryDict, *, now: dt.datetime) -> HistoryFilters:
    """The filters of a history request; FilterErrors names the field of a bad one."""
    raw_end, raw_start = params.get("end") or "", params.get("start") or ""
    end = _time(raw_end, "end", end=True) if raw_end else now
    start = _time(raw_start, "start", end=False) if raw_start else end - DEFAULT_SPAN
    if start >= end:
        raise FilterErrors({"start": "must be before the end"})
    if end - start > MAX_SPAN:
        raise FilterErrors({"start": f"at most {MAX_SPAN.days} days at a time"})
    state = params.get("state") or "all"
    if state not in HISTORY_STATES:
        raise FilterErrors({"state": f"must be one of {', '.join(HISTORY_STATES)}"})
    return HistoryFilters(
        start=start,
        end=end,
        ward=(params.get("ward") or "")[:40],
        patient=(params.get("patient") or "")[:40],
        priorities=_choices(params, "priority", Priority.values()),
        kinds=_choices(params, "kind", Kind.values()),
        state=state,
    )


def _scope(user: Any, params: QueryDict, action: str) -> AlarmScope:
    """The viewer's alarm scope, or the refusal (naming the patient asked about)."""
    return selectors.alarm_console(user, action=action, subject=(params.get("patient") or "")[:40])


def _filters(scope: AlarmScope, params: QueryDict, action: str) -> HistoryFilters:
    """The request's filters (FilterErrors), for a patient the scope covers (else the refusal)."""
    filters = history_filters(params, now=dt.datetime.now(dt.UTC))
    if filters.patient:
        selectors.history_patient(scope, pseudonym=filters.patient, action=action)
    return filters


def _audit(request: HttpRequest, action: str, filters: HistoryFilters, **detail: Any) -> None:
    audit_record(
        actor=actor_from_request(request),
        action=action,
        subject=filters.patient,
        detail={"filters": filters.as_detail(), **detail},
    )


# --- page and export ---------------------------------------------------------------------------


def _form(request: HttpRequest, scope: AlarmScope, errors: dict[str, str]) -> dict[str, Any]:
    return {
        "wards": Ward.objects.filter(scope.wards.q("id")).order_by("code"),
        "priorities": Priority.choices(),
        "kinds": Kind.choices(),
        "states": list(HISTORY_STATES),
        "asked": request.GET,
        "asked_priorities": request.GET.getlist("priority"),
        "asked_kinds": request.GET.getlist("kind"),
        "errors": errors,
    }


def _bad_filters(request: HttpRequest, scope: AlarmScope, exc: FilterErrors) -> HttpResponse:
    return render(request, "alerts/history.html", _form(request, scope, exc.errors), status=400)


def _page_read(
    request: HttpRequest, scope: AlarmScope, filters: HistoryFilters, *, number: str | None, fmt: str
) -> tuple[Page[Alarm], list[HistoryRow]]:
    """One page of the history, audited in the transaction that reads it."""
    page = Paginator(selectors.alarm_history(scope=scope, filters=filters), PAGE_SIZE).get_page(number)
    with transaction.atomic():
        rows = selectors.history_rows(page.object_list)
        patients = sorted({r.alarm.patient.pseudonym for r in rows})
        _audit(request, VIEWED, filters, format=fmt, page=page.number, count=page.paginator.count, patients=patients)
    return page, rows


@require_GET
@refusal_pages()
def history_page(request: HttpRequest) -> HttpResponse:
    scope = _scope(request.user, request.GET, VIEWED)
    try:
        filters = _filters(scope, request.GET, VIEWED)
    except FilterErrors as exc:
        return _bad_filters(request, scope, exc)
    page, rows = _page_read(request, scope, filters, number=request.GET.get("page"), fmt="html")
    query = request.GET.copy()
    query.pop("page", None)
    context = {**_form(request, scope, {}), "filters": filters, "rows": rows, "page": page, "query": query.urlencode()}
    return render(request, "alerts/history.html", context)


def _cell_time(value: dt.datetime | None) -> str:
    return iso(value) if value else ""


def csv_row(row: HistoryRow) -> list[object]:
    a = row.alarm
    first = row.acknowledgements[0] if row.acknowledgements else None
    reach = "; ".join(f"{e.level} at {iso(e.at)} ({e.cause} by {e.by})" for e in row.escalations)
    told = "; ".join(f"{d.channel} to {d.recipient or 'webhook'}: {d.state} after {d.attempts}" for d in row.deliveries)
    return [
        a.pk,
        a.ward.code,
        a.patient.pseudonym,
        a.kind,
        a.priority,
        a.category,
        a.state,
        _cell_time(a.raised_at),
        _cell_time(a.condition_started_at),
        _cell_time(a.condition_cleared_at),
        _cell_time(a.resolved_at),
        a.recurrences,
        first.by if first else "",
        _cell_time(first.at if first else None),
        len(row.acknowledgements),
        a.ack_note,
        row.accepted_by,
        _cell_time(row.accepted_at),
        row.seconds_to_acknowledge,
        row.seconds_to_accept,
        row.highest_level,
        reach,
        told,
    ]


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv_lines(rows: Iterator[HistoryRow]) -> Iterator[str]:
    writer = csv_writer(_Echo())  # formulas in notes and names are neutralised (config/csv.py)
    yield writer.writerow(CSV_COLUMNS)
    for row in rows:
        yield writer.writerow(csv_row(row))


@require_GET
@refusal_pages()
def history_csv(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    scope = _scope(request.user, request.GET, EXPORTED)
    try:
        filters = _filters(scope, request.GET, EXPORTED)
    except FilterErrors as exc:
        return _bad_filters(request, scope, exc)
    alarms = selectors.alarm_history(scope=scope, filters=filters)
    # Audited and committed before any row is sent: an export that cannot be audited discloses nothing.
    with transaction.atomic():
        patients = selectors.history_patients(alarms, limit=AUDITED_PATIENTS + 1)
        _audit(
            request,
            EXPORTED,
            filters,
            format="csv",
            rows=alarms.count(),
            patients=sorted(patients[:AUDITED_PATIENTS]),
            patients_complete=len(patients) <= AUDITED_PATIENTS,
        )
    response = StreamingHttpResponse(_csv_lines(selectors.history_rows_all(alarms)), content_type="text/csv")
    name = filters.patient or filters.ward or "alarms"
    response["Content-Disposition"] = f'attachment; filename="alarm-history-{name}-{filters.start:%Y%m%d}.csv"'
    return response


# --- JSON API ------------------------------------------------------------------------------------


class HistoryRowSerializer(AlarmSerializer):
    """Schema of one history row: the alarm as the alarm API shows it, and its history."""

    acknowledgements = serializers.ListField(child=serializers.DictField(), help_text="[{by, at, note}], in order")
    first_accepted_by = serializers.CharField(allow_null=True, help_text="the first on-call user who accepted")
    first_accepted_at = serializers.DateTimeField(allow_null=True)
    seconds_to_acknowledge = serializers.FloatField(allow_null=True, help_text="raise to first acknowledgement")
    seconds_to_accept = serializers.FloatField(allow_null=True, help_text="raise to first acceptance")
    highest_escalation_level = serializers.IntegerField()
    escalations = serializers.ListField(child=serializers.DictField(), help_text="[{level, at, cause, by}]")
    deliveries = serializers.ListField(
        child=serializers.DictField(),
        help_text="secondary notifications: [{channel, event, level, recipient, state, attempts, sent_at}]",
    )


def history_json(row: HistoryRow) -> dict[str, Any]:
    """A history row for the API: alerts.schemas.AlarmOut and what the history adds."""
    return {
        **alarm_out(row.alarm),
        "acknowledgements": [{"by": k.by, "at": iso(k.at), "note": k.note} for k in row.acknowledgements],
        "first_accepted_by": row.accepted_by,
        "first_accepted_at": iso(row.accepted_at) if row.accepted_at else None,
        "seconds_to_acknowledge": row.seconds_to_acknowledge,
        "seconds_to_accept": row.seconds_to_accept,
        "highest_escalation_level": row.highest_level,
        "escalations": [{"level": e.level, "at": iso(e.at), "cause": e.cause, "by": e.by} for e in row.escalations],
        "deliveries": [
            {
                "channel": d.channel,
                "event": d.event,
                "level": d.level,
                "recipient": d.recipient or None,
                "state": d.state,
                "attempts": d.attempts,
                "sent_at": iso(d.sent_at) if d.sent_at else None,
            }
            for d in row.deliveries
        ],
    }


class HistorySerializer(serializers.Serializer[None]):
    count = serializers.IntegerField()
    page = serializers.IntegerField()
    pages = serializers.IntegerField()
    alarms = HistoryRowSerializer(many=True)


@extend_schema(
    summary="Alarm history: past and present alarms with responses, response times and escalation",
    operation_id="alarms_history",
    parameters=[
        OpenApiParameter("ward", OpenApiTypes.STR, description="ward code"),
        OpenApiParameter("patient", OpenApiTypes.STR, description="pseudonym"),
        OpenApiParameter("priority", OpenApiTypes.STR, many=True, enum=Priority.values()),
        OpenApiParameter("kind", OpenApiTypes.STR, many=True, enum=Kind.values()),
        OpenApiParameter("state", OpenApiTypes.STR, enum=list(HISTORY_STATES), description="default all"),
        OpenApiParameter("start", OpenApiTypes.STR, description="date or ISO-8601 time with offset; default end - 7 d"),
        OpenApiParameter("end", OpenApiTypes.STR, description="date (included) or ISO-8601 time; default now"),
        OpenApiParameter("page", OpenApiTypes.INT, description=f"{PAGE_SIZE} alarms a page, newest first"),
    ],
    responses={
        200: HistorySerializer,
        400: OpenApiResponse(description="invalid: a bad filter (the detail names it)"),
        403: OpenApiResponse(description="forbidden, mfa_required (no alarm console)"),
        404: OpenApiResponse(description="not_found: no such patient on your wards"),
    },
)
@api_view(["GET"])
@permission_classes([AllowAny])  # access is decided (and refusals raised) by _scope and _filters
def history_api(request: Request) -> Response:
    scope = _scope(request.user, request.query_params, VIEWED)
    try:
        filters = _filters(scope, request.query_params, VIEWED)
    except FilterErrors as exc:
        raise ApiError("invalid", exc.errors) from exc
    page, rows = _page_read(request._request, scope, filters, number=request.query_params.get("page"), fmt="json")
    return Response(
        {
            "count": page.paginator.count,
            "page": page.number,
            "pages": page.paginator.num_pages,
            "alarms": [history_json(row) for row in rows],
        }
    )
