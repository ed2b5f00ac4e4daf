"""The gRPC server every service runs on, and its life cycle.

A ``ServiceHost`` serves one or more ``ServiceUnit``s on one grpc.aio server: health
(``grpc.health.v1``, a status per service), server reflection (so ``grpcurl`` needs no local
protos), message size limits, keepalive, tracing, metrics and error mapping on every RPC,
plus the HTTP side port. ``serve()`` runs a host until SIGTERM/SIGINT, then drains:
health turns NOT_SERVING, new RPCs are refused, in-flight ones get ``grpc.drain_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from prometheus_client import REGISTRY, CollectorRegistry, Gauge
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from its_camera_ai.common._config import ConfigError, Settings
from its_camera_ai.common._http import HttpRoutes, HttpSidePort
from its_camera_ai.common._interceptors import ErrorMappingInterceptor, RpcMetricsInterceptor
from its_camera_ai.common._logging import configure_logging
from its_camera_ai.common._migrations import MigrationSet, apply_migrations
from its_camera_ai.common._peers import PeerAccess
from its_camera_ai.common._socket_reads import bound_asyncio_socket_reads
from its_camera_ai.common._storage import Database, create_redis
from its_camera_ai.common._tracing import configure_tracing

if TYPE_CHECKING:  # the security package is built on this one: no import at run time
    from its_camera_ai.security._api_keys import ApiKeyStore
    from its_camera_ai.security._flags import FeatureFlags
    from its_camera_ai.security._interceptor import Authenticator

__all__ = ["Runtime", "ServiceHost", "ServiceUnit", "serve"]

_log = logging.getLogger(__name__)

# The schema every service with a database shares (audit log).
CORE_MIGRATIONS = MigrationSet(component="core", package="its_camera_ai.common")


@dataclass
class Runtime:
    """What a service's registration gets to build its servicers with."""

    settings: Settings
    metrics: CollectorRegistry
    database: Database | None = None
    redis: Redis | RedisCluster | None = None
    # The units served by this host, by name: a unit can use a peer in the same process.
    units: tuple[str, ...] = ()
    # The bound gRPC port, known once the server started (0 before).
    grpc_port: int = 0
    # Coroutines run once the server is serving (clients of peers in this process).
    on_started: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Coroutines run when shutdown starts, while the server still serves: clients of peers
    # in this process (inference streaming to analytics) finish their work first.
    on_stopping: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Coroutines run on shutdown, after the gRPC server has drained (stop workers, flush).
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # What to present to the peer at a target (credentials, TLS): set by the host.
    peer_access: Callable[[str], PeerAccess] = lambda _target: PeerAccess()
    # The release's feature flags as this process sees them (changed at run time through
    # AdminService), and the API keys the host verifies; both set by the host on start.
    flags: FeatureFlags | None = None
    api_keys: ApiKeyStore | None = None
    # What units add to the HTTP side port, and how they authenticate its callers as the
    # gRPC port does (the authenticator is set by the host on start).
    http_routes: HttpRoutes = field(default_factory=HttpRoutes)
    authenticator: Authenticator | None = None

    def peer_channel(self, target: str) -> grpc.aio.Channel:
        """A channel to a peer service, carrying this process's credentials for it."""
        return self.peer_access(target).channel(target)

    def loopback_target(self) -> str:
        """Address at which this host's own gRPC server is reachable from this process."""
        host = self.settings.grpc.host
        if host in ("[::]", "0.0.0.0", "", "localhost"):
            host = "127.0.0.1"
        return f"{host}:{self.grpc_port}"

    @overload
    def peer_target(
        self, configured: str | None, peer: str, *, setting: str
    ) -> Callable[[], str]: ...
    @overload
    def peer_target(
        self, configured: str | None, peer: str, *, setting: None = None
    ) -> Callable[[], str] | None: ...
    def peer_target(
        self, configured: str | None, peer: str, *, setting: str | None = None
    ) -> Callable[[], str] | None:
        """Where a peer unit's gRPC server is: as ``configured``, or this process's own
        server when the peer runs in it (a callable: the port is known only once serving).
        With neither, None, or a ``ConfigError`` naming ``setting`` when the peer is needed.
        """
        if configured is not None:
            return lambda: configured
        if peer in self.units:
            return self.loopback_target
        if setting is None:
            return None
        variable = "ITS_" + setting.upper().replace(".", "__")
        raise ConfigError(
            f"{setting} is required when {peer} does not run in this process (set {variable})"
        )


@dataclass(frozen=True)
class ServiceUnit:
    """One service's contribution to a server: its gRPC services and what they need."""

    name: str
    grpc_services: tuple[str, ...]
    register: Callable[[grpc.aio.Server, Runtime], Awaitable[None]]
    needs_database: bool = False
    migrations: tuple[MigrationSet, ...] = ()


