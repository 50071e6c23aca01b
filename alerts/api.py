"""Alarm REST API (contract section 3): list, detail, acknowledge, accept, decline, pause, and a
console's audio pause.

Ward-scoped through alerts.selectors (`alarm_console`, `alarm_visible`, `alarm_patient`) and the
services' own checks; every call is audited. A refusal is raised on to the API's exception
handler (audit.access.answers), which audits it once and answers {"error": {"code", "detail"}}
with a stable code; invalid input is an ApiError (400, not audited).
"""

from __future__ import annotations

from collections.abc import Callable
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
from alerts.models import Alarm
from alerts.schemas import alarm_out, delivery_out, transition_out
from alerts.vocabulary import OPEN_STATES, Category, Channel, DeliveryState, Kind, NotifyEvent, Priority, State
from audit.access.policy import actor_from_request
from audit.trail import audit_record
from config.api_errors import ApiError

STATES = {
    "active": list(OPEN_STATES),
    "active_unacknowledged": [State.ACTIVE_UNACKNOWLEDGED],
    "acknowledged": [State.ACKNOWLEDGED],
    "resolved": [State.RESOLVED],
    "all": list(State),
}
LIST_LIMIT = 500


# Serializer[None]: these declare the OpenAPI schema and validate input; none serializes an instance.
class AlarmSerializer(serializers.Serializer[None]):
    """Schema of one alarm (alerts.schemas.AlarmOut)."""

    id = serializers.IntegerField()
    patient = serializers.CharField()
    ward = serializers.CharField()
    kind = serializers.ChoiceField(choices=Kind.values())
    kind_label = serializers.CharField()
    priority = serializers.ChoiceField(choices=Priority.values())
    category = serializers.ChoiceField(choices=Category.values())
    state = serializers.ChoiceField(choices=State.values())
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


class AlarmListSerializer(serializers.Serializer[None]):
    alarms = AlarmSerializer(many=True)


class TransitionSerializer(serializers.Serializer[None]):
    cause = serializers.CharField()
    from_state = serializers.CharField()
    to_state = serializers.CharField()
    actor = serializers.CharField()
    at = serializers.DateTimeField()


class DeliveryStepSerializer(serializers.Serializer[None]):
    state = serializers.ChoiceField(choices=DeliveryState.values())
    attempt = serializers.IntegerField()
    at = serializers.DateTimeField()
    error = serializers.CharField()


class DeliverySerializer(serializers.Serializer[None]):
    """Schema of one secondary notification (alerts.schemas.DeliveryOut)."""

    id = serializers.IntegerField()
    channel = serializers.ChoiceField(choices=Channel.values())
    event = serializers.ChoiceField(choices=NotifyEvent.values())
    level = serializers.IntegerField()
    recipient = serializers.CharField(allow_null=True)
    address = serializers.CharField()
    state = serializers.ChoiceField(choices=DeliveryState.values())
    attempts = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    sent_at = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField()
    log = DeliveryStepSerializer(many=True)


class AlarmDetailSerializer(serializers.Serializer[None]):
    alarm = AlarmSerializer()
    explain = serializers.DictField(
        help_text="Why it fired: rule, thresholds, times, device provenance and the triggering samples. "
        "Sample values and signal-quality figures only for users who may read the patient's series; "
        'for others the samples carry times only and "values_withheld" is true.'
    )
    transitions = TransitionSerializer(many=True)
    deliveries = DeliverySerializer(
        many=True, help_text="Secondary notifications (email, webhook) of the alarm and each step of their delivery."
    )


