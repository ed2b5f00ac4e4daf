"""The analytics tables in PostgreSQL (asyncpg): one transaction per batch, and retention.

A ``BatchWrite`` is everything one acknowledged batch changes: the full values of the bins
it touched, the events it opened, updated or closed, its line crossings, the camera's engine
state after it and the producer's new high-water mark. It is made of plain JSON values (times
in integer nanoseconds) so the spool can keep it byte for byte and replay it later;
``commit`` writes it in one transaction that first checks the producer's mark, so applying
the same write twice (a replay after a crash, a write whose commit reply was lost) changes
nothing the second time.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, fields
from typing import Any

import asyncpg

from its_camera_ai.analytics._records import (
    BinKey,
    BinRecord,
    Direction,
    EventRecord,
    LineCrossing,
    ObjectClass,
    Scope,
)

__all__ = ["BatchWrite", "Row", "Store", "bin_row", "crossing_row", "event_row"]

Row = tuple[Any, ...]

# Nanoseconds -> timestamptz, exact to the microsecond (a double would round at ~256 ns
# today and worse later, and PostgreSQL keeps microseconds anyway).
_TS = "(timestamptz 'epoch' + ({}::bigint / 1000) * interval '1 microsecond')"

_BIN_VALUES = tuple(f.name for f in fields(BinRecord) if f.name != "key")
_BIN_KEY = ("camera_id", "scope", "scope_id", "object_class", "direction")
_BIN_COLUMNS = (*_BIN_KEY, "bin_start", "bin_seconds", *_BIN_VALUES)
_BIN_PARAMS = [f"${i}" for i in range(1, len(_BIN_COLUMNS) + 1)]
_BIN_PARAMS[5] = _TS.format("$6")
# Statements assembled from the constant column lists above only (hence noqa: S608).
UPSERT_BIN = (
    f"INSERT INTO analytics_bins ({', '.join(_BIN_COLUMNS)}) VALUES ({', '.join(_BIN_PARAMS)})"  # noqa: S608
    " ON CONFLICT (camera_id, bin_seconds, bin_start, scope, scope_id, object_class, direction)"
    f" DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in _BIN_VALUES)},"
    " update_time = now()"
)
UPSERT_EVENT = (
    "INSERT INTO analytics_events (event_id, camera_id, type, severity, start_time, end_time,"  # noqa: S608
    " track_id, object_class, lane_id, zone_id, evidence, description, details, update_time)"
    f" VALUES ($1, $2, $3, $4, {_TS.format('$5')}, {_TS.format('$6')}, $7, $8, $9, $10,"
    f" $11::jsonb, $12, $13::jsonb, {_TS.format('$14')})"
    " ON CONFLICT (event_id) DO UPDATE SET severity = EXCLUDED.severity,"
    " end_time = EXCLUDED.end_time, track_id = EXCLUDED.track_id,"
    " evidence = EXCLUDED.evidence, description = EXCLUDED.description,"
    " details = EXCLUDED.details, update_time = EXCLUDED.update_time,"
    # Numbered in commit order (under _EVENTS_LOCK): what the query service streams by.
    " change_seq = nextval('analytics_event_changes')"
)
# Held from the first event written to the commit: event changes are numbered in commit order
# (migration 0002). Events are few, and written last, so commits rarely wait on it.
_EVENTS_LOCK = "SELECT pg_advisory_xact_lock(7237005577332262213)"
INSERT_CROSSING = (
    "INSERT INTO analytics_crossings (camera_id, line_id, track_id, crossing_time,"  # noqa: S608
    f" object_class, direction, speed_kmh, lane_id) VALUES ($1, $2, $3, {_TS.format('$4')},"
    " $5, $6, $7, $8) ON CONFLICT DO NOTHING"
)
_LOCK_MARK = "SELECT last_sequence FROM analytics_producers WHERE producer_id = $1 FOR UPDATE"
_SET_MARK = (
    "INSERT INTO analytics_producers (producer_id, last_sequence) VALUES ($1, $2)"
    " ON CONFLICT (producer_id) DO UPDATE SET last_sequence = EXCLUDED.last_sequence,"
    " update_time = now()"
)
_DROP_STATE = "DELETE FROM analytics_camera_state WHERE camera_id = $1"
# A camera's bins ending after $2 and starting by $3 (ns), as BinRecord fields: what a
# fresh engine continues.
_OPEN_BINS = (
    f"SELECT {', '.join(_BIN_KEY)}, (extract(epoch FROM bin_start) * 1000000)::bigint * 1000"  # noqa: S608
    f" AS bin_start_ns, bin_seconds, {', '.join(_BIN_VALUES)} FROM analytics_bins"
    f" WHERE camera_id = $1 AND bin_start + bin_seconds * interval '1 second' > {_TS.format('$2')}"
    f" AND bin_start <= {_TS.format('$3')}"
)
_SET_STATE = (
    "INSERT INTO analytics_camera_state (camera_id, state) VALUES ($1, $2)"
    " ON CONFLICT (camera_id) DO UPDATE SET state = EXCLUDED.state, update_time = now()"
)
# Retention: bins by their start, events once ended (or silent) that long, crossings by time,
# and the marks of producer incarnations gone quiet (they never come back under that id).
_RETENTION = (
    "DELETE FROM analytics_bins WHERE bin_start < $1",
    "DELETE FROM analytics_events WHERE coalesce(end_time, update_time) < $1",
    "DELETE FROM analytics_crossings WHERE crossing_time < $1",
    "DELETE FROM analytics_producers WHERE update_time < $1",
)


def _number(x: float) -> float | None:
    # JSON has no NaN, and "unknown" is NULL in the tables anyway.
    return x if math.isfinite(x) else None


def bin_row(rec: BinRecord) -> Row:
    k = rec.key
    values = [getattr(rec, name) for name in _BIN_VALUES]
    values[_BIN_VALUES.index("speed_hist")] = list(rec.speed_hist)
    return (k.camera, k.scope.value, k.scope_id, int(k.object_class), int(k.direction),
            k.bin_start_ns, k.bin_seconds, *values)  # fmt: skip


def event_row(rec: EventRecord) -> Row:
    evidence = None
    if rec.evidence is not None:
        ev = rec.evidence
        evidence = json.dumps({
            "frame_sequence": ev.frame_sequence,
            "capture_time_ns": ev.capture_time_ns,
            "box": None if ev.box is None else [_number(v) for v in ev.box],
            "speed_kmh": None if ev.speed_kmh is None else _number(ev.speed_kmh),
        })  # fmt: skip
    details = json.dumps({name: _number(value) for name, value in rec.details})
    return (rec.event_id, rec.camera, int(rec.type), int(rec.severity), rec.start_time_ns,
            rec.end_time_ns, rec.track_id, int(rec.object_class), rec.lane_id, rec.zone_id,
            evidence, rec.description, details, rec.update_time_ns)  # fmt: skip


def crossing_row(camera_id: str, c: LineCrossing) -> Row:
    speed = None if c.speed_kmh is None else _number(c.speed_kmh)
    return (camera_id, c.line_id, c.track_id, c.time_ns, int(c.object_class), int(c.direction),
            speed, c.lane_id)  # fmt: skip


@dataclass(frozen=True, slots=True)
class BatchWrite:
    """What one batch changes, as rows for the statements above. ``state`` is None when the
    batch changed no engine (every frame rejected before reaching one)."""

    producer_id: str
    sequence: int
    camera_id: str
    bins: list[Row]
    events: list[Row]
    crossings: list[Row]
    state: bytes | None

    def to_bytes(self) -> bytes:
        state = None if self.state is None else base64.b64encode(self.state).decode()
        document = [self.producer_id, self.sequence, self.camera_id, self.bins, self.events,
                    self.crossings, state]  # fmt: skip
        # Bins may hold NaN (PostgreSQL keeps it too); Python's JSON round-trips it.
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> BatchWrite:
        producer_id, sequence, camera_id, bins, events, crossings, state = json.loads(data)
        return cls(
            producer_id,
            sequence,
            camera_id,
            [tuple(r) for r in bins],
            [tuple(r) for r in events],
            [tuple(r) for r in crossings],
            None if state is None else base64.b64decode(state),
        )


class Store:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def commit(self, write: BatchWrite) -> bool:
        """Apply ``write`` in one transaction; False (nothing written) if the producer's mark
        shows it was applied already."""
        async with self._pool.acquire() as connection, connection.transaction():
            mark = await connection.fetchval(_LOCK_MARK, write.producer_id)
            if mark is not None and mark >= write.sequence:
                return False
            if write.bins:
                await connection.executemany(UPSERT_BIN, write.bins)
            if write.crossings:
                await connection.executemany(INSERT_CROSSING, write.crossings)
            if write.state is not None:
                await connection.execute(_SET_STATE, write.camera_id, write.state)
            await connection.execute(_SET_MARK, write.producer_id, write.sequence)
            if write.events:
                await connection.execute(_EVENTS_LOCK)
                await connection.executemany(UPSERT_EVENT, write.events)
        return True

    async def producer_mark(self, producer_id: str) -> int:
        mark = await self._pool.fetchval(
            "SELECT last_sequence FROM analytics_producers WHERE producer_id = $1", producer_id
        )
        return int(mark) if mark is not None else 0

    async def camera_state(self, camera_id: str) -> bytes | None:
        state = await self._pool.fetchval(
            "SELECT state FROM analytics_camera_state WHERE camera_id = $1", camera_id
        )
        return bytes(state) if state is not None else None

    async def open_bins(
        self, camera_id: str, end_after_ns: int, start_until_ns: int
    ) -> list[BinRecord]:
        """The camera's stored bins that end after ``end_after_ns`` and start by
        ``start_until_ns``."""
        rows = await self._pool.fetch(_OPEN_BINS, camera_id, end_after_ns, start_until_ns)
        return [
            BinRecord(
                key=BinKey(camera_id, Scope(r["scope"]), r["scope_id"],
                           ObjectClass(r["object_class"]), Direction(r["direction"]),
                           int(r["bin_start_ns"]), int(r["bin_seconds"])),
                **{name: r[name] for name in _BIN_VALUES if name != "speed_hist"},
                speed_hist=tuple(r["speed_hist"]),
            )
            for r in rows
        ]  # fmt: skip

    async def reset_camera(self, camera_id: str, closed_events: list[Row]) -> None:
        """One transaction: the events the camera's state held open, closed; the state gone."""
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(_DROP_STATE, camera_id)
            if closed_events:
                await connection.execute(_EVENTS_LOCK)
                await connection.executemany(UPSERT_EVENT, closed_events)

    async def delete_older_than(self, age_seconds: float) -> int:
        """Retention: delete rows older than ``age_seconds``; returns how many went."""
        deleted = 0
        async with self._pool.acquire() as connection:
            cutoff = await connection.fetchval(
                "SELECT now() - $1 * interval '1 second'", age_seconds
            )
            for statement in _RETENTION:
                status = await connection.execute(statement, cutoff)
                deleted += int(status.rsplit(" ", 1)[-1])
        return deleted
