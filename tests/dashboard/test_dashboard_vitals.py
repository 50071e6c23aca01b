"""The other vital signs on the dashboard: the series API for every charted metric (raw and
bucketed with their envelope), the rule's bands per metric, the chart's panels, the ward cards'
extra metrics and the sockets that carry them."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import Client

from config import live
from dashboard.selectors import CHART_METRICS
from telemetry.units import METRICS
from tests import factories
from tests.dashboard.test_live import _batch, _frame, _open
from tests.live_support import audit_events, insert_readings, login, patient, persona

pytestmark = pytest.mark.django_db

# A plausible reading of each charted metric, in its canonical unit, and a dip of it.
LEVEL = {"tissue_o2": 62.0, "spo2": 97.0, "skin_temp": 36.4, "battery": 3900.0}
DIP = {"tissue_o2": 28.0, "spo2": 84.0, "skin_temp": 33.0, "battery": 3300.0}


def _iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _series(client: Client, metric: str, start: dt.datetime, end: dt.datetime) -> dict:
    query = urlencode({"metric": metric, "start": _iso(start), "end": _iso(end)})
    response = client.get(f"/api/v1/patients/p-one/series?{query}")
    assert response.status_code == 200, response.content
    return response.json()


def test_the_chart_shows_the_vital_signs_the_sensors_send():
    assert CHART_METRICS == ("tissue_o2", "spo2", "skin_temp", "battery")
    assert set(CHART_METRICS) <= set(METRICS)


@pytest.mark.parametrize("metric", CHART_METRICS)
def test_series_of_each_metric_raw_for_a_short_span_and_audited(clinician, p1, metric):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    insert_readings(*p1, [(now - dt.timedelta(seconds=30 - i), LEVEL[metric]) for i in range(30)], metric=metric)
    insert_readings(
        *p1,
        [(now - dt.timedelta(seconds=45), 50.0)],
        metric="tissue_o2" if metric != "tissue_o2" else "spo2",
        first_seq=900,
    )
    client = Client()
    login(client, clinician)
    body = _series(client, metric, now - dt.timedelta(minutes=5), now)
    assert (body["metric"], body["unit"], body["resolution"]) == (metric, METRICS[metric].canonical, "raw")
    assert [p["value"] for p in body["points"]] == [LEVEL[metric]] * 30  # this metric's readings only
    [event] = audit_events("series.read")
    assert event.outcome == "allowed" and event.detail["metric"] == metric


@pytest.mark.parametrize("metric", CHART_METRICS)
def test_series_of_each_metric_bucketed_keeps_a_short_dip_in_the_envelope(clinician, p1, metric):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start = now - dt.timedelta(hours=24)
    dip = now - dt.timedelta(hours=6)
    points = []
    for i in range(24 * 360):  # every 10 s for a day: more than one raw trace holds
        t = start + dt.timedelta(seconds=10 * i)
        points.append((t, DIP[metric] if dip <= t < dip + dt.timedelta(seconds=20) else LEVEL[metric]))
    insert_readings(*p1, points, metric=metric)
    client = Client()
    login(client, clinician)
    body = _series(client, metric, start, now)
    assert body["resolution"] == "1m"
    assert min(p["min"] for p in body["points"]) == DIP[metric]
    assert max(p["max"] for p in body["points"]) == LEVEL[metric]
    assert min(p["avg"] for p in body["points"]) > DIP[metric]


def test_annotations_give_each_metric_its_rule_bands(clinician, p1):
    client = Client()
    login(client, clinician)
    body = client.get("/api/v1/patients/p-one/annotations").json()
    bands = {metric: [(b["low"], b["high"], b["priority"]) for b in rows] for metric, rows in body["bands"].items()}
    assert bands == {
        "tissue_o2": [(0.0, 25.0, "high"), (25.0, 35.0, "medium")],
        "spo2": [(0.0, 80.0, "high"), (80.0, 90.0, "medium")],
        "battery": [(0.0, 3500.0, "low")],
    }
    assert body["thresholds"] == body["bands"]["tissue_o2"]
    assert [b["label"] for b in body["bands"]["spo2"]] == ["SpO2 critically low < 80 %", "SpO2 low < 90 %"]


def test_the_chart_page_names_its_panels_and_links_the_alarm_history(clinician, p1):
    client = Client()
    login(client, clinician)
    page = client.get("/patients/p-one/")
    assert page.status_code == 200
    config = page.context["chart_config"]
    assert [(m["metric"], m["label"], m["unit"]) for m in config["metrics"]] == [
        ("tissue_o2", "Tissue O₂", "%"),
        ("spo2", "SpO₂", "%"),
        ("skin_temp", "Skin temperature", "°C"),
        ("battery", "Sensor battery", "mV"),
    ]
    assert config["metric"] == "tissue_o2"
    assert b'href="/alarms/history/?patient=p-one"' in page.content


def test_ward_cards_show_a_recent_spo2_beside_tissue_o2(clinician, p1, ward_a):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    insert_readings(*p1, [(now - dt.timedelta(seconds=5), 61.0)])
    insert_readings(*p1, [(now - dt.timedelta(seconds=3), 95.0)], metric="spo2", first_seq=10)
    insert_readings(*p1, [(now - dt.timedelta(seconds=2), 3800.0)], metric="battery", first_seq=20)  # not a card metric
    stale_spo2 = patient("p-two", ward_a)
    insert_readings(*stale_spo2, [(now - dt.timedelta(hours=2), 93.0)], metric="spo2")
    client = Client()
    login(client, clinician)
    cards = {c["pseudonym"]: c for c in client.get("/api/v1/patients/").json()["patients"]}
    assert cards["p-one"]["value"] == 61.0 and cards["p-one"]["metric"] == "tissue_o2"
    assert [(v["metric"], v["label"], v["unit"], v["value"]) for v in cards["p-one"]["vitals"]] == [
        ("spo2", "SpO₂", "%", 95.0)
    ]
    assert cards["p-two"]["vitals"] == []  # two hours old: not shown as if current


def test_card_metrics_are_a_setting(clinician, p1, settings):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    insert_readings(*p1, [(now - dt.timedelta(seconds=3), 95.0)], metric="spo2")
    insert_readings(*p1, [(now - dt.timedelta(seconds=2), 36.6)], metric="skin_temp", first_seq=20)
    settings.PERFUSE_CARD_METRICS = ["skin_temp"]
    client = Client()
    login(client, clinician)
    [card] = client.get("/api/v1/patients/").json()["patients"]
    assert [(v["metric"], v["unit"]) for v in card["vitals"]] == [("skin_temp", "°C")]


def test_an_unknown_card_metric_stops_the_start(settings):
    settings.PERFUSE_CARD_METRICS = ["spo2", "blood_type"]
    with pytest.raises(SystemCheckError, match="blood_type"):
        call_command("check")


@pytest.mark.django_db(transaction=True)  # the sockets' queries run on other connections
@pytest.mark.usefixtures("ingest_clients")
async def test_chart_snapshot_carries_every_charted_metric():
    ward = await sync_to_async(factories.ward)("icu-a")
    pt, dev = await sync_to_async(patient)("p-one", ward)
    who = await sync_to_async(persona)("clinician", ward)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    for i, metric in enumerate(CHART_METRICS):
        await sync_to_async(insert_readings)(
            pt, dev, [(now - dt.timedelta(seconds=10 - i), LEVEL[metric])], metric=metric, first_seq=i + 1
        )
    comm = await _open("/ws/patients/p-one/live", await sync_to_async(who.ws_headers)())
    snapshot = await _frame(comm)  # decoded against its schema
    assert [(p["metric"], p["value"]) for p in snapshot["points"]] == [(m, LEVEL[m]) for m in CHART_METRICS]
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)  # the sockets' queries run on other connections
@pytest.mark.usefixtures("ingest_clients")
async def test_ward_socket_forwards_the_card_metrics_too():
    ward = await sync_to_async(factories.ward)("icu-a")
    await sync_to_async(patient)("p-one", ward)
    who = await sync_to_async(persona)("clinician", ward)
    comm = await _open("/ws/ward/live", await sync_to_async(who.ws_headers)())
    await _frame(comm)
    batch = _batch("p-one", "dev-p-one", 50, 1)
    batch["points"].append({**batch["points"][0], "metric": "spo2", "value": 96.0, "seq": 51})
    batch["points"].append({**batch["points"][0], "metric": "battery", "value": 3700.0, "seq": 52})
    await live.publish_now([live.ward_group("icu-a")], batch)
    frame = await _frame(comm)
    assert [(p["metric"], p["value"]) for p in frame["points"]][1:] == [("spo2", 96.0)]
    await comm.disconnect()
