"""What lives on which Redis server when there are several (docs/operations.md, "Redis").

Perfuse keeps two kinds of state in Redis:
- the channel layer (pub/sub only: live frames, session revocations), spread over every server
  in REDIS_URLS. channels_redis's pub/sub layer sends a channel or group to one host of its
  `hosts` list: crc32(name) & 0xFFF cut into equal arcs, one per host
  (channels_redis.utils._consistent_hash). All of a group's messages and subscriptions go to
  that one host, so a group never spans servers. `channel_hosts` lists each server's
  connections as one contiguous block, so the arc of a server is the same whatever
  PERFUSE_CHANNEL_SHARDS (connections per server) is: processes started with different
  connection counts still agree on the server of every group. They must agree on REDIS_URLS
  and its order, though: a reordered list sends publisher and subscriber to different servers.
- counters that must be seen by every process at once: the ingest rate limiter's token buckets
  (telemetry.ratelimit) and the login lockout (audit.access.lockout). They live on ONE server,
  PERFUSE_RATELIMIT_REDIS_URL (default: the first of REDIS_URLS), not spread by the client: a
  Django RedisCache given several LOCATIONs treats the others as read replicas, not shards, and
  client-side sharding of counters would move buckets whenever the list changed. To spread them,
  point PERFUSE_RATELIMIT_REDIS_URL at a Redis Cluster (PERFUSE_REDIS_CLUSTER=1): every key
  carries a hash tag (`hash_tag`) so that the keys of one Lua script share a cluster slot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import redis
import redis.asyncio
from redis.exceptions import RedisClusterException, RedisError

# What a limits client raises when its server (or cluster) is away: RedisClusterException is not
# a RedisError ("no reachable node" when a cluster client starts).
REDIS_FAILURES = (RedisError, RedisClusterException, OSError)


def channel_hosts(urls: Sequence[str], connections_per_server: int) -> list[str]:
    """The channel layer's `hosts`: each server's connections as one contiguous block (each host
    entry is one connection with its own lock around every PUBLISH)."""
    return [url for url in urls for _ in range(connections_per_server)]


def hash_tag(text: str) -> str:
    """`{text}`: a Redis Cluster hash tag, so every key built around it hashes to one slot.

    Cluster hashes only what lies between the first `{` and the next `}`; text holding a brace
    (or none at all: `{}` hashes the whole key) is replaced by a digest, so the tag is always
    exactly the braces written here.
    """
    if not text or "{" in text or "}" in text:
        text = hashlib.sha256(text.encode()).hexdigest()[:16]
    return "{" + text + "}"


def limits_client(url: str, *, cluster: bool, timeout: float) -> redis.Redis | redis.RedisCluster:
    """The login lockout's client of the limits' server, or of the cluster `url` is a node of.
    A cluster client asks the node for the slot map at once: it raises REDIS_FAILURES if the
    cluster is away."""
    if cluster:
        return redis.RedisCluster.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def limits_client_async(url: str, *, cluster: bool, timeout: float) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
    """The rate limiter's client (see `limits_client`; this one connects on first use)."""
    if cluster:
        return redis.asyncio.RedisCluster.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return redis.asyncio.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def redis_servers(*urls: str | Sequence[str]) -> list[str]:
    """Every distinct server among `urls` (strings or lists of them), in first-seen order."""
    seen: dict[str, None] = {}
    for entry in urls:
        for url in [entry] if isinstance(entry, str) else entry:
            seen.setdefault(url, None)
    return list(seen)
