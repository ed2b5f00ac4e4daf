"""Versioned schema migrations, applied on start.

Each component ships ``NNNN_description.sql`` files in a ``migrations`` package directory.
Applied versions are recorded with a checksum in ``schema_migrations``: an applied file that
changed afterwards stops start-up (fix forward with a new migration instead). An advisory
lock serialises replicas that start at the same time; each file runs in its own transaction.

A server that cannot write (a hot standby in recovery, or a session whose transactions are
read-only) gets its schema from the primary by replication: there nothing is written, and
every migration must be recorded already with its checksum, else start-up fails naming the
missing ones. A read-only service (the query service) can so start on a standby while the
primary is down.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

__all__ = ["Migration", "MigrationError", "MigrationSet", "apply_migrations"]

_log = logging.getLogger(__name__)

_Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
# Any fixed 64-bit key: it names the lock every replica takes around migrating.
_ADVISORY_LOCK_KEY = 0x175_CA3E_A1_5C_4E3A

# Whether this session cannot write at all: on a hot standby (in recovery), or with read-only
# transactions (default_transaction_read_only, as a read-only role or a pooler may set it).
_READ_ONLY = "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::boolean"
_HAS_BOOKKEEPING = "SELECT to_regclass('schema_migrations') IS NOT NULL"

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component  text        NOT NULL,
    version    integer     NOT NULL,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)
"""


class MigrationError(Exception):
    """The migrations on disk and in the database disagree, or one failed."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class MigrationSet:
    """The migrations of one component, read from ``<package>/migrations/*.sql``."""

    component: str
    package: str

    def load(self) -> list[Migration]:
        migrations = []
        for entry in resources.files(self.package).joinpath("migrations").iterdir():
            if not entry.name.endswith(".sql"):
                continue
            match = _FILE_NAME.match(entry.name)
            if match is None:
                raise MigrationError(
                    f"{self.package}/migrations/{entry.name}: name must be NNNN_description.sql"
                )
            migrations.append(
                Migration(int(match["version"]), match["name"], entry.read_text(encoding="utf-8"))
            )
        migrations.sort(key=lambda m: m.version)
        expected = list(range(1, len(migrations) + 1))
        if [m.version for m in migrations] != expected:
            raise MigrationError(
                f"{self.package}/migrations: versions must run 1..N without gaps or duplicates,"
                f" found {[m.version for m in migrations]}"
            )
        return migrations


async def _apply_set(connection: _Connection, migration_set: MigrationSet) -> int:
    applied = {
        row["version"]: row["checksum"]
        for row in await connection.fetch(
            "SELECT version, checksum FROM schema_migrations WHERE component = $1",
            migration_set.component,
        )
    }
    count = 0
    for migration in migration_set.load():
        recorded = applied.get(migration.version)
        if recorded is not None:
            _check_unchanged(migration, migration_set.component, recorded)
            continue
        try:
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (component, version, name, checksum)"
                    " VALUES ($1, $2, $3, $4)",
                    migration_set.component,
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
        except asyncpg.PostgresError as exc:
            raise MigrationError(
                f"{_label(migration_set.component, migration)} failed: {exc}"
            ) from exc
        _log.info(
            "applied migration",
            extra={"component": migration_set.component, "version": migration.version},
        )
        count += 1
    return count


def _label(component: str, migration: Migration) -> str:
    return f"{component} migration {migration.version:04d}_{migration.name}"


def _check_unchanged(migration: Migration, component: str, recorded_checksum: str) -> None:
    if recorded_checksum != migration.checksum:
        raise MigrationError(
            f"{_label(component, migration)} changed after it was applied;"
            " add a new migration instead"
        )


async def _verify(connection: _Connection, migration_sets: list[MigrationSet]) -> None:
    """On a server that cannot write: every migration recorded, unchanged, or MigrationError
    naming each one missing."""
    recorded: dict[tuple[str, int], str] = {}
    if await connection.fetchval(_HAS_BOOKKEEPING):
        rows = await connection.fetch("SELECT component, version, checksum FROM schema_migrations")
        recorded = {(row["component"], row["version"]): row["checksum"] for row in rows}
    missing = []
    for migration_set in migration_sets:
        for migration in migration_set.load():
            checksum = recorded.get((migration_set.component, migration.version))
            if checksum is None:
                missing.append(_label(migration_set.component, migration))
            else:
                _check_unchanged(migration, migration_set.component, checksum)
    if missing:
        raise MigrationError(
            "the database is read-only here (a hot standby, or read-only transactions), so"
            f" migrations cannot be applied, and {len(missing)} are not applied yet:"
            f" {', '.join(missing)}; start a service on the primary first (or let the standby"
            " replay them)"
        )
    _log.info("database is read-only: every migration verified, none applied")


async def apply_migrations(pool: asyncpg.Pool[Any], migration_sets: list[MigrationSet]) -> int:
    """Apply every pending migration of each set in order; return how many ran (0 on a
    server that cannot write, where they are only verified: see the module docstring)."""
    async with pool.acquire() as connection:
        if await connection.fetchval(_READ_ONLY):
            await _verify(connection, migration_sets)
            return 0
        await connection.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
        try:
            await connection.execute(_BOOKKEEPING)
            total = 0
            for migration_set in migration_sets:
                total += await _apply_set(connection, migration_set)
            return total
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)
