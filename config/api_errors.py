"""Every 4xx from the staff API carries {"error": {"code", "detail"}} with a stable code."""

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
