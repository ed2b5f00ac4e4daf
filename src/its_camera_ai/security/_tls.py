"""TLS for the gRPC ports: server and channel credentials, TLS 1.3 only, mTLS identities.

TLS 1.3 minimum. grpcio's Python API cannot set a server's minimum TLS version
(grpc/grpc#37305; PRs #43045 and #43080 are not released), and gRPC core accepts TLS 1.2
and 1.3. What gRPC core does read is ``GRPC_SSL_CIPHER_SUITES``, the TLS <= 1.2 cipher
list (TLS 1.3 suites are always on and not affected). With only RSA-authenticated suites in
that list and an ECDSA server key, no TLS 1.2 handshake can succeed (no suite fits the key:
the server answers NO_SHARED_CIPHER), while TLS 1.3 is untouched. So ``min_version: "1.3"``
needs both: an EC (P-256/P-384) key, and that variable.

gRPC core reads its configuration once, when ``grpc`` is imported (measured with grpcio
1.85: setting the variable any later, even before the first credentials are created, has
no effect). Every module of this project imports grpc first, so the variable must come
from the process's environment: ``enforce_tls13(reexec=True)`` (the ``serve`` command)
re-executes the process with it when it is missing, or the deployment sets it. It then
applies to every gRPC TLS connection of the process, client side too: this process's gRPC
channels can reach TLS 1.3 servers, and TLS 1.2 servers only with an RSA key. Our peers,
and the OTLP collector, speak TLS 1.3. ``accepts_tls12`` checks the result on a live port.

Key types, as gRPC's clients (BoringSSL) accept them: EC P-256 and P-384 work; P-521 and
Ed25519 server keys fail every handshake (NO_COMMON_SIGNATURE_ALGORITHMS), so they are
refused. An RSA key cannot enforce TLS 1.3 (ECDHE-RSA suites fit it) and is refused with
``min_version: "1.3"``.

Client certificates: grpcio either requires a verified client certificate or never asks for
one (no optional request), so ``client_ca_file`` needs ``require_client_cert: true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import sys
from pathlib import Path
from typing import Any, NoReturn

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from its_camera_ai.common import ClientTlsSettings, ConfigError, ServerTlsSettings

__all__ = [
    "accepts_tls12",
    "channel_credentials",
    "channel_options",
    "enforce_tls13",
    "peer_identity",
    "server_credentials",
]

_CIPHER_VARIABLE = "GRPC_SSL_CIPHER_SUITES"
# TLS 1.2 suites no EC key can serve (see the module docstring); kept strong, so a client
# process calling a TLS 1.2 server with an RSA key still gets forward secrecy and AEAD.
_TLS13_ONLY_SUITES = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
_SERVER_CURVES = (ec.SECP256R1, ec.SECP384R1)


def enforce_tls13(*, reexec: bool = False) -> bool:
    """Whether this process's gRPC refuses TLS 1.2 with EC server keys (see the module doc).

    True when ``GRPC_SSL_CIPHER_SUITES`` holds the TLS-1.3-only list, which it must have
    held when grpc was imported: it comes from the environment the process started with.
    Otherwise, with ``reexec``, the process runs itself again (``os.execve``: same pid,
    same arguments) with the variable set, and this does not return; without, False.
    """
    if os.environ.get(_CIPHER_VARIABLE) == _TLS13_ONLY_SUITES:
        return True
    if reexec:
        _reexec_with_tls13()
    return False


def _reexec_with_tls13() -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    environment = {**os.environ, _CIPHER_VARIABLE: _TLS13_ONLY_SUITES}
    # The interpreter options and the script or -m module, as this process was started.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)  # noqa: S606


def _read(path: Path, field: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror or exc}") from None


def _certificates(path: Path, field: str) -> tuple[bytes, list[x509.Certificate]]:
    data = _read(path, field)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{field}: {path} holds no PEM certificate") from None
    return data, certificates


def _private_key(path: Path, field: str) -> tuple[bytes, PrivateKeyTypes]:
    data = _read(path, field)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{field}: {path} is encrypted; gRPC needs an unencrypted key") from None
    except ValueError:
        # The parser's message is not shown: a key file's content is a secret.
        raise ConfigError(f"{field}: {path} holds no PEM private key") from None
    return data, key


def _key_pair(cert_file: Path, key_file: Path, prefix: str) -> tuple[bytes, bytes, PrivateKeyTypes]:
    cert_pem, chain = _certificates(cert_file, f"{prefix}.cert_file")
    key_pem, key = _private_key(key_file, f"{prefix}.key_file")
    if chain[0].public_key() != key.public_key():
        raise ConfigError(
            f"{prefix}.key_file: {key_file} is not the key of the certificate in {cert_file}"
        )
    return cert_pem, key_pem, key


def _check_server_key(key: PrivateKeyTypes, tls: ServerTlsSettings) -> None:
    field = "security.tls.key_file"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, _SERVER_CURVES):
            raise ConfigError(
                f"{field}: an EC key on {key.curve.name} fails gRPC clients' handshakes;"
                " use P-256 (or P-384)"
            )
        return
    if isinstance(key, rsa.RSAPrivateKey):
        if tls.min_version == "1.3":
            raise ConfigError(
                f"{field}: an RSA key cannot enforce security.tls.min_version 1.3 (gRPC has"
                " no TLS version setting; TLS 1.2 is refused only for EC keys): use an EC"
                " P-256 key, or min_version 1.2"
            )
        return
    raise ConfigError(
        f"{field}: a {type(key).__name__.removeprefix('_')} key fails gRPC clients' handshakes"
        " (their TLS library offers no signature scheme for it); use EC P-256"
    )


def server_credentials(tls: ServerTlsSettings) -> grpc.ServerCredentials:
    """The credentials of the gRPC port from ``security.tls`` (which must be enabled).

    ``ConfigError`` names the field when a file cannot be read or does not fit, when the
    key type cannot give the minimum TLS version, and when ``min_version`` is 1.3 but this
    process's gRPC was started without the TLS 1.2 refusal (``enforce_tls13``).
    """
    if tls.cert_file is None or tls.key_file is None:
        raise ConfigError("security.tls.cert_file and security.tls.key_file are not set")
    cert_pem, key_pem, key = _key_pair(tls.cert_file, tls.key_file, "security.tls")
    _check_server_key(key, tls)
    client_ca: bytes | None = None
    if tls.client_ca_file is not None:  # with require_client_cert (the settings' rule)
        client_ca, _ = _certificates(tls.client_ca_file, "security.tls.client_ca_file")
    if tls.min_version == "1.3" and not enforce_tls13():
        raise ConfigError(
            f"security.tls.min_version 1.3 needs {_CIPHER_VARIABLE}={_TLS13_ONLY_SUITES} in"
            " the environment the process starts with (gRPC reads it on import; the"
            " `serve` command sets it), or min_version 1.2"
        )
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def channel_credentials(tls: ClientTlsSettings) -> grpc.ChannelCredentials:
    """Credentials to call a peer over TLS from ``security.peer_tls``: its CA (None: the
    system roots) and this process's client certificate when configured (mTLS).

    The minimum TLS version is the server's to enforce: a channel offers TLS 1.3 first.
    """
    root = None
    if tls.ca_file is not None:
        root, _ = _certificates(tls.ca_file, "security.peer_tls.ca_file")
    cert_pem = key_pem = None
    if tls.cert_file is not None and tls.key_file is not None:
        cert_pem, key_pem, _ = _key_pair(tls.cert_file, tls.key_file, "security.peer_tls")
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key_pem, certificate_chain=cert_pem
    )


def channel_options(tls: ClientTlsSettings) -> list[tuple[str, str]]:
    """Channel options the TLS settings need: the name to verify in the server certificate
    when it is not the host dialled (``server_name``)."""
    if tls.server_name is None:
        return []
    return [("grpc.ssl_target_name_override", tls.server_name)]


def certificate_expiries(server: ServerTlsSettings, peer: ClientTlsSettings) -> dict[str, float]:
    """When each configured certificate file's first certificate to expire does (seconds
    since the epoch), by role: ``server``, ``client_ca``, ``peer_client``, ``peer_ca``.

    Read with the files the process serves with: gRPC loads them once at start, so this
    is what expires, even if a rotated file was mounted since (rotation needs a restart).
    """
    files = {
        "server": (server.cert_file, "security.tls.cert_file"),
        "client_ca": (server.client_ca_file, "security.tls.client_ca_file"),
    }
    if peer.enabled:
        files["peer_client"] = (peer.cert_file, "security.peer_tls.cert_file")
        files["peer_ca"] = (peer.ca_file, "security.peer_tls.ca_file")
    expiries: dict[str, float] = {}
    for role, (path, field) in files.items():
        if path is not None:
            _, certificates = _certificates(path, field)
            expiries[role] = min(c.not_valid_after_utc.timestamp() for c in certificates)
    return expiries


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The caller's verified client certificate identity: its first URI or DNS subject
    alternative name, else its subject CN; None without a client certificate.

    Only verified certificates reach the auth context: ``server_credentials`` requires and
    verifies them or never asks for one.
    """
    properties = context.auth_context()
    names = {*properties.get("peer_uri", ()), *properties.get("peer_dns", ())}
    # x509_subject_alternative_name keeps the certificate's order, IPs and emails included.
    for name in properties.get("x509_subject_alternative_name", ()):
        if name in names:
            return name.decode()
    for common_name in properties.get("x509_common_name", ()):
        return common_name.decode()
    return None


async def accepts_tls12(host: str, port: int) -> bool:
    """Whether the TLS server at ``host:port`` agrees to a TLS 1.2 handshake.

    Sends a ClientHello offering TLS 1.2 at most and reads the answer's first record: a
    ServerHello means TLS 1.2 was accepted; an alert or a closed connection, refused. No
    certificate is needed, so it also checks an mTLS port (a full handshake would fail on
    the missing client certificate whatever the version). Bound it with ``asyncio.timeout``.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the handshake stops at the ServerHello
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    outgoing = ssl.MemoryBIO()
    client = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=host)
    # Stops for want of the server's answer, once the ClientHello is written.
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(outgoing.read())
        await writer.drain()
        # Record header (type, version, length) and the first handshake message's type.
        head = await reader.readexactly(6)
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    finally:
        writer.close()
    handshake_record, server_hello = 0x16, 0x02
    return head[0] == handshake_record and head[5] == server_hello
