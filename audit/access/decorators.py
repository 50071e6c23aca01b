"""The page guard: a staff page for one capability (audit/access/roles.py).

An anonymous, password-only or idle-expired visitor gets the login page, a verified user of the
wrong role a 403 page; either refusal is one audit event (audit/access/answers.py answers the
refusals of the page itself the same way). Allowed views write their own single event (they
know the subject).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest
from django.http.response import HttpResponseBase

from audit.access.answers import View, refusal_pages
from audit.access.policy import access_refusal, user_can


def staff_page(capability: str, action: str) -> Callable[[View], View]:
    def decorate(view: View) -> View:
        @refusal_pages()
        @functools.wraps(view)
        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not user_can(request.user, capability):
                raise access_refusal(
                    request.user,
                    action=action,
                    detail="Your role does not include this page.",
                    subject=str(kwargs.get("pseudonym", ""))[:80],
                )
            return view(request, *args, **kwargs)

        return guarded

    return decorate
