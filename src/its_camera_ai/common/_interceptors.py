"""Server interceptors every service shares: error mapping and RPC metrics.

The error interceptor is the one place where exceptions become gRPC statuses: an
``ItsError`` travels as its canonical code with ``google.rpc.Status`` details; a dependency
failure that reached it (``dependency_error``: PostgreSQL or Redis down, a peer service
unavailable, a timeout) is ``UNAVAILABLE`` with ``RetryInfo``, or ``DEADLINE_EXCEEDED``,
logged as a warning without a traceback; anything else is a bug, logged with its traceback
and reported as ``INTERNAL`` without internals.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import redis.exceptions
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry, Counter, Histogram

from its_camera_ai.common._errors import (
    DeadlineExceededError,
    InternalError,
    ItsError,
    UnavailableError,
    UnimplementedError,
)
from its_camera_ai.common._storage import POSTGRES_FAILURES, REDIS_FAILURES

__all__ = ["ErrorMappingInterceptor", "RpcMetricsInterceptor", "dependency_error", "rewrap"]

_log = logging.getLogger(__name__)

_Behaviour = Callable[..., Any]
_Wrap = Callable[[_Behaviour, str], _Behaviour]
# Strings: grpc's classes are generic only in their type stubs, not at run time.
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]]"


def _as_async_generator(behaviour: _Behaviour) -> _Behaviour:
    """A streaming-response behaviour in the async-generator shape.

    grpc.aio also accepts a coroutine writing through ``context.write`` (grpc's own health
    ``Watch`` is one), but OpenTelemetry's server interceptor iterates every streaming
    behaviour with ``async for``: given a coroutine it failed the call with a TypeError.
    Wrapped, the coroutine still writes through the context and the generator yields
    nothing, so each interceptor sees one shape.
    """
    if inspect.isasyncgenfunction(behaviour):
        return behaviour

    async def writes_through_context(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await behaviour(request, context)
        return
        yield  # unreachable: makes this an async generator

    return writes_through_context


def rewrap(handler: _Handler, method: str, wrap: _Wrap) -> _Handler:
    """A copy of ``handler`` whose behaviour is ``wrap(behaviour)``, whatever its arity."""
    common = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, method), **common)
    if handler.unary_stream is not None:
        behaviour = wrap(_as_async_generator(handler.unary_stream), method)
        return grpc.unary_stream_rpc_method_handler(behaviour, **common)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, method), **common)
    if handler.stream_stream is not None:
        behaviour = wrap(_as_async_generator(handler.stream_stream), method)
        return grpc.stream_stream_rpc_method_handler(behaviour, **common)
    raise TypeError(f"{method}: handler has no behaviour")


# The failure types that belong to one client library. OSError and TimeoutError are in
# the shared tuples too, but raised anywhere: those are judged by where they were raised.
_OWN_FAILURES: dict[str, tuple[type[BaseException], ...]] = {
    "postgresql": tuple(t for t in POSTGRES_FAILURES if t not in (OSError, TimeoutError)),
    "redis": tuple(t for t in REDIS_FAILURES if t not in (OSError, TimeoutError)),
}
# Top-level packages of the client libraries, and the dependency each one talks to.
_CLIENT_PACKAGES = {"asyncpg": "postgresql", "redis": "redis", "grpc": "a peer service"}


def _raised_through(exc: BaseException) -> str | None:
    """The dependency whose client library ``exc`` was raised in (a refused connection from
    asyncpg's connect), judged from its traceback; None for our own code's OSErrors (a file
    not found is a bug or a bad request, not an outage)."""
    found = None
    frame = exc.__traceback__
    while frame is not None:
        package = str(frame.tb_frame.f_globals.get("__name__", "")).partition(".")[0]
        found = _CLIENT_PACKAGES.get(package, found)
        frame = frame.tb_next
    return found


def _dependency_of(exc: BaseException) -> str | None:
    for dependency, failures in _OWN_FAILURES.items():
        if isinstance(exc, failures):
            return dependency
    if isinstance(exc, OSError | TimeoutError):
        return _raised_through(exc)
    return None


def dependency_error(exc: BaseException) -> ItsError | None:
    """The status a dependency failure answers with, or None when ``exc`` is not one.

    PostgreSQL down (``POSTGRES_FAILURES``), Redis down (``REDIS_FAILURES``), a peer
    service answering ``UNAVAILABLE``: ``UnavailableError`` (``RetryInfo``, reason
    ``DEPENDENCY_UNAVAILABLE``, metadata ``dependency``). A timeout (asyncio's, a client
    library's, a peer's ``DEADLINE_EXCEEDED``): ``DeadlineExceededError``. ``ItsError``s
    (an open ``CircuitOpenError`` among them) already are their own status.
    """
    if isinstance(exc, grpc.aio.AioRpcError):
        # Only the codes that say "the peer is down or slow"; any other code a peer
        # returns to us is a bug in how we called it.
        timed_out = exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        if not timed_out and exc.code() != grpc.StatusCode.UNAVAILABLE:
            return None
        dependency: str | None = _CLIENT_PACKAGES["grpc"]
    else:
        timed_out = isinstance(exc, TimeoutError | redis.exceptions.TimeoutError)
        dependency = _dependency_of(exc)
    if timed_out:
        metadata = {"dependency": dependency} if dependency else {}
        return DeadlineExceededError(
            f"{dependency or 'a dependency'} did not answer in time", metadata=metadata
        )
    if dependency is None:
        return None
    return UnavailableError(
        f"{dependency} is unavailable; retry later", metadata={"dependency": dependency}
    )


def _as_its_error(exc: Exception, method: str) -> ItsError:
    if isinstance(exc, ItsError):
        return exc
    if isinstance(exc, NotImplementedError):
        # What generated servicer bases raise for RPCs a service does not implement yet.
        return UnimplementedError(f"{method} is not implemented by this server")
    mapped = dependency_error(exc)
    if mapped is not None:
        # An outage, not a bug: no traceback (the dependency's own health tells the story).
        _log.warning(
            "dependency failure in %s",
            method,
            extra={"code": mapped.code.name, "error": f"{type(exc).__name__}: {exc}"},
        )
        return mapped
    _log.error("unhandled error in %s", method, exc_info=exc)
    return InternalError("internal error")


async def _abort_for(
    exc: Exception, context: grpc.aio.ServicerContext[Any, Any], method: str
) -> None:
    status = rpc_status.to_status(_as_its_error(exc, method).to_status())
    await context.abort(status.code, status.details, status.trailing_metadata)


def _map_errors(behaviour: _Behaviour, method: str) -> _Behaviour:
    # grpc.aio accepts both shapes for streaming responses: an async generator, or a
    # coroutine writing through context.write. Each needs its own wrapper.
    if inspect.isasyncgenfunction(behaviour):

        async def stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                async for response in behaviour(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort_for(exc, context, method)

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            result = behaviour(request, context)
            # Generated servicer bases are plain functions; implemented RPCs are coroutines.
            return await result if inspect.isawaitable(result) else result
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort_for(exc, context, method)
            return None  # unreachable: abort raises

    return unary


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: _Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return rewrap(handler, handler_call_details.method, _map_errors)


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """``grpc_server_handled_total`` and ``grpc_server_handling_seconds`` per method and code."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self._seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its completion on the server.",
            ["grpc_service", "grpc_method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=registry,
        )

    def _observe(
        self, method: str, started: float, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        code = context.code()
        # No code set at completion means the behaviour returned normally.
        code_name = code.name if isinstance(code, grpc.StatusCode) else "OK"
        self._handled.labels(service, name, code_name).inc()
        self._seconds.labels(service, name).observe(time.perf_counter() - started)

    def _measure(self, behaviour: _Behaviour, method: str) -> _Behaviour:
        if inspect.isasyncgenfunction(behaviour):

            async def stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                started = time.perf_counter()
                try:
                    async for response in behaviour(request, context):
                        yield response
                finally:
                    self._observe(method, started, context)

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            try:
                return await behaviour(request, context)
            finally:
                self._observe(method, started, context)

        return unary

    async def intercept_service(
        self,
        continuation: _Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return rewrap(handler, handler_call_details.method, self._measure)
