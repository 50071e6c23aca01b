"""`rates_check` (one script call per site for many takes) decides exactly as one `rate_check`
per take in the same order would, against the real Redis: within a site's bucket and a device's,
across sites, a device twice in one call, and takes refused in the middle of a run."""

from __future__ import annotations

import random

import pytest
from django.conf import settings
from redis.asyncio import Redis

from telemetry.ratelimit import Limits, RateDecision, Take, rate_check, rates_check

TIGHT = Limits(device_rate=1, device_burst=30, site_rate=1, site_burst=100)


def _takes(prefix: str, seed: int) -> list[Take]:
    rng = random.Random(seed)
    return [
        Take(f"{prefix}dev-{rng.randrange(6)}", f"{prefix}site-{rng.randrange(3)}", rng.randrange(1, 12))
        for _ in range(80)
    ]


async def test_many_takes_in_one_call_decide_as_one_call_each(monkeypatch: pytest.MonkeyPatch) -> None:
    # One clock for both runs: buckets refill with time, and the calls one by one take longer.
    monkeypatch.setattr("telemetry.ratelimit.time.time", lambda: 1_800_000_000.0)
    client = Redis.from_url(settings.REDIS_URL)
    try:
        one_by_one: list[RateDecision | None] = []
        for take in _takes("a-", 7):
            one_by_one.append(
                await rate_check(client, device=take.device, site=take.site, cost=take.cost, limits=TIGHT)
            )
        together = await rates_check(client, _takes("b-", 7), limits=TIGHT)
    finally:
        await client.aclose()
    assert together == one_by_one
    allowed = [d.allowed for d in together if d is not None]
    assert len(allowed) == 80 and True in allowed and False in allowed  # both outcomes were exercised


async def test_a_device_twice_in_one_call_pays_twice_and_a_refusal_takes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("telemetry.ratelimit.time.time", lambda: 1_800_000_000.0)
    client = Redis.from_url(settings.REDIS_URL)
    try:
        first, second, third, other = await rates_check(
            client, [Take("d", "s", 20), Take("d", "s", 20), Take("d", "s", 10), Take("e", "s", 5)], limits=TIGHT
        )
    finally:
        await client.aclose()
    assert first is not None and first.allowed and first.remaining == 10
    assert second is not None and not second.allowed and second.retry_after_seconds == 10
    assert third is not None and third.allowed and third.remaining == 0  # the refused take took nothing
    # The site's bucket paid for every take it allowed (100 - 20 - 10 - 5) and is now the tighter one.
    assert other is not None and other.allowed and other.limit == 100 and other.remaining == 65
