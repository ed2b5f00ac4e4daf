"""A whole secured host on loopback: every unit (decoder, analytics, inference, query) on
one port, outside dev (no anonymous callers), JWTs from a test issuer, PostgreSQL and Redis.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import (
    AnalyticsServiceSettings,
    DecoderSettings,
    InferenceSettings,
    ServiceHost,
    Settings,
)
from its_camera_ai.decoder.server import decoder_unit
from its_camera_ai.inference.server import inference_unit
from its_camera_ai.query.server import UNIT as QUERY_UNIT
from its_camera_ai.security import DevCertificates
from its_camera_ai.testing import TokenIssuer
from tests.conftest import REDIS_URL

ROLES = ("viewer", "operator", "admin", "service")
INFERENCE_PRINCIPAL = "spiffe://its-camera-ai/inference"


@dataclass
class SecureHost:
    host: ServiceHost
    issuer: TokenIssuer
    tmp_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.host.grpc_port}"

    def token(
        self, role: str, *, subject: str | None = None, cameras: list[str] | None = None
    ) -> str:
        return self.issuer.mint(subject or f"{role}-user", role, cameras=cameras)

    def metadata(self, role: str, **kwargs: Any) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token(role, **kwargs)}"),)


def secure_settings(dsn: str, issuer: TokenIssuer, tmp_path: Path, **security: Any) -> Settings:
    return Settings(
        environment="staging",
        grpc={"host": "127.0.0.1", "port": 0, "drain_seconds": 0.5},
        http={"host": "127.0.0.1", "port": 0},
        database={"dsn": dsn},
        redis={"url": REDIS_URL},
        decoder=DecoderSettings(
            source_keys=f"k1:{base64.b64encode(secrets.token_bytes(32)).decode()}",
            file_roots=(tmp_path,),
        ),
        analytics=AnalyticsServiceSettings(spool_dir=tmp_path / "spool"),
        security={
            "anonymous_role": "none",
            "jwt": issuer.jwt_settings(),
            # Each host its own channel: flags switched by one test stay out of the others.
            "feature_flags_channel": f"its:test-flags:{secrets.token_hex(8)}",
            **security,
        },
    )


@contextlib.asynccontextmanager
async def running_secure_host(
    dsn: str, tmp_path: Path, *, with_inference: bool = True, **security: Any
) -> AsyncIterator[SecureHost]:
    """A started ``SecureHost`` (``security`` as in ``secure_settings``), stopped on exit."""
    issuer = TokenIssuer.create(tmp_path / "issuer")
    settings = secure_settings(dsn, issuer, tmp_path, **security)
    units = [decoder_unit(), analytics_unit()]
    if with_inference:
        units.append(inference_unit(InferenceSettings(max_queue_delay_ms=2.0)))
    units.append(QUERY_UNIT)
    host = ServiceHost(settings, units)
    await host.start()
    try:
        yield SecureHost(host, issuer, tmp_path)
    finally:
        await host.stop()


def mtls_security(
    certs: DevCertificates, *, peer: str | None = "query", **tls: Any
) -> dict[str, Any]:
    """``security`` settings for a host that requires a client certificate (TLS 1.2+) and,
    with ``peer``, calls its peer units over TLS with that client's certificate; ``tls``
    adds to or overrides the server side."""
    security: dict[str, Any] = {
        "tls": {
            "cert_file": certs.server_cert,
            "key_file": certs.server_key,
            "client_ca_file": certs.ca_cert,
            "require_client_cert": True,
            "min_version": "1.2",
            **tls,
        }
    }
    if peer is not None:
        cert, key = certs.clients[peer]
        security["peer_tls"] = {
            "enabled": True,
            "ca_file": certs.ca_cert,
            "cert_file": cert,
            "key_file": key,
        }
    return security


def mtls_channel(target: str, certs: DevCertificates, client: str | None) -> grpc.aio.Channel:
    """A channel to ``target`` trusting the test CA, presenting ``client``'s certificate
    (none for ``None``)."""
    cert, key = certs.clients[client] if client else (None, None)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certs.ca_cert.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.aio.secure_channel(target, credentials)


@pytest.fixture
async def secure_host(postgres_dsn: str, tmp_path: Path) -> AsyncIterator[SecureHost]:
    async with running_secure_host(postgres_dsn, tmp_path) as served:
        yield served


async def call(
    channel: grpc.aio.Channel,
    method: str,
    request: bytes = b"",
    *,
    metadata: Mapping[str, str] | tuple[tuple[str, str], ...] = (),
    streaming: str = "unary",
    deadline: float = 5.0,
) -> grpc.StatusCode:
    """Call ``method`` with raw request bytes; the status it ended with (OK for a stream
    still open at the deadline: it was admitted)."""
    pairs = tuple(metadata.items()) if isinstance(metadata, Mapping) else metadata
    identity = bytes
    try:
        if streaming == "unary":
            await channel.unary_unary(method, identity, identity)(
                request, metadata=pairs, timeout=deadline
            )
        elif streaming == "server":
            stream = channel.unary_stream(method, identity, identity)(
                request, metadata=pairs, timeout=deadline
            )
            async for _ in stream:
                break
            stream.cancel()
        else:
            stream = channel.stream_stream(method, identity, identity)(
                iter([request]), metadata=pairs, timeout=deadline
            )
            async for _ in stream:
                break
            stream.cancel()
    except grpc.aio.AioRpcError as exc:
        if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED and streaming != "unary":
            return grpc.StatusCode.OK
        return exc.code()
    return grpc.StatusCode.OK
