"""The ORU sender: `oru_sender_run(stop=...)`, run by `manage.py run_hl7` beside the ADT listener.

Each round claims the due outbox messages (telemetry/hl7/outbox.py: at most one per patient, the
oldest not yet done), sends them one after another over one MLLP connection to
PERFUSE_HL7_ORU_TARGET (TLS when PERFUSE_HL7_ORU_TLS_CA is set), and records each outcome before
the next is sent. An attempt waits PERFUSE_HL7_ORU_ACK_TIMEOUT_SECONDS for the ACK; a timeout, a
refused or dropped connection, or an ACK that does not name the message's MSH-10 ends the
connection (a late ACK must never be taken for the next message's) and is retried like an AE.
The database work runs in worker threads (sync_to_async), each call its own short transaction; none
is open while a message is on the wire. Between rounds that found nothing the sender waits a second, which is also when
retries that came due are picked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from telemetry.hl7.er7 import HeaderError, header_read, segments
from telemetry.hl7.mllp import MllpConnection, MllpError
from telemetry.hl7.outbox import AckOutcome, OruClaim, oru_claim, oru_record, oru_text

log = logging.getLogger(__name__)
T = TypeVar("T")

# Commit-mode codes (CA/CE/CR) mean the same to a sender that only asked for an original-mode ACK.
ACK_CODES = {"AA": "AA", "CA": "AA", "AE": "AE", "CE": "AE", "AR": "AR", "CR": "AR"}


def target_address(value: str) -> tuple[str, int]:
    """host:port (IPv6 as [::1]:port) of PERFUSE_HL7_ORU_TARGET."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"PERFUSE_HL7_ORU_TARGET must be host:port, got {value!r}")
    return host.strip("[]"), int(port)


def client_tls() -> ssl.SSLContext | None:
    """TLS to the EHR when PERFUSE_HL7_ORU_TLS_CA names the CA that signed its certificate (the
    host name is checked); PERFUSE_HL7_ORU_TLS_CERT/_KEY add Perfuse's client certificate."""
    if not settings.PERFUSE_HL7_ORU_TLS_CA:
        return None
    context = ssl.create_default_context(cafile=settings.PERFUSE_HL7_ORU_TLS_CA)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.PERFUSE_HL7_ORU_TLS_CERT:
        context.load_cert_chain(settings.PERFUSE_HL7_ORU_TLS_CERT, settings.PERFUSE_HL7_ORU_TLS_KEY or None)
    return context


def ack_read(reply: bytes, *, control_id: str) -> AckOutcome:
    """The outcome an ACK says for the message `control_id` (MSA-1, MSA-2; ERR for the reason)."""
    text = reply.decode("utf-8", errors="replace")
    try:
        separator = header_read(text).encoding.field
    except HeaderError as exc:
        return AckOutcome("", f"the reply is not HL7: {exc}")
    found = {segment[:3]: segment for segment in reversed(segments(text))}
    msa = found.get("MSA", "").split(separator)
    if len(msa) < 3 or msa[2] != control_id:
        return AckOutcome("", f"the reply does not acknowledge {control_id}: {found.get('MSA', 'no MSA')[:200]}")
    code = ACK_CODES.get(msa[1], "")
    if not code:
        return AckOutcome("", f"unknown acknowledgement code {msa[1][:10]!r}")
    reason = " ".join(part for part in (msa[3] if len(msa) > 3 else "", found.get("ERR", "")) if part)
    return AckOutcome(code, reason[:500])


def _in_thread(function: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """`function` run in a worker thread, between the connection checks Django makes around a
    request (a connection that broke, e.g. the database restarted, is replaced)."""

    def call(**kwargs: Any) -> T:
        close_old_connections()
        try:
            return function(**kwargs)
        finally:
            close_old_connections()

    return sync_to_async(call, thread_sensitive=False)


_claim = _in_thread(oru_claim)
_text = _in_thread(oru_text)
_record = _in_thread(oru_record)


class OruSender:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        batch: int = 10,
        poll: float = 1.0,
        ack_timeout: float | None = None,
        clock: Callable[[], dt.datetime] = timezone.now,
    ) -> None:
        self.host, self.port, self.batch, self.poll, self.clock = host, port, batch, poll, clock
        self.ack_timeout = settings.PERFUSE_HL7_ORU_ACK_TIMEOUT_SECONDS if ack_timeout is None else ack_timeout
        # A claim outlives a round's attempts (each at most the ACK wait) by a margin; after that
        # the message is anyone's to retry (a sender that died holds nothing for long).
        self.lease = dt.timedelta(seconds=batch * self.ack_timeout + 30)
        self._connection = MllpConnection(host, port, tls=tls)

    async def run(self, stop: asyncio.Event) -> None:
        log.info("ORU sender to %s:%d", self.host, self.port)
        try:
            while not stop.is_set():
                try:
                    handled = await self.round()
                except Exception:
                    # The database went away or a row is broken: log, wait, try again.
                    log.exception("ORU round failed; retrying")
                    handled = 0
                if handled == 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.poll)
        finally:
            await self._connection.close()
            log.info("ORU sender stopped")

    async def round(self) -> int:
        """Claim, send, record; returns how many messages had an attempt."""
        claims = await _claim(now=self.clock(), limit=self.batch, lease=self.lease)
        for index, claim in enumerate(claims):
            outcome = await self.attempt(claim)
            await self._record(claim, outcome)
            if not outcome.code:
                # No usable ACK: the receiver is down, stalled or confused. The rest of the round
                # is not tried against it; each is due again after its back-off.
                for rest in claims[index + 1 :]:
                    await _record(claim=rest, outcome=AckOutcome("", f"not sent: {outcome.error}"), now=self.clock())
                break
        return len(claims)

    async def _record(self, claim: OruClaim, outcome: AckOutcome) -> None:
        state = await _record(claim=claim, outcome=outcome, now=self.clock())
        if outcome.code != "AA":
            code = outcome.code or "no ACK"
            log.warning("ORU %s attempt %d: %s %s -> %s", claim.control_id, claim.attempt, code, outcome.error, state)

    async def attempt(self, claim: OruClaim) -> AckOutcome:
        text = await _text(claim=claim, at=self.clock())
        try:
            async with asyncio.timeout(self.ack_timeout):
                reply = await self._connection.exchange(text.encode("utf-8"))
        except TimeoutError:
            await self._connection.close()
            return AckOutcome("", f"no ACK within {self.ack_timeout:g} s")
        except (OSError, MllpError, ssl.SSLError) as exc:
            await self._connection.close()
            return AckOutcome("", f"{type(exc).__name__}: {exc}"[:500])
        outcome = ack_read(reply, control_id=claim.control_id)
        if not outcome.code:
            await self._connection.close()
        return outcome


async def oru_sender_run(*, stop: asyncio.Event) -> None:
    """Send the ORU outbox to PERFUSE_HL7_ORU_TARGET until `stop` is set; without a target, only
    wait for `stop` (run_hl7 ends the process when any of its coroutines returns)."""
    if not settings.PERFUSE_HL7_ORU_TARGET:
        log.info("PERFUSE_HL7_ORU_TARGET is not set: no results are sent")
        await stop.wait()
        return
    host, port = target_address(settings.PERFUSE_HL7_ORU_TARGET)
    await OruSender(host, port, tls=client_tls()).run(stop)
