"""Staff read API of the dashboard: patient list, history series and chart annotations.

Session authentication with a verified (OTP) session. Every call, allowed or denied, writes one
audit event: an allowed read in the same transaction as the read, a refusal (raised by the
access layer's `ward_read` / `patient_read`) by the API's exception handler. Bad parameters are
400s with stable codes (config.api_errors.ApiError, not audited).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.access.policy import AccessDecision, actor_from_request, patient_read, ward_read
from config.api_errors import ApiError
from config.live import iso
from config.replica import on_replica
from dashboard import selectors
from telemetry.models import Patient
from telemetry.units import METRICS

MAX_SPAN = dt.timedelta(days=31)
DEFAULT_SPAN = dt.timedelta(hours=1)
# Far enough from datetime's limits that offsets and the default span cannot overflow.
MIN_TIME = dt.datetime(1000, 1, 1, tzinfo=dt.UTC)
MAX_TIME = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)


def parse_time(raw: str | None, name: str) -> dt.datetime | None:
    if raw is None or raw == "":
        return None
    # An unencoded "+" in a query string arrives as a space.
    text = raw.strip().replace(" ", "+")
    if len(text) > 40:
        raise ApiError("invalid_time", f"{name} is not an ISO-8601 time")
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ApiError("invalid_time", f"{name} is not an ISO-8601 time") from exc
    if value.tzinfo is None:
        raise ApiError("invalid_time", f"{name} needs a UTC offset (e.g. Z)")
    if not MIN_TIME <= value <= MAX_TIME:
        raise ApiError("invalid_time", f"{name} is outside the years 1000..9000")
    return value.astimezone(dt.UTC)


def parse_range(params: Any, *, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    end = parse_time(params.get("end"), "end") or now
    start = parse_time(params.get("start"), "start") or end - DEFAULT_SPAN
    if start >= end:
        raise ApiError("invalid_range", "start must be before end")
    if end - start > MAX_SPAN:
        raise ApiError("range_too_long", f"at most {MAX_SPAN.days} days per request")
    return start, end


def parse_max_points(raw: str | None) -> int:
    if raw is None or raw == "":
        return 5000
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 5 and 10 <= int(raw) <= 10000):
        raise ApiError("invalid_max_points", "max_points must be an integer from 10 to 10000")
    return int(raw)


_TIME_PARAMS = [
    OpenApiParameter("start", OpenApiTypes.DATETIME, description="ISO-8601 with offset; default end - 1 h"),
    OpenApiParameter("end", OpenApiTypes.DATETIME, description="ISO-8601 with offset; default now"),
]
_ERRORS: dict[int | str, Any] = {
    400: OpenApiResponse(description="bad parameter: invalid_time, invalid_range, range_too_long, invalid_metric"),
    401: OpenApiResponse(description="not_authenticated"),
    403: OpenApiResponse(description="mfa_required, or forbidden (other ward, role, unknown patient)"),
}
_CARD_FIELDS: dict[str, Any] = {
    "pseudonym": serializers.CharField(),
    "ward": serializers.CharField(),
    "bed": serializers.CharField(help_text='the bed label, "" when none is known'),
    "devices": serializers.ListField(child=serializers.CharField(), help_text="the devices measuring the patient now"),
    "metric": serializers.CharField(),
    "unit": serializers.CharField(),
    "value": serializers.FloatField(allow_null=True),
    "quality": serializers.FloatField(allow_null=True),
    "last_seen": serializers.DateTimeField(allow_null=True),
    "age_seconds": serializers.FloatField(allow_null=True),
    "stale": serializers.BooleanField(),
    "trend": serializers.DictField(help_text='{"direction": "up|down|flat|null", "per_minute": float|null}'),
    "sparkline": serializers.ListField(help_text="[[t, avg], …] 30-s buckets over the last 30 minutes"),
    "alarm": serializers.DictField(allow_null=True, help_text="most severe open alarm or null"),
    "vitals": serializers.ListField(
        child=serializers.DictField(),
        help_text="{metric, label, unit, value, last_seen}: the latest value of each PERFUSE_CARD_METRICS "
        "metric from the last 30 minutes",
    ),
}


def _span_read(
    request: Request, pseudonym: str, action: str, start: dt.datetime, end: dt.datetime, **detail: str
) -> tuple[Patient, AccessDecision]:
    """The patient whose data from `start` to `end` the caller may read, the read audited with the
    span (and `detail`) and committed: the caller reads afterwards, so the chain lock is not held
    across the query and data is only served once its audit event is durable."""
    with transaction.atomic():
        return patient_read(
            user=request.user,
            actor=actor_from_request(request._request),
            pseudonym=pseudonym,
            action=action,
            detail={**detail, "start": iso(start), "end": iso(end)},
        )


class PatientListView(APIView):
    permission_classes: list[Any] = []  # access is decided (and audited) in the view

    @extend_schema(
        summary="Patients the user may see, with latest tissue O2, trend, quality, alarm state, last seen",
        responses={
            200: inline_serializer(
                "PatientList", {"patients": inline_serializer("PatientCard", _CARD_FIELDS, many=True)}
            ),
            **_ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        now = dt.datetime.now(dt.UTC)
        with transaction.atomic():
            patients = ward_read(user=request.user, actor=actor_from_request(request._request), action="patients.list")
            cards = selectors.ward_cards(patients=patients, now=now)
        return Response({"server_time": iso(now), "patients": cards})


class SeriesView(APIView):
    permission_classes: list[Any] = []

    @extend_schema(
        summary="History of one metric: raw points for short spans, buckets with min/max for long ones",
        parameters=[
            OpenApiParameter("metric", str, enum=sorted(METRICS), description="default tissue_o2"),
            *_TIME_PARAMS,
            OpenApiParameter("max_points", int, description="10..10000, default 5000"),
        ],
        responses={
            200: inline_serializer(
                "Series",
                {
                    "patient": serializers.CharField(),
                    "metric": serializers.CharField(),
                    "unit": serializers.CharField(),
                    "start": serializers.DateTimeField(),
                    "end": serializers.DateTimeField(),
                    "resolution": serializers.ChoiceField(["raw", "1m", "1h"]),
                    "points": serializers.ListField(
                        child=serializers.DictField(),
                        help_text="raw: {t, value, quality}; buckets: {t, avg, min, max, count, quality}",
                    ),
                },
            ),
            **_ERRORS,
        },
    )
    def get(self, request: Request, pseudonym: str) -> Response:
        now = dt.datetime.now(dt.UTC)
        metric = request.query_params.get("metric") or "tissue_o2"
        if metric not in METRICS:
            raise ApiError("invalid_metric", f"metric must be one of {sorted(METRICS)}")
        start, end = parse_range(request.query_params, now=now)
        max_points = parse_max_points(request.query_params.get("max_points"))
        patient, access = _span_read(request, pseudonym, "series.read", start, end, metric=metric)
        # History may come from the replica (config.replica); the access decision and its audit
        # event above were made and committed on the primary.
        resolution, points = on_replica(
            lambda: selectors.series_points(
                patient_id=patient.id, metric=metric, start=start, end=end, max_points=max_points, access=access
            )
        )
        return Response(
            {
                "patient": pseudonym,
                "metric": metric,
                "unit": METRICS[metric].canonical,
                "start": iso(start),
                "end": iso(end),
                "resolution": resolution,
                "points": points,
            }
        )


class AnnotationsView(APIView):
    permission_classes: list[Any] = []

    @extend_schema(
        summary="Calibration, firmware, alarm and acknowledgement marks, alarm periods and threshold bands",
        parameters=_TIME_PARAMS,
        responses={
            200: inline_serializer(
                "Annotations",
                {
                    "patient": serializers.CharField(),
                    "start": serializers.DateTimeField(),
                    "end": serializers.DateTimeField(),
                    "annotations": serializers.ListField(
                        child=serializers.DictField(), help_text="{id, kind, t, text, data}"
                    ),
                    "alarm_periods": serializers.ListField(
                        child=serializers.DictField(),
                        help_text="{start, end|null, priority, label, metric}; metric null for no-data alarms",
                    ),
                    "thresholds": serializers.ListField(
                        child=serializers.DictField(), help_text="tissue O2's {label, low, high, priority}"
                    ),
                    "bands": serializers.DictField(
                        help_text="the same bands by metric (tissue_o2, spo2, battery): {metric: [{label, low, "
                        "high, priority}]}"
                    ),
                },
            ),
            **_ERRORS,
        },
    )
    def get(self, request: Request, pseudonym: str) -> Response:
        now = dt.datetime.now(dt.UTC)
        start, end = parse_range(request.query_params, now=now)
        patient, access = _span_read(request, pseudonym, "annotations.read", start, end)
        annotations = on_replica(
            lambda: selectors.patient_annotations(patient_id=patient.id, start=start, end=end, access=access)
        )
        overlay = selectors.patient_alarm_overlay(patient_id=patient.id, start=start, end=end)
        periods = selectors.alarm_periods_within(overlay.periods, access)
        return Response(
            {
                "patient": pseudonym,
                "start": iso(start),
                "end": iso(end),
                "annotations": annotations,
                "alarm_periods": periods,
                "thresholds": overlay.thresholds,
                "bands": overlay.bands,
            }
        )
