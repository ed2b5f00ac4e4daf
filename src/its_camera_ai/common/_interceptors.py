"""Server interceptors every service shares: error mapping and RPC metrics.

The error interceptor is the one place where exceptions become gRPC statuses: an
``ItsError`` travels as its canonical code with ``google.rpc.Status`` details; anything
else is a bug, logged with its traceback and reported as ``INTERNAL`` without internals.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry, Counter, Histogram

from its_camera_ai.common._errors import InternalError, ItsError, UnimplementedError

__all__ = ["ErrorMappingInterceptor", "RpcMetricsInterceptor"]

_log = logging.getLogger(__name__)

_Behaviour = Callable[..., Any]
_Wrap = Callable[[_Behaviour, str], _Behaviour]
# Strings: grpc's classes are generic only in their type stubs, not at run time.
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]]"


def _rewrap(handler: _Handler, method: str, wrap: _Wrap) -> _Handler:
    """A copy of ``handler`` whose behaviour is ``wrap(behaviour)``, whatever its arity."""
    common = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, method), **common)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, method), **common)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, method), **common)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, method), **common)
    raise TypeError(f"{method}: handler has no behaviour")


def _as_its_error(exc: Exception, method: str) -> ItsError:
    if isinstance(exc, ItsError):
        return exc
    if isinstance(exc, NotImplementedError):
        # What generated servicer bases raise for RPCs a service does not implement yet.
        return UnimplementedError(f"{method} is not implemented by this server")
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
        return _rewrap(handler, handler_call_details.method, _map_errors)


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
        return _rewrap(handler, handler_call_details.method, self._measure)
