"""The notification outbox's sender, run by `manage.py run_notifier` beside the stream engine.

Its own process, so that a mail server that answers slowly, or not at all, never delays alarm
evaluation: the engine only writes outbox rows in the alarm's transaction (alerts/notifiers.py).
Each round claims the due rows (alerts/services/deliveries.py, SKIP LOCKED: any number of
senders may run), sends them on a small thread pool with each channel's short timeout and no
transaction open, then records every outcome in a short transaction of its own. Between rounds
it waits on LISTEN perfuse_outbox (the enqueue's NOTIFY arrives at the alarm's commit) or at
most `poll` seconds, which is also when retries that have come due are picked up.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection
from django.utils import timezone

from alerts.channels import Outcome, Sender, senders_from_settings
from alerts.notifiers import OUTBOX_CHANNEL
from alerts.services.deliveries import Claim, deliveries_claim, delivery_record

log = logging.getLogger(__name__)


class OutboxSender:
    def __init__(
        self,
        senders: dict[str, Sender] | None = None,
        *,
        batch: int = 20,
        workers: int = 4,
        poll: float = 1.0,
        clock: Callable[[], Any] = timezone.now,
    ) -> None:
        self.senders = senders_from_settings() if senders is None else senders
        self.batch = batch
        self.poll = poll
        self.clock = clock
        self.stop_event = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="perfuse-notify")
        # A claim outlives the slowest attempt by a margin: then it is someone else's to retry.
        timeouts = [settings.PERFUSE_SMTP_TIMEOUT_SECONDS, settings.PERFUSE_WEBHOOK_TIMEOUT_SECONDS]
        self.lease = dt.timedelta(seconds=4 * max(timeouts) + 30)
        self._listener: psycopg.Connection[Any] | None = None

    def stop(self) -> None:
        self.stop_event.set()

    def run_once(self) -> int:
        """One round: claim, send, record. Returns how many rows it handled."""
        if not self.senders:
            return 0
        claims = deliveries_claim(now=self.clock(), channels=list(self.senders), limit=self.batch, lease=self.lease)
        results = list(self._pool.map(self._send, claims))
        for claim, (outcome, elapsed_ms) in zip(claims, results, strict=True):
            state = delivery_record(claim=claim, outcome=outcome, now=self.clock(), elapsed_ms=elapsed_ms)
            if state is not None and not outcome.ok:
                log.warning(
                    "delivery %s (%s) attempt %s: %s -> %s",
                    claim.message.delivery_id,
                    claim.message.channel,
                    claim.attempt,
                    outcome.error,
                    state,
                )
        return len(claims)

    def _send(self, claim: Claim) -> tuple[Outcome, int]:
        started = time.monotonic()
        try:
            outcome = self.senders[claim.message.channel].send(claim.message)
        except Exception as exc:  # a sender bug must be recorded as a failure, not lose the row
            log.exception("sender for %s failed", claim.message.channel)
            outcome = Outcome(False, f"{type(exc).__name__}: {exc}"[:500])
        return outcome, int((time.monotonic() - started) * 1000)

    def run(self) -> None:
        """Until stop(): rounds, woken by NOTIFY or after `poll` seconds."""
        log.info("notifier started for %s", ", ".join(self.senders) or "no channels (nothing to send)")
        try:
            while not self.stop_event.is_set():
                try:
                    handled = self.run_once()
                except Exception:
                    # The database went away or a row is broken: log, close, try again shortly.
                    log.exception("notifier round failed; retrying")
                    connection.close()
                    self.stop_event.wait(min(self.poll * 5, 10))
                    continue
                if handled < self.batch:
                    self._wait()
        finally:
            self._unlisten()
            self._pool.shutdown(wait=True)
            connection.close()
            log.info("notifier stopped")

    def _wait(self) -> None:
        """Until a NOTIFY of the outbox channel, stop(), or `poll` seconds."""
        if self._listener is None:
            self._listener = _listener()
        if self._listener is None:
            self.stop_event.wait(self.poll)
            return
        deadline = time.monotonic() + self.poll
        try:
            # In slices, so that stop() is honoured within half a second.
            while not self.stop_event.is_set() and (left := deadline - time.monotonic()) > 0:
                if list(self._listener.notifies(timeout=min(left, 0.5), stop_after=1)):
                    return
        except psycopg.Error:
            log.warning("LISTEN %s lost; polling until it is back", OUTBOX_CHANNEL)
            self._unlisten()
            self.stop_event.wait(self.poll)

    def _unlisten(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None


def _listener() -> psycopg.Connection[Any] | None:
    """A connection of its own that LISTENs (Django's connection runs the rounds)."""
    db = connection.settings_dict
    try:
        listener = psycopg.connect(
            dbname=db["NAME"],
            user=db["USER"] or None,
            password=db["PASSWORD"] or None,
            host=db["HOST"] or None,
            port=db["PORT"] or None,
            connect_timeout=db["OPTIONS"].get("connect_timeout", 5),
            autocommit=True,
        )
        listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
    except psycopg.Error as exc:
        log.warning("LISTEN %s unavailable (%s); polling", OUTBOX_CHANNEL, exc)
        return None
    return listener
