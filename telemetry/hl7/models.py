"""The raw HL7 message store: every message the ADT listener received, with the acknowledgement it
was answered with. Restricted like the identity map (it carries names, MRNs and birth dates): no
staff page or API reads it, and the application's database role may only INSERT and SELECT it
(audit/hardening.py), so a stored message and its answer cannot be rewritten afterwards.

A row is written once, in the transaction that applied the message, together with the ACK: the
message, its effect and its answer commit or vanish together. (sender, control_id) is unique
when a control id was read, so a repeat finds the stored ACK instead of acting twice.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class Hl7Message(models.Model):
    class Ack(models.TextChoices):
        AA = "AA", "applied"
        AE = "AE", "content error"
        AR = "AR", "rejected"

    received_at = models.DateTimeField()
    peer = models.CharField(max_length=80, blank=True, default="")
    # MSH-3^MSH-4 as sent (the sending application and facility) and MSH-10.
    sender = models.CharField(max_length=200, blank=True, default="")
    control_id = models.CharField(max_length=200, blank=True, default="")
    message_type = models.CharField(max_length=40, blank=True, default="")  # e.g. ADT^A01
    version = models.CharField(max_length=20, blank=True, default="")
    raw = models.BinaryField()  # the bytes between the MLLP blocks, whatever their encoding
    truncated = models.BooleanField(default=False)  # too large: only its beginning was kept
    digest = models.CharField(max_length=64)  # SHA-256 of `raw`, to tell a repeat from a reuse
    ack_code = models.CharField(max_length=2, choices=Ack.choices)
    ack = models.TextField()  # the ACK message sent, repeated verbatim for a repeated MSH-10
    error = models.CharField(max_length=200, blank=True, default="")  # why AE/AR, for operators
    subject = models.CharField(max_length=40, blank=True, default="")  # pseudonym it acted on

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["sender", "control_id"], condition=~Q(control_id=""), name="hl7_message_once"
            ),
        ]
        indexes = [models.Index(fields=["received_at"])]
