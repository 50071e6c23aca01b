"""Routes of the alarm signals and display settings for the authorization matrix
(tests/authz_registry.py): a console's audio pause, and the display mode every signed-in role keeps."""

from __future__ import annotations

from tests.authz_registry import ALL_ROLES, Route
from tests.authz_routes_alarms import CONSOLE

ROUTES: list[Route] = [
    Route(
        "console audio pause api",
        "api",
        "POST",
        "/api/v1/alarms/audio-pause",
        CONSOLE,
        data={"seconds": 120, "priority": "medium"},
    ),
    Route("display mode setting", "page", "POST", "/accounts/display", ALL_ROLES, data={"mode": "night"}),
]
