"""Staff API of the access layer: identity reveal for the chart (contract §3). Every attempt is
audited (by audit.access.identity); a refusal is raised on to the API's exception handler
(audit.access.answers), which answers it with a JSON error body."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.access.identity import identity_reveal
from audit.access.policy import actor_from_request
from telemetry.models import Patient


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
    def post(self, request: Request, pseudonym: str) -> Response:
        data = request.data if isinstance(request.data, dict) else {}
        purpose = data.get("purpose")
        patient = Patient.objects.filter(pseudonym=pseudonym[:40]).first()
        identity = identity_reveal(
            actor=actor_from_request(request._request),
            user=request.user,
            patient=patient,
            purpose=purpose if isinstance(purpose, str) else "",
        )
        return Response(
            {
                "pseudonym": identity.pseudonym,
                "name": identity.name,
                "mrn": identity.mrn,
                "date_of_birth": identity.date_of_birth.isoformat() if identity.date_of_birth else None,
            }
        )
