"""Server-rendered pages of the dashboard: the ward overview and the patient chart.

Pages carry only what the first paint needs; live data arrives over the WebSocket
(dashboard/consumers.py) and history over the REST API (dashboard/api.py).
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import Resolver404, resolve

from alerts.selectors import alarm_scope
from audit.access.answers import refusal_pages
from audit.access.policy import actor_from_request, patient_read, ward_read
from config.api_errors import error_body
from config.live import iso
from dashboard import selectors

PRESETS = [("5 min", 300), ("1 h", 3600), ("8 h", 8 * 3600), ("24 h", 24 * 3600), ("7 d", 7 * 24 * 3600)]
DENIED_TEMPLATE = "dashboard/denied.html"


@refusal_pages(DENIED_TEMPLATE)
def overview(request: HttpRequest) -> HttpResponse:
    now = dt.datetime.now(dt.UTC)
    with transaction.atomic():
        patients = ward_read(user=request.user, actor=actor_from_request(request), action="ward.view")
        cards = selectors.ward_cards(patients=patients, now=now)
    context = {"cards": cards, "stale_after": settings.PERFUSE_STALE_SECONDS}
    return render(request, "dashboard/overview.html", context)


def _identity_url(pseudonym: str) -> str:
    """The access app's identity-reveal endpoint, when it is installed."""
    url = f"/api/v1/patients/{pseudonym}/identity"
    try:
        resolve(url)
    except Resolver404:
        return ""
    return url


@refusal_pages(DENIED_TEMPLATE)
def patient_chart(request: HttpRequest, pseudonym: str) -> HttpResponse:
    patient, decision = patient_read(
        user=request.user, actor=actor_from_request(request), pseudonym=pseudonym, action="chart.view"
    )
    ended = decision.periods[-1][1] if decision.periods else patient.discharged_at
    config = {
        "pseudonym": patient.pseudonym,
        "metric": selectors.METRIC,
        "unit": "%",
        "metrics": selectors.chart_metrics(),
        "presets": [seconds for _, seconds in PRESETS],
        "staleAfter": settings.PERFUSE_STALE_SECONDS,
        "lowQuality": 0.5,
        "breakGlass": decision.break_glass,
        # Set when there is no present to watch: the chart opens the history up to then.
        "historyEnd": iso(ended) if ended else None,
        "historyReason": "former_ward" if decision.periods else ("discharged" if ended else ""),
    }
    context = {
        "patient": patient,
        "presets": PRESETS,
        "chart_config": config,
        "identity_url": _identity_url(pseudonym),
        # The patient's alarm history, for users with an alarm console (alerts/history/views.py).
        "alarm_history": alarm_scope(request.user) is not None,
    }
    return render(request, "dashboard/chart.html", context)


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
