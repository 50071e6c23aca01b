"""HTTP entry of device ingest: an async view so the hot path never waits on a thread hop."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from config import metrics
from telemetry import ingest
from telemetry.schemas import encoder


def _respond(answer: ingest.Answer) -> HttpResponse:
    response = HttpResponse(encoder.encode(answer.body), status=answer.status, content_type="application/json")
    for name, value in answer.headers.items():
        response[name] = value
    return response


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> HttpResponse:
    return _respond(ingest.Answer(status, {"error": {"code": code, "detail": detail}}, headers or {}))


@csrf_exempt
@metrics.ingest_observed
async def ingest_readings(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _error(405, "method_not_allowed", "use POST", {"Allow": "POST"})
    content_type = request.content_type or ""
    if content_type != "application/json":
        return _error(415, "unsupported_media_type", "Content-Type must be application/json")
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > settings.PERFUSE_INGEST_MAX_BYTES:
        return _error(413, "body_too_large", "at most 1 MiB per request")
    body = request.body
    if len(body) > settings.PERFUSE_INGEST_MAX_BYTES:
        return _error(413, "body_too_large", "at most 1 MiB per request")
    return _respond(await ingest.handle(body=body, headers=request.headers))
