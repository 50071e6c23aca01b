"""Reads a streaming replica may answer (docs/replica.md), and only those.

With DATABASE_REPLICA_URL set, settings hold a second alias, REPLICA. There is deliberately no
database router: a router's db_for_read would send every ORM read there, access checks and
idempotency look-ups included, and a hot standby is milliseconds to seconds behind the writer.
Instead a read opts in twice:

- the selector is replica-tolerant: it takes its connection from `read_alias()` (raw SQL:
  `connections[read_alias()]`; ORM: `.using(read_alias())`), and
- its caller, an edge that has already decided and audited the read on the primary, runs it
  through `on_replica(read)` (or picks an alias with `replica_pick()` for a lazy queryset).

Outside `on_replica`, `read_alias()` is the primary, so the same selector called by the engine,
an alarm acknowledgement or a write transaction reads the writer's latest commit.

A replica is used only when a probe on it answers (one query: is it in recovery, how far behind
is its replay) and it is a standby (a promoted one may diverge from the writer). A failed probe
or read, or a server out of recovery, marks it down for PERFUSE_REPLICA_RETRY_SECONDS in this
process, so a dead replica costs one connect timeout per process per period, not one per request;
a read that failed on it runs again on the primary. With PERFUSE_REPLICA_MAX_LAG_SECONDS set, a
replica further behind is passed over. `seen=` asks for read-your-writes: the replica is used
only once it holds that row (the export job, or the audit event just committed), and with it
everything committed before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connections
from django.db.models import Model

REPLICA = "replica"
T = TypeVar("T")
logger = logging.getLogger("perfuse.replica")

# Replay lag in seconds: zero while the standby's WAL receiver runs and everything it received is
# replayed (an idle primary writes nothing, and the last replayed commit then grows old without
# the replica being behind); else the age of the last replayed commit; Infinity before any
# commit was replayed. (Only the receiver's pid is visible to a role without pg_read_all_stats.)
_PROBE = """
    SELECT pg_is_in_recovery(),
           CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
                     AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE pid IS NOT NULL) THEN 0
                ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, 'Infinity')
           END
"""


@dataclass(frozen=True)
class Probe:
    in_recovery: bool
    lag_seconds: float


class _Health:
    """This process's memory of a failed replica (shared by its threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.down_until = 0.0
        self.reason = ""

    def down(self, reason: str) -> None:
        with self.lock:
            first = time.monotonic() >= self.down_until
            self.down_until = time.monotonic() + settings.PERFUSE_REPLICA_RETRY_SECONDS
            self.reason = reason
        if first:
            logger.warning("replica not used for %ss: %s", settings.PERFUSE_REPLICA_RETRY_SECONDS, reason)

    def is_down(self) -> bool:
        return time.monotonic() < self.down_until


_health = _Health()
_chosen: ContextVar[str | None] = ContextVar("perfuse_replica_chosen", default=None)


def replica_configured() -> bool:
    return REPLICA in settings.DATABASES


def replica_down_reason() -> str:
    """Why the replica is being passed over now ("" when it is not)."""
    return _health.reason if _health.is_down() else ""


def read_alias() -> str:
    """The alias a replica-tolerant selector reads from: the replica inside `on_replica` when
    replica_pick chose it, the primary everywhere else."""
    return _chosen.get() or DEFAULT_DB_ALIAS


def replica_probe() -> Probe:
    """Ask the replica whether it is a standby and how far behind; raises on a dead replica."""
    with connections[REPLICA].cursor() as cursor:
        cursor.execute(_PROBE)
        in_recovery, lag = cursor.fetchone()
    return Probe(bool(in_recovery), float(lag))


def _holds(row: Model) -> bool:
    return type(row)._default_manager.using(REPLICA).filter(pk=row.pk).exists()


def _catches_up(row: Model, wait: float | None) -> bool:
    """Whether the replica holds `row`, waiting up to `wait` seconds (default
    PERFUSE_REPLICA_CATCH_UP_SECONDS) for replay: a commit of a moment ago is usually
    milliseconds from the standby."""
    wait = settings.PERFUSE_REPLICA_CATCH_UP_SECONDS if wait is None else wait
    deadline = time.monotonic() + wait
    while not _holds(row):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def replica_pick(*, seen: Model | None = None, in_transaction: bool = False, catch_up: float | None = None) -> str:
    """The alias for one replica-tolerant read now: REPLICA when configured, up, within the lag
    bound and (with `seen`) holding that row; else the primary. `in_transaction`: the caller's
    open transaction on the primary writes nothing the read looks at; `catch_up`: how long to
    wait for the replica to replay `seen`."""
    if not replica_configured() or _health.is_down():
        return DEFAULT_DB_ALIAS
    if connections[DEFAULT_DB_ALIAS].in_atomic_block and not in_transaction:
        return DEFAULT_DB_ALIAS
    try:
        probe = replica_probe()
        if not probe.in_recovery:
            # Promoted, or the URL names some other primary: it may diverge from the writer.
            _health.down("the replica server is not a standby (pg_is_in_recovery() is false)")
            return DEFAULT_DB_ALIAS
        bound = settings.PERFUSE_REPLICA_MAX_LAG_SECONDS
        if bound is not None and probe.lag_seconds > bound:
            logger.info("replica %.3fs behind (bound %ss): reading from the primary", probe.lag_seconds, bound)
            return DEFAULT_DB_ALIAS
        if seen is not None and not _catches_up(seen, catch_up):
            return DEFAULT_DB_ALIAS
    except (OperationalError, InterfaceError) as exc:
        _replica_failed(exc)
        return DEFAULT_DB_ALIAS
    return REPLICA


def _replica_failed(exc: BaseException) -> None:
    _health.down(f"{type(exc).__name__}: {str(exc).strip()[:200]}")
    # A broken connection would fail the next probe again; the next try connects afresh.
    with suppress(OperationalError, InterfaceError):
        connections[REPLICA].close()


@contextmanager
def _reading_from(alias: str) -> Iterator[None]:
    token = _chosen.set(alias)
    try:
        yield
    finally:
        _chosen.reset(token)


def on_replica(
    read: Callable[[], T], *, seen: Model | None = None, in_transaction: bool = False, catch_up: float | None = None
) -> T:
    """`read()` with replica-tolerant selectors on the replica when it may answer (replica_pick);
    a read that fails midway there is run again on the primary (reads have no effects)."""
    alias = replica_pick(seen=seen, in_transaction=in_transaction, catch_up=catch_up)
    if alias == DEFAULT_DB_ALIAS:
        return read()
    try:
        with _reading_from(alias):
            return read()
    except (OperationalError, InterfaceError) as exc:
        # A lost replica is remembered; a statement it cancelled (a recovery conflict) is not.
        if _replica_broken():
            _replica_failed(exc)
        else:
            logger.warning("a read on the replica failed, read again from the primary: %s", exc)
        return read()


def _replica_broken() -> bool:
    connection: Any = connections[REPLICA]
    try:
        return connection.connection is None or connection.connection.closed or not connection.is_usable()
    except (OperationalError, InterfaceError):
        return True
