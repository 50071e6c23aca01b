"""Several Redis servers (config/redis_servers.py, docs/operations.md "Redis"), with two real
servers started for this module beside the suite's own:
- the channel layer spreads its groups over both, each group on one server whatever the number
  of connections per server, and every process agrees on which;
- live frames reach real sockets on both servers; one server killed with SIGKILL and started
  again on its port: the other server's sockets never notice, the restarted one's get frames
  again (redis-py re-subscribes on reconnect);
- the ingest rate limiter and the login lockout live on PERFUSE_RATELIMIT_REDIS_URL and fail
  open while it is down, as telemetry/ratelimit.py and audit/access/lockout.py document;
- every Lua script's keys hash to one Redis Cluster slot (CLUSTER KEYSLOT of a real three-node
  cluster, cross-checked with redis-py's key_slot), and with PERFUSE_REDIS_CLUSTER the limiter
  and the lockout run on that cluster, deciding as on one server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from channels_redis.pubsub import RedisPubSubChannelLayer
from channels_redis.utils import _consistent_hash
from django.test import AsyncClient, Client
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio import RedisCluster as AsyncRedisCluster
from redis.crc import key_slot

from audit.access.lockout import login_gate, login_keys
from audit.access.roles import CLINICIAN
from config import live
from config.asgi import application
from config.redis_servers import channel_hosts, hash_tag, redis_servers
from telemetry.ratelimit import Limits, Take, bucket_keys, rate_check, rates_check
from tests import factories, personas
from tests.ingest_helpers import send
from tests.live_support import persona
from tests.process_support import WAIT, free_port
from tests.redis_support import RedisServer, start_cluster

PREFIX = "perfuse"


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, RedisServer]]:
    root = tmp_path_factory.mktemp("redis-servers")
    servers = (RedisServer(root / "a"), RedisServer(root / "b"))
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def servers(two_servers: tuple[RedisServer, RedisServer]) -> Iterator[tuple[RedisServer, RedisServer]]:
    """Both servers up and empty for the test; a test that kills one starts it again."""
    for server in two_servers:
        if server.process is None:
            server.start()
        with server.client() as client:
            client.flushall()
    yield two_servers


@pytest.fixture
def layer_on_both(servers: tuple[RedisServer, RedisServer], settings: Any) -> list[str]:
    """This process's channel layer over both servers, two connections each (as REDIS_URLS would)."""
    urls = [server.url for server in servers]
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": channel_hosts(urls, 2), "prefix": PREFIX},
        }
    }
    return urls


def server_of(group: str, servers: int) -> int:
    """The server (index in REDIS_URLS) of a group, as channels_redis picks its host."""
    return _consistent_hash(f"{PREFIX}__group__{group}", servers)


def subscribers(server: RedisServer, group: str) -> int:
    with server.client() as client:
        [(_, count)] = client.pubsub_numsub(f"{PREFIX}__group__{group}")
    return int(count)


# ---- where a group lives ---------------------------------------------------------------------


def test_a_groups_server_does_not_depend_on_the_connections_per_server():
    urls = ["redis://a", "redis://b", "redis://c"]
    names = [f"patient.p-{n}" for n in range(2000)]
    for per_server in range(1, 9):
        hosts = channel_hosts(urls, per_server)
        assert hosts[:per_server] == ["redis://a"] * per_server
        for name in names:
            assert hosts[_consistent_hash(name, len(hosts))] == urls[_consistent_hash(name, len(urls))], name
    # Every server gets a share of the groups.
    assert {_consistent_hash(name, len(urls)) for name in names} == {0, 1, 2}


def test_redis_servers_lists_each_server_once_in_order():
    assert redis_servers(["redis://a", "redis://b"], "redis://a", ["redis://c", "redis://b"]) == [
        "redis://a",
        "redis://b",
        "redis://c",
    ]


