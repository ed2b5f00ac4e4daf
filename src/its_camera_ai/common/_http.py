"""The HTTP side port of a service: ``/metrics`` for Prometheus, ``/health`` and ``/live``,
plus the GET routes its units add (``HttpRoutes``: the analytics unit's snapshots).

A few GET routes do not warrant a web framework: this is a small HTTP/1.1 responder on
asyncio streams, one request per connection, with read limits and a timeout so a slow or
hostile client cannot hold it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = [
    "HealthReport",
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "HttpRoutes",
    "HttpSidePort",
]

_log = logging.getLogger(__name__)

# (serving, body): serving picks 200 or 503 so a load balancer or probe can act on it.
HealthReport = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]

_REQUEST_TIMEOUT_SECONDS = 5.0
_MAX_REQUEST_LINE = 8192
# Each header line is bounded by _MAX_REQUEST_LINE; their number by this.
_MAX_HEADERS = 64
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TEXT = "text/plain; charset=utf-8"
_BUILT_IN = frozenset({"/metrics", "/health", "/live"})
_PLACEHOLDER = re.compile(r"^\{([a-z_]+)\}$")


@dataclasses.dataclass(frozen=True, slots=True)
class HttpRequest:
    """A GET request as a route sees it: ``params`` are the pattern's ``{name}`` segments
    (percent-decoded), ``headers`` have lower-case names, ``client`` is the peer address."""

    path: str
    params: Mapping[str, str]
    headers: Mapping[str, str]
    client: str


@dataclasses.dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, document: Any) -> HttpResponse:
        return cls(status, "application/json", json.dumps(document).encode())


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class HttpRoutes:
    """GET routes units add to their host's side port. A pattern is a path whose segments
    are literal or ``{name}`` (one segment, any text: the handler validates it), e.g.
    ``/cameras/{camera}/snapshot.jpg``. The built-in paths cannot be taken."""

    def __init__(self) -> None:
        self._routes: list[tuple[tuple[str, ...], HttpHandler]] = []

    def add(self, pattern: str, handler: HttpHandler) -> None:
        if not pattern.startswith("/") or pattern in _BUILT_IN:
            raise ValueError(f"http route {pattern!r}: must start with / and not be built in")
        segments = tuple(pattern.split("/")[1:])
        if any(other == segments for other, _ in self._routes):
            raise ValueError(f"http route {pattern!r} is already registered")
        self._routes.append((segments, handler))

    def match(self, path: str) -> tuple[HttpHandler, dict[str, str]] | None:
        parts = path.split("/")[1:]
        for segments, handler in self._routes:
            if len(segments) != len(parts):
                continue
            params: dict[str, str] = {}
            for segment, part in zip(segments, parts, strict=True):
                placeholder = _PLACEHOLDER.match(segment)
                if placeholder is not None:
                    params[placeholder.group(1)] = urllib.parse.unquote(part)
                elif segment != part:
                    break
            else:
                return handler, params
        return None


class HttpSidePort:
    """``metrics_token``: when set, ``/metrics`` needs ``Authorization: Bearer <token>``
    (health and liveness stay open for probes)."""

    def __init__(
        self,
        registries: Sequence[CollectorRegistry],
        health: HealthReport,
        *,
        metrics_token: str | None = None,
        routes: HttpRoutes | None = None,
    ) -> None:
        # The host's own registry plus the process-wide one that libraries (shm) report to.
        self._registries = tuple(registries)
        self._health = health
        self._routes = routes or HttpRoutes()
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

    async def _route(self, method: str, request: HttpRequest) -> HttpResponse:
        if method not in ("GET", "HEAD"):
            return HttpResponse(405, _TEXT, b"only GET\n")
        path = request.path
        if path == "/metrics":
            if not self._may_read_metrics(request.headers.get("authorization", "").encode()):
                return HttpResponse(401, _TEXT, b"/metrics needs its bearer token\n")
            body = b"".join(map(generate_latest, self._registries))
            return HttpResponse(200, CONTENT_TYPE_LATEST, body)
        if path == "/health":
            serving, report = await self._health()
            return HttpResponse.json(200 if serving else 503, report)
        if path == "/live":
            return HttpResponse(200, "application/json", b'{"status": "alive"}')
        found = self._routes.match(path)
        if found is None:
            return HttpResponse(404, _TEXT, b"not found\n")
        handler, params = found
        try:
            return await handler(dataclasses.replace(request, params=params))
        except Exception:
            # A route's bug answers 500 and is logged; the port goes on serving.
            _log.exception("http route failed", extra={"path": path[:200]})
            return HttpResponse(500, _TEXT, b"internal error\n")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_SECONDS):
                request_line = (await reader.readline()).decode("latin-1").split()
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    if len(headers) >= _MAX_HEADERS:
                        raise ValueError("too many headers")
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
            if len(request_line) != 3:
                return
            method, target, _ = request_line
            peer = writer.get_extra_info("peername")
            client = str(peer[0]) if isinstance(peer, tuple) else ""
            request = HttpRequest(target.split("?", 1)[0], {}, headers, client)
            response = await self._route(method, request)
            extra = "".join(f"{name}: {value}\r\n" for name, value in response.headers)
            head = (
                f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\n"
                f"{extra}Connection: close\r\n\r\n"
            ).encode()
            writer.write(head if method == "HEAD" else head + response.body)
            await writer.drain()
        except (TimeoutError, ValueError, ConnectionError) as exc:
            _log.debug("http side port: dropped a request: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
