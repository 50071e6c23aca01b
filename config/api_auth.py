"""The staff API's authentication: the verified session, with CSRF refusals coded `csrf_failed`.

Its own module because DRF imports the authentication classes named in settings while
`rest_framework.views` loads, so this must not import anything that imports the views
(config/api_errors.py does).
"""

from __future__ import annotations

from rest_framework import authentication, exceptions
from rest_framework.request import Request

CSRF_FAILED = "csrf_failed"


class SessionAuthentication(authentication.SessionAuthentication):
    """DRF's session authentication whose CSRF refusal carries the code `csrf_failed` (DRF's own
    is a bare PermissionDenied, which would read as the generic `forbidden`)."""

    def enforce_csrf(self, request: Request) -> None:
        try:
            super().enforce_csrf(request)
        except exceptions.PermissionDenied as exc:
            exc.perfuse_code = CSRF_FAILED  # type: ignore[attr-defined]
            raise
