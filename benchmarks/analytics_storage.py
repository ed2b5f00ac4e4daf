"""Analytics storage ingest: batched writes against per-row INSERTs, on real PostgreSQL.

    .venv/bin/python benchmarks/analytics_storage.py            # about a minute
    .venv/bin/python benchmarks/analytics_storage.py --quick    # smoke test

Rows are the service's own (``_store.bin_row``/``event_row``/``crossing_row`` over synthetic
records) and written with the service's statements (upserts for bins and events, keyed
insert for crossings), into a fresh database made by the service's migrations. Modes:

- batched:  what the service does: one transaction per batch of N rows per table,
            ``executemany`` (asyncpg pipelines the rows: one round trip per batch).
- per-row:  one ``INSERT`` per row, each its own transaction (autocommit): the naive writer.
- per-row-tx: one ``INSERT`` per row inside one transaction per batch (round trip per row,
            one commit per batch): separates the cost of round trips from that of commits.

Each mode starts from empty tables. Figures: rows per second (events/s, bins/s) and the
median time to make one batch durable. ``--dsn`` names the admin database (default: the
machine's PostgreSQL, as the tests use).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from its_camera_ai.analytics import (
    INSERT_CROSSING,
    UPSERT_BIN,
    UPSERT_EVENT,
    BinKey,
    BinRecord,
    EventEvidence,
    EventRecord,
    EventType,
    ObjectClass,
    Scope,
    Severity,
    bin_row,
    event_row,
)
from its_camera_ai.common import MigrationSet, apply_migrations
from its_camera_ai.scene import Direction

_NS = 1_000_000_000
_T0 = (time.time_ns() // (60 * _NS)) * 60 * _NS
Row = tuple[Any, ...]


def _bins(n: int, salt: int) -> list[Row]:
    return [
        bin_row(BinRecord(
            key=BinKey("cam-1", Scope.LINE, f"line-{i % 4}", ObjectClass(1 + i % 6),
                       Direction(1 + i % 2), _T0 + (salt * n + i) * 60 * _NS, 60),
            volume=i % 30, speed_count=i % 30, speed_sum_kmh=50.0 * (i % 30), frames=600,
        ))
        for i in range(n)
    ]  # fmt: skip


def _events(n: int, salt: int) -> list[Row]:
    return [
        event_row(EventRecord(
            event_id=f"ev-{salt}-{i}", camera="cam-1", type=EventType.STOPPED_VEHICLE,
            severity=Severity.MEDIUM, start_time_ns=_T0 + i * _NS, end_time_ns=None,
            track_id=i, object_class=ObjectClass.CAR, lane_id="a1", zone_id="",
            evidence=EventEvidence(i, _T0 + i * _NS, (1.0, 2.0, 30.0, 40.0), 0.0),
            description="vehicle stopped in lane a1", update_time_ns=_T0 + i * _NS,
        ))
        for i in range(n)
    ]  # fmt: skip


def _crossings(n: int, salt: int) -> list[Row]:
    return [("cam-1", "all", salt * n + i, _T0 + (salt * n + i) * 1000, 1, 1, 55.0, "a1")
            for i in range(n)]  # fmt: skip


_TABLES: dict[str, tuple[str, Callable[[int, int], list[Row]]]] = {
    "events": (UPSERT_EVENT, _events),
    "bins": (UPSERT_BIN, _bins),
    "crossings": (INSERT_CROSSING, _crossings),
}


async def _run(pool: asyncpg.Pool[Any], mode: str, statement: str, batches: list[list[Row]]
               ) -> tuple[float, float]:  # fmt: skip
    """(rows per second, median seconds per batch)."""
    await pool.execute("TRUNCATE analytics_bins, analytics_events, analytics_crossings")
    per_batch = []
    started = time.perf_counter()
    async with pool.acquire() as conn:
        for rows in batches:
            t = time.perf_counter()
            if mode == "batched":
                async with conn.transaction():
                    await conn.executemany(statement, rows)
            elif mode == "per-row":
                for row in rows:
                    await conn.execute(statement, *row)
            else:
                async with conn.transaction():
                    for row in rows:
                        await conn.execute(statement, *row)
            per_batch.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    return sum(len(b) for b in batches) / elapsed, statistics.median(per_batch)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=100, help="rows per batch")
    args = parser.parse_args()
    batches = 5 if args.quick else 40

    name = f"its_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    head, _, query = args.dsn.partition("?")
    dsn = head.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        await apply_migrations(pool, [MigrationSet("analytics", "its_camera_ai.analytics")])
        print(f"{batches} batches x {args.batch} rows per table; rows/s and median ms/batch")
        print(f"{'table':<10} {'mode':<11} {'rows/s':>9} {'ms/batch':>9}")
        for table, (statement, make) in _TABLES.items():
            data = [make(args.batch, salt) for salt in range(batches)]
            for mode in ("batched", "per-row", "per-row-tx"):
                rate, median = await _run(pool, mode, statement, data)
                print(f"{table:<10} {mode:<11} {rate:>9.0f} {median * 1000:>9.2f}")
    finally:
        await pool.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
