"""The channel every client of the project uses: service config, retries, deadlines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

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


def service_config(
    services: Sequence[ServiceDescriptor] = SERVICES,
    *,
    unary_timeout_seconds: float = 10.0,
    max_attempts: int = 4,
) -> str:
    """The gRPC service config JSON for ``services``."""
    unary = [
        {"service": s.full_name, "method": m.name}
        for s in services
        for m in s.methods
        if not (m.client_streaming or m.server_streaming)
    ]
    streaming = [
        {"service": s.full_name, "method": m.name}
        for s in services
        for m in s.methods
        if m.client_streaming or m.server_streaming
    ]
    retry = {
        "maxAttempts": max_attempts,
        "initialBackoff": "0.1s",
        "maxBackoff": "2s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    method_config: list[dict[str, Any]] = [
        {"name": unary, "timeout": f"{unary_timeout_seconds}s", "retryPolicy": retry}
    ]
    if streaming:
        method_config.append({"name": streaming, "retryPolicy": retry})
    return json.dumps({"methodConfig": method_config})


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
