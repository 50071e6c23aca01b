"""Secondary notification channels: what a message says, and sending it by email or webhook.

No database here: the sender (alerts/outbox.py) hands each channel a `Message` taken from an
outbox row and gets an `Outcome` back, in a worker thread, with the channel's short timeout.

PHI policy. A message carries the alarm id, the event (raised or escalated), the escalation level
and the time, plus only the fields the channel's setting allows, out of MESSAGE_FIELDS (default
all five: pseudonym, ward, priority, condition, link). Identity (name, MRN, date of birth) is
not among them and cannot be configured in; sample values are not either. The allowed fields are
chosen when the row is written (`message_fields`), so the outbox holds no more than leaves the
building. Perfuse stores no bed or location for a patient, so no message names one.

Email: smtplib with STARTTLS (default), implicit TLS or none (a local relay or the demo's sink),
optional login; one message per recipient. Webhook: one JSON POST per event to
PERFUSE_WEBHOOK_URL, signed `X-Perfuse-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>." + body>` with PERFUSE_WEBHOOK_SECRET, and `X-Perfuse-Delivery: <outbox id>` so a receiver
can drop the duplicate an at-least-once sender may produce. IHE PCD-04 (ORU^R40 to an alarm
manager) is not offered: Perfuse has no HL7 MLLP client.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import smtplib
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any, Protocol
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from alerts.models import Alarm
from alerts.vocabulary import Channel, Kind, NotifyEvent
from config.live import iso

# Fields a channel may be configured to carry (PERFUSE_NOTIFY_<CHANNEL>_FIELDS).
MESSAGE_FIELDS = ("pseudonym", "ward", "priority", "condition", "link")
SIGNATURE_HEADER = "X-Perfuse-Signature"
DELIVERY_HEADER = "X-Perfuse-Delivery"
SMTP_SECURITY = ("starttls", "tls", "none")


@dataclass(frozen=True)
class Message:
    """What a channel sends: one outbox row, detached from the ORM for the worker thread."""

    delivery_id: int
    channel: str
    address: str
    fields: dict[str, Any]
    recipients: list[str]


@dataclass(frozen=True)
class Outcome:
    """An attempt's result. `permanent`: retrying cannot help (the server refused the message)."""

    ok: bool
    error: str = ""
    permanent: bool = False


class Sender(Protocol):
    def send(self, message: Message) -> Outcome: ...


def configured_fields(channel: str) -> list[str]:
    """PERFUSE_NOTIFY_<CHANNEL>_FIELDS as set. `message_fields` takes nothing outside
    MESSAGE_FIELDS whatever it says, so the alarm's transaction never fails on a bad setting;
    `allowed_fields` refuses one when the notifier starts."""
    fields: list[str] = getattr(settings, f"PERFUSE_NOTIFY_{channel.upper()}_FIELDS")
    return fields


def allowed_fields(channel: str) -> tuple[str, ...]:
    """The configured fields of a channel, refused at start-up when one is not a message field."""
    configured = configured_fields(channel)
    unknown = sorted(set(configured) - set(MESSAGE_FIELDS))
    if unknown:
        raise ImproperlyConfigured(
            f"PERFUSE_NOTIFY_{channel.upper()}_FIELDS: {', '.join(unknown)} may not be sent "
            f"(allowed: {', '.join(MESSAGE_FIELDS)})"
        )
    return tuple(name for name in MESSAGE_FIELDS if name in configured)


def message_fields(*, alarm: Alarm, event: str, level: int, at: Any, allowed: Iterable[str]) -> dict[str, Any]:
    """The message of an alarm event, limited to `allowed` (needs alarm.patient and ward loaded)."""
    every = {
        "pseudonym": alarm.patient.pseudonym,
        "ward": alarm.ward.code,
        "priority": alarm.priority,
        "condition": str(Kind(alarm.kind).label),
        "link": f"{settings.PERFUSE_BASE_URL.rstrip('/')}/alarms/{alarm.pk}/",
    }
    chosen = set(allowed)
    return {"alarm": alarm.pk, "event": event, "level": level, "at": iso(at)} | {
        name: value for name, value in every.items() if name in chosen
    }


def channels_enabled() -> list[str]:
    """Channels with an address configured, in a fixed order."""
    enabled = []
    if settings.PERFUSE_SMTP_HOST:
        enabled.append(Channel.EMAIL.value)
    if settings.PERFUSE_WEBHOOK_URL:
        enabled.append(Channel.WEBHOOK.value)
    return enabled


# --- email -------------------------------------------------------------------------------------


def email_subject(fields: Mapping[str, Any]) -> str:
    """Plain ASCII: email-to-pager gateways show the subject as it is."""
    what = "escalated" if fields["event"] == NotifyEvent.ESCALATED else "raised"
    parts = [f"[Perfuse] alarm {fields['alarm']} {what}"]
    if fields["event"] == NotifyEvent.ESCALATED:
        parts.append(f"(level {fields['level']})")
    if "priority" in fields:
        parts.append(f"- {fields['priority']} priority")
    if "condition" in fields:
        parts.append(f"- {fields['condition']}")
    if "ward" in fields:
        parts.append(f"on {fields['ward']}")
    return " ".join(parts)


def email_body(fields: Mapping[str, Any]) -> str:
    labels = {
        "pseudonym": "Patient (pseudonym)",
        "ward": "Ward",
        "priority": "Priority",
        "condition": "Condition",
        "link": "Open",
    }
    lines = [f"Alarm {fields['alarm']} {fields['event']} at {fields['at']} (escalation level {fields['level']})."]
    lines += [f"{label}: {fields[name]}" for name, label in labels.items() if name in fields]
    lines.append("")
    lines.append("Acknowledge or accept the alarm at the alarm console. This message carries no patient identity.")
    return "\n".join(lines) + "\n"


