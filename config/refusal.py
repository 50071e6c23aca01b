"""The one way to refuse: a service, selector or guard that decides against an attempt raises
`Refusal`; nothing else answers a refusal.

A refusal carries what each of its three answers needs: the stable JSON `code`, the HTTP `status`
and the human `detail` for the client; the audit `action`, `subject` (a pseudonym, or "") and
`reason` (plus `facts`, and a stated `purpose` or `break_glass` where the attempt had one) for
the denial event. It is audited exactly once, by
audit.access.refusals.refusal_audit, after the transaction of the refused act rolled back (so a
refused act leaves no partial write, and its denial is still committed). Then it is answered by
the DRF exception handler (a JSON error), the page helper (a redirect to the login page or a 403
page) or a WebSocket consumer (close code 4403) — see audit/access/answers.py.

Plumbing: imports nothing of the apps, so every layer may raise it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Reasons that mean "sign in (again)": pages answer them with the login page, not a 403.
SIGN_IN_REASONS = frozenset({"not_authenticated", "mfa_required"})


class Refusal(Exception):
    """An attempt refused: who may not do what, why, and how to say so."""

    def __init__(
        self,
        *,
        action: str,
        reason: str,
        code: str = "forbidden",
        status: int = 403,
        detail: Any = "You may not do this.",
        subject: str = "",
        purpose: str = "",
        break_glass: bool = False,
        facts: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(str(detail))
        self.action = action
        self.reason = reason
        self.code = code
        self.status = status
        self.detail = detail
        self.subject = subject
        self.purpose = purpose
        self.break_glass = break_glass
        self.facts = dict(facts or {})
        # Set by refusal_audit: a refusal passed on by several layers is audited once.
        self.audited = False

    @property
    def wants_sign_in(self) -> bool:
        return self.reason in SIGN_IN_REASONS