async def test_processes_with_different_connection_counts_agree_on_each_groups_server(
    servers: tuple[RedisServer, RedisServer],
):
    urls = [server.url for server in servers]
    # Two "processes": a subscriber with three connections per server, a publisher with one.
    subscriber = RedisPubSubChannelLayer(hosts=channel_hosts(urls, 3), prefix=PREFIX)
    publisher = RedisPubSubChannelLayer(hosts=channel_hosts(urls, 1), prefix=PREFIX)
    groups = [f"ward.icu-{n}" for n in range(12)]
    try:
        channels = {}
        for group in groups:
            channels[group] = await subscriber.new_channel()
            await subscriber.group_add(group, channels[group])
        placement = {group: [subscribers(server, group) for server in servers] for group in groups}
        for group in groups:
            expected = [0, 0]
            expected[server_of(group, 2)] = 1
            assert placement[group] == expected, group  # on exactly the one server the hash names
        assert {server_of(group, 2) for group in groups} == {0, 1}  # both servers carry groups
        for n, group in enumerate(groups):
            await publisher.group_send(group, {"type": "test.frame", "n": n})
        for n, group in enumerate(groups):
            message = await asyncio.wait_for(subscriber.receive(channels[group]), timeout=5)
            assert message == {"type": "test.frame", "n": n}
    finally:
        await subscriber.flush()
        await publisher.flush()


# ---- live sockets on both servers, one server restarted ----------------------------------------


def _patients_on_each_server() -> tuple[list[str], list[tuple[bytes, bytes]]]:
    """A ward with one admitted patient whose live group is on each of the two servers, and the
    socket headers of a clinician of that ward."""
    ward = factories.ward("icu-shards")
    chosen: dict[int, str] = {}
    for n in itertools.count():
        pseudonym = f"p-shard-{n}"
        chosen.setdefault(server_of(live.patient_group(pseudonym), 2), pseudonym)
        if len(chosen) == 2:
            break
    pseudonyms = [chosen[0], chosen[1]]
    for pseudonym in pseudonyms:
        factories.device(ward.code, device_id=f"dev-{pseudonym}", patient=pseudonym)
    return pseudonyms, persona("clinician", ward).ws_headers()


def _batch(pseudonym: str, seq: int) -> dict[str, Any]:
    t = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "type": "reading.batch",
        "patient": pseudonym,
        "ranges": [{"device": f"dev-{pseudonym}", "first": seq, "last": seq}],
        "points": [{"t": t, "metric": "tissue_o2", "value": 61.0, "quality": 0.9, "seq": seq}],
    }


async def _seqs(comm: WebsocketCommunicator, timeout: float = 5) -> list[int]:
    frame = json.loads(await comm.receive_from(timeout=timeout))
    frames = frame["frames"] if frame["type"] == "frames" else [frame]
    return [p["seq"] for f in frames if f["type"] == "reading.batch" for p in f["points"]]


async def _deliver(comm: WebsocketCommunicator, pseudonym: str, seqs: range) -> list[int]:
    for seq in seqs:
        await live.publish_now([live.patient_group(pseudonym)], _batch(pseudonym, seq))
    received: list[int] = []
    while len(received) < len(seqs):
        received += await _seqs(comm)
    return received


