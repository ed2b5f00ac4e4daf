"""The one exception tree of the services, and its single mapping to the wire.

Domain code raises these; the error interceptor (``_interceptors.py``) turns them into a
canonical gRPC status with ``google.rpc.Status`` details: an ``ErrorInfo`` whose reason is
one of the fixed ``its.common.v1.ErrorReason`` names, plus ``BadRequest`` field violations
for invalid arguments (AIP-193) and ``RetryInfo`` (how long to wait) on ``UNAVAILABLE``.
Nothing else in the code base builds a status by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from its.common.v1 import error_reason_pb2 as errors_pb2

__all__ = [
    "ERROR_DOMAIN",
    "AbortedError",
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "ItsError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "quoted",
    "reason_name",
]

# The ErrorInfo domain: stable, documented in protos/its/common/v1/error_reason.proto.
ERROR_DOMAIN = "its-camera-ai.dev"
# The retry delay an UNAVAILABLE answer suggests when its raiser knows no better one: long
# enough not to hammer a dependency that is restarting, short enough to notice it is back.
DEFAULT_RETRY_DELAY_SECONDS = 1.0


def reason_name(reason: int) -> str:
    """The wire form of an ``ErrorReason``: its enum name without the ``ERROR_REASON_`` prefix."""
    return errors_pb2.ErrorReason.Name(reason).removeprefix("ERROR_REASON_")  # type: ignore[arg-type]


# Request strings quoted in error messages are cut to this many characters: status details
# travel in trailing metadata, which clients refuse past 16 KiB, turning a 100 KB echo into
# RESOURCE_EXHAUSTED instead of the error it was.
_QUOTE_LIMIT = 64


def quoted(value: str) -> str:
    """``value`` for an error message: repr'd, cut to a bounded prefix when it is long."""
    if len(value) <= _QUOTE_LIMIT:
        return repr(value)
    return f"{value[:_QUOTE_LIMIT]!r}... ({len(value)} characters)"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field: ``field`` is the dotted path in the request (AIP-193)."""

    field: str
    description: str


class ItsError(Exception):
    """Base of every error the services report to a client.

    ``message`` is safe to show to the caller: never put secrets or internal state in it.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason: int = errors_pb2.ERROR_REASON_INTERNAL

    def __init__(
        self,
        message: str,
        *,
        reason: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = self.default_reason if reason is None else reason
        self.metadata = dict(metadata or {})

    def _details(self) -> list[any_pb2.Any]:
        info = error_details_pb2.ErrorInfo(
            reason=reason_name(self.reason), domain=ERROR_DOMAIN, metadata=self.metadata
        )
        packed = any_pb2.Any()
        packed.Pack(info)
        return [packed]

    def to_status(self) -> status_pb2.Status:
        """The ``google.rpc.Status`` this error travels as."""
        return status_pb2.Status(
            code=self.code.value[0], message=self.message, details=self._details()
        )


class InvalidArgumentError(ItsError):
    """The request is malformed; ``violations`` name each bad field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = errors_pb2.ERROR_REASON_INVALID_FIELD

    def __init__(
        self,
        message: str,
        violations: Sequence[FieldViolation] = (),
        *,
        reason: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = tuple(violations)

    @classmethod
    def for_field(
        cls, field: str, description: str, *, reason: int | None = None
    ) -> InvalidArgumentError:
        """The common case: one field is wrong, and the message names it (a specific
        ``reason`` also names it in the ErrorInfo's metadata, as ``field``)."""
        metadata = None if reason is None else {"field": field}
        return cls(
            f"{field}: {description}",
            [FieldViolation(field, description)],
            reason=reason,
            metadata=metadata,
        )

    def _details(self) -> list[any_pb2.Any]:
        details = super()._details()
        if self.violations:
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in self.violations
                ]
            )
            packed = any_pb2.Any()
            packed.Pack(bad_request)
            details.append(packed)
        return details


class NotFoundError(ItsError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = errors_pb2.ERROR_REASON_RESOURCE_NOT_FOUND


class AlreadyExistsError(ItsError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = errors_pb2.ERROR_REASON_ALREADY_EXISTS


class FailedPreconditionError(ItsError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = errors_pb2.ERROR_REASON_FAILED_PRECONDITION


class OutOfRangeError(ItsError):
    """A position past what the server keeps (an expired stream resume token)."""

    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = errors_pb2.ERROR_REASON_RESUME_TOKEN_EXPIRED


class AbortedError(ItsError):
    """A concurrency conflict (an etag that is no longer current, AIP-154); re-read and retry."""

    code = grpc.StatusCode.ABORTED
    default_reason = errors_pb2.ERROR_REASON_ETAG_MISMATCH


class _RetryAfterError(ItsError):
    """An error a client may retry after a delay: travels with a ``google.rpc.RetryInfo``
    whose delay is ``retry_delay_seconds``."""

    def __init__(
        self,
        message: str,
        *,
        reason: int | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_delay_seconds: float = DEFAULT_RETRY_DELAY_SECONDS,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_delay_seconds = retry_delay_seconds

    def _details(self) -> list[any_pb2.Any]:
        details = super()._details()
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(self.retry_delay_seconds * 1e9))
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(packed)
        return details


class UnavailableError(_RetryAfterError):
    """A dependency (database, cache, peer service) cannot be reached; safe to retry."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = errors_pb2.ERROR_REASON_DEPENDENCY_UNAVAILABLE


class DeadlineExceededError(ItsError):
    """A dependency did not answer in time (a timeout, not a refusal); the call may or may
    not have taken effect there."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = errors_pb2.ERROR_REASON_DEPENDENCY_TIMEOUT


class ResourceExhaustedError(_RetryAfterError):
    """Over a limit (a rate, a quota, a queue): retry after ``retry_delay_seconds``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = errors_pb2.ERROR_REASON_RATE_LIMITED


class UnauthenticatedError(ItsError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = errors_pb2.ERROR_REASON_UNAUTHENTICATED


class PermissionDeniedError(ItsError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = errors_pb2.ERROR_REASON_PERMISSION_DENIED


class InternalError(ItsError):
    """A bug or an unexpected state; the message stays generic on the wire."""

    code = grpc.StatusCode.INTERNAL
    default_reason = errors_pb2.ERROR_REASON_INTERNAL


class UnimplementedError(ItsError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = errors_pb2.ERROR_REASON_NOT_IMPLEMENTED
