"""The deployment's own certificate authority: the identities devices and gateways show the broker.

One P-256 CA per deployment, created once in a directory (settings.PERFUSE_PKI_DIR; `make run`
uses `.data/pki`) and never overwritten: every certificate ever issued hangs off it. A device's
Ed25519 signing key is also its TLS key (Mosquitto accepts Ed25519 client certificates signed by
a P-256 CA), so provisioning issues a certificate for the very public key it registers; the
subject CN is the device or gateway id, which the broker takes as the MQTT username and its
pattern ACL confines to that id's topics.

Each issued certificate is recorded (IssuedCertificate) so that revocation survives restarts: the
CRL (`crl.pem`) is always rebuilt from those rows, never edited in place, and written by rename
so the broker never reads half a file.

Files in the directory (the directory itself 0700, keys 0600):
  ca.key / ca.pem          the authority (the key never leaves this directory)
  crl.pem                  revoked serials, signed by the CA, refreshed on every revocation
  server.key / server.pem  the broker's certificate for 127.0.0.1 and localhost
  <name>.key / <name>.pem  service identities (the ingest bridge, the broker admin)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.conf import settings

from telemetry.models import DeviceKey, IssuedCertificate

CA_NAME = "Perfuse deployment CA"
CA_DAYS = 20 * 365
SERVER_DAYS = 825
CRL_DAYS = 30
SERVER_NAMES = ("localhost",)
SERVER_ADDRESSES = ("127.0.0.1",)
BRIDGE_CN = "perfuse-bridge"  # the ingest bridge's identity at the broker (telemetry.mqtt_broker)
ADMIN_CN = "perfuse-admin"  # the identity that may disconnect clients (dynamic-security kick)

IssuableKey = Ed25519PublicKey | ec.EllipticCurvePublicKey
# A CN becomes an MQTT username and, through the ACL's %u, part of a topic: no MQTT wildcards or
# level separators, and never the name of a service identity.
CN_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESERVED_CNS = frozenset({BRIDGE_CN, ADMIN_CN, "localhost"})


class PkiError(Exception):
    """The PKI cannot do what was asked (no CA configured, a directory that is not ours…)."""


@dataclass(frozen=True)
class Authority:
    directory: Path
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def ca_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def crl_path(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write by rename, so a reader (the broker on SIGHUP) sees the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def authority_create(directory: Path) -> Authority:
    """The CA in `directory`, created on the first call and loaded on every later one."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    existing = authority_load(directory)
    if existing is not None:
        return existing
    if (directory / "ca.key").exists():
        raise PkiError(f"{directory} has ca.key without ca.pem; refusing to replace an authority")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(directory / "ca.key", _key_pem(key), 0o600)
    _write(directory / "ca.pem", certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    authority = Authority(directory=directory, certificate=certificate, key=key)
    crl_write(authority, [])
    return authority


def authority_load(directory: Path | None = None) -> Authority | None:
    """The CA in `directory` (default: the configured one), or None when there is none yet."""
    if directory is None:
        configured = settings.PERFUSE_PKI_DIR
        if not configured:
            return None
        directory = Path(configured)
    try:
        certificate = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    except FileNotFoundError:
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{directory}/ca.key is not an EC key")
    return Authority(directory=directory, certificate=certificate, key=key)


def certificate_build(
    authority: Authority, *, cn: str, public_key: IssuableKey, days: int, server: bool = False
) -> x509.Certificate:
    """A leaf certificate for `public_key`, CN = `cn`; a server one carries the loopback names."""
    now = _now()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(authority.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()), critical=False)
    )
    if server:
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in SERVER_NAMES]
        names += [x509.IPAddress(ipaddress.ip_address(address)) for address in SERVER_ADDRESSES]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(authority.key, hashes.SHA256())


def identity_ensure(authority: Authority, name: str, *, cn: str, server: bool = False) -> tuple[Path, Path]:
    """A key and certificate `<name>.key`/`<name>.pem` in the CA's directory, made once.

    For the broker's server certificate and the service identities (bridge, admin); these are not
    devices and are not recorded as issued (they are revoked by replacing the files)."""
    key_path, cert_path = authority.directory / f"{name}.key", authority.directory / f"{name}.pem"
    if key_path.exists() and cert_path.exists():
        return key_path, cert_path
    key = ec.generate_private_key(ec.SECP256R1())
    days = SERVER_DAYS if server else settings.PERFUSE_CERT_DAYS
    certificate = certificate_build(authority, cn=cn, public_key=key.public_key(), days=days, server=server)
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return key_path, cert_path


def crl_write(authority: Authority, revoked: Iterable[tuple[int, dt.datetime]]) -> Path:
    """Replace crl.pem with one listing exactly `revoked` (serial, revocation time)."""
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(authority.certificate.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=CRL_DAYS))
    )
    for serial, revoked_at in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at).build()
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(authority.key, hashes.SHA256())
    _write(authority.crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return authority.crl_path


def crl_refresh(authority: Authority | None = None) -> Path | None:
    """Rebuild crl.pem from every revoked certificate on record (after a revocation, at start)."""
    authority = authority or authority_load()
    if authority is None:
        return None
    rows = IssuedCertificate.objects.filter(revoked_at__isnull=False).values_list("serial", "revoked_at")
    return crl_write(authority, [(int(serial, 16), revoked_at) for serial, revoked_at in rows if revoked_at])


def _require_authority() -> Authority:
    authority = authority_load()
    if authority is None:
        raise PkiError("no deployment CA: set PERFUSE_PKI_DIR and create it (manage.py mqtt_broker_setup)")
    return authority


def certificate_issue(*, cn: str, public_key: IssuableKey, key: DeviceKey | None = None) -> str:
    """Issue and record a client certificate for `public_key` with subject CN `cn`; its PEM.

    `key`, when given, ties the certificate to the device key it certifies, so revoking the key
    revokes the certificate (certificate_revoke(key=...))."""
    if not CN_PATTERN.fullmatch(cn) or cn in RESERVED_CNS:
        raise PkiError(f"{cn!r} cannot be a certificate's CN (letters, digits, . _ -; not a service name)")
    authority = _require_authority()
    certificate = certificate_build(authority, cn=cn, public_key=public_key, days=settings.PERFUSE_CERT_DAYS)
    IssuedCertificate.objects.create(
        serial=f"{certificate.serial_number:x}",
        cn=cn,
        key=key,
        not_after=certificate.not_valid_after_utc,
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def certificate_revoke(
    *, key: DeviceKey | None = None, cn: str | None = None, at: dt.datetime | None = None
) -> list[str]:
    """Revoke the certificates of a device key, or every certificate issued to a CN; the serials.

    Only the record changes here, in the caller's transaction; after it commits the caller tells
    the broker (telemetry.mqtt_broker.broker_revoked rebuilds the CRL from the records), so a
    rolled-back revocation never reaches the broker."""
    if (key is None) == (cn is None):
        raise ValueError("revoke by key or by cn, exactly one")
    rows = IssuedCertificate.objects.select_for_update().filter(revoked_at__isnull=True)
    rows = rows.filter(key=key) if key is not None else rows.filter(cn=cn)
    serials = list(rows.values_list("serial", flat=True))
    if serials:
        IssuedCertificate.objects.filter(serial__in=serials).update(revoked_at=at or _now())
    return serials
