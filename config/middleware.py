"""Request hygiene shared by every view."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from config.api_errors import error_response


def _has_nul(request: HttpRequest) -> bool:
    return "\x00" in request.META.get("QUERY_STRING", "") or any(
        "\x00" in key or any("\x00" in v for v in values) for key, values in request.GET.lists()
    )


class RejectNulMiddleware:
    """A NUL character in a query parameter is a 400, for every view at once.

    PostgreSQL text cannot hold NUL: a filter or an audit row carrying one would fail as a 500.
    Forms already refuse NUL (Django's CharField); query strings reach selectors directly.
    Async-capable so it never forces a thread hop under ASGI.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self._async:
            return self.__acall__(request)
        if _has_nul(request):
            return _refuse()
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        if _has_nul(request):
            return _refuse()
        return await self.get_response(request)


def _refuse() -> HttpResponse:
    return error_response(400, "invalid_parameter", "query parameters must not contain NUL characters")
