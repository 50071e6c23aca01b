"""Start-up checks of the dashboard's settings (`manage.py check`, run by migrate and the tests)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error

from telemetry.units import METRICS


def card_metrics_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """A metric in PERFUSE_CARD_METRICS that no sensor can send is a typo: say so at start."""
    unknown = [m for m in settings.PERFUSE_CARD_METRICS if m not in METRICS]
    if not unknown:
        return []
    return [
        Error(
            f"PERFUSE_CARD_METRICS names unknown metrics: {', '.join(unknown)}",
            hint=f"Use metrics of telemetry.units.METRICS: {', '.join(sorted(METRICS))}.",
            id="dashboard.E001",
        )
    ]
