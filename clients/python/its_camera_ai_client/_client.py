"""``connect``/``connect_async``: one channel to the services with the project's config, and
a typed stub per service on it."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc

from its.admin.v1 import admin_service_pb2_grpc
from its.analytics.v1 import analytics_service_pb2_grpc
from its.camera.v1 import camera_service_pb2_grpc
from its.inference.v1 import inference_service_pb2_grpc
from its.query.v1 import query_service_pb2_grpc
from its_camera_ai_client._calls import aio_interceptors, sync_interceptor
from its_camera_ai_client._config import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_UNARY_TIMEOUT_SECONDS,
    TlsOptions,
    channel_options,
    credential_metadata,
)

if TYPE_CHECKING:  # the async stubs exist in the type stubs only
    from its.admin.v1.admin_service_pb2_grpc import AdminServiceAsyncStub
    from its.analytics.v1.analytics_service_pb2_grpc import AnalyticsServiceAsyncStub
    from its.camera.v1.camera_service_pb2_grpc import CameraServiceAsyncStub
    from its.inference.v1.inference_service_pb2_grpc import InferenceServiceAsyncStub
    from its.query.v1.query_service_pb2_grpc import QueryServiceAsyncStub

__all__ = ["AsyncClient", "Client", "aio_channel", "connect", "connect_async"]


def _parts(
    target: str,
    credential: tuple[str | None, str | None],
    tls: TlsOptions | None,
    unary_timeout_seconds: float,
    max_attempts: int,
) -> tuple[tuple[tuple[str, str], ...], grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    """The credential metadata, TLS credentials and channel options of a connection."""
    if not target or target != target.strip():
        raise ValueError(f"target: expected host:port, got {target!r}")
    if tls is not None and not isinstance(tls, TlsOptions):
        raise TypeError(f"tls: expected TlsOptions or None, got {type(tls).__name__}")
    token, api_key = credential
    options = channel_options(
        unary_timeout_seconds=unary_timeout_seconds,
        max_attempts=max_attempts,
        server_name=tls.server_name if tls is not None else None,
    )
    return (
        credential_metadata(token=token, api_key=api_key),
        tls.credentials() if tls is not None else None,
        options,
    )


def aio_channel(
    target: str,
    *,
    token: str | None = None,
    api_key: str | None = None,
    tls: TlsOptions | None = None,
    unary_timeout_seconds: float = DEFAULT_UNARY_TIMEOUT_SECONDS,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A grpc.aio channel to ``target`` as ``connect_async`` makes it, for stubs of your own.
    ``options`` (gRPC channel options) come first, so they win over the defaults (gRPC keeps
    the first of duplicate options)."""
    metadata, credentials, defaults = _parts(
        target, (token, api_key), tls, unary_timeout_seconds, max_attempts
    )
    all_options = [*options, *defaults]
    interceptors = aio_interceptors(metadata)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=all_options, interceptors=interceptors)
    return grpc.aio.secure_channel(
        target, credentials, options=all_options, interceptors=interceptors
    )


class AsyncClient:
    """A stub per service on one grpc.aio channel; ``async with`` closes the channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.cameras: CameraServiceAsyncStub = camera_service_pb2_grpc.CameraServiceStub(channel)
        self.query: QueryServiceAsyncStub = query_service_pb2_grpc.QueryServiceStub(channel)
        self.admin: AdminServiceAsyncStub = admin_service_pb2_grpc.AdminServiceStub(channel)
        self.analytics: AnalyticsServiceAsyncStub = analytics_service_pb2_grpc.AnalyticsServiceStub(
            channel
        )
        self.inference: InferenceServiceAsyncStub = inference_service_pb2_grpc.InferenceServiceStub(
            channel
        )

    async def close(self, grace: float | None = None) -> None:
        """Closes the channel; calls in flight get ``grace`` seconds (None: cancelled)."""
        await self.channel.close(grace)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Client:
    """The synchronous client: a stub per service on one channel; ``with`` closes it."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.cameras = camera_service_pb2_grpc.CameraServiceStub(channel)
        self.query = query_service_pb2_grpc.QueryServiceStub(channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        self.analytics = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
        self.inference = inference_service_pb2_grpc.InferenceServiceStub(channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connect_async(
    target: str,
    *,
    token: str | None = None,
    api_key: str | None = None,
    tls: TlsOptions | None = None,
    unary_timeout_seconds: float = DEFAULT_UNARY_TIMEOUT_SECONDS,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> AsyncClient:
    """An asyncio client of the services at ``target`` (``host:port``).

    ``token`` (a JWT) or ``api_key`` is sent with every call; ``tls`` turns TLS on (mTLS
    with a client certificate). Unary calls get ``unary_timeout_seconds`` unless given a
    ``timeout``; retries follow the module's rules (at most ``max_attempts`` attempts).
    Failures raise ``ApiError`` subclasses. Nothing connects until the first call.
    """
    return AsyncClient(
        aio_channel(
            target,
            token=token,
            api_key=api_key,
            tls=tls,
            unary_timeout_seconds=unary_timeout_seconds,
            max_attempts=max_attempts,
        )
    )


def connect(
    target: str,
    *,
    token: str | None = None,
    api_key: str | None = None,
    tls: TlsOptions | None = None,
    unary_timeout_seconds: float = DEFAULT_UNARY_TIMEOUT_SECONDS,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> Client:
    """The synchronous twin of ``connect_async``, for scripts and notebooks."""
    metadata, credentials, options = _parts(
        target, (token, api_key), tls, unary_timeout_seconds, max_attempts
    )
    if credentials is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        channel = grpc.secure_channel(target, credentials, options=options)
    return Client(grpc.intercept_channel(channel, sync_interceptor(metadata)))
