"""How a sender waits after a failed attempt: what the server asked, then exponential backoff
with jitter (docs/mqtt.md, "Overload").

A sender that got no answer, or a 429/503, and tries again after a fixed second makes an
overloaded server's queue longer with every timeout: the retries of all senders arrive together
and all carry their growing backlogs. So each consecutive failure doubles a window (from `base`,
up to `cap`), and the wait is at least the server's `retry_after` and at least half the window,
plus a random part of the other half ("equal jitter": senders that failed together come back
spread out). A success starts again from `base`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    base: float = 1.0
    cap: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0  # consecutive, since the last success

    def failed(self, retry_after: float | None = None) -> float:
        """Seconds to wait before the next attempt after one more failure."""
        window = min(self.cap, self.base * 2.0**self.failures)
        self.failures += 1
        floor = max(window / 2, min(self.cap, retry_after or 0.0))
        return min(self.cap, floor + self.rng.uniform(0.0, window / 2))

    def succeeded(self) -> None:
        self.failures = 0
