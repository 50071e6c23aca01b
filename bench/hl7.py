"""HL7 benchmark: ADT messages through the real listener and ORU^R01 results out to a local peer,
each beside a same-run ceiling (hl7apy parsing the same messages in-process).

    .venv/bin/python bench/hl7.py [--adt 2000] [--connections 4] [--patients 200] [--intervals 3]

Uses DATABASE_URL / REDIS_URL when set (a fresh database `<name>_bench_hl7` is created on that
server), otherwise starts a throwaway PostgreSQL and Redis with scripts/lib.sh: never the demo's
database. Then:

0. ADT in: `manage.py run_hl7` as its own process (the real listener, PERFUSE_HL7_LISTEN on a
   free port), and N A01 messages (each a new MRN admitted to one ward, so each is a full
   admission: identity map, pseudonym, stay, raw message store, audit) sent over C MLLP
   connections at once, each connection one message after the other as original mode has it.
   Prints messages/s and the ACK latency (send → ACK received) p50/p99/max; the ceiling is
   `adt_read` (hl7apy parsing and validating into the event's structure, what the listener does
   before any database work) on the same messages in this process.
1. Filling (the engine's side): P patients, each with a device and an MRN, and I one-minute
   intervals of validated readings (tissue O2, tissue pO2, SpO2 every 5 s, skin temperature
   every 30 s). The real engine processor (telemetry.hl7.outbox.OruProcessor) folds them into
   the interval partials (`process`) and writes the P x I outbox messages (`tick`); both timed.
2. Sending: a local results peer in a process of its own (`python -m telemetry.hl7.receiver
   --quiet`, ACK AA to everything) and the real sender (telemetry.hl7.sender.OruSender, one MLLP
   connection) in this process, from the first claim until every message is done: messages/s
   end to end (claim, hl7apy build with the identity lookup, MLLP exchange, recording, audit).
3. Ceiling, same run: hl7apy building the same messages in-process (`oru_build`, what the sender
   does before a first attempt), and hl7apy parsing and validating the sent texts
   (`parse_message` + `validate`, what a receiver using the same library would do).

Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.live import free_port, fresh_database, start_services  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
METRICS_EVERY = {"tissue_o2": 5, "tissue_po2": 5, "spo2": 5, "skin_temp": 30}  # seconds between readings


def adt_messages(count: int) -> list[bytes]:
    return [
        (
            f"MSH|^~\\&|ADT1|HOSP|PERFUSE|PERFUSE|20261201120000||ADT^A01^ADT_A01|BENCH{i:07d}|P|2.5\r"
            f"EVN|A01|20261201120000\rPID|1||B{i:07d}^^^HOSP^MR||Bench^Patient^{i}||19800101|F\r"
            f"PV1|1|I|bench-adt^^{i % 40 + 1}"
        ).encode()
        for i in range(count)
    ]


async def adt_load(port: int, messages: list[bytes], connections: int) -> tuple[list[float], float]:
    """Send the messages over `connections` connections; the ACK latency of each, and the wall time."""
    from telemetry.hl7.mllp import MllpConnection
    from telemetry.hl7.send import ack_code

    latencies: list[float] = []

    async def one_connection(share: list[bytes]) -> None:
        async with MllpConnection("127.0.0.1", port) as connection:
            for message in share:
                sent = time.perf_counter()
                reply = await connection.exchange(message)
                latencies.append(time.perf_counter() - sent)
                assert ack_code(reply) == "AA", reply

    began = time.perf_counter()
    await asyncio.gather(*(one_connection(messages[i::connections]) for i in range(connections)))
    return latencies, time.perf_counter() - began


def adt_bench(count: int, connections: int) -> dict[str, float]:
    from telemetry.hl7.adt import adt_read
    from telemetry.models import Ward

    Ward.objects.create(code="bench-adt", name="Bench ADT ward")
    messages = adt_messages(count)
    port = free_port()
    env = {**os.environ, "PERFUSE_HL7_LISTEN": f"127.0.0.1:{port}", "PERFUSE_HL7_ORU_TARGET": ""}
    process = subprocess.Popen([PY, "manage.py", "run_hl7"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        while "HL7 listener on" not in process.stderr.readline():
            assert process.poll() is None, "run_hl7 did not start"
        latencies, elapsed = asyncio.run(adt_load(port, messages, connections))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    began = time.perf_counter()
    for message in messages[: min(count, 500)]:
        adt_read(message.decode(), processing_id="P", zone="UTC")
    parse_rate = min(count, 500) / (time.perf_counter() - began)
    ms = sorted(x * 1000 for x in latencies)
    return {
        "rate": count / elapsed,
        "p50": statistics.median(ms),
        "p99": ms[int(len(ms) * 0.99) - 1],
        "max": ms[-1],
        "parse_rate": parse_rate,
    }


def prepare(n_patients: int) -> list[Any]:
    """A ward with P patients, each monitored by its own device and with an MRN."""
    from django.db import transaction

    from telemetry.models import Assignment, Device, Patient, PatientIdentity, Ward

    now = dt.datetime.now(dt.UTC)
    with transaction.atomic():
        ward = Ward.objects.create(code="bench-hl7", name="Bench HL7 ward")
        devices = Device.objects.bulk_create(
            [Device(device_id=f"bench-oru-{i:04d}", ward=ward) for i in range(n_patients)]
        )
        patients = Patient.objects.bulk_create(
            [
                Patient(pseudonym=f"pb-oru-{i:04d}", ward=ward, admitted_at=now, bed=str(i + 1))
                for i in range(n_patients)
            ]
        )
        Assignment.objects.bulk_create(
            Assignment(device=d, patient=p, start=now - dt.timedelta(hours=1))
            for d, p in zip(devices, patients, strict=True)
        )
        PatientIdentity.objects.bulk_create(
            PatientIdentity(patient=p, mrn=f"MRN{100000 + i}") for i, p in enumerate(patients)
        )
    return list(zip(devices, patients, strict=True))


def readings(pairs: list[Any], start: dt.datetime, intervals: int) -> list[Any]:
    from telemetry.selectors import ReadingRow

    rows = []
    for device, patient in pairs:
        seq = 0
        for metric, every in METRICS_EVERY.items():
            for offset in range(0, intervals * 60, every):
                seq += 1
                value = 36.5 if metric == "skin_temp" else 60.0 + (offset % 7)
                at = start + dt.timedelta(seconds=offset)
                rows.append(ReadingRow(device.pk, patient.pk, metric, seq, at, value, 0.9, None, None))
    return rows


def fill(pairs: list[Any], intervals: int) -> dict[str, float]:
    from django.db import transaction

    from telemetry.hl7.outbox import OruProcessor, interval_floor, oru_intervals_close

    start = interval_floor(dt.datetime.now(dt.UTC), 60) - dt.timedelta(minutes=intervals + 1)
    rows = readings(pairs, start, intervals)
    processor = OruProcessor()
    began = time.perf_counter()
    with transaction.atomic():
        processor.process(rows, now=dt.datetime.now(dt.UTC))
    folded = time.perf_counter() - began
    began = time.perf_counter()
    written = 0
    while batch := oru_intervals_close(now=dt.datetime.now(dt.UTC)):  # what each tick does, CLOSE_LIMIT at a time
        written += batch
    closed = time.perf_counter() - began
    return {"readings": len(rows), "fold_s": folded, "messages": written, "close_s": closed}


async def send_all(port: int, expected: int) -> float:
    from asgiref.sync import sync_to_async

    from telemetry.hl7.sender import OruSender
    from telemetry.models import OruMessage

    done = sync_to_async(lambda: OruMessage.objects.filter(state="done").count(), thread_sensitive=False)
    sender = OruSender("127.0.0.1", port, poll=0.05)
    stop = asyncio.Event()
    began = time.perf_counter()
    task = asyncio.create_task(sender.run(stop))
    while await done() < expected:
        await asyncio.sleep(0.1)
    elapsed = time.perf_counter() - began
    stop.set()
    await task
    return elapsed


def ceiling(texts: list[str]) -> dict[str, float]:
    from telemetry.hl7.oru import oru_build, oru_validate
    from telemetry.hl7.outbox import oru_addressing, oru_results
    from telemetry.models import OruMessage

    rows = list(OruMessage.objects.order_by("id")[: len(texts)])
    results = [oru_results(row) for row in rows]
    began = time.perf_counter()
    for result in results:
        oru_build(result, addressing=oru_addressing(), at=dt.datetime.now(dt.UTC))
    built = time.perf_counter() - began
    began = time.perf_counter()
    for text in texts:
        oru_validate(text)
    parsed = time.perf_counter() - began
    return {"build_per_s": len(rows) / built, "parse_per_s": len(texts) / parsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adt", type=int, default=2000, help="A01 messages sent to the listener")
    parser.add_argument("--connections", type=int, default=4, help="MLLP connections sending them at once")
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--intervals", type=int, default=3)
    parser.add_argument("--ceiling-sample", type=int, default=200, help="messages the in-process ceiling uses")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="perfuse-bench-hl7-"))
    stop_services: list[str] = []
    if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
        db, redis, stop_services = start_services(tmp)
        os.environ["DATABASE_URL"], os.environ["REDIS_URL"] = db, redis
    os.environ["DATABASE_URL"] = fresh_database(os.environ["DATABASE_URL"], "bench_hl7")
    # The demo's settings (persistent connections, DEBUG off) without its audit anchor file.
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.dev"
    os.environ["PERFUSE_AUDIT_ANCHOR"] = ""
    os.environ.setdefault("PERFUSE_CHANNEL_PREFIX", f"bench{os.getpid()}")
    peer_port = free_port()
    os.environ["PERFUSE_HL7_ORU_TARGET"] = f"127.0.0.1:{peer_port}"
    subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True)
    peer = subprocess.Popen([PY, "-m", "telemetry.hl7.receiver", "--port", str(peer_port), "--quiet"], cwd=ROOT)
    try:
        import django

        django.setup()
        from telemetry.models import OruMessage

        adt = adt_bench(args.adt, args.connections)
        pairs = prepare(args.patients)
        filled = fill(pairs, args.intervals)
        expected = filled["messages"]
        elapsed = asyncio.run(send_all(peer_port, int(expected)))
        texts = list(OruMessage.objects.order_by("id").values_list("message", flat=True)[: args.ceiling_sample])
        limits = ceiling(texts)
    finally:
        peer.terminate()
        peer.wait(10)
        if stop_services:
            subprocess.run(stop_services, check=False)
    print(
        f"ADT in: {args.adt} A01 over {args.connections} connections: {adt['rate']:,.1f} messages/s, "
        f"ACK latency p50 {adt['p50']:.1f} ms, p99 {adt['p99']:.1f} ms, max {adt['max']:.1f} ms; "
        f"ceiling (same run, in-process hl7apy adt_read): {adt['parse_rate']:,.1f} messages/s"
    )
    observations = sum(len(m.split("\rOBX|")) - 1 for m in texts) / max(len(texts), 1)
    print(
        f"ORU filling: {filled['readings']} readings folded in {filled['fold_s']:.2f} s "
        f"({filled['readings'] / filled['fold_s']:,.0f} readings/s); {expected:.0f} messages written in "
        f"{filled['close_s']:.2f} s ({expected / filled['close_s']:,.0f} messages/s)"
    )
    print(
        f"ORU sending: {expected:.0f} messages ({observations:.1f} OBX each) AA'd by the local peer in "
        f"{elapsed:.2f} s: {expected / elapsed:,.1f} messages/s over one connection"
    )
    print(
        f"ceiling (same run, in-process hl7apy): build {limits['build_per_s']:,.1f} messages/s, "
        f"parse + validate {limits['parse_per_s']:,.1f} messages/s"
    )


if __name__ == "__main__":
    main()
