"""The Python client of the ITS Camera AI gRPC APIs.

``connect_async(target, token=... | api_key=..., tls=TlsOptions(...))`` (or ``connect`` for
synchronous code) gives a client whose ``cameras``, ``query``, ``admin``, ``analytics`` and
``inference`` are the generated stubs (package ``its``) on one channel that carries the
credential, retries what is safe to retry, keeps the connection alive and accepts the
servers' message sizes. Failures raise ``ApiError`` subclasses with the server's reason,
field violations and retry delay; ``paginate``/``paginate_async`` walk List RPCs.
"""

from __future__ import annotations

from its_camera_ai_client._calls import aio_interceptors, metadata_interceptors, sync_interceptor
from its_camera_ai_client._client import AsyncClient, Client, aio_channel, connect, connect_async
from its_camera_ai_client._config import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_UNARY_TIMEOUT_SECONDS,
    MAX_MESSAGE_BYTES,
    SERVICES,
    TlsOptions,
    channel_options,
    credential_metadata,
    retryable_codes,
    service_config,
)
from its_camera_ai_client._errors import (
    AbortedError,
    AlreadyExistsError,
    ApiError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    error_from_rpc,
)
from its_camera_ai_client._pages import paginate, paginate_async

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_UNARY_TIMEOUT_SECONDS",
    "MAX_MESSAGE_BYTES",
    "SERVICES",
    "AbortedError",
    "AlreadyExistsError",
    "ApiError",
    "AsyncClient",
    "Client",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "TlsOptions",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "aio_channel",
    "aio_interceptors",
    "channel_options",
    "connect",
    "connect_async",
    "credential_metadata",
    "error_from_rpc",
    "metadata_interceptors",
    "paginate",
    "paginate_async",
    "retryable_codes",
    "service_config",
    "sync_interceptor",
]
