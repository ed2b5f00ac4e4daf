"""The channel every client of the project uses: service config, retries, deadlines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from its.admin.v1 import admin_service_pb2
from its.analytics.v1 import analytics_service_pb2
from its.camera.v1 import camera_service_pb2
from its.inference.v1 import inference_service_pb2
from its.query.v1 import query_service_pb2

__all__ = ["SERVICES", "aio_channel", "service_config"]

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


def aio_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None = None,
    *,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A grpc.aio channel to ``target`` with the project's service config applied."""
    all_options = [
        ("grpc.service_config", service_config()),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        *options,
    ]
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=all_options)
    return grpc.aio.secure_channel(target, credentials, options=all_options)
