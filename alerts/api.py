"""Alarm REST API (contract section 3): list, detail, acknowledge, accept, decline, pause.

Ward-scoped through alerts.selectors.alarm_access; every call is audited, refusals too. Errors
are {"error": {"code", "detail"}} with stable codes.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from alerts import selectors, services
from alerts.models import Alarm, Priority
from alerts.schemas import alarm_out, transition_out
from audit.access.policy import actor_from_request, user_is_verified
from audit.trail import audit_record
from config.api_errors import error_body
from telemetry.models import Patient

STATES = {
    "active": [Alarm.State.ACTIVE_UNACKNOWLEDGED, Alarm.State.ACKNOWLEDGED],
    "active_unacknowledged": [Alarm.State.ACTIVE_UNACKNOWLEDGED],
    "acknowledged": [Alarm.State.ACKNOWLEDGED],
    "resolved": [Alarm.State.RESOLVED],
    "all": list(Alarm.State),
}
LIST_LIMIT = 500


class AlarmSerializer(serializers.Serializer):
    """Schema of one alarm (alerts.schemas.AlarmOut)."""

    id = serializers.IntegerField()
    patient = serializers.CharField()
    ward = serializers.CharField()
    kind = serializers.ChoiceField(choices=["critical_low", "low", "rapid_fall", "signal_quality", "no_data"])
    kind_label = serializers.CharField()
    priority = serializers.ChoiceField(choices=Priority.values)
    category = serializers.ChoiceField(choices=["physiological", "technical"])
    state = serializers.ChoiceField(choices=Alarm.State.values)
    latched = serializers.BooleanField()
    condition_present = serializers.BooleanField()
    condition_started_at = serializers.DateTimeField()
    condition_cleared_at = serializers.DateTimeField(allow_null=True)
    raised_at = serializers.DateTimeField()
    activated_at = serializers.DateTimeField()
    acknowledged_by = serializers.CharField(allow_null=True)
    acknowledged_at = serializers.DateTimeField(allow_null=True)
    note = serializers.CharField()
    resolved_at = serializers.DateTimeField(allow_null=True)
    escalation_level = serializers.IntegerField()
    escalated = serializers.BooleanField()
    responsible = serializers.CharField(allow_null=True)
    accepted_at = serializers.DateTimeField(allow_null=True)
    recurrences = serializers.IntegerField()
    rule_version = serializers.IntegerField()
    rule_scope = serializers.ChoiceField(choices=["ward", "patient"])
    chart_url = serializers.CharField()


class AlarmListSerializer(serializers.Serializer):
    alarms = AlarmSerializer(many=True)


class TransitionSerializer(serializers.Serializer):
    cause = serializers.CharField()
    from_state = serializers.CharField()
    to_state = serializers.CharField()
    actor = serializers.CharField()
    at = serializers.DateTimeField()


class AlarmDetailSerializer(serializers.Serializer):
    alarm = AlarmSerializer()
    explain = serializers.DictField(
        help_text="Why it fired: rule, thresholds, times, device provenance and the triggering samples. "
        "Sample values and signal-quality figures only for users who may read the patient's series; "
        'for others the samples carry times only and "values_withheld" is true.'
    )
    transitions = TransitionSerializer(many=True)


class StrictCharField(serializers.CharField):
    """Text only: a number or a list where text belongs is a client error, not something to coerce."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class AcknowledgeIn(serializers.Serializer):
    note = StrictCharField(max_length=500, allow_blank=True, required=False, default="")


class DeclineIn(serializers.Serializer):
    reason = StrictCharField(max_length=300, allow_blank=True, required=False, default="")


class PauseIn(serializers.Serializer):
    patient = serializers.SlugField(max_length=40)
    seconds = serializers.IntegerField(min_value=1, max_value=86400)
    priority = serializers.ChoiceField(choices=Priority.values, default=Priority.MEDIUM)
    reason = serializers.CharField(max_length=300, allow_blank=True, required=False, default="")


class PauseOut(serializers.Serializer):
    patient = serializers.CharField()
    until = serializers.DateTimeField()
    priority = serializers.CharField()
    by = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    error = serializers.DictField()


ERRORS = {400: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer}


def _refuse(request: Request, *, action: str, status: int, code: str, detail: str, subject: str = "") -> Response:
    with transaction.atomic():
        audit_record(
            actor=actor_from_request(request), action=action, outcome="denied", subject=subject, detail={"reason": code}
        )
    return Response(error_body(code, detail), status=status)


