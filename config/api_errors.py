"""Every 4xx from the staff API carries {"error": {"code", "detail"}} with a stable code.

Refusals (config/refusal.py) are audited and answered by audit.access.answers.api_exception_handler,
DRF's EXCEPTION_HANDLER, which hands every other exception to `exception_handler` here: DRF's own
errors and `ApiError`, a client error that is no refusal (a bad parameter: nothing to audit).

Under /fhir/R4/ the same errors are FHIR OperationOutcome resources (`operation_outcome`, with
the stable code in the issue's details), also when a request gate here answers before the view
(a NUL in the query, a CSRF refusal): a FHIR client never gets another body.

CSRF refusals too, wherever they are decided: DRF's session authentication (API views) and
Django's CSRF middleware (`CSRF_FAILURE_VIEW`, for the plain views) both answer `csrf_failed` to
a JSON client; a browser form still gets Django's HTML page.
"""

from __future__ import annotations

from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.csrf import csrf_failure as html_csrf_failure
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

CSRF_FAILED = "csrf_failed"
# DRF's SessionAuthentication refuses a missing or wrong CSRF token with a bare PermissionDenied
# carrying this prefix (rest_framework/authentication.py); it is a CSRF refusal, not `forbidden`.
_DRF_CSRF_PREFIX = "CSRF Failed:"


FHIR_PREFIX = "/fhir/"
FHIR_JSON = "application/fhir+json"
FHIR_ERROR_SYSTEM = "https://perfuse.example/fhir/CodeSystem/error"
# FHIR issue types for the HTTP statuses Perfuse answers with.
_ISSUE_TYPES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    410: "deleted",
    429: "throttled",
    500: "exception",
}


def operation_outcome(*, status: int, code: str, detail: str) -> dict[str, Any]:
    """A FHIR R4 OperationOutcome for an error answered with `status` and Perfuse's `code`."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error" if status < 500 else "fatal",
                "code": _ISSUE_TYPES.get(status, "processing"),
                "details": {"coding": [{"system": FHIR_ERROR_SYSTEM, "code": code}], "text": detail},
                "diagnostics": detail,
            }
        ],
    }


def outcome_response(status: int, code: str, detail: str) -> HttpResponse:
    return HttpResponse(
        orjson.dumps(operation_outcome(status=status, code=code, detail=detail)), status=status, content_type=FHIR_JSON
    )


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
    if isinstance(exc, exceptions.PermissionDenied) and str(exc.detail).startswith(_DRF_CSRF_PREFIX):
        code = CSRF_FAILED
    response.data = error_body(
        code, response.data.get("detail", response.data) if isinstance(response.data, dict) else response.data
    )
    return response


def wants_json(request: HttpRequest) -> bool:
    """An API path, or a client that prefers JSON to HTML (the pages' own fetch calls)."""
    if request.path.startswith("/api/"):
        return True
    return request.get_preferred_type(["text/html", "application/json"]) == "application/json"


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: the contract's JSON error for JSON clients, Django's page otherwise."""
    if request.path.startswith(FHIR_PREFIX):
        return outcome_response(403, CSRF_FAILED, f"CSRF check failed: {reason}")
    if wants_json(request):
        return error_response(403, CSRF_FAILED, f"CSRF check failed: {reason}")
    return html_csrf_failure(request, reason)
