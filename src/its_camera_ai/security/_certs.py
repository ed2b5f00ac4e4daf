"""Development certificates: a CA, a server certificate and client certificates (mTLS).

For a laptop or a test cluster only: the CA key lies beside the certificates, unprotected
but for its file mode. Every key is ECDSA P-256, the type ``min_version: "1.3"`` needs
(see ``_tls``). Client certificates carry the identity ``spiffe://its-camera-ai/{name}``
(a SAN URI, which ``peer_identity`` returns) and the subject CN ``{name}``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DevCertificates", "mint_dev_certificates"]

_VALIDITY = datetime.timedelta(days=365)
# Tolerates clocks a little behind the minting machine's.
_BACKDATE = datetime.timedelta(minutes=5)
_CLIENT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_SPIFFE_PREFIX = "spiffe://its-camera-ai/"


@dataclass(frozen=True)
class DevCertificates:
    """Where ``mint_dev_certificates`` wrote each file (PEM)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    # Client name -> (certificate, key).
    clients: dict[str, tuple[Path, Path]]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _subject_alternative_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class _Authority:
    def __init__(self, now: datetime.datetime) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.now = now
        self.name = _name("its-camera-ai development CA")
        public = self.key.public_key()
        self.certificate = (
            self._builder(self.name, public)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def _builder(
        self, subject: x509.Name, public: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - _BACKDATE)
            .not_valid_after(self.now + _VALIDITY)
        )

    def issue(
        self, common_name: str, names: Sequence[x509.GeneralName], usage: x509.ObjectIdentifier
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key()
        authority_key = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        certificate = (
            self._builder(_name(common_name), public)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(authority_key, critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return certificate, key


def _write(path: Path, data: bytes, *, secret: bool, overwrite: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    descriptor = os.open(path, flags, 0o600 if secret else 0o644)
    with os.fdopen(descriptor, "wb") as file:
        if secret:
            # An overwritten file keeps its old mode: the key must not stay readable.
            os.fchmod(file.fileno(), 0o600)
        file.write(data)


def _certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def mint_dev_certificates(
    directory: Path,
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    clients: Sequence[str] = ("inference", "analytics", "query", "operator"),
    overwrite: bool = False,
) -> DevCertificates:
    """Write a new CA (valid one year), a server certificate for ``hosts`` (IP addresses
    as IP SANs) and a client certificate per name in ``clients``, all signed by it.

    Files: ``ca.crt``/``ca.key``, ``server.crt``/``server.key`` and
    ``client-{name}.crt``/``client-{name}.key``; keys are mode 0600. ``FileExistsError``
    (before anything is written) when one exists and ``overwrite`` is false;
    ``ValueError`` for an empty ``hosts`` or a client name that is not ``[a-z0-9._-]``.
    """
    if not hosts or any(not host for host in hosts):
        raise ValueError("hosts: at least one host name or IP address, none empty")
    for name in clients:
        if not _CLIENT_NAME.match(name):
            raise ValueError(f"client name {name!r}: lower-case letters, digits, '.', '_', '-'")
    directory.mkdir(parents=True, exist_ok=True)
    result = DevCertificates(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        clients={
            name: (directory / f"client-{name}.crt", directory / f"client-{name}.key")
            for name in clients
        },
    )
    paths = [result.ca_cert, result.ca_key, result.server_cert, result.server_key]
    paths += [path for pair in result.clients.values() for path in pair]
    existing = [str(path) for path in paths if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"would overwrite {', '.join(existing)}")

    authority = _Authority(datetime.datetime.now(datetime.UTC))
    issued = {
        (result.server_cert, result.server_key): authority.issue(
            hosts[0],
            [_subject_alternative_name(host) for host in dict.fromkeys(hosts)],
            ExtendedKeyUsageOID.SERVER_AUTH,
        )
    }
    for name, pair in result.clients.items():
        uri = x509.UniformResourceIdentifier(_SPIFFE_PREFIX + name)
        issued[pair] = authority.issue(name, [uri], ExtendedKeyUsageOID.CLIENT_AUTH)

    _write(result.ca_key, _key_pem(authority.key), secret=True, overwrite=overwrite)
    _write(
        result.ca_cert, _certificate_pem(authority.certificate), secret=False, overwrite=overwrite
    )
    for (cert_path, key_path), (certificate, key) in issued.items():
        _write(key_path, _key_pem(key), secret=True, overwrite=overwrite)
        _write(cert_path, _certificate_pem(certificate), secret=False, overwrite=overwrite)
    return result