def _console_refusal(request: Request, action: str, subject: str = "") -> Response | None:
    """None when the user may use the alarm console; else the audited JSON refusal."""
    if selectors.alarm_scope(request.user) is not None:
        return None
    if not request.user.is_authenticated:
        code, detail = "not_authenticated", "Log in first."
    elif not user_is_verified(request.user):
        code, detail = "mfa_required", "A verified (OTP) session is required."
    else:
        code, detail = "forbidden", "Your role has no alarm console."
    return _refuse(request, action=action, status=403, code=code, detail=detail, subject=subject[:40])


def _alarm_subject(alarm_id: int) -> str:
    """The patient an alarm is about, so refusals name the subject like allowed acts do."""
    return Alarm.objects.filter(pk=alarm_id).values_list("patient__pseudonym", flat=True).first() or ""


def _input(
    serializer_class: type[serializers.Serializer], request: Request
) -> tuple[dict[str, Any] | None, Response | None]:
    data = request.data if isinstance(request.data, dict) else None
    if data is None:
        return None, Response(error_body("invalid", "A JSON object is expected."), status=400)
    s = serializer_class(data=data)
    if not s.is_valid():
        return None, Response(error_body("invalid", s.errors), status=400)
    return dict(s.validated_data), None


def _error(exc: services.AlarmError) -> Response:
    return Response(error_body(exc.code, exc.detail), status=exc.status)


@extend_schema(
    summary="Alarms the user may see",
    operation_id="alarms_list",
    parameters=[
        OpenApiParameter(
            "state",
            OpenApiTypes.STR,
            enum=list(STATES),
            description="active = not yet resolved (unacknowledged or acknowledged); default active",
        ),
        OpenApiParameter("patient", OpenApiTypes.STR, description="pseudonym"),
        OpenApiParameter("ward", OpenApiTypes.STR, description="ward code"),
    ],
    responses={200: AlarmListSerializer, **ERRORS},
)
@api_view(["GET"])
@permission_classes([AllowAny])  # refusals are answered and audited in the view
def alarm_list(request: Request) -> Response:
    refused = _console_refusal(request, "alarm.listed")
    if refused:
        return refused
    state = request.query_params.get("state", "active")
    if state not in STATES:
        return Response(error_body("invalid", f"state must be one of {', '.join(STATES)}"), status=400)
    qs = selectors.alarms_visible_to(request.user).filter(state__in=STATES[state])
    if patient := request.query_params.get("patient"):
        qs = qs.filter(patient__pseudonym=patient)
    if ward := request.query_params.get("ward"):
        qs = qs.filter(ward__code=ward)
    alarms = list(qs.order_by("-priority_rank", "raised_at", "id")[:LIST_LIMIT])
    with transaction.atomic():
        audit_record(
            actor=actor_from_request(request),
            action="alarm.listed",
            subject=(patient or "")[:40],
            detail={
                "state": state,
                "ward": ward or "",
                "count": len(alarms),
                "patients": sorted({a.patient.pseudonym for a in alarms})[:100],
            },
        )
    return Response({"alarms": [alarm_out(a) for a in alarms]})


def _visible_alarm(request: Request, alarm_id: int, action: str) -> tuple[Alarm | None, Response | None]:
    refused = _console_refusal(request, action, _alarm_subject(alarm_id))
    if refused:
        return None, refused
    alarm = (
        Alarm.objects.select_related("patient", "ward", "rule", "acknowledged_by", "responsible")
        .filter(pk=alarm_id)
        .first()
    )
    if alarm is None:
        return None, _refuse(request, action=action, status=404, code="not_found", detail="No such alarm.")
    decision = selectors.alarm_access(request.user, alarm)
    if not decision.allowed:
        return None, _refuse(
            request,
            action=action,
            status=403,
            code="forbidden",
            detail="You may not see this alarm.",
            subject=alarm.patient.pseudonym,
        )
    return alarm, None