@pytest.mark.django_db(transaction=True)
async def test_live_frames_reach_sockets_on_both_servers_and_flow_again_after_one_restarts(
    servers: tuple[RedisServer, RedisServer], layer_on_both: list[str]
):
    on_a, on_b = servers
    (p_a, p_b), headers = await sync_to_async(_patients_on_each_server)()
    sockets = []
    for pseudonym in (p_a, p_b):
        comm = WebsocketCommunicator(application, f"/ws/patients/{pseudonym}/live", headers=headers)
        connected, _ = await comm.connect()
        assert connected
        snapshot = json.loads(await comm.receive_from(timeout=5))
        assert snapshot["type"] == "snapshot" and snapshot["patient"] == pseudonym
        sockets.append(comm)
    sock_a, sock_b = sockets
    # Each socket's patient group is subscribed on its own server only.
    assert [subscribers(on_a, live.patient_group(p_a)), subscribers(on_b, live.patient_group(p_a))] == [1, 0]
    assert [subscribers(on_a, live.patient_group(p_b)), subscribers(on_b, live.patient_group(p_b))] == [0, 1]
    assert await _deliver(sock_a, p_a, range(1, 4)) == [1, 2, 3]
    assert await _deliver(sock_b, p_b, range(1, 4)) == [1, 2, 3]

    on_b.kill()
    # The other server's socket goes on as if nothing happened ...
    assert await _deliver(sock_a, p_a, range(4, 7)) == [4, 5, 6]
    # ... while a frame for the dead server is dropped quietly (frames are hints, rows the truth).
    await live.publish_now([live.patient_group(p_b)], _batch(p_b, 50))
    assert await sock_b.receive_nothing(timeout=0.3)

    on_b.start()  # same port, empty: no subscriptions survived
    deadline = time.monotonic() + WAIT
    first: list[int] = []
    for seq in itertools.count(100):  # until the layer has reconnected and re-subscribed
        assert time.monotonic() < deadline, "the restarted server's socket got no frame again"
        await live.publish_now([live.patient_group(p_b)], _batch(p_b, seq))
        # (receive_nothing, not a receive_from timeout: that would cancel the consumer)
        if not await sock_b.receive_nothing(timeout=0.2):
            first = await _seqs(sock_b)
            break
    assert first and 50 not in first and min(first) >= 100
    assert subscribers(on_b, live.patient_group(p_b)) == 1  # subscribed again on its server
    assert await _deliver(sock_b, p_b, range(1000, 1005)) == [1000, 1001, 1002, 1003, 1004]
    assert await _deliver(sock_a, p_a, range(7, 10)) == [7, 8, 9]
    for comm in sockets:
        await comm.disconnect()


# ---- the limits' server down ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("ingest_clients")
async def test_rate_limiter_lives_on_its_server_and_fails_open_while_it_is_down(
    servers: tuple[RedisServer, RedisServer], settings: Any
):
    on_a, on_b = servers
    settings.PERFUSE_RATELIMIT_REDIS_URL = on_b.url
    dev = await sync_to_async(factories.device)(patient="p-limited")
    client = AsyncClient()
    response = await send(client, dev, factories.series(1, 10))
    assert response.status_code == 200 and response.json()["accepted"] == 10
    assert int(response["X-RateLimit-Remaining"]) < int(response["X-RateLimit-Limit"])
    with on_b.client() as redis_b, on_a.client() as redis_a:
        device_key, site_key = bucket_keys(device=dev.device_id, site=await _site_of(dev))
        assert redis_b.exists(device_key, site_key) == 2
        assert redis_a.keys("perfuse:rl:*") == []

    on_b.kill()
    response = await send(client, dev, factories.series(11, 10))
    assert response.status_code == 200 and response.json()["accepted"] == 10  # admitted: fail open
    assert "X-RateLimit-Limit" not in response  # ... and not counted

    on_b.start()
    response = await send(client, dev, factories.series(21, 10))
    assert response.status_code == 200 and "X-RateLimit-Limit" in response  # counted again


@sync_to_async
def _site_of(dev: factories.SimDevice) -> str:
    from telemetry.models import Ward

    return str(Ward.objects.get(code=dev.ward_code).site)


def _login(username: str, password: str, token: str = "000000") -> int:
    data = {"username": username, "password": password, "otp_token": token}
    return Client().post("/accounts/login/", data, REMOTE_ADDR="10.0.0.9").status_code


