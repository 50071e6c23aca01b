"""HTTP entry of device ingest through Django: an async view so the hot path never waits on a
thread hop. In production the same endpoint is served by telemetry/asgi.py in front of Django
(no middleware); both call the same `pipeline.precheck` and `pipeline.handle`."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from config import metrics
from telemetry.ingest import group, pipeline
from telemetry.ingest.answers import Answer, too_large
from telemetry.schemas import encoder


def _respond(answer: Answer) -> HttpResponse:
    response = HttpResponse(encoder.encode(answer.body), status=answer.status, content_type="application/json")
    for name, value in answer.headers.items():
        response[name] = value
    return response


@csrf_exempt
@metrics.ingest_observed
async def ingest_readings(request: HttpRequest) -> HttpResponse:
    refused = pipeline.precheck(
        method=request.method or "",
        content_type=request.META.get("CONTENT_TYPE", ""),
        declared_length=request.META.get("CONTENT_LENGTH"),
    )
    if refused is not None:
        return _respond(refused)
    body = request.body
    if len(body) > settings.PERFUSE_INGEST_MAX_BYTES:
        return _respond(too_large())
    handle = group.http_group_handle if settings.PERFUSE_INGEST_HTTP_GROUP else pipeline.handle
    return _respond(await handle(body=body, headers=request.headers))
