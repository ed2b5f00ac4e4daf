"""Versioned schema migrations, applied on start.

Each component ships ``NNNN_description.sql`` files in a ``migrations`` package directory.
Applied versions are recorded with a checksum in ``schema_migrations``: an applied file that
changed afterwards stops start-up (fix forward with a new migration instead). An advisory
lock serialises replicas that start at the same time; each file runs in its own transaction.
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
            if recorded != migration.checksum:
                raise MigrationError(
                    f"{migration_set.component} migration {migration.version:04d}_{migration.name}"
                    " changed after it was applied; add a new migration instead"
                )
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
                f"{migration_set.component} migration {migration.version:04d}_{migration.name}"
                f" failed: {exc}"
            ) from exc
        _log.info(
            "applied migration",
            extra={"component": migration_set.component, "version": migration.version},
        )
        count += 1
    return count


async def apply_migrations(pool: asyncpg.Pool[Any], migration_sets: list[MigrationSet]) -> int:
    """Apply every pending migration of each set in order; return how many ran."""
    async with pool.acquire() as connection:
        await connection.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
        try:
            await connection.execute(_BOOKKEEPING)
            total = 0
            for migration_set in migration_sets:
                total += await _apply_set(connection, migration_set)
            return total
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)
