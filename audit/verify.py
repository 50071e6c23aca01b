"""Verification of the audit hash chain and of its signed checkpoints (audit/checkpoints.py).

Walking the rows in id order, each row must (1) link to its predecessor (`prev_hash` equals the
previous row's `hash`: catches deleted and reordered rows) and (2) hash to its stored `hash`
(catches changed content). Checkpoints then vouch for the chain as a whole: each must carry a
valid signature, follow its predecessor, and match the row it names (hash and number of rows up
to it), which catches a rewrite that recomputed every hash and deletions of whole stretches.
What no in-database check can catch — removal of events after the newest checkpoint — is
bounded by how often checkpoints are written (docs/security.md).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from audit.chain import GENESIS, HASHED_FIELDS, event_hash
from audit.checkpoints import checkpoint_signature
from audit.models import AuditCheckpoint, AuditEvent

_FIELDS = ("id", *HASHED_FIELDS, "prev_hash", "hash")


@dataclass(frozen=True)
class VerifyResult:
    events: int
    ok: bool
    first_bad: int | None
    reason: str
    checkpoints: int
    verified_from: int  # first event id walked (0: from the genesis)

    def as_contract(self) -> dict[str, object]:
        return {"events": self.events, "ok": self.ok, "first_bad": self.first_bad}


def _first_id_after(event_id: int) -> int | None:
    return AuditEvent.objects.filter(id__gt=event_id).order_by("id").values_list("id", flat=True).first()


def _bad_checkpoint_chain(checkpoints: list[AuditCheckpoint]) -> tuple[int, str] | None:
    """(index of the first bad checkpoint, why), or None."""
    prev_sig, prev_seq, prev_event = GENESIS, 0, 0
    for index, cp in enumerate(checkpoints):
        if not hmac.compare_digest(checkpoint_signature(cp), cp.signature):
            return index, f"checkpoint {cp.seq} has an invalid signature"
        if cp.seq != prev_seq + 1 or cp.prev_signature != prev_sig or cp.event_id <= prev_event:
            return index, f"checkpoint {cp.seq} does not follow checkpoint {prev_seq} (checkpoints removed or forged)"
        prev_sig, prev_seq, prev_event = cp.signature, cp.seq, cp.event_id
    return None


def chain_verify(*, incremental: bool = False) -> VerifyResult:
    """Walk the whole chain (or, incremental=True, only what follows the newest checkpoint whose
    signature holds — fast enough for a page view; the command walks everything)."""
    checkpoints = list(AuditCheckpoint.objects.order_by("seq"))
    start_after, prev, count = 0, GENESIS, 0
    if incremental and checkpoints:
        checkpoints = checkpoints[-1:]
        cp = checkpoints[0]
        if hmac.compare_digest(checkpoint_signature(cp), cp.signature):
            row = AuditEvent.objects.filter(id=cp.event_id).values_list("hash", flat=True).first()
            if row != cp.event_hash:
                return VerifyResult(cp.events, False, cp.event_id, f"checkpoint {cp.seq} no longer matches", 1, 0)
            start_after, prev, count = cp.event_id, cp.event_hash, cp.events
            checkpoints = []
        else:
            return VerifyResult(0, False, _first_id_after(0), f"checkpoint {cp.seq} has an invalid signature", 1, 0)
    elif checkpoints:
        broken = _bad_checkpoint_chain(checkpoints)
        if broken is not None:
            index, reason = broken
            after = checkpoints[index - 1].event_id if index else 0
            return VerifyResult(AuditEvent.objects.count(), False, _first_id_after(after), reason, len(checkpoints), 0)
    pending = {cp.event_id: cp for cp in checkpoints}
    last_good_checkpoint_event = 0
    rows = AuditEvent.objects.filter(id__gt=start_after).order_by("id").values_list(*_FIELDS)
    for row in rows.iterator(chunk_size=5000):
        event_id, stored_prev, stored_hash = row[0], row[-2], row[-1]
        count += 1
        content = dict(zip(HASHED_FIELDS, row[1:-2], strict=True))
        if stored_prev != prev:
            return _bad(count, event_id, "does not link to the event before it (an event was removed or reordered)")
        if event_hash(stored_prev, content) != stored_hash:
            return _bad(count, event_id, "content does not match its hash (the event was changed)")
        prev = stored_hash
        signed = pending.pop(event_id) if event_id in pending else None
        if signed is not None:
            if signed.event_hash != stored_hash or signed.events != count:
                first = _first_id_after(last_good_checkpoint_event)
                return _bad(count, first, f"chain differs from signed checkpoint {signed.seq} (rewritten or cut)")
            last_good_checkpoint_event = event_id
    if pending:
        lost = min(pending.values(), key=lambda c: c.seq)
        first = _first_id_after(last_good_checkpoint_event)
        return _bad(count, first, f"event {lost.event_id} signed by checkpoint {lost.seq} is missing")
    return VerifyResult(count, True, None, "intact", len(checkpoints), start_after)


def _bad(count: int, event_id: int | None, reason: str) -> VerifyResult:
    return VerifyResult(count, False, event_id, f"event {event_id}: {reason}", 0, 0)
