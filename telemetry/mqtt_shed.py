"""The MQTT bridge's overload shedding: a message nobody waits for any more is answered cheaply.

Why. Under overload a queue of old messages collapses a QoS 1 door: the bridge works through
them in order while every sender, getting no ack in time, resends its (growing) backlog, so all
the work goes to messages nobody waits for (docs/benchmarks.md, "Fleet"). The HTTP door does not
collapse because a request that gets no ingest connection within PERFUSE_INGEST_POOL_TIMEOUT_SECONDS
is answered 503 `storage_unavailable` and the client backs off. This module gives the bridge the
same property.

When a message is stale. What the bridge can trust:

- the MQTT 5 Message Expiry Interval as the broker delivered it: the sender's own wait (the
  contract asks senders to set it to their ack timeout, docs/mqtt.md), counted down by the
  broker while the message sat in its queue (Mosquitto discards a queued message whose interval
  ran out, and sends the remainder, in whole seconds, with the rest). So `received + remaining`
  is when the sender stops waiting;
- the bridge's own clock from the moment its MQTT client parsed the message (`received`). A message
  without an expiry gets the HTTP door's bound: PERFUSE_INGEST_POOL_TIMEOUT_SECONDS from its
  arrival at the bridge (time it spent in the broker's queue before is unknown, and is not held
  against it: after a bridge outage the queued messages are all worked through);
- not the signed `x-perfuse-timestamp`: it says when the sender signed, not when this copy was
  sent, and a device may retransmit the same signed bytes up to 300 s later (contract 1): judged
  by it, such a retransmit would be refused every time it came.

A message is shed when it cannot be answered before that deadline: at arrival, from the work
already waiting ahead of it and its own estimated cost; and again when its turn comes. Shed
means: no signature checked, nothing parsed or stored, an ack of 503 `storage_unavailable` (the
HTTP door's overload answer, so a sender treats both doors alike) with `retry_after`, then the
PUBACK. It never follows a commit of that message, so it cannot make a sender drop a reading
that was stored: the sender sends the message again, and what was stored by an earlier copy is
counted as a duplicate. A retransmit arriving when there is capacity is processed as usual.

Cost estimate (gateway messages): the bridge's wall time per payload byte (a message counting
as at least MIN_BYTES), an exponentially weighted mean over the gateway messages it completed;
work ahead drains at `slots` messages at once. An oversized message is not judged: its 413 is
as cheap as a shed. Device messages go through the group writer, whose queue is judged by its sojourn: the
age of the oldest message it has not answered yet is what a new arrival would wait.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from telemetry.ingest.answers import Answer, error

# Weight of the newest completion in the per-byte estimate.
EWMA_WEIGHT = 0.2
# The longest `retry_after` an overload ack asks for (seconds).
MAX_RETRY_AFTER = 30
# A message costs a fixed part (a pooled connection, the outer key, a transaction) besides its
# bytes: each message counts as at least this many bytes, or a tiny message answered in a few
# milliseconds would make every large one look minutes long.
MIN_BYTES = 4096


@dataclass(frozen=True)
class Arrival:
    """When the bridge got a message, and how long its sender still waits (None: not said)."""

    received: float  # time.monotonic()
    expiry: int | None  # the remaining Message Expiry Interval the broker delivered, in seconds

    def deadline(self, *, max_wait: float) -> float:
        """When nobody waits for this message's answer any more (monotonic seconds)."""
        return self.received + (self.expiry if self.expiry is not None else max_wait)


def overloaded(retry_after: float) -> Answer:
    """The cheap answer to a shed message: the HTTP door's 503, with when to come back."""
    seconds = max(1, min(MAX_RETRY_AFTER, math.ceil(retry_after)))
    return error(
        "storage_unavailable",
        "the ingest is overloaded: this message could not be taken before its sender stopped waiting; retry later",
        {"Retry-After": str(seconds)},
    )


class GatewayShedder:
    """Admission of gateway messages: bytes waiting, the per-byte cost, at most `slots` at once."""

    def __init__(self, *, slots: int, max_wait: float) -> None:
        self.slots = max(1, slots)
        self.max_wait = max_wait
        self.seconds_per_byte = 0.0  # unknown until a message completed: everything is admitted
        self.waiting_bytes = 0  # admitted, not started
        self.shed = 0

    def finish_estimate(self, size: int, *, now: float, waiting: int | None = None) -> float:
        """When a message of `size` bytes would be answered if admitted now."""
        ahead = self.waiting_bytes if waiting is None else waiting
        return now + (ahead / self.slots + max(size, MIN_BYTES)) * self.seconds_per_byte

    def admit(self, arrival: Arrival, size: int, *, now: float | None = None) -> bool:
        """At arrival: True to queue it (counted as waiting), False to shed it at once."""
        now = time.monotonic() if now is None else now
        if self.finish_estimate(size, now=now) > arrival.deadline(max_wait=self.max_wait):
            self.shed += 1
            return False
        self.waiting_bytes += max(size, MIN_BYTES)
        return True

    def start(self, arrival: Arrival, size: int, *, now: float | None = None) -> bool:
        """Its turn came (a slot is held): True to do the work, False to shed it after all."""
        now = time.monotonic() if now is None else now
        self.waiting_bytes = max(0, self.waiting_bytes - max(size, MIN_BYTES))
        if self.finish_estimate(size, now=now, waiting=0) > arrival.deadline(max_wait=self.max_wait):
            self.shed += 1
            return False
        return True

    def done(self, size: int, seconds: float) -> None:
        """A message of `size` bytes took `seconds` of the bridge's wall time."""
        sample = max(0.0, seconds) / max(size, MIN_BYTES)
        if self.seconds_per_byte == 0.0:
            self.seconds_per_byte = sample
        else:
            self.seconds_per_byte += EWMA_WEIGHT * (sample - self.seconds_per_byte)

    def retry_after(self) -> float:
        """How long the work already admitted takes to drain: when a resend could be taken."""
        return self.waiting_bytes / self.slots * self.seconds_per_byte


class SojournShedder:
    """Admission of device messages to the group writer: shed while its oldest unanswered
    message has waited longer than a newcomer's sender would wait."""

    def __init__(self, *, max_wait: float) -> None:
        self.max_wait = max_wait
        self._pending: dict[int, float] = {}  # id(message) → received, in arrival order
        self.shed = 0

    def sojourn(self, *, now: float) -> float:
        oldest = next(iter(self._pending.values()), None)
        return 0.0 if oldest is None else now - oldest

    def admit(self, key: int, arrival: Arrival, *, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if now + self.sojourn(now=now) > arrival.deadline(max_wait=self.max_wait):
            self.shed += 1
            return False
        self._pending[key] = arrival.received
        return True

    def answered(self, key: int) -> None:
        self._pending.pop(key, None)

    def retry_after(self, *, now: float | None = None) -> float:
        return self.sojourn(now=time.monotonic() if now is None else now)
