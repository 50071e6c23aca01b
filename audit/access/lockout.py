"""Login brute-force protection: per-account and per-address counters in Redis, one Lua script
per check, so concurrent attempts cannot slip between a read and a write.

Every attempt is charged *before* the password is checked (the gate script). Once a key has
been charged THRESHOLD times, it is locked for BASE seconds, doubling with each further charged
attempt (exponential delay) up to MAX. While locked nothing is charged and the attempt is refused
without checking the password. A successful login forgets the account's counter and refunds one
charge to the address (a busy ward PC logging many staff in must not lock itself out).
Redis unavailable: fail open (log) — refusing every login in a hospital is the worse outcome,
and django-otp's per-device throttling still slows TOTP guessing.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass

import redis
from django.conf import settings

log = logging.getLogger(__name__)

# KEYS: account, address. ARGV: now_ms, then per key threshold; then base_ms, max_ms, window_s.
# Returns {allowed (0/1), retry_after_ms}.
_GATE = """
local now = tonumber(ARGV[1])
local base = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local window = tonumber(ARGV[6])
local wait = 0
for i = 1, 2 do
  local untl = tonumber(redis.call('HGET', KEYS[i], 'until') or '0')
  if untl > now and untl - now > wait then wait = untl - now end
end
if wait > 0 then return {0, wait} end
for i = 1, 2 do
  local threshold = tonumber(ARGV[1 + i])
  local n = redis.call('HINCRBY', KEYS[i], 'n', 1)
  if n >= threshold then
    local lock = math.min(cap, base * math.pow(2, n - threshold))
    redis.call('HSET', KEYS[i], 'until', now + lock)
  end
  redis.call('EXPIRE', KEYS[i], window + math.ceil(cap / 1000))
end
return {1, 0}
"""

# KEYS: account, address. Forget the account; refund one charge to the address.
_SUCCESS = """
redis.call('DEL', KEYS[1])
local n = tonumber(redis.call('HGET', KEYS[2], 'n') or '0')
if n > 0 then redis.call('HINCRBY', KEYS[2], 'n', -1) end
if n <= 1 then redis.call('DEL', KEYS[2]) end
return 1
"""

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    return _client


def _keys(username: str, address: str) -> list[str]:
    # Hash the username: keys must not grow unbounded with attacker-chosen text.
    account = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    return [f"perfuse:login:acct:{account}", f"perfuse:login:addr:{address or '-'}"]


@dataclass(frozen=True)
class Gate:
    allowed: bool
    retry_after_seconds: int


def login_gate(*, username: str, address: str) -> Gate:
    """Charge one attempt, or refuse it while the account or address is locked."""
    try:
        allowed, wait_ms = _redis().eval(
            _GATE,
            2,
            *_keys(username, address),
            int(time.time() * 1000),
            settings.PERFUSE_LOGIN_ACCOUNT_THRESHOLD,
            settings.PERFUSE_LOGIN_ADDRESS_THRESHOLD,
            settings.PERFUSE_LOGIN_LOCK_BASE_SECONDS * 1000,
            settings.PERFUSE_LOGIN_LOCK_MAX_SECONDS * 1000,
            settings.PERFUSE_LOGIN_WINDOW_SECONDS,
        )
    except (redis.RedisError, OSError) as exc:
        log.warning("login lockout store unavailable, admitting attempt: %s", exc)
        return Gate(True, 0)
    return Gate(bool(allowed), math.ceil(int(wait_ms) / 1000))


def login_succeeded(*, username: str, address: str) -> None:
    try:
        _redis().eval(_SUCCESS, 2, *_keys(username, address))
    except (redis.RedisError, OSError) as exc:
        log.warning("login lockout store unavailable: %s", exc)
