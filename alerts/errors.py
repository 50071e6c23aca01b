"""What alarm acts refuse, as config.refusal.Refusal: audited once (after the act's transaction
rolled back) and answered by the one API handler or page helper of the access layer.

Each class fixes the answer (HTTP status, default code); the raiser gives the audit action, the
reason, the subject and the human detail. A conflict (someone else acknowledged first) and a
value the ward does not allow are refusals too: the attempt is audited like any other.
"""

from __future__ import annotations

from typing import Any

from config.refusal import Refusal


class AlarmError(Refusal):
    status = 400
    code = "invalid"

    def __init__(
        self,
        detail: Any,
        *,
        action: str,
        reason: str,
        subject: str = "",
        code: str | None = None,
        facts: dict[str, Any] | None = None,
    ) -> None:
        kind = type(self)
        super().__init__(
            action=action,
            reason=reason,
            code=code or kind.code,
            status=kind.status,
            detail=detail,
            subject=subject,
            facts=facts,
        )


class AlarmNotFound(AlarmError):
    status, code = 404, "not_found"


class AlarmForbidden(AlarmError):
    status, code = 403, "forbidden"


class AlarmConflict(AlarmError):
    status, code = 409, "conflict"


class RuleInvalid(AlarmError):
    status, code = 400, "invalid_rule"


class ShiftInvalid(AlarmError):
    status, code = 400, "invalid_shift"
