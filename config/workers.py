"""Worker processes that run Django code (`manage.py archive --jobs N`).

Workers are forked from the process that has Django set up, so they start in milliseconds
instead of importing and setting up everything again (≈ 1.4 CPU-s a spawned worker here, a fifth
of a benchmark-sized archive run). What a forked child must not do is use the database sessions
it inherited: a query would interleave with the parent's on the same socket, and closing one
(as a worker does when its task ends) sends libpq's Terminate and ends the parent's session. So
the child starts with a fresh set of Django connections and opens its own on first use; the
inherited ones are only garbage, which psycopg does not close in a process other than the one
that opened them. Redis clients notice the new process themselves; the store's clients are built
again in the child from its URL.

Forked from the thread that creates the pool: Python's fork keeps only that thread, reinitialises
the logging and import locks, and a `ProcessPoolExecutor` on the fork context starts all its
workers at once from the caller, before its own management thread.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from asgiref.local import Local
from django.db import connections


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """A pool of `jobs` forked workers with database connections of their own."""
    return ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_worker_start,
    )


def _worker_start() -> None:
    # The handler's store of per-thread wrappers, fresh (Django has no public way to forget them).
    connections._connections = Local(connections.thread_critical)  # type: ignore[attr-defined]
