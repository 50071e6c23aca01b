"""drf-spectacular hook adding the device ingest endpoint (an async Django view, not DRF)."""

from __future__ import annotations

from typing import Any

from telemetry.ingest_schema import ingest_openapi


def add_ingest_endpoint(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    paths, components = ingest_openapi()
    result.setdefault("paths", {}).update(paths)
    result.setdefault("components", {}).setdefault("schemas", {}).update(components)
    return result
