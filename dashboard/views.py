from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse

from config.api_errors import error_body


def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})


def _error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse(error_body(code, detail), status=status)


def error_400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _error(400, "bad_request", "The request could not be understood.")


def error_403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _error(403, "forbidden", "You may not see this.")


def error_404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _error(404, "not_found", "No such page.")


def error_500(request: HttpRequest) -> HttpResponse:
    return _error(500, "server_error", "Something went wrong on our side; it has been logged.")