@pytest.mark.django_db
def test_login_lockout_lives_on_its_server_and_fails_open_while_it_is_down(
    servers: tuple[RedisServer, RedisServer], settings: Any
):
    on_a, on_b = servers
    settings.PERFUSE_RATELIMIT_REDIS_URL = on_b.url
    settings.PERFUSE_LOGIN_ACCOUNT_THRESHOLD = 3
    settings.PERFUSE_LOGIN_ADDRESS_THRESHOLD = 6
    factories.ward("icu-lock")
    user = personas.staff("dr-lock", CLINICIAN, ["icu-lock"])
    assert [_login("dr-lock", "wrong-password-x") for _ in range(3)] == [401, 401, 401]
    assert _login("dr-lock", personas.PASSWORD, personas.totp_code(user)) == 429  # locked, on B
    with on_b.client() as redis_b, on_a.client() as redis_a:
        assert redis_b.exists(*login_keys("dr-lock", "10.0.0.9")) == 3
        assert redis_a.keys("perfuse:login:*") == []

    on_b.kill()
    # Fail open: wrong passwords are refused as wrong (never 429), the right ones sign in.
    assert [_login("dr-lock", "wrong-password-y") for _ in range(4)] == [401, 401, 401, 401]
    assert _login("dr-lock", personas.PASSWORD, personas.totp_code(user)) == 302

    on_b.start()  # in memory only: the lock was forgotten; counting starts again
    assert [_login("dr-lock", "wrong-password-z") for _ in range(3)] == [401, 401, 401]
    assert _login("dr-lock", personas.PASSWORD, personas.totp_code(user)) == 429


# ---- readiness ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_readiness_pings_every_configured_server(
    servers: tuple[RedisServer, RedisServer], settings: Any, caplog: pytest.LogCaptureFixture
):
    on_a, on_b = servers
    settings.REDIS_URLS = [on_a.url, on_b.url]
    settings.PERFUSE_RATELIMIT_REDIS_URL = on_a.url
    assert Client().get("/readyz").json()["checks"]["redis"] == "ok"
    on_b.kill()
    response = Client().get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["redis"] == "unreachable"
    assert f"127.0.0.1:{on_b.port}/0" in caplog.text  # the log names the server that failed
    on_b.start()
    assert Client().get("/readyz").status_code == 200
    settings.PERFUSE_RATELIMIT_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # the limits' server
    assert Client().get("/readyz").json()["checks"]["redis"] == "unreachable"


# ---- Redis Cluster slots -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """A real three-node Redis Cluster on loopback."""
    nodes = start_cluster(Path(tmp_path_factory.mktemp("redis-cluster")))
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def cluster_node(cluster: list[RedisServer]) -> Iterator[redis.Redis]:
    with cluster[0].client() as client:
        yield client


SITES = ["site-x", "icu-a", "", "a{b", "a}b", "}x", "{}", "hôpital nord"]


def _slots(client: redis.Redis, keys: list[str]) -> set[int]:
    slots = {int(client.execute_command("CLUSTER", "KEYSLOT", key)) for key in keys}
    assert slots == {key_slot(key.encode()) for key in keys}  # the server and redis-py agree
    return slots


@pytest.mark.parametrize("site", SITES)
def test_the_rate_limit_scripts_keys_share_a_cluster_slot(cluster_node: redis.Redis, site: str):
    for device in ["lumee-0001", "dev-{odd}", "x}y"]:
        assert len(_slots(cluster_node, bucket_keys(device=device, site=site))) == 1
    # The tag is the site: another site's buckets hash elsewhere (not every key in one slot).
    assert _slots(cluster_node, bucket_keys(device="d", site=site)) != _slots(
        cluster_node, bucket_keys(device="d", site=site + "-other")
    )


def test_the_lockout_scripts_keys_share_a_cluster_slot(cluster_node: redis.Redis):
    for username, address in [("dr-a", "10.0.0.9"), ("{x}", "2001:db8::1"), ("Dr-B ", "")]:
        assert len(_slots(cluster_node, login_keys(username, address))) == 1