@extend_schema(
    summary="One alarm with its explanation and transitions",
    operation_id="alarm_retrieve",
    responses={200: AlarmDetailSerializer, **ERRORS},
)
@api_view(["GET"])
@permission_classes([AllowAny])  # refusals are answered and audited in the view
def alarm_detail(request: Request, alarm_id: int) -> Response:
    alarm, refused = _visible_alarm(request, alarm_id, "alarm.viewed")
    if refused:
        return refused
    assert alarm is not None
    explanation = selectors.alarm_explanation(user=request.user, alarm=alarm)
    with transaction.atomic():
        audit_record(
            actor=actor_from_request(request),
            action="alarm.viewed",
            subject=alarm.patient.pseudonym,
            detail={"alarm": alarm.pk, "values": explanation.values_shown},
        )
    return Response(
        {
            "alarm": alarm_out(alarm),
            "explain": explanation.explain,
            "transitions": [transition_out(t) for t in alarm.transitions.all()],
        }
    )


@extend_schema(
    summary="Acknowledge an active alarm",
    operation_id="alarm_acknowledge",
    request=AcknowledgeIn,
    responses={200: AlarmSerializer, **ERRORS},
)
@api_view(["POST"])
@permission_classes([AllowAny])  # refusals are answered and audited in the view
def alarm_acknowledge(request: Request, alarm_id: int) -> Response:
    refused = _console_refusal(request, "alarm.acknowledged", _alarm_subject(alarm_id))
    if refused:
        return refused
    data, bad = _input(AcknowledgeIn, request)
    if bad:
        return bad
    assert data is not None
    try:
        alarm = services.alarm_acknowledge(
            alarm_id=alarm_id, user=request.user, actor=actor_from_request(request), note=data["note"]
        )
    except services.AlarmError as exc:
        return _error(exc)
    return Response(alarm_out(alarm))


@extend_schema(
    summary="Take responsibility for an alarm (on-call)",
    operation_id="alarm_accept",
    request=None,
    responses={200: AlarmSerializer, **ERRORS},
)
@api_view(["POST"])
@permission_classes([AllowAny])  # refusals are answered and audited in the view
def alarm_accept(request: Request, alarm_id: int) -> Response:
    refused = _console_refusal(request, "alarm.accepted", _alarm_subject(alarm_id))
    if refused:
        return refused
    try:
        alarm = services.alarm_accept(alarm_id=alarm_id, user=request.user, actor=actor_from_request(request))
    except services.AlarmError as exc:
        return _error(exc)
    return Response(alarm_out(alarm))


@extend_schema(
    summary="Decline responsibility (on-call): escalates further",
    operation_id="alarm_decline",
    request=DeclineIn,
    responses={200: AlarmSerializer, **ERRORS},
)
@api_view(["POST"])
@permission_classes([AllowAny])  # refusals are answered and audited in the view
def alarm_decline(request: Request, alarm_id: int) -> Response:
    refused = _console_refusal(request, "alarm.declined", _alarm_subject(alarm_id))
    if refused:
        return refused
    data, bad = _input(DeclineIn, request)
    if bad:
        return bad
    assert data is not None
    try:
        alarm = services.alarm_decline(
            alarm_id=alarm_id, user=request.user, actor=actor_from_request(request), reason=data["reason"]
        )
    except services.AlarmError as exc:
        return _error(exc)
    return Response(alarm_out(alarm))


@extend_schema(
    summary="Pause alarms of a priority or lower for a patient",
    operation_id="alarm_pause",
    request=PauseIn,
    responses={201: PauseOut, **ERRORS},
)
@api_view(["POST"])
@permission_classes([AllowAny])  # refusals are answered and audited in the view
def alarm_pause(request: Request) -> Response:
    asked = request.data.get("patient") if isinstance(request.data, dict) else None
    refused = _console_refusal(request, "alarm.paused", asked if isinstance(asked, str) else "")
    if refused:
        return refused
    data, bad = _input(PauseIn, request)
    if bad:
        return bad
    assert data is not None
    patient = (
        Patient.objects.select_related("ward").filter(pseudonym=data["patient"], discharged_at__isnull=True).first()
    )
    scope = selectors.alarm_scope(request.user)
    if patient is None or scope is None or not (scope.all_wards or patient.ward_id in scope.ward_ids):
        return _refuse(
            request,
            action="alarm.paused",
            status=404,
            code="not_found",
            detail="No such patient on your wards.",
            subject=data["patient"],
        )
    try:
        pause = services.patient_pause(
            patient=patient,
            user=request.user,
            actor=actor_from_request(request),
            seconds=data["seconds"],
            priority=data["priority"],
            reason=data["reason"],
        )
    except services.AlarmError as exc:
        return _error(exc)
    return Response(
        {
            "patient": patient.pseudonym,
            "until": pause.until,
            "priority": pause.priority,
            "by": request.user.get_username(),
        },
        status=201,
    )
