"""Secondary notification from the outbox, against a real SMTP server (aiosmtpd) and a real HTTP
receiver that checks the HMAC signature: what a message carries (and does not), retries with
back-off, giving up, the notification_failed technical alarm, and what the alarm shows."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from alerts import channels
from alerts.models import Alarm, Delivery, DeliveryAttempt, OnCallShift
from alerts.outbox import OutboxSender
from alerts.services import alarm_raise, alarm_timers, deliveries_claim, delivery_record, rule_current_ward
from alerts.vocabulary import Kind
from audit.models import AuditEvent
from telemetry.models import Patient, PatientIdentity
from tests import factories
from tests.alarm_factories import staff, verified_client
from tests.notify_servers import SmtpSink, WebhookReceiver, smtp_sink, webhook_json, webhook_receiver

pytestmark = pytest.mark.django_db
SECRET = "webhook-test-secret-0123456789"
NAME, MRN = "Josephine Quartermaine", "MRN-77341902"


class Clock:
    """The sender's clock, moved by the test (the back-off is in the outbox rows' times)."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def move(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def ward() -> dict[str, Any]:
    factories.ward("icu-n")
    factories.device(ward_code="icu-n", patient="pt-n1")
    factories.device(ward_code="icu-n", patient="pt-n2")
    patient = Patient.objects.select_related("ward").get(pseudonym="pt-n1")
    PatientIdentity.objects.create(patient=patient, name=NAME, mrn=MRN)
    nurse = staff("nurse-n", "oncall", [patient.ward])
    nurse.email = "nurse-n@example.org"
    nurse.save()
    now = dt.datetime.now(dt.UTC)
    OnCallShift.objects.create(
        ward=patient.ward,
        user=nurse,
        starts_at=now - dt.timedelta(hours=1),
        ends_at=now + dt.timedelta(hours=11),
        created_by="test",
        created_at=now,
    )
    return {"patient": patient, "other": Patient.objects.select_related("ward").get(pseudonym="pt-n2"), "nurse": nurse}


def _use_smtp(settings: Any, port: int) -> None:
    settings.PERFUSE_SMTP_HOST, settings.PERFUSE_SMTP_PORT, settings.PERFUSE_SMTP_SECURITY = "127.0.0.1", port, "none"


@pytest.fixture
def smtp(settings: Any) -> Iterator[SmtpSink]:
    with smtp_sink() as sink:
        _use_smtp(settings, sink.port)
        yield sink


@pytest.fixture
def webhook(settings: Any) -> Iterator[WebhookReceiver]:
    with webhook_receiver(SECRET) as receiver:
        settings.PERFUSE_WEBHOOK_URL, settings.PERFUSE_WEBHOOK_SECRET = receiver.url, SECRET
        yield receiver


def _raise(patient: Patient, kind: str = "critical_low", now: dt.datetime | None = None) -> Alarm:
    now = now or dt.datetime.now(dt.UTC)
    return alarm_raise(patient=patient, rule=rule_current_ward(patient.ward), kind=kind, onset=now, now=now, explain={})


def _two_failed_attempts(patient: Patient) -> tuple[Alarm, OutboxSender, Clock]:
    """A high-priority raise whose message fails twice, the second attempt when it is due."""
    clock = Clock()
    sender = OutboxSender(clock=clock)
    alarm = _raise(patient, now=clock.now)
    sender.run_once()
    assert not Alarm.objects.filter(kind=Kind.NOTIFICATION_FAILED).exists()  # one failure is no alarm
    clock.move(5)
    sender.run_once()
    return alarm, sender, clock


def _log(delivery: Delivery) -> list[str]:
    return [step.state for step in DeliveryAttempt.objects.filter(delivery=delivery).order_by("at", "id")]


