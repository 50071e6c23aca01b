"""HTTP entry of device ingest through Django: async views so the hot path never waits on a
thread hop. In production the same endpoints are served by telemetry/asgi.py in front of Django
(no middleware); both call the same `pipeline.precheck` and, for a device's batch,
`group.device_handler()` (`pipeline.handle`, or the group writer with PERFUSE_INGEST_HTTP_GROUP),
and for edge gateways (contract section 1c) the same `gateway.gateway_handle`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from config import metrics
from telemetry.ingest import group, pipeline
from telemetry.ingest.answers import Answer, answer_counts, too_large
from telemetry.ingest.gateway import gateway_handle
from telemetry.schemas import encoder


def _respond(answer: Answer) -> HttpResponse:
    response = HttpResponse(encoder.encode(answer.body), status=answer.status, content_type="application/json")
    for name, value in answer.headers.items():
        response[name] = value
    return response


async def _answer(request: HttpRequest, handle: Callable[..., Awaitable[Answer]]) -> Answer:
    refused = pipeline.precheck(
        method=request.method or "",
        content_type=request.META.get("CONTENT_TYPE", ""),
        declared_length=request.META.get("CONTENT_LENGTH"),
    )
    if refused is not None:
        return refused
    body = request.body
    if len(body) > settings.PERFUSE_INGEST_MAX_BYTES:
        return too_large()
    return await handle(body=body, headers=request.headers)


@csrf_exempt
@metrics.ingest_observed
async def ingest_readings(request: HttpRequest) -> HttpResponse:
    return _respond(await _answer(request, group.device_handler()))


@csrf_exempt
async def ingest_gateway(request: HttpRequest) -> HttpResponse:
    # Counted per inner batch (answer_counts), as the raw ASGI path counts it.
    started = time.perf_counter()
    answer = await _answer(request, gateway_handle)
    accepted, duplicates, codes = answer_counts(answer)
    metrics.ingest_observe(
        status=answer.status,
        accepted=accepted,
        duplicates=duplicates,
        rejected_codes=codes,
        seconds=time.perf_counter() - started,
    )
    return _respond(answer)
