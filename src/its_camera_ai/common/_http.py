"""The HTTP side port of a service: ``/metrics`` for Prometheus, ``/health`` and ``/live``.

A few fixed GET routes do not warrant a web framework: this is a small HTTP/1.1 responder
on asyncio streams, one request per connection, with read limits and a timeout so a slow or
hostile client cannot hold it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["HealthReport", "HttpSidePort"]

_log = logging.getLogger(__name__)

# (serving, body): serving picks 200 or 503 so a load balancer or probe can act on it.
HealthReport = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]

_REQUEST_TIMEOUT_SECONDS = 5.0
_MAX_REQUEST_LINE = 8192
_REASONS = {
    200: "OK",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class HttpSidePort:
    """``metrics_token``: when set, ``/metrics`` needs ``Authorization: Bearer <token>``
    (health and liveness stay open for probes)."""

    def __init__(
        self,
        registries: Sequence[CollectorRegistry],
        health: HealthReport,
        *,
        metrics_token: str | None = None,
    ) -> None:
        # The host's own registry plus the process-wide one that libraries (shm) report to.
        self._registries = tuple(registries)
        self._health = health
        self._metrics_authorization = (
            None if metrics_token is None else f"bearer {metrics_token}".encode()
        )
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen and return the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._serve, host, port, limit=_MAX_REQUEST_LINE)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _may_read_metrics(self, authorization: bytes) -> bool:
        if self._metrics_authorization is None:
            return True
        scheme, _, token = authorization.strip().partition(b" ")
        return hmac.compare_digest(
            scheme.lower() + b" " + token.strip(), self._metrics_authorization
        )

    async def _route(self, method: str, path: str, authorization: bytes) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"only GET\n"
        path = path.split("?", 1)[0]
        if path == "/metrics":
            if not self._may_read_metrics(authorization):
                return 401, "text/plain; charset=utf-8", b"/metrics needs its bearer token\n"
            return 200, CONTENT_TYPE_LATEST, b"".join(map(generate_latest, self._registries))
        if path == "/health":
            serving, body = await self._health()
            return 200 if serving else 503, "application/json", json.dumps(body).encode()
        if path == "/live":
            return 200, "application/json", b'{"status": "alive"}'
        return 404, "text/plain; charset=utf-8", b"not found\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_SECONDS):
                request_line = (await reader.readline()).decode("latin-1").split()
                # Of the headers only Authorization matters (/metrics with a token).
                authorization = b""
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"authorization":
                        authorization = value
            if len(request_line) != 3:
                return
            method, path, _ = request_line
            status, content_type, body = await self._route(method, path, authorization)
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            writer.write(head if method == "HEAD" else head + body)
            await writer.drain()
        except (TimeoutError, ValueError, ConnectionError) as exc:
            _log.debug("http side port: dropped a request: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