def email_message(message: Message, *, sender: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = message.address
    mail["Subject"] = email_subject(message.fields)
    # One Message-ID per outbox row: a resend after a crash is recognisably the same message.
    mail["Message-ID"] = make_msgid(idstring=f"perfuse-delivery-{message.delivery_id}", domain="perfuse.invalid")
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(email_body(message.fields))
    return mail


@dataclass(frozen=True)
class EmailSender:
    host: str
    port: int
    security: str
    user: str
    password: str
    sender: str
    timeout: float

    @classmethod
    def from_settings(cls) -> EmailSender:
        security = settings.PERFUSE_SMTP_SECURITY
        if security not in SMTP_SECURITY:
            raise ImproperlyConfigured(f"PERFUSE_SMTP_SECURITY must be one of {', '.join(SMTP_SECURITY)}")
        return cls(
            host=settings.PERFUSE_SMTP_HOST,
            port=settings.PERFUSE_SMTP_PORT,
            security=security,
            user=settings.PERFUSE_SMTP_USER,
            password=settings.PERFUSE_SMTP_PASSWORD,
            sender=settings.PERFUSE_SMTP_FROM,
            timeout=settings.PERFUSE_SMTP_TIMEOUT_SECONDS,
        )

    def send(self, message: Message) -> Outcome:
        mail = email_message(message, sender=self.sender)
        try:
            with self._connect() as smtp:
                if self.user:
                    smtp.login(self.user, self.password)
                refused = smtp.send_message(mail)
        except smtplib.SMTPResponseException as exc:
            # 5xx: the server will not take this message, however often it is offered.
            return Outcome(False, f"SMTP {exc.smtp_code} {_text(exc.smtp_error)}", permanent=exc.smtp_code >= 500)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            return Outcome(False, f"recipient refused {codes}", permanent=all(code >= 500 for code in codes))
        except (OSError, smtplib.SMTPException) as exc:
            return Outcome(False, f"{type(exc).__name__}: {exc}"[:500])
        if refused:
            return Outcome(False, f"recipient refused {sorted(refused)}", permanent=True)
        return Outcome(True)

    def _connect(self) -> smtplib.SMTP:
        if self.security == "tls":
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=ssl.create_default_context())
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        if self.security == "starttls":
            try:
                smtp.starttls(context=ssl.create_default_context())
            except BaseException:
                smtp.close()
                raise
        return smtp


def _text(value: bytes | str) -> str:
    return (value.decode("utf-8", "replace") if isinstance(value, bytes) else value)[:300]


# --- webhook -----------------------------------------------------------------------------------


def webhook_body(message: Message) -> bytes:
    body = {
        "type": f"perfuse.alarm.{message.fields['event']}",
        "delivery": message.delivery_id,
        "alarm": message.fields,
        "recipients": message.recipients,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def webhook_signature(secret: str, body: bytes, *, timestamp: int) -> str:
    """The `X-Perfuse-Signature` value: HMAC-SHA256 over "<timestamp>." + body."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def webhook_host(url: str) -> str:
    """What the outbox row names as the address: the receiver's host, never a query's token."""
    return urlsplit(url).netloc


@dataclass(frozen=True)
class WebhookSender:
    url: str
    secret: str
    timeout: float

    @classmethod
    def from_settings(cls) -> WebhookSender:
        url = settings.PERFUSE_WEBHOOK_URL
        if urlsplit(url).scheme not in {"http", "https"}:
            raise ImproperlyConfigured("PERFUSE_WEBHOOK_URL must be an http:// or https:// URL")
        if not settings.PERFUSE_WEBHOOK_SECRET:
            raise ImproperlyConfigured("PERFUSE_WEBHOOK_SECRET (or PERFUSE_WEBHOOK_SECRET_FILE) must be set")
        return cls(url=url, secret=settings.PERFUSE_WEBHOOK_SECRET, timeout=settings.PERFUSE_WEBHOOK_TIMEOUT_SECONDS)

    def send(self, message: Message) -> Outcome:
        body = webhook_body(message)
        parts = urlsplit(self.url)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "perfuse-notifier",
            SIGNATURE_HEADER: webhook_signature(self.secret, body, timestamp=int(time.time())),
            DELIVERY_HEADER: str(message.delivery_id),
        }
        # http.client, not urllib: a redirect is not followed (it would turn the POST into a GET).
        connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(parts.netloc, timeout=self.timeout)
        try:
            connection.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body, headers)
            response = connection.getresponse()
            response.read(4096)
        except (OSError, http.client.HTTPException) as exc:
            return Outcome(False, f"{type(exc).__name__}: {exc}"[:500])
        finally:
            connection.close()
        if 200 <= response.status < 300:
            return Outcome(True)
        # A 4xx other than timeout / rate limit is the receiver refusing this request for good.
        permanent = 400 <= response.status < 500 and response.status not in (408, 429)
        return Outcome(False, f"HTTP {response.status} {response.reason}"[:500], permanent=permanent)


def senders_from_settings() -> dict[str, Sender]:
    """The enabled channels' senders; misconfiguration stops the notifier at start-up."""
    senders: dict[str, Sender] = {}
    for channel in channels_enabled():
        allowed_fields(channel)
        senders[channel] = EmailSender.from_settings() if channel == Channel.EMAIL else WebhookSender.from_settings()
    return senders
