"""Interceptors every client channel runs: the caller's credential on every call, and
failures raised as the typed errors of ``_errors`` (for streams too, at the message that
failed), leaving the call objects' metadata, ``cancel()`` and ``read()``/``write()`` intact.

Call credentials would carry the credential only on TLS channels; it must also travel on
plaintext loopback in development, hence metadata added by an interceptor.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from typing import Any

import grpc

from its_camera_ai_client._errors import error_from_rpc

__all__ = ["aio_interceptors", "metadata_interceptors", "sync_interceptor"]

_Pairs = tuple[tuple[str, str], ...]


class _AioCall:
    """Delegates a grpc.aio call's methods; subclasses translate its failures."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def done(self) -> bool:
        return bool(self._call.done())

    def add_done_callback(self, callback: Any) -> None:
        self._call.add_done_callback(callback)

    def time_remaining(self) -> float | None:
        remaining: float | None = self._call.time_remaining()
        return remaining

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = await self._call.code()
        return code

    async def details(self) -> str:
        return str(await self._call.details())

    async def debug_error_string(self) -> str | None:
        debug: str | None = await self._call.debug_error_string()
        return debug

    async def wait_for_connection(self) -> None:
        await self._call.wait_for_connection()

    # Streams: reads and writes raise typed errors (a unary call has none of these).
    async def read(self) -> Any:
        try:
            return await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None

    async def write(self, request: Any) -> None:
        try:
            await self._call.write(request)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None

    async def done_writing(self) -> None:
        await self._call.done_writing()

    async def _responses(self) -> AsyncIterator[Any]:
        try:
            async for response in self._call:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._responses()

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            return (yield from self._call.__await__())
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None


# grpc.aio takes an interceptor's result as the call only if it is an instance of the
# call's abstract class; these are, with _AioCall's methods first in the MRO.
class _UnaryUnaryCall(_AioCall, grpc.aio.UnaryUnaryCall):  # type: ignore[type-arg]
    pass


class _UnaryStreamCall(_AioCall, grpc.aio.UnaryStreamCall):  # type: ignore[type-arg]
    pass


class _StreamUnaryCall(_AioCall, grpc.aio.StreamUnaryCall):  # type: ignore[type-arg]
    pass


class _StreamStreamCall(_AioCall, grpc.aio.StreamStreamCall):  # type: ignore[type-arg]
    pass


class _AioInterceptor:
    def __init__(self, pairs: _Pairs, typed_errors: bool) -> None:
        self._pairs = pairs
        self._typed_errors = typed_errors

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if not self._pairs:
            return details
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._pairs)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def _call(
        self, wrap: Callable[[Any], Any], continuation: Any, details: Any, arg: Any
    ) -> Any:
        call = await continuation(self._details(details), arg)
        return wrap(call) if self._typed_errors else call


class _UnaryUnary(_AioInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._call(_UnaryUnaryCall, continuation, details, request)


class _UnaryStream(_AioInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._call(_UnaryStreamCall, continuation, details, request)


class _StreamUnary(_AioInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._call(_StreamUnaryCall, continuation, details, requests)


class _StreamStream(_AioInterceptor, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._call(_StreamStreamCall, continuation, details, requests)


def _aio(pairs: Sequence[tuple[str, str]], typed_errors: bool) -> list[grpc.aio.ClientInterceptor]:
    # One per kind of call: grpc.aio files each interceptor under one kind only.
    kinds = (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    return [kind(tuple(pairs), typed_errors) for kind in kinds]


def aio_interceptors(pairs: Sequence[tuple[str, str]] = ()) -> list[grpc.aio.ClientInterceptor]:
    """grpc.aio interceptors adding ``pairs`` (a credential) to every call and raising
    failures as ``ApiError`` subclasses."""
    return _aio(pairs, typed_errors=True)


def metadata_interceptors(pairs: Sequence[tuple[str, str]]) -> list[grpc.aio.ClientInterceptor]:
    """grpc.aio interceptors that only add ``pairs`` to every call (gRPC's errors as they
    are): for code that handles ``AioRpcError`` itself, such as the services' peers."""
    return _aio(pairs, typed_errors=False)


class _SyncDetails(
    namedtuple(
        "_SyncDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _SyncStream:
    """A response stream of the synchronous API whose failure raises the typed error."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # cancel(), code(), trailing_metadata()...
        return getattr(self._call, name)


class _SyncInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, pairs: _Pairs) -> None:
        self._pairs = pairs

    def _details(self, details: Any) -> _SyncDetails:
        return _SyncDetails(
            details.method,
            details.timeout,
            (*(details.metadata or ()), *self._pairs),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    @staticmethod
    def _outcome(outcome: Any) -> Any:
        # A blocking call's failure is returned as an RpcError that is done; a future is
        # left to its caller (waiting for it here would block .future()).
        if outcome.done() and isinstance(outcome.exception(), grpc.RpcError):
            raise error_from_rpc(outcome.exception())
        return outcome

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._outcome(continuation(self._details(details), request))

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._outcome(continuation(self._details(details), requests))

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return _SyncStream(continuation(self._details(details), request))

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return _SyncStream(continuation(self._details(details), requests))


def sync_interceptor(pairs: Sequence[tuple[str, str]] = ()) -> grpc.UnaryUnaryClientInterceptor:
    """The synchronous API's interceptor (for ``grpc.intercept_channel``): ``pairs`` on
    every call, failures raised as ``ApiError`` subclasses."""
    return _SyncInterceptor(tuple(pairs))
