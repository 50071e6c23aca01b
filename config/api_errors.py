"""Every 4xx from the staff API carries {"error": {"code", "detail"}} with a stable code.

Refusals (config/refusal.py) are audited and answered by audit.access.answers.api_exception_handler,
DRF's EXCEPTION_HANDLER, which hands every other exception to `exception_handler` here: DRF's own
errors and `ApiError`, a client error that is no refusal (a bad parameter: nothing to audit).
"""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


def error_body(code: str, detail: Any) -> dict[str, Any]:
    return {"error": {"code": code, "detail": detail}}


def error_response(status: int, code: str, detail: Any, headers: dict[str, str] | None = None) -> JsonResponse:
    response = JsonResponse(error_body(code, detail), status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


class ApiError(exceptions.APIException):
    """A bad request with a stable code: not an access decision, so not audited."""

    def __init__(self, code: str, detail: Any, *, status: int = 400) -> None:
        super().__init__(detail)
        self.status_code = status
        self.perfuse_code = code


_CODES: dict[type[exceptions.APIException], str] = {
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
    exceptions.ParseError: "malformed_json",
    exceptions.ValidationError: "invalid",
}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    code = getattr(exc, "perfuse_code", None) or _CODES.get(type(exc), "error")
    response.data = error_body(
        code, response.data.get("detail", response.data) if isinstance(response.data, dict) else response.data
    )
    return response
