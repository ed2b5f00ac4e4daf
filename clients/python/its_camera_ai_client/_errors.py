"""Typed errors built from the ``google.rpc.Status`` the services send.

Every failed call ends with a canonical code and, in the ``grpc-status-details-bin``
trailer, a ``google.rpc.Status`` whose details are an ``ErrorInfo`` (reason, domain
``its-camera-ai.dev``, metadata such as ``resource`` or ``field``), a ``BadRequest`` for
invalid arguments and a ``RetryInfo`` for answers worth retrying later. ``ApiError`` carries
them as attributes, one subclass per code, so callers write ``except NotFoundError`` and
branch on ``reason``, never on the message.

``ApiError`` is a ``grpc.aio.AioRpcError`` (so a ``grpc.RpcError``): code that already
catches gRPC's errors keeps working, and ``code()``, ``details()`` and the metadata stay.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "ApiError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "error_from_rpc",
]

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid request field: ``field`` is its dotted path (AIP-193)."""

    field: str
    description: str


class ApiError(grpc.aio.AioRpcError):
    """A call the server (or the channel) ended with a status other than OK.

    ``reason`` is the ``ErrorInfo`` reason (an ``its.common.v1.ErrorReason`` name without
    its prefix, e.g. ``RESOURCE_NOT_FOUND``), ``""`` when the status carried none (a
    transport failure); ``retry_delay_seconds`` is the server's ``RetryInfo``, if any.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[FieldViolation] = (),
        retry_delay_seconds: float | None = None,
        initial_metadata: grpc.aio.Metadata | None = None,
        trailing_metadata: grpc.aio.Metadata | None = None,
        debug_error_string: str | None = None,
    ) -> None:
        super().__init__(code, initial_metadata, trailing_metadata, message, debug_error_string)
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.field_violations = tuple(field_violations)
        self.retry_delay_seconds = retry_delay_seconds

    def __str__(self) -> str:
        reason = f" ({self.reason})" if self.reason else ""
        return f"{self.code().name}{reason}: {self.message}"

    # AioRpcError's own repr is its multi-line __str__.
    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class InvalidArgumentError(ApiError):
    """The request is malformed; ``field_violations`` name every bad field."""


class NotFoundError(ApiError):
    """The named resource does not exist (or is outside the caller's camera scope)."""


class AlreadyExistsError(ApiError):
    """A create named an id that is taken (also what a repeated create answers)."""


class FailedPreconditionError(ApiError):
    """The system is not in the state the call needs (e.g. batches out of sequence)."""


class AbortedError(ApiError):
    """A concurrency conflict, such as a stale etag: re-read, then retry."""


class OutOfRangeError(ApiError):
    """A position past what the server keeps (an expired stream resume token)."""


class UnauthenticatedError(ApiError):
    """No credential, or one the server refused (expired, revoked, malformed)."""


class PermissionDeniedError(ApiError):
    """The caller's role or camera scope does not allow the call."""


class ResourceExhaustedError(ApiError):
    """Over a rate limit or quota: wait ``retry_delay_seconds``, then retry."""


class UnavailableError(ApiError):
    """The service or one of its dependencies cannot be reached: retry, after
    ``retry_delay_seconds`` when the server said."""


class DeadlineExceededError(ApiError):
    """The call (or a dependency of the server) ran out of time; it may have taken effect."""


class InternalError(ApiError):
    """A server bug or lost data; the message stays generic."""


class UnimplementedError(ApiError):
    """The server does not implement the method (an older release, or a unit not served)."""


_BY_CODE: dict[grpc.StatusCode, type[ApiError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
}


def _status_details(trailing: Iterable[tuple[str, str | bytes]] | None) -> list[any_pb2.Any]:
    for key, value in trailing or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            return list(status_pb2.Status.FromString(value).details)
    return []


def _unpacked(details: list[any_pb2.Any]) -> dict[str, Any]:
    """The ErrorInfo, BadRequest and RetryInfo of ``details`` as ``ApiError`` arguments."""
    found: dict[str, Any] = {}
    for detail in details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            found.update(reason=info.reason, domain=info.domain, metadata=dict(info.metadata))
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found["field_violations"] = [
                FieldViolation(v.field, v.description) for v in bad.field_violations
            ]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            found["retry_delay_seconds"] = retry.retry_delay.ToNanoseconds() / 1e9
    return found


def error_from_rpc(error: grpc.aio.AioRpcError | grpc.Call) -> ApiError:
    """The typed error for a failed call of either gRPC API (``grpc.aio.AioRpcError``, or
    the ``grpc.RpcError`` that is also a ``grpc.Call`` of the synchronous one)."""
    if isinstance(error, ApiError):
        return error
    code = error.code()
    trailing = error.trailing_metadata()
    cls = _BY_CODE.get(code, ApiError)
    return cls(
        code,
        error.details() or "",
        **_unpacked(_status_details(trailing)),
        initial_metadata=error.initial_metadata(),  # type: ignore[arg-type]
        trailing_metadata=trailing,  # type: ignore[arg-type]
        debug_error_string=error.debug_error_string(),  # type: ignore[union-attr]
    )
