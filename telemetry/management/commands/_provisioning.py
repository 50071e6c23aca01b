"""What provision_device and provision_gateway share: the optional public-key file, and the answer
with the key material printed once (contract section 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import CommandError


def public_key_read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read public key file: {exc}") from exc


def key_answer(
    out: dict[str, Any], text: str, *, private_key_pem: str | None, certificate_pem: str | None, ca_pem: str | None
) -> tuple[dict[str, Any], str]:
    if private_key_pem is not None:
        out["private_key_pem"] = private_key_pem
        text += f"\n{private_key_pem}"  # shown once: only its public half is stored
    if certificate_pem is not None and ca_pem is not None:
        # The MQTT identity (contract 1b): the key's certificate, CN = device or gateway id, and the CA.
        out["certificate_pem"], out["ca_pem"] = certificate_pem, ca_pem
        text += f"\n{certificate_pem}"
    return out, text
