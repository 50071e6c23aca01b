"""How a refusal (config/refusal.py) is answered, after it was audited once
(audit/access/refusals.py): the REST API's JSON error, a page's redirect or 403 page. WebSocket
consumers audit it with `refusal_audit` and close with 4403.

`api_exception_handler` is DRF's EXCEPTION_HANDLER (settings): a Refusal becomes the contract's
{"error": {"code", "detail"}} body with its status; every other exception goes on to
config.api_errors.exception_handler, which gives DRF's own errors the same body. `refusal_pages`
wraps a page view: a Refusal it raises sends a visitor who must sign in (again) to the login
page, anyone else to a 403 page (or the refusal's status, e.g. 404).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.shortcuts import render
from rest_framework.response import Response

from audit.access.policy import actor_from_request
from audit.access.refusals import refusal_audit
from config.api_errors import error_body, exception_handler
from config.refusal import Refusal

View = Callable[..., HttpResponseBase]
FORBIDDEN_TEMPLATE = "errors/forbidden.html"
NOT_FOUND_TEMPLATE = "errors/not_found.html"


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if not isinstance(exc, Refusal):
        return exception_handler(exc, context)
    request = context["request"]
    refusal_audit(exc, actor_from_request(getattr(request, "_request", request)))
    return Response(error_body(exc.code, exc.detail), status=exc.status)


def refusal_page(request: HttpRequest, refusal: Refusal, *, template: str = FORBIDDEN_TEMPLATE) -> HttpResponseBase:
    """Audit (once) and answer a refused page: the login page, or `template` with the detail."""
    refusal.facts.setdefault("path", request.path[:200])
    refusal_audit(refusal, actor_from_request(request))
    if refusal.wants_sign_in:
        return redirect_to_login(request.get_full_path())
    if refusal.status == 404:
        template = NOT_FOUND_TEMPLATE
    return render(request, template, {"message": refusal.detail}, status=refusal.status)


def refusal_pages(template: str = FORBIDDEN_TEMPLATE) -> Callable[[View], View]:
    """Answer the refusals a page view raises with `refusal_page`."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def answered(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            try:
                return view(request, *args, **kwargs)
            except Refusal as refusal:
                return refusal_page(request, refusal, template=template)

        return answered

    return decorate
