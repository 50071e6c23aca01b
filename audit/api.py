"""Staff API of the audit trail: the audit-event search for compliance (contract §3). Every
attempt is audited; every refusal is a JSON error body."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.access.decorators import refusal_reason
from audit.access.policy import actor_from_request, user_can
from audit.models import AuditEvent
from audit.selectors import audit_events, audit_filters_from
from audit.trail import audit_record
from config.api_errors import error_response


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
