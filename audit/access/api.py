"""Staff API of the access layer: identity reveal for the chart (contract §3). Every attempt is
audited (by audit.access.identity); every refusal is a JSON error body."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.access.identity import IdentityDenied, identity_reveal
from audit.access.policy import actor_from_request
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
