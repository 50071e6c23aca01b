"""Staff API of the audit trail: the audit-event search for compliance (contract §3). Every
attempt is audited; a refusal is raised on to the API's exception handler
(audit.access.answers), which answers it with a JSON error body."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.access.policy import access_refusal, actor_from_request, user_can
from audit.models import AuditEvent
from audit.selectors import audit_events, audit_filters_from
from audit.trail import audit_record
from config.refusal import Refusal

ACTION = "audit.api"


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
    def get(self, request: Request) -> Response:
        if not user_can(request.user, "view_audit_trail"):
            raise access_refusal(request.user, action=ACTION, detail="Compliance role only.")
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
            raise Refusal(action=ACTION, reason="invalid_query", code="invalid", status=400, detail=errors)
        audit_record(
            actor=actor_from_request(request._request),
            action=ACTION,
            subject=filters.patient,
            detail={"filters": filters.as_detail()},
        )
        qs = audit_events(filters)
        if before is not None:
            qs = qs.filter(id__lt=before)
        events = list(qs[: limit + 1])
        more = len(events) > limit
        events = events[:limit]
        return Response(
            {"results": [event_json(e) for e in events], "next_before_id": events[-1].id if more and events else None}
        )
