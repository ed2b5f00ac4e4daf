"""The analytics tables in PostgreSQL (asyncpg): one transaction per batch, and retention.

A ``BatchWrite`` is everything one acknowledged batch changes: the full values of the bins
it touched, the events it opened, updated or closed, its line crossings, the camera's engine
state after it and the producer's new high-water mark. It is made of plain JSON values (times
in integer nanoseconds) so the spool can keep it byte for byte and replay it later;
``commit`` writes it in one transaction that first checks the producer's mark, so applying
the same write twice (a replay after a crash, a write whose commit reply was lost) changes
nothing the second time.

Several analytics instances may write one camera (a stream moved from one to another), so a
camera's stored state has a revision (migration 0003) and a write carries the revision its
engine started from: the state is written, and the revision advanced, only if the stored one
is still that; otherwise ``StaleStateError`` and nothing of the batch is written (its bins
were computed from an older state and would overwrite what the other writer added). A write
also carries its batch's wire bytes and arrival time, so that it can be computed again on the
stored state (the spool's replay).
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

__all__ = [
    "BatchWrite",
    "Row",
    "StaleStateError",
    "Store",
    "StoredState",
    "bin_row",
    "crossing_row",
    "event_row",
]

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
# A reset keeps the row, without a state, at the next revision: a revision never comes back,
# so an engine loaded before the reset cannot take the camera for the one it started from.
_DROP_STATE = (
    "UPDATE analytics_camera_state SET state = NULL, revision = revision + 1,"
    " update_time = now() WHERE camera_id = $1 AND revision = $2"
)
_HAS_STATE_ROW = "SELECT true FROM analytics_camera_state WHERE camera_id = $1"
_GET_STATE = "SELECT state, revision FROM analytics_camera_state WHERE camera_id = $1"
# A camera's bins ending after $2 and starting by $3 (ns), as BinRecord fields: what a
# fresh engine continues.
_OPEN_BINS = (
    f"SELECT {', '.join(_BIN_KEY)}, (extract(epoch FROM bin_start) * 1000000)::bigint * 1000"  # noqa: S608
    f" AS bin_start_ns, bin_seconds, {', '.join(_BIN_VALUES)} FROM analytics_bins"
    f" WHERE camera_id = $1 AND bin_start + bin_seconds * interval '1 second' > {_TS.format('$2')}"
    f" AND bin_start <= {_TS.format('$3')}"
)
# A camera's state, written only if the stored revision ($3) is still the one the engine
# started from; the row count says whether it was.
_UPDATE_STATE = (
    "UPDATE analytics_camera_state SET state = $2, revision = revision + 1,"
    " update_time = now() WHERE camera_id = $1 AND revision = $3"
)
# Revision 0: no row yet, or one written before revisions existed. A concurrent first write
# of the camera conflicts, and its row (revision 1) is then left alone.
_INSERT_STATE = (
    "INSERT INTO analytics_camera_state (camera_id, state, revision) VALUES ($1, $2, 1)"
    " ON CONFLICT (camera_id) DO UPDATE SET state = EXCLUDED.state, revision = 1,"
    " update_time = now() WHERE analytics_camera_state.revision = 0"
)
# A record spooled by the version before revisions: written as it was then, unconditionally;
# the revision still moves, so other instances' engines reload.
_FORCE_STATE = (
    "INSERT INTO analytics_camera_state (camera_id, state, revision) VALUES ($1, $2, 1)"
    " ON CONFLICT (camera_id) DO UPDATE SET state = EXCLUDED.state,"
    " revision = analytics_camera_state.revision + 1, update_time = now()"
)
# Retention: bins by their start, events once ended (or silent) that long, crossings by time,
# and the marks of producer incarnations gone quiet (they never come back under that id).
_RETENTION = (
    "DELETE FROM analytics_bins WHERE bin_start < $1",
    "DELETE FROM analytics_events WHERE coalesce(end_time, update_time) < $1",
    "DELETE FROM analytics_crossings WHERE crossing_time < $1",
    "DELETE FROM analytics_producers WHERE update_time < $1",
)


class StaleStateError(Exception):
    """The camera's stored state is no longer the one the write's engine started from:
    another writer advanced (or reset) it. Nothing of the write was written."""


@dataclass(frozen=True, slots=True)
class StoredState:
    """A camera's stored engine state (None: none, or reset) and its revision (0 without a
    row; None: not known, for a state spooled by the version before revisions)."""

    state: bytes | None
    revision: int | None


def _rows(status: str) -> int:
    # asyncpg's command tag: "UPDATE 1", "INSERT 0 1".
    return int(status.rsplit(" ", 1)[-1])


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
    batch changed no engine (every frame rejected before reaching one).

    ``revision`` is the stored state's revision the engine started from (None: write
    unconditionally, as records spooled before revisions existed are); ``arrival_ns`` (the
    clock time sanity judged the frames by) and ``source`` (the batch's wire bytes) are what
    computing the batch again on another state needs (None in those old records).
    """

    producer_id: str
    sequence: int
    camera_id: str
    bins: list[Row]
    events: list[Row]
    crossings: list[Row]
    state: bytes | None
    revision: int | None
    arrival_ns: int | None
    source: bytes | None

    def to_bytes(self) -> bytes:
        """The JSON document, then, when there is a source, a NUL and the source's bytes
        (JSON never holds a raw NUL, and the batch needs no base64 that way)."""
        state = None if self.state is None else base64.b64encode(self.state).decode()
        document = [self.producer_id, self.sequence, self.camera_id, self.bins, self.events,
                    self.crossings, state, self.revision, self.arrival_ns]  # fmt: skip
        # Bins may hold NaN (PostgreSQL keeps it too); Python's JSON round-trips it.
        text = json.dumps(document, separators=(",", ":")).encode()
        return text if self.source is None else text + b"\0" + self.source

    @classmethod
    def from_bytes(cls, data: bytes) -> BatchWrite:
        """Also reads the records of the version before revisions (a spool survives an
        upgrade): seven elements, no NUL; they come back with no revision and no source.
        That version cannot read these records: drain the spool before going back to it."""
        text, separator, source = data.partition(b"\0")
        document = json.loads(text)
        producer_id, sequence, camera_id, bins, events, crossings, state = document[:7]
        revision, arrival_ns = document[7:9] if len(document) > 7 else (None, None)
        return cls(
            producer_id,
            sequence,
            camera_id,
            [tuple(r) for r in bins],
            [tuple(r) for r in events],
            [tuple(r) for r in crossings],
            None if state is None else base64.b64decode(state),
            revision,
            arrival_ns,
            source if separator else None,
        )