class StrictCharField(serializers.CharField):
    """Text only: a number or a list where text belongs is a client error, not something to coerce."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class AcknowledgeIn(serializers.Serializer[None]):
    note = StrictCharField(max_length=500, allow_blank=True, required=False, default="")


class DeclineIn(serializers.Serializer[None]):
    reason = StrictCharField(max_length=300, allow_blank=True, required=False, default="")


class PauseIn(serializers.Serializer[None]):
    patient = serializers.SlugField(max_length=40)
    seconds = serializers.IntegerField(min_value=1, max_value=86400)
    priority = serializers.ChoiceField(choices=Priority.values(), default=Priority.MEDIUM.value)
    reason = serializers.CharField(max_length=300, allow_blank=True, required=False, default="")


class PauseOut(serializers.Serializer[None]):
    patient = serializers.CharField()
    until = serializers.DateTimeField()
    priority = serializers.CharField()
    by = serializers.CharField()


class AudioPauseIn(serializers.Serializer[None]):
    seconds = serializers.IntegerField(min_value=1, max_value=services.AUDIO_PAUSE_MAX_S)
    priority = serializers.ChoiceField(choices=Priority.values())


class AudioPauseOut(serializers.Serializer[None]):
    until = serializers.DateTimeField()
    seconds = serializers.IntegerField()
    priority = serializers.CharField()


class ErrorSerializer(serializers.Serializer[None]):
    error = serializers.DictField()


ERRORS = {400: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer}


def _input(serializer_class: type[serializers.Serializer[None]], request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise ApiError("invalid", "A JSON object is expected.")
    s = serializer_class(data=request.data)
    if not s.is_valid():
        raise ApiError("invalid", s.errors)
    return dict(s.validated_data)


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
@permission_classes([AllowAny])  # access is decided (and refusals raised) below
def alarm_list(request: Request) -> Response:
    selectors.alarm_console(request.user, action="alarm.listed")
    state = request.query_params.get("state", "active")
    if state not in STATES:
        raise ApiError("invalid", f"state must be one of {', '.join(STATES)}")
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


@extend_schema(
    summary="One alarm with its explanation and transitions",
    operation_id="alarm_retrieve",
    responses={200: AlarmDetailSerializer, **ERRORS},
)
@api_view(["GET"])
@permission_classes([AllowAny])  # access is decided (and refusals raised) below
def alarm_detail(request: Request, alarm_id: int) -> Response:
    alarm, explanation = selectors.alarm_read(
        user=request.user, actor=actor_from_request(request), alarm_id=alarm_id, action="alarm.viewed"
    )
    return Response(
        {
            "alarm": alarm_out(alarm),
            "explain": explanation.explain,
            "transitions": [transition_out(t) for t in alarm.transitions.all()],
            "deliveries": [delivery_out(d) for d in selectors.alarm_deliveries(alarm)],
        }
    )


def _alarm_act(
    operation_id: str,
    act: Callable[..., Alarm],
    *,
    form: type[serializers.Serializer[None]] | None,
    action: str,
    summary: str,
) -> Callable[..., Response]:
    """The endpoint of a staff act on one alarm (acknowledge, accept, decline). The refusal comes
    before the input is read: no console, no answer about the input either. The form's fields
    are the act's keyword arguments; the answer is the alarm after the act."""

    def view(request: Request, alarm_id: int) -> Response:
        selectors.alarm_console(request.user, action=action, subject=selectors.alarm_subject(alarm_id))
        data = _input(form, request) if form is not None else {}
        alarm = act(alarm_id=alarm_id, user=request.user, actor=actor_from_request(request), **data)
        return Response(alarm_out(alarm))

    view.__name__ = view.__qualname__ = operation_id
    endpoint = api_view(["POST"])(permission_classes([AllowAny])(view))  # access is decided in `view`
    schema = extend_schema(
        summary=summary, operation_id=operation_id, request=form, responses={200: AlarmSerializer, **ERRORS}
    )
    return schema(endpoint)


alarm_acknowledge = _alarm_act(
    "alarm_acknowledge",
    services.alarm_acknowledge,
    form=AcknowledgeIn,
    action="alarm.acknowledged",
    summary="Acknowledge an active alarm",
)
alarm_accept = _alarm_act(
    "alarm_accept",
    services.alarm_accept,
    form=None,
    action="alarm.accepted",
    summary="Take responsibility for an alarm (on-call)",
)
alarm_decline = _alarm_act(
    "alarm_decline",
    services.alarm_decline,
    form=DeclineIn,
    action="alarm.declined",
    summary="Decline responsibility (on-call): escalates further",
)


@extend_schema(
    summary="Pause alarms of a priority or lower for a patient",
    operation_id="alarm_pause",
    request=PauseIn,
    responses={201: PauseOut, **ERRORS},
)
@api_view(["POST"])
@permission_classes([AllowAny])  # access is decided (and refusals raised) below
def alarm_pause(request: Request) -> Response:
    asked = request.data.get("patient") if isinstance(request.data, dict) else None
    scope = selectors.alarm_console(
        request.user, action="alarm.paused", subject=asked if isinstance(asked, str) else ""
    )
    data = _input(PauseIn, request)
    patient = selectors.alarm_patient(scope, pseudonym=data["patient"], action="alarm.paused")
    pause = services.patient_pause(
        patient=patient,
        user=request.user,
        actor=actor_from_request(request),
        seconds=data["seconds"],
        priority=data["priority"],
        reason=data["reason"],
    )
    return Response(
        {
            "patient": patient.pseudonym,
            "until": pause.until,
            "priority": pause.priority,
            "by": request.user.get_username(),
        },
        status=201,
    )


@extend_schema(
    summary="Record a console's audio pause (IEC 60601-1-8 AUDIO PAUSED) of a priority and lower",
    description="The console that asks stays silent for those priorities until `until`; alarms are "
    "raised, shown and escalated as before, and a higher priority sounds at once.",
    operation_id="alarm_audio_pause",
    request=AudioPauseIn,
    responses={201: AudioPauseOut, **ERRORS},
)
@api_view(["POST"])
@permission_classes([AllowAny])  # access is decided (and refusals raised) below
def alarm_audio_pause(request: Request) -> Response:
    selectors.alarm_console(request.user, action="alarm.audio_paused")
    data = _input(AudioPauseIn, request)
    until = services.console_audio_pause(
        actor=actor_from_request(request), seconds=data["seconds"], priority=data["priority"]
    )
    return Response({"until": until, "seconds": data["seconds"], "priority": data["priority"]}, status=201)
