"""What every channel to the ITS Camera AI services is configured with: the gRPC service
config (deadlines, retries), keepalive, message sizes, TLS and the caller's credential.

Which calls are retried, and why. gRPC retries an attempt only while no response headers
arrived, so what is retried is the *request*, which may or may not have been applied:

* reads (``Get*``, ``List*``, server-streaming ``Watch*``/``Stream*``) retry ``UNAVAILABLE``
  and ``CANCELLED`` (what a draining server answers the calls it had received but not
  started, grpc/grpc#41785): repeating a read is always harmless;
* idempotent writes retry ``UNAVAILABLE``: ``Update*`` (sets the given fields: twice is
  once), ``Delete*`` (gone is gone) and ``Detect`` (a pure function of the frame). A retry
  of an attempt that did apply can answer differently (``ABORTED`` for an etag update,
  ``NOT_FOUND`` for a delete without ``allow_missing``), never leave different state;
* never retried: ``Create*`` (the protos have no request id: an applied create repeated is
  a second camera or API key when the server picks the id, the key's secret seen by
  nobody), ``ResetCameraState`` (a repeat discards state built since the first) and the
  client stream ``StreamDetectionBatches`` (its producer resends by sequence itself). A
  caller that retries a create itself passes an id and treats ``ALREADY_EXISTS`` as done.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
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
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_UNARY_TIMEOUT_SECONDS",
    "MAX_MESSAGE_BYTES",
    "SERVICES",
    "TlsOptions",
    "channel_options",
    "credential_metadata",
    "retryable_codes",
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

DEFAULT_UNARY_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_ATTEMPTS = 4
# The servers' default grpc.max_{receive,send}_message_bytes: a client limit below it would
# refuse answers the server may send (gRPC's own receive default is 4 MiB).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Keepalive pings at the servers' own interval, never more often than the 10 s the servers
# accept (min_client_ping_interval_seconds), also on a quiet Watch stream.
_KEEPALIVE = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)

_READ_PREFIXES = ("Get", "List", "Watch", "Stream")
_IDEMPOTENT_WRITE_PREFIXES = ("Update", "Delete", "Detect")


def retryable_codes(method: MethodDescriptor) -> tuple[str, ...]:
    """The status codes a call of ``method`` is retried on (none: not retried)."""
    if method.client_streaming:
        return ()
    if method.name.startswith(_READ_PREFIXES):
        return ("UNAVAILABLE", "CANCELLED")
    if method.name.startswith(_IDEMPOTENT_WRITE_PREFIXES) and not method.server_streaming:
        return ("UNAVAILABLE",)
    return ()


def service_config(
    services: Sequence[ServiceDescriptor] = SERVICES,
    *,
    unary_timeout_seconds: float = DEFAULT_UNARY_TIMEOUT_SECONDS,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> str:
    """The gRPC service config JSON for ``services``: one block per kind of method (unary or
    streaming, by the codes it retries), unary ones with a deadline, none on streams (a
    watch lives as long as it needs)."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts: at least 1, got {max_attempts}")
    if unary_timeout_seconds <= 0:
        raise ValueError(f"unary_timeout_seconds: above 0, got {unary_timeout_seconds}")
    blocks: dict[tuple[bool, tuple[str, ...]], list[dict[str, str]]] = {}
    for service in services:
        for method in service.methods:
            streaming = method.client_streaming or method.server_streaming
            key = (streaming, retryable_codes(method))
            blocks.setdefault(key, []).append({"service": service.full_name, "method": method.name})
    method_config: list[dict[str, Any]] = []
    for (streaming, codes), names in sorted(blocks.items()):
        block: dict[str, Any] = {"name": names}
        if codes and max_attempts > 1:
            block["retryPolicy"] = {
                "maxAttempts": max_attempts,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": list(codes),
            }
        if not streaming:
            block["timeout"] = f"{unary_timeout_seconds}s"
        method_config.append(block)
    return json.dumps({"methodConfig": method_config})


def channel_options(
    *,
    unary_timeout_seconds: float = DEFAULT_UNARY_TIMEOUT_SECONDS,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    server_name: str | None = None,
) -> list[tuple[str, Any]]:
    """gRPC channel options: the service config, keepalive, message sizes and, for TLS, the
    name to verify in the server's certificate instead of the target's host."""
    options: list[tuple[str, Any]] = [
        (
            "grpc.service_config",
            service_config(unary_timeout_seconds=unary_timeout_seconds, max_attempts=max_attempts),
        ),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        *_KEEPALIVE,
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


def _pem(value: Path | str | bytes | None, field: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise ValueError(f"tls.{field}: cannot read {value}: {exc.strerror}") from None


@dataclass(frozen=True)
class TlsOptions:
    """TLS to the server: ``ca`` verifies it (None: the system's roots); ``cert`` and
    ``key`` (both or neither) are the client certificate for mTLS; ``server_name`` is the
    name to verify when the target's host is not in the certificate. Each is PEM bytes or
    a path to a PEM file."""

    ca: Path | str | bytes | None = None
    cert: Path | str | bytes | None = None
    key: Path | str | bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            missing = "key" if self.key is None else "cert"
            raise ValueError(f"tls.{missing}: a client certificate needs both cert and key")

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials from these options, the files read now."""
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca, "ca"),
            private_key=_pem(self.key, "key"),
            certificate_chain=_pem(self.cert, "cert"),
        )


def credential_metadata(
    *, token: str | None = None, api_key: str | None = None
) -> tuple[tuple[str, str], ...]:
    """The metadata that carries a caller's credential: ``authorization: Bearer <JWT>`` or
    ``x-api-key``. One of them: the server refuses a call that sends two credentials."""
    if token and api_key:
        raise ValueError("token, api_key: give one credential, not both")
    for field, value in (("token", token), ("api_key", api_key)):
        if value is not None and (not value.strip() or value != value.strip()):
            raise ValueError(f"{field}: empty or surrounded by whitespace")
    if token:
        return (("authorization", f"Bearer {token}"),)
    if api_key:
        return (("x-api-key", api_key),)
    return ()
