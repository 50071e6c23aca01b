"""Under Daphne every middleware must be async-capable: one sync-only middleware makes Django run
each request (device ingest and the dashboard API included) through the single thread-sensitive
executor for its whole duration, i.e. one request at a time."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.handlers import base
from django.core.handlers.asgi import ASGIHandler


def test_no_middleware_is_adapted_to_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    adapted: list[str] = []
    original = base.BaseHandler.adapt_method_mode

    def spy(self: Any, is_async: bool, method: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, is_async, method, *args, **kwargs)
        if result is not method and not is_async:
            adapted.append(str(kwargs.get("name") or (args[2] if len(args) > 2 else method)))
        return result

    monkeypatch.setattr(base.BaseHandler, "adapt_method_mode", spy)
    ASGIHandler()
    assert adapted == []
