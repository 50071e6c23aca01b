"""Staff API of the audit app: identity reveal for the chart, and the audit-event search for
compliance (contract §3). Every attempt is audited; every refusal is a JSON error body."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.access import actor_from_request, user_can
from audit.decorators import refusal_reason
from audit.identity import IdentityDenied, identity_reveal
from audit.models import AuditEvent
from audit.selectors import audit_events, audit_filters_from
from audit.services import audit_record
from config.api_errors import error_response
from telemetry.models import Patient

_IDENTITY_STATUS = {
    "not_authenticated": (401, "Sign in first."),
    "mfa_required": (403, "A verified (two-factor) session is required."),
    "purpose_required": (400, "State the purpose of revealing this identity."),
    "invalid_purpose": (400, "The purpose must be text without NUL characters."),
    "unknown_patient": (403, "You may not reveal this patient's identity."),
    "not_permitted": (403, "You may not reveal this patient's identity."),
}


class IdentityView(APIView):
    authentication_classes = [SessionAuthentication]
    permission_classes: list[Any] = []

    @extend_schema(
        summary="Reveal a patient's identity (audited)",
        request=inline_serializer("IdentityRequest", {"purpose": serializers.CharField()}),
        responses={
            200: inline_serializer(
                "Identity",
                {
                    "pseudonym": serializers.CharField(),
                    "name": serializers.CharField(),
                    "mrn": serializers.CharField(),
                    "date_of_birth": serializers.DateField(allow_null=True),
                },
            )
        },
    )
    def post(self, request: Request, pseudonym: str) -> Response | HttpResponse:
        data = request.data if isinstance(request.data, dict) else {}
        purpose = data.get("purpose")
        patient = Patient.objects.filter(pseudonym=pseudonym[:40]).first()
        try:
            identity = identity_reveal(
                actor=actor_from_request(request._request),
                user=request.user,
                patient=patient,
                purpose=purpose if isinstance(purpose, str) else "",
            )
        except IdentityDenied as exc:
            status, detail = _IDENTITY_STATUS.get(exc.reason, (403, "Not permitted."))
            code = exc.reason if status != 403 or exc.reason == "mfa_required" else "forbidden"
            return error_response(status, code, detail)
        return Response(
            {
                "pseudonym": identity.pseudonym,
                "name": identity.name,
                "mrn": identity.mrn,
                "date_of_birth": identity.date_of_birth.isoformat() if identity.date_of_birth else None,
            }
        )


def event_json(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "occurred_at": event.occurred_at.isoformat(),
        "actor_username": event.actor_username,
        "role": event.role,
        "action": event.action,
        "subject": event.subject,
        "purpose": event.purpose,
        "outcome": event.outcome,
        "break_glass": event.break_glass,
        "source_address": event.source_address,
        "user_agent": event.user_agent,
        "detail": event.detail,
        "hash": event.hash,
    }


class AuditEventsView(APIView):
    authentication_classes = [SessionAuthentication]
    permission_classes: list[Any] = []
    max_page_size = 500

    @extend_schema(
        summary="Search the audit trail (compliance role)",
        parameters=[
            OpenApiParameter(name, str, required=False, description=text)
            for name, text in (
                ("user", "actor username (exact, case-insensitive)"),
                ("patient", "patient pseudonym"),
                ("action", "action, or a prefix such as 'login'"),
                ("outcome", "allowed or denied"),
                ("start", "from this ISO-8601 time or date"),
                ("end", "before this ISO-8601 time or date"),
                ("break_glass", "1: break-glass events only"),
                ("before_id", "page backwards: events with id below this"),
                ("limit", "page size, at most 500 (default 100)"),
            )
        ],
        responses={
            200: inline_serializer(
                "AuditEventPage",
                {"results": serializers.ListField(), "next_before_id": serializers.IntegerField(allow_null=True)},
            )
        },
    )
    def get(self, request: Request) -> Response | HttpResponse:
        actor = actor_from_request(request._request)
        if not user_can(request.user, "view_audit_trail"):
            reason = refusal_reason(request.user)
            audit_record(actor=actor, action="audit.api", outcome=AuditEvent.Outcome.DENIED, detail={"reason": reason})
            if reason == "not_authenticated":
                return error_response(401, "not_authenticated", "Sign in first.")
            return error_response(
                403, "mfa_required" if reason == "mfa_required" else "forbidden", "Compliance role only."
            )
        filters = audit_filters_from(request.query_params)
        errors = list(filters.errors)
        limit, before = 100, None
        try:
            limit = min(self.max_page_size, max(1, int(request.query_params.get("limit", 100))))
            if request.query_params.get("before_id"):
                before = int(request.query_params["before_id"])
        except ValueError:
            errors.append("limit/before_id: integers")
        if errors:
            audit_record(
                actor=actor, action="audit.api", outcome=AuditEvent.Outcome.DENIED, detail={"reason": "invalid_query"}
            )
            return error_response(400, "invalid", errors)
        audit_record(actor=actor, action="audit.api", subject=filters.patient, detail={"filters": filters.as_detail()})
        qs = audit_events(filters)
        if before is not None:
            qs = qs.filter(id__lt=before)
        events = list(qs[: limit + 1])
        more = len(events) > limit
        events = events[:limit]
        return Response(
            {"results": [event_json(e) for e in events], "next_before_id": events[-1].id if more and events else None}
        )