def test_email_and_webhook_carry_the_default_fields_and_no_identity(
    ward: dict[str, Any], smtp: SmtpSink, webhook: WebhookReceiver
) -> None:
    alarm = _raise(ward["patient"])  # high priority: sent at once to the rostered nurse
    email, hook = Delivery.objects.filter(alarm=alarm).order_by("channel")
    assert (email.channel, email.address, email.recipient, email.state) == (
        "email",
        "nurse-n@example.org",
        ward["nurse"],
        "queued",
    )
    assert (hook.channel, hook.address) == ("webhook", webhook.url.split("/")[2])

    assert OutboxSender(workers=2).run_once() == 2

    [(to, mail)] = smtp.messages
    assert to == ["nurse-n@example.org"]
    text = mail["Subject"] + "\n" + mail.get_content()
    for shown in ("pt-n1", "icu-n", "high", "Tissue O2 critically low", f"http://127.0.0.1:8000/alarms/{alarm.pk}/"):
        assert shown in text
    [received] = webhook.accepted()
    body = webhook_json(received)
    assert received.headers["x-perfuse-delivery"] == str(hook.pk)
    assert body["type"] == "perfuse.alarm.raised" and body["recipients"] == ["nurse-n"]
    assert set(body["alarm"]) == {"alarm", "event", "level", "at", "pseudonym", "ward", "priority", "condition", "link"}
    assert (body["alarm"]["pseudonym"], body["alarm"]["ward"], body["alarm"]["condition"]) == (
        "pt-n1",
        "icu-n",
        "Tissue O2 critically low",
    )
    for leaked in (NAME, "Quartermaine", MRN, "77341902"):
        assert leaked not in mail.as_string() and leaked.encode() not in received.body
    for delivery in (email, hook):
        delivery.refresh_from_db()
        assert delivery.state == "sent" and delivery.sent_at is not None and _log(delivery) == ["queued", "sent"]
    sent = AuditEvent.objects.filter(action="alarm.notification_sent", subject="pt-n1")
    assert sorted(e.detail["channel"] for e in sent) == ["email", "webhook"]


def test_a_channel_carries_only_the_fields_it_is_configured_for(
    ward: dict[str, Any], settings: Any, webhook: WebhookReceiver
) -> None:
    settings.PERFUSE_NOTIFY_WEBHOOK_FIELDS = ["ward", "priority"]
    alarm = _raise(ward["patient"])
    [row] = Delivery.objects.filter(alarm=alarm)
    assert set(row.message["fields"]) == {"alarm", "event", "level", "at", "ward", "priority"}
    OutboxSender().run_once()
    body = webhook_json(webhook.accepted()[0])
    assert set(body["alarm"]) == {"alarm", "event", "level", "at", "ward", "priority"}
    assert b"pt-n1" not in webhook.accepted()[0].body

    settings.PERFUSE_NOTIFY_WEBHOOK_FIELDS = ["ward", "name"]
    with pytest.raises(ImproperlyConfigured, match="name may not be sent"):
        channels.senders_from_settings()  # the notifier does not start
    later = _raise(ward["other"])  # and the alarm's transaction does not fail on the setting
    assert set(Delivery.objects.get(alarm=later).message["fields"]) == {"alarm", "event", "level", "at", "ward"}


def test_medium_raise_is_not_sent_but_its_escalation_is_in_the_alarm_transaction(
    ward: dict[str, Any], smtp: SmtpSink
) -> None:
    now = dt.datetime.now(dt.UTC)
    alarm = _raise(ward["patient"], kind="low", now=now)
    assert not Delivery.objects.filter(alarm=alarm).exists()
    with pytest.raises(RuntimeError), transaction.atomic():
        alarm_timers(alarm_id=alarm.pk, now=now + dt.timedelta(seconds=121))
        assert Delivery.objects.filter(alarm=alarm, event="escalated").count() == 1
        raise RuntimeError("the alarm's transaction rolls back")
    assert not Delivery.objects.filter(alarm=alarm).exists()  # written with the escalation, or not at all
    alarm_timers(alarm_id=alarm.pk, now=now + dt.timedelta(seconds=121))
    [row] = Delivery.objects.filter(alarm=alarm)
    assert (row.event, row.level, row.recipient) == ("escalated", 1, ward["nurse"])
    OutboxSender(clock=lambda: now + dt.timedelta(seconds=121)).run_once()
    [(_, mail)] = smtp.messages
    assert "escalated (level 1)" in mail["Subject"]


