"""Audit-trail figures (not a test): append rate of hash-chained events (one writer and several
concurrent writers serialized by the chain lock), and the time audit_verify takes per event.

    DATABASE_URL=… REDIS_URL=… DJANGO_SETTINGS_MODULE=config.settings.dev .venv/bin/python bench/audit.py [N]

Writes N (default 5000) events with action "bench.event" into the configured database; run it
against a throwaway database.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

import django

django.setup()

from django.db import connection  # noqa: E402

from audit.models import AuditEvent  # noqa: E402
from audit.trail import Actor, audit_record  # noqa: E402
from audit.verify import chain_verify  # noqa: E402

ACTOR = Actor(user_id=1, username="bench", role="clinician", source_address="127.0.0.1", user_agent="bench")


def write(n: int) -> None:
    try:
        for i in range(n):
            audit_record(actor=ACTOR, action="bench.event", subject=f"p-{i % 50}", detail={"i": i})
    finally:
        connection.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    start = time.perf_counter()
    write(n)
    single = n / (time.perf_counter() - start)
    writers = 4
    start = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, [n // writers] * writers))
    concurrent = (n // writers * writers) / (time.perf_counter() - start)
    total = AuditEvent.objects.count()
    start = time.perf_counter()
    result = chain_verify()
    full = time.perf_counter() - start
    start = time.perf_counter()
    quick = chain_verify(incremental=True)
    incremental = time.perf_counter() - start
    print(f"append, 1 writer:        {single:8.0f} events/s")
    print(f"append, {writers} writers:       {concurrent:8.0f} events/s (serialized by the chain lock)")
    print(f"audit_verify full walk:  {full:8.2f} s for {total} events ({total / full:.0f} events/s), ok={result.ok}")
    print(f"incremental (page view): {incremental * 1000:8.1f} ms, ok={quick.ok}")


if __name__ == "__main__":
    main()
