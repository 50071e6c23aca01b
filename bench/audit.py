"""Audit-trail figures (not a test): append rate of hash-chained events (one writer and several
concurrent writers serialized by the chain lock), and the time audit_verify takes per event.

    .venv/bin/python bench/audit.py [N]

Writes N (default 5000) events with action "bench.event" into a throwaway database of its own
(started and migrated here), or into DATABASE_URL's when given (then run it against a throwaway one).
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

# Throwaway PostgreSQL and Redis unless DATABASE_URL names a database (bench/servers.py).
from bench.servers import own_services_unless_given

OWN_SERVICES = own_services_unless_given()

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
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
    if OWN_SERVICES:
        call_command("migrate", verbosity=0)
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