def test_webhook_is_retried_with_exponential_back_off_until_the_receiver_takes_it(
    ward: dict[str, Any], settings: Any
) -> None:
    with webhook_receiver(SECRET, fail_first=2) as receiver:
        settings.PERFUSE_WEBHOOK_URL, settings.PERFUSE_WEBHOOK_SECRET = receiver.url, SECRET
        clock = Clock()
        sender = OutboxSender(clock=clock)
        alarm = _raise(ward["patient"], now=clock.now)
        [row] = Delivery.objects.filter(alarm=alarm)
        assert sender.run_once() == 1
        row.refresh_from_db()
        assert (row.state, row.attempts, row.next_attempt_at) == ("failed", 1, clock.now + dt.timedelta(seconds=5))
        assert "HTTP 503" in row.last_error
        clock.move(4.9)
        assert sender.run_once() == 0  # not due yet
        clock.move(0.1)
        assert sender.run_once() == 1
        row.refresh_from_db()
        assert (row.state, row.next_attempt_at) == ("failed", clock.now + dt.timedelta(seconds=10))
        clock.move(10)
        assert sender.run_once() == 1
        row.refresh_from_db()
        assert (row.state, row.attempts) == ("sent", 3)
        assert _log(row) == ["queued", "failed", "failed", "sent"]
        assert len(receiver.requests) == 3 and all(r.signature_valid for r in receiver.requests)
        assert {r.headers["x-perfuse-delivery"] for r in receiver.requests} == {str(row.pk)}
    assert not Alarm.objects.filter(kind=Kind.NOTIFICATION_FAILED).exists()  # 2 failures < 3 in a row


def test_giving_up_raises_one_notification_failed_per_ward_and_a_success_clears_it(
    ward: dict[str, Any], settings: Any
) -> None:
    settings.PERFUSE_NOTIFY_MAX_ATTEMPTS = 2
    settings.PERFUSE_NOTIFY_FAILURES_ALARM = 10
    with smtp_sink(fail_always=True) as sink:
        _use_smtp(settings, sink.port)
        first, sender, clock = _two_failed_attempts(ward["patient"])
        [row] = Delivery.objects.filter(alarm=first)
        assert (row.state, row.attempts, _log(row)) == ("gave_up", 2, ["queued", "failed", "gave_up"])
        assert "SMTP 451" in row.last_error
        [failed] = Alarm.objects.filter(kind=Kind.NOTIFICATION_FAILED)
        assert (failed.ward, failed.priority, failed.category, failed.state) == (
            ward["patient"].ward,
            "medium",
            "technical",
            "active_unacknowledged",
        )
        assert failed.explain["channels"] == ["email"] and failed.explain["failed_alarm"] == first.pk
        assert AuditEvent.objects.filter(action="alarm.notification_gave_up", subject="pt-n1").count() == 1
        assert AuditEvent.objects.filter(action="alarm.raised", detail__kind="notification_failed").count() == 1

        second = _raise(ward["other"], now=clock.now)  # the other patient of the ward fails too
        sender.run_once()
        clock.move(5)
        sender.run_once()
        assert Delivery.objects.get(alarm=second).state == "gave_up"
        assert Alarm.objects.filter(kind=Kind.NOTIFICATION_FAILED).count() == 1  # one per ward

        sink.fail_always = False
        _raise(ward["patient"], kind="rapid_fall", now=clock.now)  # medium: not sent; escalate it
        rapid = Alarm.objects.get(kind="rapid_fall")
        clock.move(121)
        alarm_timers(alarm_id=rapid.pk, now=clock.now)
        sender.run_once()
        assert Delivery.objects.get(alarm=rapid).state == "sent"
    failed.refresh_from_db()
    assert failed.condition_present is False and failed.condition_cleared_at is not None


def test_failures_in_a_row_raise_the_technical_alarm_before_giving_up(ward: dict[str, Any], settings: Any) -> None:
    settings.PERFUSE_NOTIFY_FAILURES_ALARM = 2
    with webhook_receiver(SECRET, fail_always=True) as receiver:
        settings.PERFUSE_WEBHOOK_URL, settings.PERFUSE_WEBHOOK_SECRET = receiver.url, SECRET
        alarm, _, _ = _two_failed_attempts(ward["patient"])
    assert Delivery.objects.get(alarm=alarm).state == "failed"  # still being retried
    [failed] = Alarm.objects.filter(kind=Kind.NOTIFICATION_FAILED)
    assert failed.explain["reason"] == "failures_in_a_row" and failed.explain["channels"] == ["webhook"]


def test_a_permanent_refusal_gives_up_at_once(ward: dict[str, Any], settings: Any) -> None:
    with smtp_sink(fail_always=True, refusal="550 5.1.1 No such mailbox") as sink:
        _use_smtp(settings, sink.port)
        alarm = _raise(ward["patient"])
        OutboxSender().run_once()
    row = Delivery.objects.get(alarm=alarm)
    assert (row.state, row.attempts) == ("gave_up", 1) and "SMTP 550" in row.last_error


