"""Request hygiene and response headers shared by every view.

Each middleware here is sync- and async-capable through `RequestGate`, so none of them forces a
thread hop under ASGI: `before` may answer in place of the view, `after` may amend the answer.
The access layer's session-idle middleware and the ops endpoints (config.ops) build on it too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from config.api_errors import FHIR_PREFIX, error_response, outcome_response

# What Django hands a middleware: the next handler, a coroutine function when the middleware
# runs async (the middleware tells which with asgiref's iscoroutinefunction, once).
GetResponse = Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]


class RequestGate:
    """A middleware that works both ways. Under ASGI a sync-only middleware would make Django run
    every request through the one thread-sensitive executor for its whole duration (one request
    at a time); a gate whose `before` touches the database overrides `abefore` to take that
    thread hop only when it has to."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self._async:
            return self.__acall__(request)
        answer = self.before(request)
        return answer if answer is not None else self.after(request, cast(HttpResponse, self.get_response(request)))

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        answer = await self.abefore(request)
        if answer is not None:
            return answer
        return self.after(request, await cast(Awaitable[HttpResponse], self.get_response(request)))

    def before(self, request: HttpRequest) -> HttpResponse | None:
        return None

    async def abefore(self, request: HttpRequest) -> HttpResponse | None:
        """`before` under ASGI: called in the event loop, so it must not block."""
        return self.before(request)

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return response


def _has_nul(request: HttpRequest) -> bool:
    return "\x00" in request.META.get("QUERY_STRING", "") or any(
        "\x00" in key or any("\x00" in v for v in values) for key, values in request.GET.lists()
    )


class RejectNulMiddleware(RequestGate):
    """A NUL character in a query parameter is a 400, for every view at once.

    PostgreSQL text cannot hold NUL: a filter or an audit row carrying one would fail as a 500.
    Forms already refuse NUL (Django's CharField); query strings reach selectors directly.
    """

    def before(self, request: HttpRequest) -> HttpResponse | None:
        if _has_nul(request):
            detail = "query parameters must not contain NUL characters"
            if request.path.startswith(FHIR_PREFIX):
                return outcome_response(400, "invalid_parameter", detail)
            return error_response(400, "invalid_parameter", detail)
        return None


class ChunkedBodyMiddleware(RequestGate):
    """A body sent with `Transfer-Encoding: chunked` gets its measured Content-Length.

    The server has buffered the whole body before the application runs (Daphne does), but DRF
    reads a body only when Content-Length says there is one: without this, a chunked
    `{"note": ...}` would be taken as an empty request and acted on without its content.
    """

    def before(self, request: HttpRequest) -> HttpResponse | None:
        if "HTTP_TRANSFER_ENCODING" in request.META and not request.META.get("CONTENT_LENGTH"):
            request.META["CONTENT_LENGTH"] = str(len(request.body))
        return None


class ContentSecurityPolicyMiddleware(RequestGate):
    """`Content-Security-Policy` on every answer (PERFUSE_CONTENT_SECURITY_POLICY): scripts only
    from our own static files, so an injected `<script>` or `onclick=` does not run. Pages pass
    data to their scripts with `json_script` (JSON, never executed) or data- attributes."""

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        response.headers.setdefault("Content-Security-Policy", settings.PERFUSE_CONTENT_SECURITY_POLICY)
        return response