def _thread_count() -> int:
    # Every OS thread, not only Python's: a leak of native threads shows here too.
    return len(os.listdir("/proc/self/task"))


class ServiceHost:
    def __init__(self, settings: Settings, units: Sequence[ServiceUnit]) -> None:
        if not units:
            raise ValueError("a host needs at least one service unit")
        self.settings = settings
        self.units = tuple(units)
        self.name = "+".join(unit.name for unit in units)
        self.runtime = Runtime(
            settings=settings,
            metrics=CollectorRegistry(),
            units=tuple(unit.name for unit in self.units),
        )
        Gauge(
            "process_threads",
            "OS threads of this process (gRPC's, torch's and decoder workers included).",
            registry=self.runtime.metrics,
        ).set_function(_thread_count)
        # Imported here: the security package is built on this one (errors, settings).
        from its_camera_ai.security._host import HostSecurity  # noqa: PLC0415

        self.security = HostSecurity(settings, self.name, self.runtime.metrics)
        self.runtime.peer_access = self.security.peer_access(self.runtime.loopback_target)
        self.grpc_port = 0
        self.http_port = 0
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._http: HttpSidePort | None = None
        self._tracer_provider: Any = None
        self._serving = False
        # Health updates come from start() and from the database supervisor; one at a time,
        # so that a stale update cannot land after a newer one.
        self._health_lock = asyncio.Lock()

    @property
    def service_names(self) -> list[str]:
        return [name for unit in self.units for name in unit.grpc_services]

    async def _apply_health(self) -> None:
        """Every service SERVING, except those of units needing the database while it is
        down (and the server as a whole, "", then too: /health says the same)."""
        database = self.runtime.database
        database_up = database is None or database.is_up
        async with self._health_lock:
            if not self._serving:
                return  # not yet started (start() applies it), or stopping: NOT_SERVING
            statuses = {"": database_up}
            for unit in self.units:
                for name in unit.grpc_services:
                    statuses[name] = database_up or not unit.needs_database
            for name, serving in statuses.items():
                status = health_pb2.HealthCheckResponse.SERVING
                if not serving:
                    status = health_pb2.HealthCheckResponse.NOT_SERVING
                await self._health.set(name, status)

    async def _database_state_changed(self, up: bool) -> None:
        if up:
            _log.info("database back: serving again")
        else:
            _log.warning("database down: services that need it are NOT_SERVING")
        await self._apply_health()

    def _server_options(self) -> list[tuple[str, Any]]:
        grpc_settings = self.settings.grpc
        return [
            ("grpc.max_receive_message_length", grpc_settings.max_receive_message_bytes),
            ("grpc.max_send_message_length", grpc_settings.max_send_message_bytes),
            ("grpc.keepalive_time_ms", int(grpc_settings.keepalive_time_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", int(grpc_settings.keepalive_timeout_seconds * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            (
                "grpc.http2.min_ping_interval_without_data_ms",
                int(grpc_settings.min_client_ping_interval_seconds * 1000),
            ),
            ("grpc.so_reuseport", int(grpc_settings.reuse_port)),
        ]

    async def _open_dependencies(self) -> None:
        if any(unit.needs_database for unit in self.units):
            database = await Database.open(
                self.settings.database,
                application_name=f"its-camera-ai-{self.name}",
                registry=self.runtime.metrics,
            )
            database.add_state_listener(self._database_state_changed)
            self.runtime.database = database
            sets = [CORE_MIGRATIONS, *(s for unit in self.units for s in unit.migrations)]
            applied = await apply_migrations(database.pool, sets)
            _log.info(
                "database ready", extra={"kind": database.dsn_kind, "migrations_applied": applied}
            )
        self.runtime.redis = create_redis(self.settings.redis)

    async def start(self) -> None:
        """Open dependencies, register every unit, bind and start serving."""
        self._tracer_provider = configure_tracing(self.name, self.settings.tracing)
        await self._open_dependencies()
        await self.security.open(self.runtime.database, self.runtime.redis)
        assert self.security.interceptor is not None
        self.runtime.flags = self.security.flags
        self.runtime.api_keys = self.security.api_keys
        self.runtime.authenticator = self.security.authenticator

        interceptors: list[grpc.aio.ServerInterceptor] = [
            RpcMetricsInterceptor(self.runtime.metrics),
            ErrorMappingInterceptor(),
            # Innermost: its refusals become statuses in the error mapping around it.
            self.security.interceptor,
        ]
        if self.settings.tracing.otlp_endpoint:
            # A span per RPC costs ~80 us of CPU a call (half a bare call's cost; the
            # sampler does not avoid it): made only when spans leave the process.
            tracing = aio_server_interceptor(tracer_provider=self._tracer_provider)  # type: ignore[no-untyped-call]
            interceptors.insert(0, tracing)
        server = grpc.aio.server(
            interceptors=interceptors,
            options=self._server_options(),
            maximum_concurrent_rpcs=self.settings.grpc.max_concurrent_rpcs,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        for unit in self.units:
            await unit.register(server, self.runtime)
        if self.settings.security.reflection:
            reflection.enable_server_reflection(
                [
                    *self.service_names,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ],
                server,
            )
        address = f"{self.settings.grpc.host}:{self.settings.grpc.port}"
        credentials = self.security.server_credentials()
        try:
            if credentials is None:
                self.grpc_port = server.add_insecure_port(address)
            else:
                self.grpc_port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {address}: {exc}") from exc
        await server.start()
        self._server = server
        self.runtime.grpc_port = self.grpc_port
        await self.security.check_tls_minimum(
            self.runtime.loopback_target().rpartition(":")[0], self.grpc_port
        )
        for hook in self.runtime.on_started:
            await hook()

        if self.settings.http.enabled:
            self._http = HttpSidePort(
                [self.runtime.metrics, REGISTRY],
                self.health_report,
                metrics_token=self.security.metrics_token,
                routes=self.runtime.http_routes,
            )
            self.http_port = await self._http.start(
                self.settings.http.host, self.settings.http.port
            )

        self._serving = True
        await self._apply_health()
        _log.info(
            "serving",
            extra={
                "services": self.service_names,
                "grpc_port": self.grpc_port,
                "http_port": self.http_port,
            },
        )

    async def health_report(self) -> tuple[bool, dict[str, Any]]:
        dependencies: dict[str, str] = {}
        healthy = self._serving
        if self.runtime.database is not None:
            up = await self.runtime.database.ping()
            dependencies["database"] = "up" if up else "down"
            healthy = healthy and up
        if self.runtime.redis is not None:
            try:
                await self.runtime.redis.ping()
                dependencies["redis"] = "up"
            except (RedisError, OSError):
                # Redis is optional: losing it degrades live fan-out, it does not stop serving.
                dependencies["redis"] = "down"
        body = {
            "status": "SERVING" if healthy else "NOT_SERVING",
            "services": self.service_names,
            "dependencies": dependencies,
        }
        return healthy, body

    async def stop(self, step_timeout_s: float = 30.0) -> None:
        """Drain and stop: refuse new RPCs, let in-flight ones finish, then close everything.

        Each step (a unit's hook, closing a pool...) gets ``step_timeout_s`` beyond the drain;
        one still running then is stuck (a task that ignores cancellation, a pool connection
        never given back): it is cancelled and logged by name, and the stop goes on, so a
        process asked to stop always does."""
        self._serving = False
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            for hook in reversed(self.runtime.on_stopping):
                await _bounded(_name_of(hook), hook(), step_timeout_s)
            drain = self.settings.grpc.drain_seconds
            _log.info("draining", extra={"grace_seconds": drain})
            await _bounded("grpc drain", self._server.stop(drain), drain + step_timeout_s)
            self._server = None
        for hook in reversed(self.runtime.on_shutdown):
            await _bounded(_name_of(hook), hook(), step_timeout_s)
        await _bounded("security", self.security.close(), step_timeout_s)
        if self._http is not None:
            await _bounded("http side port", self._http.stop(), step_timeout_s)
        if self.runtime.redis is not None:
            await _bounded("redis", self.runtime.redis.aclose(), step_timeout_s)
        if self.runtime.database is not None:
            await _bounded("database pool", self.runtime.database.close(), step_timeout_s)
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()
        _log.info("stopped")


def _name_of(hook: Callable[..., Any]) -> str:
    return str(getattr(hook, "__qualname__", repr(hook)))


async def _bounded(step: str, work: Awaitable[Any], timeout_s: float) -> None:
    """Await one shutdown step for at most ``timeout_s``; a stuck one is cancelled, not
    waited for (``asyncio.wait_for`` would wait for a task that ignores its cancellation)."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if done:
        task.result()  # its error, if any, is the caller's as before
        return
    task.cancel()
    _log.error(
        "shutdown step stuck; stopping without it", extra={"step": step, "seconds": timeout_s}
    )


async def serve(settings: Settings, units: Sequence[ServiceUnit]) -> None:
    """Run a host until SIGTERM or SIGINT, then drain and return."""
    host = ServiceHost(settings, units)
    configure_logging(host.name, settings.logging.level, settings.logging.format)
    bound_asyncio_socket_reads()  # a serving process's heap must not creep (see the module)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await host.start()
        await stop.wait()
    finally:
        await host.stop()