def test_an_unreachable_server_is_a_failure_recorded_with_its_error(ward: dict[str, Any], settings: Any) -> None:
    with smtp_sink() as sink:
        port = sink.port  # closed again when the block ends: nothing listens there
    _use_smtp(settings, port)
    alarm = _raise(ward["patient"])
    OutboxSender().run_once()
    row = Delivery.objects.get(alarm=alarm)
    assert row.state == "failed" and "ConnectionRefusedError" in row.last_error


def test_a_claim_is_exclusive_until_its_lease_ends_and_a_lost_claim_records_nothing(
    ward: dict[str, Any], smtp: SmtpSink
) -> None:
    alarm = _raise(ward["patient"])
    now = dt.datetime.now(dt.UTC)
    lease = dt.timedelta(seconds=30)
    [first] = deliveries_claim(now=now, channels=["email"], limit=10, lease=lease)
    assert deliveries_claim(now=now, channels=["email"], limit=10, lease=lease) == []
    later = now + lease + dt.timedelta(seconds=1)  # the first sender died mid-send
    [again] = deliveries_claim(now=later, channels=["email"], limit=10, lease=lease)
    assert (first.message.delivery_id, first.attempt, again.attempt) == (again.message.delivery_id, 1, 2)
    assert delivery_record(claim=first, outcome=channels.Outcome(True), now=later) is None
    assert delivery_record(claim=again, outcome=channels.Outcome(True), now=later) == "sent"
    assert Delivery.objects.get(alarm=alarm).attempts == 2


def test_deliveries_are_shown_on_the_alarm_page_and_in_the_detail_api(ward: dict[str, Any], smtp: SmtpSink) -> None:
    alarm = _raise(ward["patient"])
    OutboxSender().run_once()
    client = verified_client(ward["nurse"])
    body = client.get(f"/api/v1/alarms/{alarm.pk}").json()
    [delivery] = body["deliveries"]
    assert (delivery["channel"], delivery["state"], delivery["recipient"], delivery["attempts"]) == (
        "email",
        "sent",
        "nurse-n",
        1,
    )
    assert [step["state"] for step in delivery["log"]] == ["queued", "sent"] and delivery["sent_at"]
    page = client.get(f"/alarms/{alarm.pk}/").content.decode()
    assert 'id="alarm-deliveries"' in page and "nurse-n@example.org" in page and "delivery-sent" in page


def test_the_alarm_history_shows_each_delivery(ward: dict[str, Any], smtp: SmtpSink) -> None:
    alarm = _raise(ward["patient"])
    OutboxSender().run_once()
    client = verified_client(ward["nurse"])
    [row] = client.get("/api/v1/alarms/history", {"patient": alarm.patient.pseudonym}).json()["alarms"]
    [delivery] = row["deliveries"]
    assert (delivery["channel"], delivery["recipient"], delivery["state"], delivery["attempts"]) == (
        "email",
        "nurse-n",
        "sent",
        1,
    )
    page = client.get("/alarms/history/", {"patient": alarm.patient.pseudonym}).content.decode()
    assert "email to nurse-n" in page and "sent" in page
    csv_text = b"".join(client.get("/alarms/history.csv", {"patient": alarm.patient.pseudonym})).decode()
    assert csv_text.splitlines()[0].endswith(",deliveries")
    assert "email to nurse-n: sent after 1" in csv_text


def test_webhook_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    body = json.dumps({"a": 1}).encode()
    header = channels.webhook_signature(SECRET, body, timestamp=1700000000)
    receiver = WebhookReceiver(secret=SECRET)
    assert header.startswith("t=1700000000,v1=")
    assert not receiver.verify(header, body)  # too old for the receiver's 5-minute window
    fresh = channels.webhook_signature(SECRET, body, timestamp=int(dt.datetime.now(dt.UTC).timestamp()))
    assert receiver.verify(fresh, body) and not receiver.verify(fresh, body + b" ")


@pytest.mark.django_db(transaction=True)
def test_the_running_notifier_sends_a_committed_alarm_when_notified(ward: dict[str, Any], smtp: SmtpSink) -> None:
    sender = OutboxSender(poll=30)  # far longer than the test waits: only the NOTIFY can wake it
    thread = threading.Thread(target=sender.run)
    thread.start()
    try:
        assert smtp.arrived.wait(2) is False  # idle, waiting
        _raise(ward["patient"])  # commits (autocommit): the NOTIFY reaches the sender's LISTEN
        assert smtp.arrived.wait(20), "the notifier did not send the committed alarm"
    finally:
        sender.stop()
        thread.join(40)
    [(to, _)] = smtp.messages
    assert to == ["nurse-n@example.org"]
