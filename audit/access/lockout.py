"""Login brute-force protection without a denial-of-service lever: counters in Redis per
(account, source address) pair, per account and per address, one Lua script per check, so
concurrent attempts cannot slip between a read and a write.

Every attempt is charged *before* the password is checked (the gate script), and the gate
answers one of three verdicts:
- `locked`: this account has failed too often from this address. Refused without checking
  anything, for BASE seconds after THRESHOLD charged attempts, doubling with each further one up
  to MAX. Only the pair is locked: the same account from another address is not.
- `second_factor_first`: the account (from any address) or the address (for any account) is
  over its own threshold. The attempt is charged to its pair, and its one-time code is checked
  first, without side effects (`second_factor_holds`: no throttling, no replay mark, so an
  attacker's codes cannot lock the owner's authenticator); only a right code goes on to the
  password. So an attacker without the authenticator gets no further password guesses while the
  account or address is locked (each wrong code also counts towards locking the pair), and the
  owner, or a colleague at the same ward workstation, still signs in with password and code.
- `evaluate`: charged to the pair, the account and the address; checked as usual.
Once the account is locked its password is evaluated again only after the lock ends, one attempt
per doubled delay, however many addresses the attempts come from: of 30 concurrent wrong
attempts on one account, 5 (the account threshold) reach the password.

A success forgets the pair, forgets the account's counter unless it is locked right now (a
success from one address must not hand an attacker elsewhere a fresh budget), and refunds one
charge to the address. Redis unavailable: fail open (log) — refusing every login in a hospital
is the worse outcome, and django-otp's per-device throttling still slows TOTP guessing.
docs/security.md discusses the trade-off for ward workstations shared by many staff.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Literal

import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django_otp.oath import TOTP
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from config.redis_servers import REDIS_FAILURES, hash_tag, limits_client

log = logging.getLogger(__name__)

Verdict = Literal["evaluate", "second_factor_first", "locked"]
_VERDICTS: tuple[Verdict, ...] = ("locked", "second_factor_first", "evaluate")

# KEYS: pair, account, address. ARGV: now_ms, pair/account/address thresholds, base_ms, max_ms,
# window_s. Returns {verdict (an index of _VERDICTS), retry_after_ms}.
_GATE = """
local now = tonumber(ARGV[1])
local base = tonumber(ARGV[5])
local cap = tonumber(ARGV[6])
local window = tonumber(ARGV[7])
local function wait(key)
  local untl = tonumber(redis.call('HGET', key, 'until') or '0')
  if untl > now then return untl - now end
  return 0
end
local function charge(key, threshold)
  local n = redis.call('HINCRBY', key, 'n', 1)
  if n >= threshold then
    redis.call('HSET', key, 'until', now + math.min(cap, base * math.pow(2, n - threshold)))
  end
  redis.call('EXPIRE', key, window + math.ceil(cap / 1000))
end
local pair = wait(KEYS[1])
if pair > 0 then return {0, pair} end
charge(KEYS[1], tonumber(ARGV[2]))
local wide = math.max(wait(KEYS[2]), wait(KEYS[3]))
if wide > 0 then return {1, wide} end
charge(KEYS[2], tonumber(ARGV[3]))
charge(KEYS[3], tonumber(ARGV[4]))
return {2, 0}
"""

# KEYS: pair, account, address. ARGV: now_ms. Forget the pair, and the account unless locked;
# refund one charge to the address.
_SUCCESS = """
redis.call('DEL', KEYS[1])
local untl = tonumber(redis.call('HGET', KEYS[2], 'until') or '0')
if untl <= tonumber(ARGV[1]) then redis.call('DEL', KEYS[2]) end
local n = tonumber(redis.call('HGET', KEYS[3], 'n') or '0')
if n > 0 then redis.call('HINCRBY', KEYS[3], 'n', -1) end
if n <= 1 then redis.call('DEL', KEYS[3]) end
return 1
"""

_clients: dict[tuple[str, bool], redis.Redis | redis.RedisCluster] = {}


def _redis() -> redis.Redis | redis.RedisCluster:
    """The client of the limits' server or cluster (config/redis_servers.py), one per setting."""
    where = (settings.PERFUSE_RATELIMIT_REDIS_URL, settings.PERFUSE_REDIS_CLUSTER)
    client = _clients.get(where)
    if client is None:
        client = _clients[where] = limits_client(where[0], cluster=where[1], timeout=1)
    return client


# One hash tag for every lockout key. The gate script reads and charges the pair, the account (of
# every address) and the address (of every account) at once; no tag narrower than "all logins"
# puts those three in one Redis Cluster slot, and splitting the script would let concurrent
# attempts slip between its checks. Sign-ins are few: one slot carries them easily.
_TAG = hash_tag("perfuse-login")


def login_keys(username: str, address: str) -> list[str]:
    # Hash the username: keys must not grow unbounded with attacker-chosen text.
    account = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    address = address or "-"
    return [
        f"perfuse:login:{_TAG}:pair:{account}:{address}",
        f"perfuse:login:{_TAG}:acct:{account}",
        f"perfuse:login:{_TAG}:addr:{address}",
    ]


@dataclass(frozen=True)
class Gate:
    verdict: Verdict
    retry_after_seconds: int

    @property
    def allowed(self) -> bool:
        """Checked as usual (password, then code)."""
        return self.verdict == "evaluate"


def login_gate(*, username: str, address: str) -> Gate:
    """Charge one attempt and say how it may be checked (see the module docstring)."""
    try:
        verdict, wait_ms = _redis().eval(
            _GATE,
            3,
            *login_keys(username, address),
            int(time.time() * 1000),
            settings.PERFUSE_LOGIN_ACCOUNT_THRESHOLD,
            settings.PERFUSE_LOGIN_ACCOUNT_THRESHOLD,
            settings.PERFUSE_LOGIN_ADDRESS_THRESHOLD,
            settings.PERFUSE_LOGIN_LOCK_BASE_SECONDS * 1000,
            settings.PERFUSE_LOGIN_LOCK_MAX_SECONDS * 1000,
            settings.PERFUSE_LOGIN_WINDOW_SECONDS,
        )
    except REDIS_FAILURES as exc:
        log.warning("login lockout store unavailable, admitting attempt: %s", exc)
        return Gate("evaluate", 0)
    return Gate(_VERDICTS[int(verdict)], math.ceil(int(wait_ms) / 1000))


def login_succeeded(*, username: str, address: str) -> None:
    try:
        _redis().eval(_SUCCESS, 3, *login_keys(username, address), int(time.time() * 1000))
    except REDIS_FAILURES as exc:
        log.warning("login lockout store unavailable: %s", exc)


def _totp_holds(device: TOTPDevice, token: int) -> bool:
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time()
    return bool(totp.verify(token, device.tolerance, device.last_t + 1))


def second_factor_holds(*, username: str, token: str) -> bool:
    """Whether `token` is a current TOTP code or an unused recovery code of the account — read
    only: the real check (django_otp.match_token, which throttles and marks the code used) runs
    after the password, as for every sign-in."""
    user = get_user_model()._default_manager.filter(**{get_user_model().USERNAME_FIELD: username}).first()
    token = token.replace(" ", "")
    if user is None or not token:
        return False
    if token.isdigit() and any(
        _totp_holds(device, int(token)) for device in TOTPDevice.objects.filter(user=user, confirmed=True)
    ):
        return True
    return bool(StaticToken.objects.filter(device__user=user, device__confirmed=True, token=token).exists())
