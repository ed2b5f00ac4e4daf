"""Storage: the embedded default, a configured server, multi-host DSNs, migrations, Redis."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio.cluster import RedisCluster

from its_camera_ai.common import (
    Database,
    DatabaseSettings,
    MigrationError,
    MigrationSet,
    RedisSettings,
    UnavailableError,
    apply_migrations,
    create_redis,
)
from tests.conftest import REDIS_URL, free_port


async def test_embedded_default_starts_migrates_and_restarts(embedded_data_dir: Path) -> None:
    settings = DatabaseSettings(embedded_data_dir=embedded_data_dir)
    database = await Database.open(settings, application_name="test")
    try:
        assert database.is_embedded
        assert await database.ping()
        core = [MigrationSet("core", "its_camera_ai.common")]
        assert await apply_migrations(database.pool, core) == 2
        assert await apply_migrations(database.pool, core) == 0  # idempotent
        await database.pool.execute(
            "INSERT INTO audit_log (service, actor, action, outcome)"
            " VALUES ('t', 'a', 'b', 'success')"
        )
    finally:
        await database.close()

    # Opening the same data directory again finds the data it left.
    database = await Database.open(settings, application_name="test")
    try:
        assert await database.pool.fetchval("SELECT count(*) FROM audit_log") == 1
    finally:
        await database.close()


async def test_configured_dsn_is_used(postgres_dsn: str) -> None:
    database = await Database.open(DatabaseSettings(dsn=postgres_dsn), application_name="its-test")
    try:
        assert not database.is_embedded
        assert await database.pool.fetchval("SELECT inet_server_port()") == 5432
        name = await database.pool.fetchval("SELECT current_setting('application_name')")
        assert name == "its-test"
    finally:
        await database.close()


async def test_multi_host_dsn_skips_a_dead_host(postgres_dsn: str) -> None:
    dead = free_port()
    dsn = postgres_dsn.replace("127.0.0.1:5432", f"127.0.0.1:{dead},127.0.0.1:5432")
    dsn += "?target_session_attrs=read-write"
    database = await Database.open(DatabaseSettings(dsn=dsn), application_name="t")
    try:
        assert await database.pool.fetchval("SELECT inet_server_port()") == 5432
    finally:
        await database.close()


async def test_unreachable_database_is_unavailable_without_leaking_the_dsn() -> None:
    dsn = f"postgresql://admin:hunter2@127.0.0.1:{free_port()}/its"
    with pytest.raises(UnavailableError) as caught:
        await Database.open(
            DatabaseSettings(dsn=dsn, connect_timeout_seconds=1), application_name="t"
        )
    assert "hunter2" not in str(caught.value)


@pytest.fixture
def migration_package(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    name = f"migpkg_{tmp_path.name.replace('-', '_')}"
    package = tmp_path / name
    (package / "migrations").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    try:
        yield name, package / "migrations"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


async def test_migrations_apply_in_order_and_refuse_edited_history(
    postgres_dsn: str, migration_package: tuple[str, Path]
) -> None:
    package, directory = migration_package
    (directory / "0001_create.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
    (directory / "0002_add.sql").write_text("ALTER TABLE things ADD COLUMN label text;")
    migrations = [MigrationSet("things", package)]
    pool = await asyncpg.create_pool(postgres_dsn)
    try:
        assert await apply_migrations(pool, migrations) == 2
        assert await pool.fetchval("SELECT count(*) FROM schema_migrations") == 2

        (directory / "0001_create.sql").write_text("CREATE TABLE things (id bigint PRIMARY KEY);")
        with pytest.raises(MigrationError, match="0001_create changed after it was applied"):
            await apply_migrations(pool, migrations)
    finally:
        await pool.close()


async def test_failed_migration_leaves_nothing_half_applied(
    postgres_dsn: str, migration_package: tuple[str, Path]
) -> None:
    package, directory = migration_package
    (directory / "0001_ok.sql").write_text("CREATE TABLE a (id int);")
    (directory / "0002_broken.sql").write_text(
        "CREATE TABLE b (id int); SELECT no_such_function();"
    )
    pool = await asyncpg.create_pool(postgres_dsn)
    try:
        with pytest.raises(MigrationError, match="0002_broken failed"):
            await apply_migrations(pool, [MigrationSet("ab", package)])
        assert await pool.fetchval("SELECT to_regclass('a') IS NOT NULL")
        assert await pool.fetchval("SELECT to_regclass('b') IS NULL")  # rolled back whole
        assert await pool.fetchval("SELECT max(version) FROM schema_migrations") == 1
    finally:
        await pool.close()


def test_migration_files_must_be_numbered_without_gaps(migration_package: tuple[str, Path]) -> None:
    package, directory = migration_package
    (directory / "0001_a.sql").write_text("SELECT 1;")
    (directory / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="without gaps"):
        MigrationSet("gap", package).load()
    (directory / "3_bad_name.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_description\.sql"):
        MigrationSet("gap", package).load()


async def test_replicas_starting_together_migrate_once(
    postgres_dsn: str, migration_package: tuple[str, Path]
) -> None:
    package, directory = migration_package
    (directory / "0001_create.sql").write_text("CREATE TABLE once (id int);")
    pools = [await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1) for _ in range(4)]
    try:
        applied = await asyncio.gather(
            *(apply_migrations(pool, [MigrationSet("once", package)]) for pool in pools)
        )
        assert sorted(applied) == [0, 0, 0, 1]
    finally:
        for pool in pools:
            await pool.close()


async def test_redis_is_optional_and_real_when_configured() -> None:
    assert create_redis(RedisSettings()) is None
    client = create_redis(RedisSettings(url=REDIS_URL))
    assert client is not None
    try:
        assert await client.ping()
    finally:
        await client.aclose()
    cluster = create_redis(RedisSettings(url="redis://127.0.0.1:7000", cluster=True))
    assert isinstance(cluster, RedisCluster)
