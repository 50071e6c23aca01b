"""Verification of the audit hash chain, its signed checkpoints and its external anchor.

Walking the rows in id order, each row must (1) link to its predecessor (`prev_hash` equals the
previous row's `hash`: catches deleted and reordered rows) and (2) hash to its stored `hash`
under the key the database never sees (catches changed and forged rows; audit/chain.py).
Checkpoints then vouch for the chain as a whole: each must carry a valid signature, follow its
predecessor, and match the row it names (hash and number of rows up to it), which catches a
rewrite that recomputed every hash and deletions of whole stretches. The anchor outside the
database (audit/anchor.py) vouches for the checkpoints: every anchored checkpoint must still be
in the database, unchanged — which catches the one erasure the database alone cannot show,
deleting the newest checkpoints together with the events they covered (or emptying both
tables). Finally the events after the newest anchored checkpoint must not be older than
PERFUSE_AUDIT_CHECKPOINT_MAX_AGE: they are the only ones that could still vanish unnoticed, so
a stopped checkpoint job or a failing anchor is itself a failure.
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from audit.anchor import AnchorEntry, AnchorError, configured_anchor
from audit.chain import GENESIS, HASH_VERSION, HASHED_FIELDS, LEGACY_HASH_VERSION, event_hash
from audit.checkpoints import checkpoint_signature
from audit.models import AuditCheckpoint, AuditEvent

_FIELDS = ("id", *HASHED_FIELDS, "prev_hash", "hash", "hash_version")


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


@dataclass
class _Walk:
    """Where a walk of the rows starts: after `start_after`, whose hash is `prev`."""

    start_after: int = 0
    prev: str = GENESIS
    count: int = 0
    keyed: bool = False  # a version-2 row was seen: every later row must be keyed too


def _first_id_after(event_id: int) -> int | None:
    return AuditEvent.objects.filter(id__gt=event_id).order_by("id").values_list("id", flat=True).first()


def _bad(count: int, event_id: int | None, reason: str) -> VerifyResult:
    return VerifyResult(count, False, event_id, f"event {event_id}: {reason}", 0, 0)


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


def _row_problem(row: tuple[Any, ...], walk: _Walk) -> str | None:
    stored_prev, stored_hash, version = row[-3], row[-2], row[-1]
    if stored_prev != walk.prev:
        return "does not link to the event before it (an event was removed or reordered)"
    if version not in (LEGACY_HASH_VERSION, HASH_VERSION) or (walk.keyed and version == LEGACY_HASH_VERSION):
        return "unkeyed event after keyed events (forged)"
    content = dict(zip(HASHED_FIELDS, row[1:-3], strict=True))
    if event_hash(stored_prev, content, version=version) != stored_hash:
        return "content does not match its hash (the event was changed or forged)"
    return None


def _walk_rows(walk: _Walk, checkpoints: list[AuditCheckpoint], first_of: dict[int, int]) -> VerifyResult:
    """Walk every row after walk.start_after; `checkpoints` are matched on the way, `first_of`
    (anchored: seq → first event of its range) names what a cut tail took."""
    pending = {cp.event_id: cp for cp in checkpoints}
    last_good_checkpoint_event, last_row = 0, walk.start_after
    rows = AuditEvent.objects.filter(id__gt=walk.start_after).order_by("id").values_list(*_FIELDS)
    for row in rows.iterator(chunk_size=5000):
        event_id = row[0]
        walk.count += 1
        problem = _row_problem(row, walk)
        if problem is not None:
            return _bad(walk.count, event_id, problem)
        walk.prev, walk.keyed, last_row = row[-2], walk.keyed or row[-1] == HASH_VERSION, event_id
        signed = pending.pop(event_id, None)
        if signed is not None:
            if signed.event_hash != walk.prev or signed.events != walk.count:
                first = _first_id_after(last_good_checkpoint_event)
                return _bad(walk.count, first, f"chain differs from signed checkpoint {signed.seq} (rewritten or cut)")
            last_good_checkpoint_event = event_id
    if pending:
        lost = min(pending.values(), key=lambda c: c.seq)
        first = max(last_row + 1, first_of.get(lost.seq, 0))
        return _bad(walk.count, first, f"event {lost.event_id} signed by checkpoint {lost.seq} is missing")
    return VerifyResult(walk.count, True, None, "intact", len(checkpoints), walk.start_after)


def _walk_full(first_of: dict[int, int]) -> VerifyResult:
    checkpoints = list(AuditCheckpoint.objects.order_by("seq"))
    broken = _bad_checkpoint_chain(checkpoints)
    if broken is not None:
        index, reason = broken
        after = checkpoints[index - 1].event_id if index else 0
        return VerifyResult(AuditEvent.objects.count(), False, _first_id_after(after), reason, len(checkpoints), 0)
    return _walk_rows(_Walk(), checkpoints, first_of)


def _walk_incremental() -> VerifyResult:
    """Only what follows the newest checkpoint whose signature holds (fast enough for a page)."""
    cp = AuditCheckpoint.objects.order_by("-seq").first()
    if cp is None:
        return _walk_rows(_Walk(), [], {})
    if not hmac.compare_digest(checkpoint_signature(cp), cp.signature):
        return VerifyResult(0, False, _first_id_after(0), f"checkpoint {cp.seq} has an invalid signature", 1, 0)
    row = AuditEvent.objects.filter(id=cp.event_id).values_list("hash", "hash_version").first()
    if row is None or row[0] != cp.event_hash:
        return VerifyResult(cp.events, False, cp.event_id, f"checkpoint {cp.seq} no longer matches", 1, 0)
    walk = _Walk(start_after=cp.event_id, prev=cp.event_hash, count=cp.events, keyed=row[1] == HASH_VERSION)
    return _walk_rows(walk, [], {})


def _anchored_differs(entry: AnchorEntry, cp: AuditCheckpoint | None) -> bool:
    if cp is None:
        return True
    return (cp.event_id, cp.event_hash, cp.events, cp.signature) != (
        entry.event_id,
        entry.event_hash,
        entry.events,
        entry.signature,
    )


def _against_anchor(walked: VerifyResult, anchored: Sequence[AnchorEntry]) -> VerifyResult | None:
    """The first anchored checkpoint the database lost or changed, naming the first event it no
    longer vouches for; None when every anchored checkpoint is still there."""
    in_db = {cp.seq: cp for cp in AuditCheckpoint.objects.filter(seq__in=[e.seq for e in anchored])}
    for entry in anchored:
        cp = in_db.get(entry.seq)
        if not _anchored_differs(entry, cp):
            continue
        before = AuditCheckpoint.objects.filter(seq__lt=entry.seq).order_by("-seq")
        vouched = before.values_list("event_id", flat=True).first() or 0
        first = min(x for x in (entry.first_event_id, _first_id_after(vouched)) if x is not None)
        state = "is missing from the database" if cp is None else "differs from the database's"
        reason = (
            f"event {first}: checkpoint {entry.seq} (events up to {entry.event_id}, {entry.events} in all) "
            f"anchored outside the database {state}: events were deleted, truncated or rewritten"
        )
        return VerifyResult(walked.events, False, first, reason, walked.checkpoints, walked.verified_from)
    return None


def _vouched_position(anchored: Sequence[AnchorEntry] | None) -> int:
    """The newest event vouched for from outside the database (the anchor's newest checkpoint);
    without an anchor, the newest signed checkpoint's."""
    if anchored is not None:
        return max((e.event_id for e in anchored), default=0)
    return AuditCheckpoint.objects.order_by("-seq").values_list("event_id", flat=True).first() or 0


def _stale(walked: VerifyResult, position: int, now: dt.datetime) -> VerifyResult | None:
    max_age = settings.PERFUSE_AUDIT_CHECKPOINT_MAX_AGE
    if not max_age:
        return None
    oldest = AuditEvent.objects.filter(id__gt=position).order_by("id").values_list("id", "occurred_at").first()
    if oldest is None or now - oldest[1] <= dt.timedelta(seconds=max_age):
        return None
    reason = (
        f"event {oldest[0]}: not covered by an anchored checkpoint for more than {max_age} s "
        f"(since {oldest[1].isoformat(timespec='seconds')}; is `audit_checkpoint` running, is the anchor writable?)"
    )
    return VerifyResult(walked.events, False, oldest[0], reason, walked.checkpoints, walked.verified_from)


def _read_anchor(*, incremental: bool) -> list[AnchorEntry] | None:
    """None when no anchor is configured; incremental: only the newest entry."""
    anchor = configured_anchor()
    if anchor is None:
        return None
    if incremental:
        latest = anchor.latest()
        return [latest] if latest else []
    return anchor.entries()


def chain_verify(*, incremental: bool = False, now: dt.datetime | None = None) -> VerifyResult:
    """Walk the whole chain and compare every anchored checkpoint (or, incremental=True, only what
    follows the newest checkpoint, against the newest anchored one: the `/audit/` status)."""
    try:
        anchored = _read_anchor(incremental=incremental)
    except AnchorError as exc:
        return VerifyResult(0, False, None, f"the anchor cannot be read: {exc}", 0, 0)
    first_of = {e.seq: e.first_event_id for e in anchored or []}
    walked = _walk_incremental() if incremental else _walk_full(first_of)
    if not walked.ok:
        return walked
    mismatch = _against_anchor(walked, anchored) if anchored else None
    position = _vouched_position(anchored)
    return mismatch or _stale(walked, position, now or dt.datetime.now(dt.UTC)) or walked
