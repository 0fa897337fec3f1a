"""Partner certificates: a CA, server certificates for gateways, client certificates for partners.

A partner system authenticates to its region's gateway with a client certificate (mutual TLS). Its
identity is one URI subject-alternative name, ``urn:tongban:partner:<region>:<system-id>``: the
GB/T 2260 code of the region it belongs to and its system id as the trust registry's access rules
name it. ``tongban certs`` makes a development CA and certificates with the ``cryptography`` x509 API
(ECDSA P-256); production certificates come from the deployment's own CA with the same SAN.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ledger.files import write_atomically
from tongban.core.errors import ConfigError

PARTNER_URI = re.compile(r"^urn:tongban:partner:([0-9]{6}):([A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")


@dataclass(frozen=True)
class Partner:
    """The identity a client certificate proves."""

    region: str
    system_id: str

    @property
    def uri(self) -> str:
        return f"urn:tongban:partner:{self.region}:{self.system_id}"


@dataclass(frozen=True)
class Issued:
    key_pem: bytes
    cert_pem: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tongban"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def create_ca(name: str = "tongban dev CA", *, days: int = 3650) -> Issued:
    """A self-signed CA (development: production CAs are the deployment's own)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return Issued(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def _issue(
    ca: Issued,
    common_name: str,
    san: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    *,
    not_before: datetime.datetime | None = None,
    days: int = 365,
) -> Issued:
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the CA key must be an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def issue_server(ca: Issued, hosts: list[str], **kw: object) -> Issued:
    """A gateway's server certificate for ``hosts`` (DNS names or IP addresses)."""
    return _issue(ca, hosts[0], _alt_names(hosts), ExtendedKeyUsageOID.SERVER_AUTH, **kw)  # type: ignore[arg-type]


def _alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return names


def issue_named_client(ca: Issued, name: str, **kw: object) -> Issued:
    """A client certificate whose identity is the DNS name ``name`` (a NATS leafnode's on its hub link)."""
    return _issue(ca, name, [x509.DNSName(name)], ExtendedKeyUsageOID.CLIENT_AUTH, **kw)  # type: ignore[arg-type]


def issue_client(ca: Issued, partner: Partner, **kw: object) -> Issued:
    """A partner system's client certificate, its identity in the URI SAN."""
    if not PARTNER_URI.match(partner.uri):
        raise ConfigError("a partner is a 6-digit region code and a system id of [A-Za-z0-9_.-]")
    return _issue(
        ca,
        f"{partner.system_id}@{partner.region}",
        [x509.UniformResourceIdentifier(partner.uri)],
        ExtendedKeyUsageOID.CLIENT_AUTH,
        **kw,  # type: ignore[arg-type]
    )


def partner_of(cert_pem: bytes) -> Partner | None:
    """The partner a (TLS-verified) client certificate names, or None if it names none or several."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
    except (ValueError, x509.ExtensionNotFound):
        return None
    found = [m for m in (PARTNER_URI.match(u) for u in uris) if m]
    if len(found) != 1:
        return None
    return Partner(found[0][1], found[0][2])


def write(issued: Issued, directory: Path, stem: str) -> tuple[Path, Path]:
    """``<stem>.key`` (mode 0600) and ``<stem>.crt`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / f"{stem}.key", directory / f"{stem}.crt"
    write_atomically(key_path, issued.key_pem, mode=0o600)
    write_atomically(cert_path, issued.cert_pem)
    return key_path, cert_path


def load(directory: Path, stem: str) -> Issued:
    try:
        return Issued((directory / f"{stem}.key").read_bytes(), (directory / f"{stem}.crt").read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc.filename} does not exist: run `tongban certs init` first") from exc


def server_request(hosts: list[str], common_name: str) -> tuple[bytes, bytes]:
    """A new server key (PEM, to stay where it is made) and a certificate signing request for it
    naming ``hosts`` (DNS names or IP addresses) in its subject alternative names, PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(common_name))
        .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)
