"""Token buckets in Redis for device and site ingest limits, checked atomically in one Lua call.

Both buckets are refilled and tested in the same script, so concurrent requests cannot slip
through between a read and a write. Tokens are readings: a 500-reading batch costs 500.
The two keys carry the site as a hash tag, so the script also runs on a Redis Cluster
(PERFUSE_REDIS_CLUSTER, config/redis_servers.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster

from config.redis_servers import REDIS_FAILURES, hash_tag

log = logging.getLogger(__name__)

# One take from both buckets (`keys` device then site, with their rates and bursts), shared by
# both scripts: {allowed, limit, remaining, reset_ms, retry_ms} for the tighter bucket.
_TAKE = """
local function take(keys, rates, bursts, cost, now)
  local result = {1, 0, 0, 0, 0}
  local state = {}
  local worst_remaining = nil
  for i = 1, 2 do
    local rate, burst = rates[i], bursts[i]
    local raw = redis.call('HMGET', keys[i], 't', 'ts')
    local tokens = tonumber(raw[1]) or burst
    local ts = tonumber(raw[2]) or now
    tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
    state[i] = tokens
    if tokens < cost then
      result[1] = 0
      local wait = math.ceil((cost - tokens) * 1000 / rate)
      if wait > result[5] then result[5] = wait end
    end
  end
  for i = 1, 2 do
    local tokens, rate, burst = state[i], rates[i], bursts[i]
    if result[1] == 1 then tokens = tokens - cost end
    redis.call('HSET', keys[i], 't', tokens, 'ts', now)
    redis.call('PEXPIRE', keys[i], math.ceil(burst * 1000 / rate) + 1000)
    if worst_remaining == nil or tokens / burst < worst_remaining then
      worst_remaining = tokens / burst
      result[2] = burst
      result[3] = math.floor(tokens)
      result[4] = math.ceil((burst - tokens) * 1000 / rate)
    end
  end
  return result
end
"""
# KEYS: device bucket, site bucket. ARGV: now_ms, cost, then rate/burst for device and site.
_SCRIPT = (
    _TAKE
    + """
local rates = {tonumber(ARGV[3]), tonumber(ARGV[5])}
local bursts = {tonumber(ARGV[4]), tonumber(ARGV[6])}
return take(KEYS, rates, bursts, tonumber(ARGV[2]), tonumber(ARGV[1]))
"""
)


# The same buckets for many takes of ONE site in one call, in order (a device twice pays twice):
# KEYS[1] the site's bucket, KEYS[1 + t] the device bucket of take t; ARGV: now_ms, the four
# rates/bursts, then each take's cost. Each take is `_SCRIPT`'s `take`; the answers come
# back as one string ("allowed limit remaining reset_ms retry_ms" per take, comma-separated): one
# reply to parse instead of a five-element array per take, which redis-py parses in Python.
# Every key carries the site's hash tag, so one call stays in one Redis Cluster slot.
_MANY_SCRIPT = (
    _TAKE
    + """
local now = tonumber(ARGV[1])
local rates = {tonumber(ARGV[2]), tonumber(ARGV[4])}
local bursts = {tonumber(ARGV[3]), tonumber(ARGV[5])}
local out = {}
for t = 1, #KEYS - 1 do
  local r = take({KEYS[1 + t], KEYS[1]}, rates, bursts, tonumber(ARGV[5 + t]), now)
  out[t] = string.format('%d %d %d %d %d', r[1], r[2], r[3], r[4], r[5])
