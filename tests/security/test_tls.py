"""TLS on real grpc.aio servers on loopback: TLS 1.3 only, mTLS, identities, files, certs CLI.

gRPC reads GRPC_SSL_CIPHER_SUITES when it is imported, long before any test runs, so the
TLS-1.3-only server runs in a subprocess started the way ``its-camera-ai serve`` starts
(``enforce_tls13(reexec=True)``); the other servers run here with ``min_version: "1.2"``.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from its_camera_ai.common import ClientTlsSettings, ConfigError, ServerTlsSettings
from its_camera_ai.security import (
    DevCertificates,
    accepts_tls12,
    channel_credentials,
    channel_options,
    enforce_tls13,
    mint_dev_certificates,
    peer_identity,
    server_credentials,
)

pytestmark = pytest.mark.security

SERVING = health_pb2.HealthCheckResponse.SERVING
TLS13_SERVER = """
import asyncio, sys
from pathlib import Path
from its_camera_ai.security import enforce_tls13, server_credentials
from its_camera_ai.common import ServerTlsSettings
enforce_tls13(reexec=True)
import grpc
from grpc_health.v1 import health, health_pb2_grpc

async def main():
    tls = ServerTlsSettings(cert_file=Path(sys.argv[1]), key_file=Path(sys.argv[2]))
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(tls))
    await server.start()
    print(port, flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await server.stop(None)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return mint_dev_certificates(tmp_path_factory.mktemp("dev"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    """Certificates of another CA, with the same names."""
    return mint_dev_certificates(tmp_path_factory.mktemp("stranger"))


def _server_tls(dev: DevCertificates, **fields: Any) -> ServerTlsSettings:
    values: dict[str, Any] = {
        "cert_file": dev.server_cert,
        "key_file": dev.server_key,
        "min_version": "1.2",
    }
    return ServerTlsSettings(**(values | fields))


def _client_tls(
    dev: DevCertificates, client: str | None = None, **fields: Any
) -> ClientTlsSettings:
    values: dict[str, Any] = {"enabled": True, "ca_file": dev.ca_cert}
    if client is not None:
        values["cert_file"], values["key_file"] = dev.clients[client]
    return ClientTlsSettings(**(values | fields))


async def _whoami(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return (peer_identity(context) or "<none>").encode()


@asynccontextmanager
async def _server(credentials: grpc.ServerCredentials) -> AsyncIterator[int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(_whoami)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Whoami", {"Get": handler}),)
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def _call(target: str, tls: ClientTlsSettings) -> tuple[int, str]:
    """(health status, the identity the server saw) over a TLS channel."""
    async with grpc.aio.secure_channel(
        target, channel_credentials(tls), options=channel_options(tls)
    ) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        whoami: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
        whoami = channel.unary_unary("/test.Whoami/Get")
        identity = await whoami(b"", timeout=5)
        return reply.status, identity.decode()


def _ssl_handshake(port: int, ca: Path, version: ssl.TLSVersion, *, maximum: bool) -> str:
    context = ssl.create_default_context(cafile=str(ca))
    if maximum:
        context.maximum_version = version
    else:
        context.minimum_version = version
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return str(tls.version())


def _no_cipher_variable() -> None:
    if os.environ.get("GRPC_SSL_CIPHER_SUITES"):
        pytest.skip("this test process was started with GRPC_SSL_CIPHER_SUITES set")


@pytest.fixture
def tls13_server(dev: DevCertificates) -> Iterator[int]:
    environment = {k: v for k, v in os.environ.items() if k != "GRPC_SSL_CIPHER_SUITES"}
    process = subprocess.Popen(
        [sys.executable, "-c", TLS13_SERVER, str(dev.server_cert), str(dev.server_key)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        line = process.stdout.readline()
        assert line.strip().isdigit(), f"server did not start (exit {process.poll()})"
        yield int(line)
    finally:
        process.stdin.close()
        process.wait(timeout=10)


async def test_tls13_server_refuses_tls12(dev: DevCertificates, tls13_server: int) -> None:
    port = tls13_server
    with pytest.raises(ssl.SSLError):
        _ssl_handshake(port, dev.ca_cert, ssl.TLSVersion.TLSv1_2, maximum=True)
    assert not await accepts_tls12("127.0.0.1", port)
    assert _ssl_handshake(port, dev.ca_cert, ssl.TLSVersion.TLSv1_3, maximum=False) == "TLSv1.3"
    async with grpc.aio.secure_channel(
        f"localhost:{port}", channel_credentials(_client_tls(dev))
    ) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert reply.status == SERVING


async def test_without_enforcement_tls12_is_accepted(dev: DevCertificates) -> None:
    """The control for the test above: same key, TLS 1.2 allowed, the probes see it."""
    _no_cipher_variable()
    async with _server(server_credentials(_server_tls(dev))) as port:
        # In a thread: this loop serves the server's RPCs meanwhile.
        version = await asyncio.to_thread(
            _ssl_handshake, port, dev.ca_cert, ssl.TLSVersion.TLSv1_2, maximum=True
        )
        assert version == "TLSv1.2"
        assert await accepts_tls12("127.0.0.1", port)


def test_tls13_needs_the_cipher_variable(dev: DevCertificates) -> None:
    _no_cipher_variable()
    assert not enforce_tls13()
    with pytest.raises(ConfigError, match="GRPC_SSL_CIPHER_SUITES"):
        server_credentials(_server_tls(dev, min_version="1.3"))


async def test_mtls_identity_and_refusals(dev: DevCertificates, stranger: DevCertificates) -> None:
    tls = _server_tls(dev, client_ca_file=dev.ca_cert, require_client_cert=True)
    async with _server(server_credentials(tls)) as port:
        target = f"localhost:{port}"
        assert await _call(target, _client_tls(dev, "inference")) == (
            SERVING,
            "spiffe://its-camera-ai/inference",
        )
        for refused in (
            _client_tls(dev),  # no client certificate
            _client_tls(
                dev,
                cert_file=stranger.clients["inference"][0],
                key_file=stranger.clients["inference"][1],
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await _call(target, refused)
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


def _sign(dev: DevCertificates, subject: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    ca_key = serialization.load_pem_private_key(dev.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(dev.ca_cert.read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(ca_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


async def test_identity_falls_back_to_the_common_name(dev: DevCertificates, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "cn.crt").write_bytes(_sign(dev, "legacy-camera-gateway", key))
    (tmp_path / "cn.key").write_bytes(_key_pem(key))
    client = _client_tls(dev, cert_file=tmp_path / "cn.crt", key_file=tmp_path / "cn.key")
    tls = _server_tls(dev, client_ca_file=dev.ca_cert, require_client_cert=True)
    async with _server(server_credentials(tls)) as port:
        assert await _call(f"localhost:{port}", client) == (SERVING, "legacy-camera-gateway")


async def test_server_name_override_and_no_client_certificate(tmp_path: Path) -> None:
    dev = mint_dev_certificates(tmp_path, hosts=["analytics.its.internal"], clients=[])
    async with _server(server_credentials(_server_tls(dev))) as port:
        target = f"127.0.0.1:{port}"
        named = _client_tls(dev, server_name="analytics.its.internal")
        assert await _call(target, named) == (SERVING, "<none>")
        with pytest.raises(grpc.aio.AioRpcError):
            await _call(target, _client_tls(dev))  # 127.0.0.1 is not in the certificate


@pytest.mark.parametrize(
    ("key", "min_version", "refused"),
    [
        (rsa.generate_private_key(65537, 2048), "1.3", "RSA key cannot enforce"),
        (ed25519.Ed25519PrivateKey.generate(), "1.2", "Ed25519PrivateKey key fails"),
        (ec.generate_private_key(ec.SECP521R1()), "1.2", "secp521r1 fails"),
    ],
)
def test_unusable_server_keys(
    dev: DevCertificates, tmp_path: Path, key: Any, min_version: str, refused: str
) -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    certificate = builder.sign(key, algorithm)
    (tmp_path / "s.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "s.key").write_bytes(_key_pem(key))
    tls = ServerTlsSettings(
        cert_file=tmp_path / "s.crt", key_file=tmp_path / "s.key", min_version=min_version
    )
    with pytest.raises(ConfigError, match=f"security.tls.key_file: .*{refused}"):
        server_credentials(tls)
    if isinstance(key, rsa.RSAPrivateKey):  # usable where TLS 1.2 is allowed
        server_credentials(tls.model_copy(update={"min_version": "1.2"}))


@pytest.mark.parametrize("field", ["cert_file", "key_file", "client_ca_file", "mismatched_key"])
def test_server_file_errors_name_the_field(
    dev: DevCertificates, tmp_path: Path, field: str
) -> None:
    missing = tmp_path / "missing.pem"
    fields: dict[str, Any] = {"client_ca_file": dev.ca_cert, "require_client_cert": True}
    expected = re.escape(f"security.tls.{field}: cannot read {missing}")
    if field in ("cert_file", "key_file", "client_ca_file"):
        fields[field] = missing
    else:
        fields["key_file"] = dev.clients["query"][1]
        expected = "security.tls.key_file: .* is not the key of the certificate"
    with pytest.raises(ConfigError, match=expected):
        server_credentials(_server_tls(dev, **fields))


@pytest.mark.parametrize("field", ["ca_file", "cert_file", "key_file"])
def test_client_file_errors_name_the_field(
    dev: DevCertificates, tmp_path: Path, field: str
) -> None:
    missing = tmp_path / "missing.pem"
    tls = _client_tls(dev, "inference", **{field: missing})
    with pytest.raises(ConfigError, match=f"security.peer_tls.{field}: cannot read"):
        channel_credentials(tls)


def test_certs_cli_writes_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "certs"

    def certs(*extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "its_camera_ai", "certs", "--out", str(out), *extra]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    first = certs("--client", "inference")
    assert first.returncode == 0, first.stderr
    assert f"ITS_SECURITY__TLS__CERT_FILE={(out / 'server.crt').resolve()}" in first.stdout
    names = {"ca.crt", "ca.key", "server.crt", "server.key"}
    names |= {"client-inference.crt", "client-inference.key"}
    assert {path.name for path in out.iterdir()} == names
    for key in out.glob("*.key"):
        assert key.stat().st_mode & 0o777 == 0o600
    ca = (out / "ca.crt").read_bytes()

    again = certs("--client", "inference")
    assert again.returncode == 1
    assert "would overwrite" in again.stderr
    assert (out / "ca.crt").read_bytes() == ca

    replaced = certs("--client", "inference", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert (out / "ca.crt").read_bytes() != ca
