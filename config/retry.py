"""The back-off of the durable outboxes (alarm notifications, HL7 results): after failed attempt n
the next is due base · 2^(n-1) seconds later, capped, so a receiver that is down for a while is
asked less and less often but never given up on for that reason alone."""

from __future__ import annotations

import datetime as dt


def backoff(attempt: int, *, base: float, cap: float) -> dt.timedelta:
    """Delay after failed attempt `attempt` (1-based)."""
    return dt.timedelta(seconds=min(base * 2 ** min(max(attempt, 1) - 1, 20), cap))