end
return table.concat(out, ',')
"""
)


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    retry_after_seconds: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.remaining)),
            "X-RateLimit-Reset": str(self.reset_seconds),
        }


@dataclass(frozen=True)
class Limits:
    device_rate: int
    device_burst: int
    site_rate: int
    site_burst: int


async def rate_check(
    redis: Redis | RedisCluster, *, device: str, site: str, cost: int, limits: Limits
) -> RateDecision | None:
    """Take `cost` tokens from both buckets, or none. None when Redis is unavailable (fail open:
    an outage of the rate limiter must not refuse clinical data)."""
    try:
        answer = await redis.eval(_SCRIPT, 2, *_script_args(device=device, site=site, cost=cost, limits=limits))
    except REDIS_FAILURES as exc:
        log.warning("rate limiter unavailable, admitting request: %s", exc)
        return None
    return _decision(answer)


@dataclass(frozen=True)
class Take:
    device: str
    site: str
    cost: int


async def rates_check(
    redis: Redis | RedisCluster, takes: Sequence[Take], *, limits: Limits
) -> list[RateDecision | None]:
    """`rate_check` for many messages in one round trip: one call of `_MANY_SCRIPT` per site (a
    pipeline of them), each site's takes in order (a device twice in `takes` pays twice, as two
    requests would; takes of different sites touch different buckets). All None when Redis is
    unavailable, as above."""
    if not takes:
        return []
    by_site: dict[str, list[int]] = {}
    for n, take in enumerate(takes):
        by_site.setdefault(take.site, []).append(n)
    now = int(time.time() * 1000)
    calls = []
    for site, indexes in by_site.items():
        keys = [bucket_keys(device="", site=site)[1]]
        keys += [bucket_keys(device=takes[n].device, site=site)[0] for n in indexes]
        args = [now, limits.device_rate, limits.device_burst, limits.site_rate, limits.site_burst]
        calls.append((keys, args + [takes[n].cost for n in indexes]))
    try:
        if isinstance(redis, RedisCluster):
            answers = await _cluster_pipeline(redis, calls)
        else:
            answers = await _pipeline(redis, calls)
    except REDIS_FAILURES as exc:
        log.warning("rate limiter unavailable, admitting %d messages: %s", len(takes), exc)
        return [None] * len(takes)
    decisions: list[RateDecision | None] = [None] * len(takes)
    for indexes, answer in zip(by_site.values(), answers, strict=True):
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        for n, fields in zip(indexes, text.split(","), strict=True):
            decisions[n] = _decision([int(value) for value in fields.split(" ")])
    return decisions


Call = tuple[list[str], list[Any]]  # keys, args of one _MANY_SCRIPT call


async def _pipeline(redis: Redis, calls: list[Call]) -> list[Any]:
    script = redis.register_script(_MANY_SCRIPT)
    async with redis.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            await script(keys=keys, args=args, client=pipe)
        return list(await pipe.execute())


async def _cluster_pipeline(redis: RedisCluster, calls: list[Call]) -> list[Any]:
    # A cluster pipeline sends each node its share, in order, and answers in the order queued.
    # EVAL with the body, not EVALSHA: a node that restarted or took over slots after a
    # failover would answer NOSCRIPT for its share, which a cluster pipeline does not retry.
    async with redis.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.eval(_MANY_SCRIPT, len(keys), *keys, *args)
        return list(await pipe.execute())


def bucket_keys(*, device: str, site: str) -> list[str]:
    """The device's and the site's bucket, tagged by site: both keys of one script share a Redis
    Cluster slot (a device sends for one site). The site key is every request of the site's
    one hot key anyway, so tagging its devices with it moves no extra load onto that slot."""
    tag = hash_tag(site)
    return [f"perfuse:rl:{tag}:dev:{device}", f"perfuse:rl:{tag}:site"]


def _script_args(*, device: str, site: str, cost: int, limits: Limits) -> list[Any]:
    return [
        *bucket_keys(device=device, site=site),
        int(time.time() * 1000),
        cost,
        limits.device_rate,
        limits.device_burst,
        limits.site_rate,
        limits.site_burst,
    ]


def _decision(answer: Any) -> RateDecision:
    allowed, limit, remaining, reset_ms, retry_ms = answer
    return RateDecision(
        allowed=bool(allowed),
        limit=int(limit),
        remaining=int(remaining),
        reset_seconds=math.ceil(int(reset_ms) / 1000),
        retry_after_seconds=max(1, math.ceil(int(retry_ms) / 1000)),
    )
