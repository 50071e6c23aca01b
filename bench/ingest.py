"""Ingest benchmark (not a test): signed 500-reading batches through Daphne vs. the bare COPY ceiling.

    .venv/bin/python bench/ingest.py [--daphnes 2] [--proxy] [--clients 2] [--concurrency 2]
                                     [--devices 120] [--seconds 20] [--warmup 3] [--batch 500]
                                     [--rounds 1] [--ceiling-seconds 10]
    .venv/bin/python bench/ingest.py --steps [--rounds 3] [--steps-requests 300] [--ceiling-seconds 4]

Uses DATABASE_URL / REDIS_URL when set, else starts throwaway PostgreSQL and Redis with
scripts/lib.sh (in a temporary directory, removed at the end). Migrates, provisions devices (each
assigned to a patient, as on a ward), starts `--daphnes` Daphne processes on loopback ports, and
drives them from `--clients` client processes, each keeping `--concurrency` keep-alive HTTP/1.1
connections busy with signed batches (requests are spread over the Daphne ports). With --proxy it
also drives the same Daphnes the same way through the nginx TLS front of deploy/nginx/ (TLS 1.3,
rendered by `manage.py proxy_setup`, its own throwaway CA).

The ceiling: `--daphnes` processes at once (as many as serve HTTP), no HTTP, each the same COPY →
staging → INSERT … ON CONFLICT DO NOTHING per 500-row batch and commit on devices of its own.
The machine's speed drifts (other tenants share it), so the ceiling is measured before the first
HTTP window and after every one, and each window is compared with the mean of the two ceilings
beside it; `--rounds N` repeats the windows and prints the median ratios.

`--steps` measures no HTTP window: it compares the CPU of one request at a time through
`pipeline.handle` (each step, the live publisher's thread, PostgreSQL) with the ceiling's client
and backend CPU per request, round after round. On cores that both saturate, the ratio of the two
totals bounds the figure the HTTP windows can reach, before HTTP, TLS and the proxy add theirs.

The client processes run on the same 2 cores as Daphne and PostgreSQL. They build and sign every
request of a window before it starts (a real fleet builds its batches on its own devices); their
CPU time in the window is printed so the figures can be read honestly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import inspect
import itertools
import multiprocessing as mp
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lib(command: str) -> None:
    subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib.sh; {command}"], check=True, cwd=ROOT)


class Services:
    """DATABASE_URL / REDIS_URL from the environment, or throwaway servers."""

    def __init__(self) -> None:
        self.tmp: str | None = None
        self.redis_port: int | None = None
        if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
            self.tmp = tempfile.mkdtemp(prefix="perfuse-bench-")
            os.chmod(self.tmp, 0o755)  # noqa: S103 (the postgres service user must reach its data dir)
        if not os.environ.get("DATABASE_URL"):
            port = free_port()
            lib(f"start_postgres {self.tmp}/pg {port}")
            os.environ["DATABASE_URL"] = f"postgres://perfuse@127.0.0.1:{port}/perfuse"
            self.own_pg = True
        else:
            self.own_pg = False
        if not os.environ.get("REDIS_URL"):
            self.redis_port = free_port()
            lib(f"start_redis {self.tmp}/redis {self.redis_port} no")
            os.environ["REDIS_URL"] = f"redis://127.0.0.1:{self.redis_port}/0"

    def redis_pids(self) -> list[int]:
        """The bench's own Redis server (its CPU is the path's too: rate limits, live frames)."""
        if not self.redis_port:
            return []
        return [int(Path(f"{self.tmp}/redis/redis.pid").read_text())]

    def stop(self) -> None:
        if self.own_pg:
            lib(f"stop_postgres {self.tmp}/pg")
        if self.redis_port:
            lib(f"stop_redis {self.tmp}/redis {self.redis_port}")
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


# --- client processes ----------------------------------------------------------------------------


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Device:
    def __init__(self, device_id: str, key_id: str, pem: str, seq0: int) -> None:
        from cryptography.hazmat.primitives import serialization

        self.device_id = device_id
        self.key_id = key_id.encode()
        self.key = serialization.load_pem_private_key(pem.encode(), password=None)
        self.seq = seq0

    def request(self, n: int, host: bytes) -> bytes:
        now = time.time()
        start = now - n * 0.01
        items = [
            {
                "seq": self.seq + i,
                "sample_time": _iso(start + i * 0.01),
                "metric": "tissue_o2",
                "value": 55.0 + (i % 200) / 10,
                "unit": "%",
                "signal_quality": 0.93,
                "calibration_id": "cal-bench",
            }
            for i in range(n)
        ]
        self.seq += n
        body = orjson.dumps(
            {"schema": "perfuse.readings/1", "device_id": self.device_id, "firmware": "fw-bench", "readings": items}
        )
        stamp = str(int(now)).encode()
        signature = base64.b64encode(self.key.sign(stamp + b"\n" + body))  # type: ignore[union-attr]
        head = (
            b"POST /api/v1/ingest/readings HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/json\r\n"
            b"X-Perfuse-Key: " + self.key_id + b"\r\nX-Perfuse-Timestamp: " + stamp + b"\r\n"
            b"X-Perfuse-Signature: " + signature + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        return head + body


async def _connection(
    port: int,
    requests: list[bytes],
    more: Callable[[], bytes],
    t_start: float,
    t_end: float,
    out: list,
    ca_file: str | None,
) -> int:
    """One keep-alive connection sending its prebuilt requests one after another (a minimal
    HTTP/1.1 client: cheap on CPU), then freshly built ones (`more()`) if the window outlasts
    them; over TLS to the proxy when `ca_file` (the CA that signed its certificate) is given.
    Returns how many requests it had to build during the window."""
    if ca_file:
        import ssl

        context = ssl.create_default_context(cafile=ca_file)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    built, i = 0, 0
    while time.time() < t_end:
        if i < len(requests):
            request = requests[i]
            requests[i] = b""  # sent: its bytes are not needed again
        else:
            request = more()
            built += 1
        i += 1
        sent = time.perf_counter()
        writer.write(request)
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length)
        elapsed = time.perf_counter() - sent
        if time.time() >= t_start:
            accepted = orjson.loads(body).get("accepted", 0) if status == 200 else 0
            out.append((elapsed, status, accepted))
    writer.close()
    return built


def client_process(args: dict[str, Any], devices: list[tuple[str, str, str]], queue: Any, sync: Any) -> None:
    """Builds and signs its requests before the window (`args["prebuild"]` per connection), waits
    for the others at `sync`, then sends them: the load generator shares the cores it measures,
    and building a request costs about as much CPU as serving it, so building them inside the
    window would charge that to the path under test. Every request is still distinct (seqs never
    repeat) and freshly signed within the clock-skew window, so the servers do the whole work."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seq0 = int(time.time() * 1000) * 1000 + args["index"] * 10**8 + args["round"] * 10**7
    devs = [Device(d, k, p, seq0) for d, k, p in devices]
    results: list[tuple[float, int, int]] = []
    ports, concurrency = args["ports"], args["concurrency"]
    host = b"localhost" if args.get("ca_file") else b"127.0.0.1"
    per = max(1, len(devs) // concurrency)
    plans = []
    for c in range(concurrency):
        port = ports[(args["index"] * concurrency + c) % len(ports)]
        mine = devs[c * per : (c + 1) * per] or devs
        host_port = host + b":" + str(port).encode()
        cycle = itertools.cycle(mine)

        def more(host_port: bytes = host_port, cycle: Iterator[Device] = cycle) -> bytes:
            return next(cycle).request(args["batch"], host_port)

        plans.append((port, [more() for _ in range(args["prebuild"])], more))
    barrier, window = sync
    barrier.wait()  # every client has built its requests
    barrier.wait()  # the main process has set the window
    t_start, t_end = window[0], window[1]
    before = resource.getrusage(resource.RUSAGE_SELF)

    async def main() -> list[int]:
        return await asyncio.gather(
            *(_connection(port, reqs, more, t_start, t_end, results, args.get("ca_file")) for port, reqs, more in plans)
        )

    built = sum(asyncio.run(main()))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    queue.put((results, cpu, built))


# --- the ceiling ---------------------------------------------------------------------------------


def machine_busy() -> tuple[int, int]:
    """(busy, all) CPU time of the whole machine since boot, in clock ticks (/proc/stat): every
    process counts, ours and the database's alike."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:8]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # not idle, not waiting for I/O


def busy_cores(start: tuple[int, int], end: tuple[int, int]) -> float:
    """How many of the machine's cores were busy between two `machine_busy` readings."""
    return (end[0] - start[0]) / max(1, end[1] - start[1]) * (os.cpu_count() or 1)


class Ceiling(NamedTuple):
    rate: float  # readings/s
    cores: float  # the machine's busy cores meanwhile
    client_ms: float  # CPU per 1,000 readings of this process ...
    backend_ms: float  # ... and of its PostgreSQL backend


def ceiling(device_pks: list[int], batch: int, seconds: float, index: int = 0) -> Ceiling:
    """Readings/s of COPY to staging + INSERT … ON CONFLICT DO NOTHING + commit, one process, no HTTP;
    how many of the machine's cores were busy meanwhile; its own and its backend's CPU.

    The COPY payload is formatted the way the ingest formats it (one pass), so the ceiling is not
    lowered by a slower client than the endpoint's own."""
    import psycopg

    from telemetry.db import STAGE_DDL
    from telemetry.ingest.store import _INSERT_SQL, STAGE_COLUMNS, copy_text
    from telemetry.ingest.validate import Row

    rows = 0
    seq = int(time.time() * 1000) * 1000 + 9 * 10**8 + index * 10**7
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(STAGE_DDL)
        busy = machine_busy()
        client, backend = process_cpu(), cpu_of(conn.info.backend_pid)
        start = time.perf_counter()
        i = 0
        while time.perf_counter() - start < seconds:
            pk = device_pks[i % len(device_pks)]
            i += 1
            now = dt.datetime.now(dt.UTC)
            batch_rows = [
                Row(
                    j,
                    seq + j,
                    now - dt.timedelta(milliseconds=10 * (batch - j)),
                    "tissue_o2",
                    60.0,
                    60.0,
                    "%",
                    0.93,
                    "cal-bench",
                )
                for j in range(batch)
            ]
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(f"COPY ingest_stage ({STAGE_COLUMNS}) FROM STDIN") as copy:
                    copy.write(copy_text(pk, "fw-bench", batch_rows, [], {}, []))
                cur.execute(_INSERT_SQL)
                rows += len(cur.fetchall())
            seq += batch
        elapsed = time.perf_counter() - start
        cores = busy_cores(busy, machine_busy())
        client, backend = process_cpu() - client, cpu_of(conn.info.backend_pid) - backend
    return Ceiling(rows / elapsed, cores, client / rows * 1e6, backend / rows * 1e6)


def process_cpu() -> float:
    """CPU seconds of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _ceiling_process(device_pks: list[int], batch: int, seconds: float, index: int, queue: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_django()  # a spawned process: the ingest modules it imports need the app registry
    queue.put(ceiling(device_pks, batch, seconds, index))


def ceiling_parallel(device_pks: list[int], batch: int, seconds: float, processes: int) -> tuple[float, float]:
    """The ceiling of `processes` such processes at once (each on its own devices): readings/s in
    all, and the machine's busy cores while they ran (the mean of what each saw over its window)."""
    context = mp.get_context("spawn")
    queue: Any = context.Queue()
    workers = [
        context.Process(target=_ceiling_process, args=(device_pks[i::processes], batch, seconds, i, queue))
        for i in range(processes)
    ]
    for w in workers:
        w.start()
    results = [queue.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join()
    return float(sum(c.rate for c in results)), sum(c.cores for c in results) / len(results)


def backend_cpu() -> dict[int, float]:
    """CPU seconds of this database's client backends (PostgreSQL on this machine)."""
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        pids = [
            r[0]
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
        ]
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # a backend that ended meanwhile
            out[pid] = cpu_of(pid)
    return out


# --- where one request's CPU goes (--steps) -------------------------------------------------------


def split_request(raw: bytes) -> tuple[dict[str, str], bytes]:
    """A request `Device.request` built, as the ASGI entry hands it to pipeline.handle."""
    head, body = raw.split(b"\r\n\r\n", 1)
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, value = line.split(b": ", 1)
        headers[name.decode().lower()] = value.decode()
    return headers, body


def _timed(function: Any, spent: dict[str, float], name: str) -> Any:
    """`function` (sync or async) charging its calling thread's CPU time to `spent[name]`."""
    if inspect.iscoroutinefunction(function):

        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return await function(*args, **kwargs)
            finally:
                spent[name] += time.thread_time() - start

        return timed_async

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.thread_time() - start

    return timed


def _bare(cpu: dict[str, float]) -> float:
    return cpu["ceiling, client"] + cpu["ceiling, PostgreSQL"]


def _path(cpu: dict[str, float]) -> float:
    return cpu["handle, main thread"] + cpu["live publisher thread"] + cpu["handle, PostgreSQL"]


def steps(args: argparse.Namespace, devices: list[tuple[str, str, str]], pks: list[int]) -> None:
    """CPU per request of the ceiling's transaction and of `pipeline.handle` without HTTP, one
    request at a time: each step, the live publisher's thread and PostgreSQL apart. What the
    path spends beyond the ceiling bounds the ratio the HTTP windows can reach on these cores."""
    from config import live
    from telemetry.ingest import pipeline, publish

    # The steps of pipeline._handle, timed where it calls them (each module's global is wrapped).
    steps_of = (
        (pipeline, "credentials_check"),
        (pipeline, "device_authenticate"),
        (pipeline, "parse_batch"),
        (pipeline, "batch_check"),
        (pipeline, "rate_check"),
        (pipeline, "validate_readings"),
        (pipeline, "readings_store"),
        (publish, "stored_publish"),
        (pipeline, "stored_answer"),
    )
    spent: dict[str, float] = {}
    for module, name in steps_of:
        spent[name] = 0.0
        setattr(module, name, _timed(getattr(module, name), spent, name))
    seq0 = int(time.time() * 1000) * 1000 + 99 * 10**7
    devs = [Device(d, k, p, seq0) for d, k, p in devices]
    count = args.steps_requests
    per_request = args.batch / 1000  # thousands of readings
    rounds: list[dict[str, float]] = []
    for r in range(args.rounds):
        requests = [split_request(devs[i % len(devs)].request(args.batch, b"127.0.0.1")) for i in range(count + 10)]
        measured = ceiling(pks, args.batch, args.ceiling_seconds)

        async def run(requests: list[tuple[dict[str, str], bytes]] = requests) -> dict[str, float]:
            for headers, body in requests[:10]:  # connections, prepared statements, caches
                await pipeline.handle(body=body, headers=headers)
            live.publish_flush()
            for name in spent:
                spent[name] = 0.0
            backends, process, main = backend_cpu(), process_cpu(), time.thread_time()
            for headers, body in requests[10:]:
                answer = await pipeline.handle(body=body, headers=headers)
                assert answer.status == 200 and answer.body["accepted"] == args.batch, answer.body
            live.publish_flush()
            main, process = time.thread_time() - main, process_cpu() - process
            after = backend_cpu()
            postgres = sum(cpu - backends.get(pid, 0.0) for pid, cpu in after.items())
            result = {f"step {name}": spent[name] * 1000 / count for name in spent}
            result["handle, main thread"] = main * 1000 / count
            result["live publisher thread"] = (process - main) * 1000 / count
            result["handle, PostgreSQL"] = postgres * 1000 / count
            return result

        result = asyncio.run(run())
        result["ceiling, client"] = measured.client_ms * per_request
        result["ceiling, PostgreSQL"] = measured.backend_ms * per_request
        rounds.append(result)
        print(
            f"round {r + 1}: ceiling {_bare(result):.2f} ms, handle {_path(result):.2f} ms "
            f"of CPU per request of {args.batch} readings"
        )
    median = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
    print(f"median of {len(rounds)} rounds, CPU per request of {args.batch} readings, one request at a time, no HTTP:")
    for name, value in median.items():
        print(f"  {name:32s} {value:6.2f} ms")
    bare, path = _bare(median), _path(median)
    print(
        f"the path spends {path - bare:.2f} ms per request beyond the ceiling's {bare:.2f} ms "
        f"({path / bare - 1:.0%} more): "
        f"on the same saturated cores it can reach at most {bare / path:.0%} of the ceiling before HTTP, TLS and "
        f"the proxy are added (80 % allows {bare / 4:.2f} ms beyond it)"
    )


# --- orchestration -------------------------------------------------------------------------------


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
    import django

    django.setup()


def provision(count: int) -> tuple[list[tuple[str, str, str]], list[int]]:
    from telemetry.models import Assignment, Device, Ward
    from telemetry.services import device_provision, patient_admit

    Ward.objects.get_or_create(code="bench", defaults={"name": "Bench", "site": "bench"})
    devices = []
    for i in range(count):
        device_id = f"bench-{i:04d}"
        provisioned = device_provision(device_id=device_id, ward_code="bench")
        assert provisioned.private_key_pem is not None
        if not Assignment.objects.filter(device__device_id=device_id, end__isnull=True).exists():
            patient_admit(pseudonym=f"bench-p{i:04d}", ward_code="bench", device_id=device_id)
        devices.append((device_id, provisioned.key.key_id, provisioned.private_key_pem))
    pks = list(Device.objects.filter(device_id__startswith="bench-").values_list("id", flat=True))
    return devices, pks


def start_daphnes(count: int, env: dict[str, str], extra: list[str]) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    procs, ports = [], []
    for _ in range(count):
        port = free_port()
        procs.append(
            subprocess.Popen(
                [str(ROOT / ".venv/bin/daphne"), *extra, "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        ports.append(port)
    for port in ports:
        for _ in range(600):  # up to 60 s: a crowded machine imports Django slowly
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"daphne on port {port} did not start")
    return procs, ports


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Run:
    """One measured window of HTTP ingest: what the clients saw and what the servers spent."""

    def __init__(
        self,
        results: list[tuple[float, int, int]],
        seconds: float,
        cpu: dict[str, float],
        busy: float,
        *,
        built_in_window: int,
    ) -> None:
        self.results, self.seconds, self.cpu, self.busy = results, seconds, cpu, busy
        self.built_in_window = built_in_window  # requests the clients had to build while sending
        self.latencies = sorted(r[0] for r in results)
        self.statuses: dict[int, int] = {}
        for r in results:
            self.statuses[r[1]] = self.statuses.get(r[1], 0) + 1
        self.accepted = sum(r[2] for r in results)
        self.rate = self.accepted / seconds

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        return self.latencies[min(len(self.latencies) - 1, int(len(self.latencies) * q))] * 1000


def drive(
    args: argparse.Namespace,
    devices: list[tuple[str, str, str]],
    ports: list[int],
    server_pids: list[int],
    *,
    redis_pids: list[int],
    round_index: int,
    expected_rate: float,
    ca_file: str | None = None,
) -> Run:
    """The client processes against `ports` for the warm-up and the measured window. Each
    connection prebuilds enough requests for `expected_rate` readings/s over the whole of it."""
    connections = args.clients * args.concurrency
    prebuild = int(expected_rate * (args.warmup + args.seconds) / args.batch / connections) + 2
    context = mp.get_context("spawn")
    queue: Any = context.Queue()
    barrier = context.Barrier(args.clients + 1)
    window = context.Array("d", 2)
    per = len(devices) // args.clients
    clients = [
        context.Process(
            target=client_process,
            args=(
                {
                    **vars(args),
                    "index": i,
                    "round": round_index,
                    "ports": ports,
                    "ca_file": ca_file,
                    "prebuild": prebuild,
                },
                devices[i * per : (i + 1) * per],
                queue,
                (barrier, window),
            ),
        )
        for i in range(args.clients)
    ]
    for c in clients:
        c.start()
    barrier.wait(timeout=600)  # every client has built its requests
    t_start = time.time() + 0.2 + args.warmup
    t_end = t_start + args.seconds
    window[0], window[1] = t_start, t_end
    barrier.wait(timeout=60)
    time.sleep(max(0.0, t_start - time.time()))
    cpu_start = {pid: cpu_of(pid) for pid in server_pids}
    redis_start = sum(cpu_of(pid) for pid in redis_pids)
    busy_start = machine_busy()
    pg_start = backend_cpu()
    time.sleep(max(0.0, t_end - time.time()))
    cpu_end = {pid: cpu_of(pid) for pid in server_pids}
    redis_end = sum(cpu_of(pid) for pid in redis_pids)
    busy = busy_cores(busy_start, machine_busy())
    pg_end = backend_cpu()
    outcomes = [queue.get() for _ in clients]
    for c in clients:
        c.join()
    cpu = {
        "servers": sum(cpu_end[p] - cpu_start[p] for p in cpu_end),
        "postgres": sum(cpu - pg_start.get(pid, 0.0) for pid, cpu in pg_end.items()),
        "clients": sum(cpu for _, cpu, _ in outcomes),
        "redis": redis_end - redis_start,
    }
    built = sum(b for _, _, b in outcomes)
    return Run([r for rs, _, _ in outcomes for r in rs], args.seconds, cpu, busy, built_in_window=built)


def start_proxy(ports: list[int], env: dict[str, str], tmp: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    """nginx (deploy/nginx/) in front of `ports`, with a throwaway CA: the process, its port, the CA file."""
    port = free_port()
    state = tmp / "nginx"
    upstreams = [arg for p in ports for arg in ("--upstream", f"127.0.0.1:{p}")]
    subprocess.run(
        [
            *(sys.executable, "manage.py", "proxy_setup", str(state), "--listen", f"127.0.0.1:{port}"),
            *upstreams,
            *("--pki-dir", str(tmp / "pki"), "--temp-dir", str(tmp / "nginx-temp")),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    proc = subprocess.Popen(
        ["nginx", "-e", str(state / "error.log"), "-c", str(state / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port, str(tmp / "pki" / "ca.pem")
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nginx did not start; see {state / 'error.log'}")


def nginx_pids(master: int) -> list[int]:
    """The nginx master and its workers (the workers do the TLS)."""
    children = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True, check=False).stdout
    return [master, *(int(pid) for pid in children.split())]


def report(name: str, run: Run, args: argparse.Namespace, ceiling_rate: float) -> None:
    print(
        f"{name}: {run.rate:,.0f} readings/s accepted ({len(run.results)} requests of {args.batch} "
        f"in {args.seconds:.0f} s, statuses {run.statuses}) = {run.rate / ceiling_rate:.0%} of the "
        f"{args.daphnes}-process ceiling beside it ({ceiling_rate:,.0f}/s); latency p50 {run.percentile(0.5):.1f} ms"
        f"  p99 {run.percentile(0.99):.1f} ms  max {run.percentile(1.0):.1f} ms"
        + (f"; {run.built_in_window} requests built in the window" if run.built_in_window else "")
    )
    print(
        f"  CPU during the window: servers {run.cpu['servers'] / args.seconds:.2f} cores, postgres backends "
        f"{run.cpu['postgres'] / args.seconds:.2f} cores, redis {run.cpu['redis'] / args.seconds:.2f} cores, "
        "load clients "
        f"{run.cpu['clients'] / (args.seconds + args.warmup + 0.2):.2f} cores; the machine {run.busy:.2f} of "
        f"{os.cpu_count()} cores busy; per 1,000 readings: servers "
        f"{run.cpu['servers'] / max(1, run.accepted) * 1e6:.1f} ms, "
        f"postgres {run.cpu['postgres'] / max(1, run.accepted) * 1e6:.1f} ms, "
        f"redis {run.cpu['redis'] / max(1, run.accepted) * 1e6:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--daphnes", type=int, default=2)
    parser.add_argument("--proxy", action="store_true", help="also through the nginx TLS front (deploy/nginx/)")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2, help="connections per client process")
    parser.add_argument("--devices", type=int, default=120)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--ceiling-seconds", type=float, default=10.0)
    parser.add_argument(
        "--rounds", type=int, default=1, help="HTTP windows per path, each between two ceilings (medians printed)"
    )
    parser.add_argument(
        "--steps",
        action="store_true",
        help="instead of the HTTP windows: CPU per request of each step of pipeline.handle beside the ceiling's",
    )
    parser.add_argument("--steps-requests", type=int, default=300, help="requests per --steps round")
    parser.add_argument(
        "--daphne-args",
        default="",
        help='extra Daphne arguments, e.g. "-v 0" (no access log: no measurable difference here)',
    )
    args = parser.parse_args()

    services = Services()
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="perfuse-bench-proxy-"))
    try:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "config.settings.dev"),
            # Measure the ingest path, not the limiter's refusals (the Lua check still runs per request).
            "PERFUSE_RATE_DEVICE_PER_SECOND": "10000000",
            "PERFUSE_RATE_DEVICE_BURST": "10000000",
            "PERFUSE_RATE_SITE_PER_SECOND": "10000000",
            "PERFUSE_RATE_SITE_BURST": "10000000",
            "LOG_LEVEL": "WARNING",
            # The proxy (when --proxy) reaches the Daphnes from loopback (config/net.py).
            "PERFUSE_TRUSTED_PROXIES": "127.0.0.1",
        }
        os.environ.update(env)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        setup_django()
        devices, pks = provision(args.devices)
        if args.steps:
            steps(args, devices, pks)
            return
        procs, ports = start_daphnes(args.daphnes, env, args.daphne_args.split())
        daphne_pids = [p.pid for p in procs]

        # The machine's speed drifts (up to threefold within an hour here: other tenants), so each
        # HTTP window is measured between two ceilings and compared with their mean, round after round.
        # Each path: its label, the ports its clients connect to, the processes it costs, its CA.
        paths: list[tuple[str, list[int], list[int], str | None]] = [
            (f"direct to {args.daphnes} Daphnes (HTTP)", ports, daphne_pids, None)
        ]
        if args.proxy:
            nginx, proxy_port, ca_file = start_proxy(ports, env, tmp)
            procs.append(nginx)
            paths.append(
                (
                    f"through nginx (TLS 1.3) to {args.daphnes} Daphnes",
                    [proxy_port],
                    daphne_pids + nginx_pids(nginx.pid),
                    ca_file,
                )
            )
        one_rate = ceiling(pks, args.batch, args.ceiling_seconds).rate
        ceilings = [ceiling_parallel(pks, args.batch, args.ceiling_seconds, args.daphnes)]
        windows: list[tuple[str, Run, float]] = []
        redis_pids = services.redis_pids()
        for r in range(args.rounds):
            for label, targets, pids, ca in paths:
                run = drive(
                    args,
                    devices,
                    targets,
                    pids,
                    redis_pids=redis_pids,
                    round_index=r,
                    expected_rate=1.3 * ceilings[-1][0],
                    ca_file=ca,
                )
                ceilings.append(ceiling_parallel(pks, args.batch, args.ceiling_seconds, args.daphnes))
                beside = (ceilings[-2][0] + ceilings[-1][0]) / 2
                windows.append((label, run, beside))
                print(
                    f"round {r + 1}, {label}: {run.rate:,.0f} readings/s, p99 {run.percentile(0.99):.1f} ms; "
                    f"ceiling before/after {ceilings[-2][0]:,.0f}/{ceilings[-1][0]:,.0f}/s = {run.rate / beside:.0%}"
                )

        print(
            f"ceilings (COPY + INSERT … ON CONFLICT, no HTTP), {args.daphnes} processes, in order: "
            + ", ".join(f"{rate:,.0f}/s ({busy:.2f} cores busy)" for rate, busy in ceilings)
            + f"; 1 process at the start {one_rate:,.0f}/s"
        )
        for label, run, beside in windows:
            report(label, run, args, beside)
        for label, *_ in paths:
            ratios = sorted(run.rate / beside for w, run, beside in windows if w == label)
            p99 = statistics.median(run.percentile(0.99) for w, run, _ in windows if w == label)
            print(
                f"{label}: median of {len(ratios)} rounds {statistics.median(ratios):.0%} of the ceiling beside it "
                f"(range {ratios[0]:.0%} to {ratios[-1]:.0%}), median p99 {p99:.1f} ms"
            )
        with open("/proc/loadavg") as load:
            print(
                f"load average at the end: {' '.join(load.read().split()[:3])} "
                f"(other processes compete for the cores; machine has {os.cpu_count()} cores; "
                f"{args.clients} client processes x {args.concurrency} connections)"
            )
    finally:
        for p in procs:
            p.terminate()
        services.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
