"""The channel every client of the project uses: service config, retries, deadlines, and
the credential (JWT or API key) sent with every call."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from its.admin.v1 import admin_service_pb2
from its.analytics.v1 import analytics_service_pb2
from its.camera.v1 import camera_service_pb2
from its.inference.v1 import inference_service_pb2
from its.query.v1 import query_service_pb2

__all__ = [
    "SERVICES",
    "add_connection_arguments",
    "aio_channel",
    "channel_from_arguments",
    "metadata_interceptors",
    "service_config",
]

SERVICES: tuple[ServiceDescriptor, ...] = tuple(
    service
    for module in (
        camera_service_pb2,
        inference_service_pb2,
        analytics_service_pb2,
        query_service_pb2,
        admin_service_pb2,
    )
    for service in module.DESCRIPTOR.services_by_name.values()
)


# Methods that only read (AIP-131 Get, AIP-132 List, server-streaming Watch and Stream with
# no client stream): repeating one is harmless whatever became of the first attempt.
_READ_PREFIXES = ("Get", "List", "Watch", "Stream")
_RETRYABLE = ["UNAVAILABLE"]
# Reads also retry CANCELLED: a gRPC server shutting down (a rolling restart) cancels the calls
# it had received but not yet handed to the application, instead of answering UNAVAILABLE
# (grpc/grpc#41785, open in grpcio 1.85), so every drain under load failed a few calls. Only
# attempts that received no response headers are retried, so no read is answered twice.
_RETRYABLE_READS = ["UNAVAILABLE", "CANCELLED"]


def service_config(
    services: Sequence[ServiceDescriptor] = SERVICES,
    *,
    unary_timeout_seconds: float = 10.0,
    max_attempts: int = 4,
) -> str:
    """The gRPC service config JSON for ``services``: one block per kind of method (unary or
    streaming, read or not), unary ones with a deadline, all retrying ``UNAVAILABLE`` and
    reads ``CANCELLED`` too."""
    method_config: list[dict[str, Any]] = []
    for streaming in (False, True):
        for reads in (False, True):
            names = [
                {"service": s.full_name, "method": m.name}
                for s in services
                for m in s.methods
                if (m.client_streaming or m.server_streaming) == streaming
                and _only_reads(m) == reads
            ]
            if not names:
                continue
            retry = {
                "maxAttempts": max_attempts,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": _RETRYABLE_READS if reads else _RETRYABLE,
            }
            block: dict[str, Any] = {"name": names, "retryPolicy": retry}
            if not streaming:
                block["timeout"] = f"{unary_timeout_seconds}s"
            method_config.append(block)
    return json.dumps({"methodConfig": method_config})


def _only_reads(method: MethodDescriptor) -> bool:
    return not method.client_streaming and method.name.startswith(_READ_PREFIXES)


class _WithMetadata:
    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._pairs = tuple(pairs)

    def _with(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._pairs)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryUnary(_WithMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with(details), request)


class _UnaryStream(_WithMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with(details), request)


class _StreamUnary(_WithMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._with(details), requests)


class _StreamStream(_WithMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._with(details), requests)


def metadata_interceptors(pairs: Sequence[tuple[str, str]]) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding fixed metadata (``authorization``, ``x-api-key``) to every call of
    a channel: one per kind of call, as grpc.aio files each interceptor under one kind only.

    Call credentials would do it only on TLS channels; the credential must also travel on
    plaintext loopback in development.
    """
    return [kind(pairs) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


def aio_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None = None,
    *,
    options: Sequence[tuple[str, Any]] = (),
    metadata: Sequence[tuple[str, str]] = (),
) -> grpc.aio.Channel:
    """A grpc.aio channel to ``target`` with the project's service config applied, sending
    ``metadata`` (a credential) with every call."""
    all_options = [
        ("grpc.service_config", service_config()),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        *options,
    ]
    interceptors = metadata_interceptors(metadata) if metadata else None
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=all_options, interceptors=interceptors)
    return grpc.aio.secure_channel(
        target, credentials, options=all_options, interceptors=interceptors
    )


def add_connection_arguments(parser: argparse.ArgumentParser, *, default_target: str) -> None:
    """``--target``, the credential (``--token``/``$ITS_TOKEN`` or ``--api-key``/
    ``$ITS_API_KEY``) and TLS (``--tls-ca``, with ``--tls-cert``/``--tls-key`` for mTLS)."""
    parser.add_argument("--target", default=default_target, help=f"default {default_target}")
    parser.add_argument("--token", default=os.environ.get("ITS_TOKEN"), help="a JWT ($ITS_TOKEN)")
    parser.add_argument(
        "--api-key", default=os.environ.get("ITS_API_KEY"), help="an API key ($ITS_API_KEY)"
    )
    parser.add_argument("--tls-ca", type=Path, help="CA bundle of the server (turns TLS on)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (mTLS)")
    parser.add_argument("--tls-key", type=Path, help="client key (mTLS)")
    parser.add_argument("--tls-server-name", help="name to verify in the server certificate")


def channel_from_arguments(args: argparse.Namespace) -> grpc.aio.Channel:
    """The channel ``add_connection_arguments``' options describe."""
    metadata: list[tuple[str, str]] = []
    if args.token:
        metadata.append(("authorization", f"Bearer {args.token}"))
    if args.api_key:
        metadata.append(("x-api-key", args.api_key))
    credentials = None
    options: list[tuple[str, Any]] = []
    if args.tls_ca or args.tls_cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
            private_key=args.tls_key.read_bytes() if args.tls_key else None,
            certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
        )
        if args.tls_server_name:
            options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    return aio_channel(args.target, credentials, options=options, metadata=metadata)