async def _write_state(connection: PoolConnectionProxy[Any], write: BatchWrite) -> None:
    """The camera's new state, if the stored one is still the write's; else nothing."""
    assert write.state is not None
    if write.revision is None:
        await connection.execute(_FORCE_STATE, write.camera_id, write.state)
        return
    if write.revision == 0:
        status = await connection.execute(_INSERT_STATE, write.camera_id, write.state)
    else:
        status = await connection.execute(
            _UPDATE_STATE, write.camera_id, write.state, write.revision
        )
    if _rows(status) == 0:
        raise StaleStateError(
            f"camera {write.camera_id!r}: stored state no longer at revision {write.revision}"
        )


class Store:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def commit(self, write: BatchWrite) -> bool:
        """Apply ``write`` in one transaction; False (nothing written) if the producer's mark
        shows it was applied already. ``StaleStateError`` (nothing written) if the camera's
        stored state moved past the write's revision."""
        async with self._pool.acquire() as connection, connection.transaction():
            mark = await connection.fetchval(_LOCK_MARK, write.producer_id)
            if mark is not None and mark >= write.sequence:
                return False
            # The state first: its row lock makes a concurrent writer of the camera wait
            # here, and see the new revision, before either writes any bin.
            if write.state is not None:
                await _write_state(connection, write)
            if write.bins:
                await connection.executemany(UPSERT_BIN, write.bins)
            if write.crossings:
                await connection.executemany(INSERT_CROSSING, write.crossings)
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

    async def camera_state(self, camera_id: str) -> StoredState:
        row = await self._pool.fetchrow(_GET_STATE, camera_id)
        if row is None:
            return StoredState(None, 0)
        state = row["state"]
        return StoredState(None if state is None else bytes(state), int(row["revision"]))

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

    async def reset_camera(self, camera_id: str, closed_events: list[Row], revision: int) -> None:
        """One transaction: the events the camera's state held open, closed; the state gone,
        if it is still at ``revision`` (the one ``closed_events`` came from), else
        ``StaleStateError`` and nothing written."""
        async with self._pool.acquire() as connection, connection.transaction():
            status = await connection.execute(_DROP_STATE, camera_id, revision)
            # Nothing to drop is right for a camera that never had a row (revision 0).
            if _rows(status) == 0 and (
                revision != 0 or await connection.fetchval(_HAS_STATE_ROW, camera_id)
            ):
                raise StaleStateError(
                    f"camera {camera_id!r}: stored state no longer at revision {revision}"
                )
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
