"""Migrations on a server that cannot write: verified, never applied.

A hot standby refuses every write, ``CREATE TABLE IF NOT EXISTS`` included, so a service
starting on one (the query service while the primary is down) only checks that the
replicated ``schema_migrations`` holds every migration it ships, unchanged. A session with
``default_transaction_read_only`` is refused writes the same way; here it stands in for a
standby (tests/reliability/test_postgres_failover.py starts on a real one).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from its_camera_ai.common import MigrationError, MigrationSet, apply_migrations


@pytest.fixture
def package(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An importable package of this test's own, with an empty ``migrations`` directory."""
    name = f"readonly_{tmp_path.name.replace('-', '_')}"
    (tmp_path / name / "migrations").mkdir(parents=True)
    (tmp_path / name / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    try:
        yield name, tmp_path / name / "migrations"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


@pytest.fixture
async def pools(postgres_dsn: str) -> AsyncIterator[tuple[asyncpg.Pool[Any], asyncpg.Pool[Any]]]:
    """(writable, read-only) pools on one database."""
    writable = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1)
    read_only = await asyncpg.create_pool(
        postgres_dsn,
        min_size=1,
        max_size=1,
        server_settings={"default_transaction_read_only": "on"},
    )
    try:
        yield writable, read_only
    finally:
        await read_only.close()
        await writable.close()


async def _schema(pool: asyncpg.Pool[Any]) -> list[tuple[str, int, str]]:
    rows = await pool.fetch(
        "SELECT component, version, checksum FROM schema_migrations ORDER BY 1, 2"
    )
    return [tuple(row) for row in rows]


async def test_applied_migrations_are_verified_without_writing(
    pools: tuple[asyncpg.Pool[Any], asyncpg.Pool[Any]], package: tuple[str, Path]
) -> None:
    writable, read_only = pools
    name, directory = package
    (directory / "0001_create.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
    (directory / "0002_add.sql").write_text("ALTER TABLE things ADD COLUMN label text;")
    sets = [MigrationSet("core", "its_camera_ai.common"), MigrationSet("things", name)]
    assert await apply_migrations(writable, sets) == 4
    before = await _schema(writable)

    assert await apply_migrations(read_only, sets) == 0
    assert await _schema(writable) == before


async def test_a_missing_migration_stops_start_up_naming_it(
    pools: tuple[asyncpg.Pool[Any], asyncpg.Pool[Any]], package: tuple[str, Path]
) -> None:
    writable, read_only = pools
    name, directory = package
    (directory / "0001_create.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
    sets = [MigrationSet("things", name)]
    await apply_migrations(writable, sets)
    (directory / "0002_add.sql").write_text("ALTER TABLE things ADD COLUMN label text;")
    (directory / "0003_more.sql").write_text("ALTER TABLE things ADD COLUMN size int;")

    with pytest.raises(MigrationError) as caught:
        await apply_migrations(read_only, sets)
    message = str(caught.value)
    assert "read-only" in message
    assert "2 are not applied yet: things migration 0002_add, things migration 0003_more" in message
    assert "0001" not in message
    # Nothing was attempted: the writable session still finds both pending.
    assert await apply_migrations(writable, sets) == 2


async def test_an_empty_read_only_database_names_every_migration(
    pools: tuple[asyncpg.Pool[Any], asyncpg.Pool[Any]],
) -> None:
    _, read_only = pools
    with pytest.raises(
        MigrationError,
        match=r"2 are not applied yet: core migration 0001_audit_log, core migration 0002_",
    ):
        await apply_migrations(read_only, [MigrationSet("core", "its_camera_ai.common")])


async def test_an_edited_migration_is_refused_on_a_read_only_server_too(
    pools: tuple[asyncpg.Pool[Any], asyncpg.Pool[Any]], package: tuple[str, Path]
) -> None:
    writable, read_only = pools
    name, directory = package
    (directory / "0001_create.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
    sets = [MigrationSet("things", name)]
    await apply_migrations(writable, sets)
    (directory / "0001_create.sql").write_text("CREATE TABLE things (id bigint PRIMARY KEY);")
    with pytest.raises(MigrationError, match="0001_create changed after it was applied"):
        await apply_migrations(read_only, sets)
