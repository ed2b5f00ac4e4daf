"""Backup and restore drill: ``pg_dump`` while analytics writes, restored into a fresh server.

A backup taken under load must be a consistent cut: every batch in it whole (its records and
its producer mark in one transaction), none half-written. A backup taken at rest must restore
to the same rows, table by table. The times are printed (``-s``) for docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import AnalyticsServiceSettings, ServiceHost
from its_camera_ai.testing import host_settings
from tests.analytics import synth
from tests.analytics.test_service_support import (
    CAMERA_ID,
    camera_proto,
    producer_mark,
    reference,
    serve_cameras,
    stored,
    stream,
    to_batches,
    traffic,
)
from tests.reliability.conftest import PrivatePostgres, postgres_bin

pytestmark = pytest.mark.reliability

PRODUCER = "inference-0/backup"
PER_BATCH = 8
# Paced so that the backup starts while batches are still arriving.
BATCH_INTERVAL_S = 0.02


async def _table_digests(dsn: str) -> dict[str, tuple[int, str]]:
    """Row count and an order-independent md5 of every table in the public schema."""
    connection = await asyncpg.connect(dsn)
    try:
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
        digests = {}
        for row in tables:
            name = row["tablename"]
            count, digest = await connection.fetchrow(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
                f' FROM "{name}" t'
            )
            digests[name] = (count, digest)
        return digests
    finally:
        await connection.close()


async def _run(*command: str) -> float:
    """Run a client program; its wall time in seconds."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    assert process.returncode == 0, f"{command[0]} failed: {stderr.decode()}"
    return time.perf_counter() - started


async def _restore_fresh(server: PrivatePostgres, dump: Path, database: str) -> tuple[str, float]:
    admin = await asyncpg.connect(server.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    dsn = server.dsn.rsplit("/", 1)[0] + f"/{database}"
    seconds = await _run(
        str(postgres_bin() / "pg_restore"), "--no-owner", "--exit-on-error", "-d", dsn, str(dump)
    )
    return dsn, seconds


async def _dump(dsn: str, out: Path) -> float:
    return await _run(str(postgres_bin() / "pg_dump"), "-Fc", "-f", str(out), dsn)


@pytest.fixture
async def analytics(postgres_dsn: str, tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    async with serve_cameras({CAMERA_ID: camera_proto(synth.road_scene())}) as decoder:
        unit = analytics_unit(
            AnalyticsServiceSettings(spool_dir=tmp_path / "spool", decoder_target=decoder)
        )
        host = ServiceHost(host_settings(postgres_dsn), [unit])
        await host.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
        try:
            yield channel
        finally:
            await channel.close()
            await host.stop()


async def test_backup_under_load_is_a_consistent_cut_and_restores_exactly(
    postgres_dsn: str,
    private_postgres: PrivatePostgres,
    analytics: grpc.aio.Channel,
    tmp_path: Path,
) -> None:
    frames = traffic(duration_s=60.0)
    batches = to_batches(frames, PRODUCER, per_batch=PER_BATCH)

    async def paced_load() -> int:
        acknowledged = 0
        for batch in batches:
            acks = await stream(analytics, [batch])
            acknowledged = acks[-1].acknowledged_sequence
            await asyncio.sleep(BATCH_INTERVAL_S)
        return acknowledged

    load = asyncio.create_task(paced_load())
    await asyncio.sleep(len(batches) * BATCH_INTERVAL_S / 3)
    assert not load.done(), "the load ended before the backup started"
    under_load = tmp_path / "under-load.dump"
    dump_s = await _dump(postgres_dsn, under_load)
    assert await load == batches[-1].sequence

    # The cut: the producer mark it holds names exactly the batches whose records it holds.
    restored, restore_s = await _restore_fresh(private_postgres, under_load, "under_load")
    mark = await producer_mark(restored, PRODUCER)
    assert mark is not None
    assert 0 < mark < batches[-1].sequence, "the backup did not overlap the load"
    assert await stored(restored) == reference(frames[: mark * PER_BATCH], synth.road_scene())

    # At rest: every table restored row for row.
    at_rest = tmp_path / "at-rest.dump"
    rest_dump_s = await _dump(postgres_dsn, at_rest)
    restored_at_rest, rest_restore_s = await _restore_fresh(private_postgres, at_rest, "at_rest")
    source, copy = await _table_digests(postgres_dsn), await _table_digests(restored_at_rest)
    assert copy == source
    assert source["analytics_crossings"][0] > 0
    print(
        f"\nbackup drill: {len(batches)} batches; under load: pg_dump {dump_s:.2f} s,"
        f" pg_restore {restore_s:.2f} s, cut at batch {mark}; at rest: pg_dump"
        f" {rest_dump_s:.2f} s, pg_restore {rest_restore_s:.2f} s,"
        f" {sum(n for n, _ in source.values())} rows in {len(source)} tables equal"
    )