def test_hash_tags_stand_for_the_text_or_its_digest():
    assert hash_tag("icu-a") == "{icu-a}"
    assert hash_tag("") == hash_tag("") and hash_tag("").startswith("{") and len(hash_tag("")) == 18
    assert hash_tag("a}b") != hash_tag("a{b")
    # Without the tag, a site's two keys would usually land in two slots.
    assert key_slot(b"perfuse:rl:dev:lumee-0001") != key_slot(b"perfuse:rl:site:site-x")


# ---- the limits on a Redis Cluster (PERFUSE_REDIS_CLUSTER=1) ----------------------------------------

TIGHT = Limits(device_rate=1, device_burst=30, site_rate=1, site_burst=1000)


async def test_rate_limits_on_a_cluster_decide_as_on_one_server(
    cluster: list[RedisServer], servers: tuple[RedisServer, RedisServer]
):
    sites = [f"site-{n}" for n in range(8)]
    takes = [Take(f"dev-{site}", site, 10) for site in sites for _ in range(4)]
    on_cluster = AsyncRedisCluster.from_url(cluster[0].url)
    on_one = AsyncRedis.from_url(servers[0].url)
    try:
        # The sites' buckets are spread over several nodes: one pipeline spans them.
        await on_cluster.initialize()
        nodes = {on_cluster.get_node_from_key(bucket_keys(device="d", site=site)[1]).name for site in sites}
        assert len(nodes) >= 2
        clustered = await rates_check(on_cluster, takes, limits=TIGHT)
        single = await rates_check(on_one, takes, limits=TIGHT)
        assert clustered == single
        assert [d.allowed for d in clustered if d] == [True, True, True, False] * len(sites)
        assert [d.remaining for d in clustered[:4] if d] == [20, 10, 0, 0]
        one = await rate_check(on_cluster, device="dev-site-0", site="site-0", cost=1, limits=TIGHT)
        assert one is not None and not one.allowed  # the same buckets, seen by one EVAL
    finally:
        await on_cluster.aclose()
        await on_one.aclose()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("ingest_clients")
async def test_ingest_and_login_lockout_run_their_scripts_on_the_cluster(cluster: list[RedisServer], settings: Any):
    settings.PERFUSE_REDIS_CLUSTER = True
    settings.PERFUSE_RATELIMIT_REDIS_URL = cluster[1].url  # any node: the client finds the rest
    dev = await sync_to_async(factories.device)(patient="p-cluster")
    response = await send(AsyncClient(), dev, factories.series(1, 10))
    assert response.status_code == 200 and "X-RateLimit-Limit" in response
    keys = bucket_keys(device=dev.device_id, site=await _site_of(dev))
    client = redis.RedisCluster.from_url(cluster[0].url)
    try:
        assert client.exists(*keys) == 2
        await sync_to_async(_lock_out)(settings)
        assert client.exists(*login_keys("dr-cluster", "10.0.0.9")) == 3
    finally:
        client.close()


def _lock_out(settings: Any) -> None:
    settings.PERFUSE_LOGIN_ACCOUNT_THRESHOLD = 3
    factories.ward("icu-cluster")
    user = personas.staff("dr-cluster", CLINICIAN, ["icu-cluster"])
    assert [_login("dr-cluster", "wrong-password-x") for _ in range(3)] == [401, 401, 401]
    assert _login("dr-cluster", personas.PASSWORD, personas.totp_code(user)) == 429


async def test_an_unreachable_cluster_fails_open_like_a_server(settings: Any):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    on_cluster = AsyncRedisCluster.from_url(dead, socket_connect_timeout=0.5)
    try:
        assert await rate_check(on_cluster, device="d", site="s", cost=1, limits=TIGHT) is None
        assert await rates_check(on_cluster, [Take("d", "s", 1)], limits=TIGHT) == [None]
    finally:
        await on_cluster.aclose()
    settings.PERFUSE_REDIS_CLUSTER = True
    settings.PERFUSE_RATELIMIT_REDIS_URL = dead
    gate = await sync_to_async(login_gate)(username="dr-x", address="10.0.0.9")
    assert gate.allowed  # evaluated as usual: no lockout store, no lockout
