"""StreamEvents: one reader of event changes per process, fanned out to every client.

Analytics numbers each change of an event row in commit order (``change_seq``, migration
0002: numbers are drawn under a lock held to the commit), so "every change after N" is a
plain index range that no slower commit can later land behind. A message's position is its
row's ``change_seq``; a resume token is the position of the last message a client got.
Resuming replays from the table the rows changed after it (each event in its latest state)
up to where the hub stood when the client joined, with live messages buffered meanwhile:
nothing is sent twice or lost across the seam.

Rows hold an event's latest state only, so changes between two reads collapse into one. An
event that started since the client's last read (``first_seq`` past it) but arrives as
UPDATED or ENDED is announced first with a STARTED message (its current state, end time
cleared): every event a stream reports begins with STARTED, unless it started before the
stream's start point (then its first message is whatever comes next). That STARTED's
resume token also names the event (by its ``first_seq``): a stream broken between the
STARTED and the change it announces resumes with the change alone, not a second STARTED.
An event the replay announced (started after the token, before the join) is not announced
again when its next change is read live.

The hub reads when analytics announces a commit with events (``wake``, from the Redis
announcement) and every ``stream_poll_seconds`` anyway (no Redis, or a lost announcement).
Clients read the hub's latest changes at their own pace (a bounded buffer shared by all,
``stream_buffer_events``, not a queue per client): a burst larger than any queue reaches
every client that keeps up, a client that stops reading costs nothing but its place, and
one that falls behind what the buffer keeps is dropped (UNAVAILABLE, OVERLOADED); nobody
else waits for it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from its.common.v1 import error_reason_pb2
from its.query.v1 import query_service_pb2
from its_camera_ai.common import (
    POSTGRES_DOWN,
    InvalidArgumentError,
    OutOfRangeError,
    QueryServiceSettings,
    UnavailableError,
)
from its_camera_ai.query._events import EVENT_COLUMNS, event_from_row
from its_camera_ai.query._requests import StreamQuery

__all__ = ["EventHub"]

_log = logging.getLogger(__name__)

_TOKEN_VERSION = 2
_PAGE = 500
_Change = query_service_pb2.StreamEventsResponse
_STARTED = query_service_pb2.EVENT_CHANGE_TYPE_STARTED
_UPDATED = query_service_pb2.EVENT_CHANGE_TYPE_UPDATED
_ENDED = query_service_pb2.EVENT_CHANGE_TYPE_ENDED
_HEARTBEAT = query_service_pb2.EVENT_CHANGE_TYPE_HEARTBEAT

_NEWEST = "SELECT coalesce(max(change_seq), 0) FROM analytics_events"
# Changes after a position, in commit order (the unique index on change_seq).
_CHANGES = (
    f"SELECT {EVENT_COLUMNS}, change_seq, first_seq FROM analytics_events"  # noqa: S608
    " WHERE change_seq > $1 AND change_seq <= $2 ORDER BY change_seq LIMIT $3"
)
_NO_END = 2**63 - 1


def encode_token(position: int, started: int | None = None) -> str:
    """The token of a message at ``position``; ``started``: the message was the STARTED
    announcing the event first created at that position, whose change is still to come."""
    fields = [_TOKEN_VERSION, position] if started is None else [_TOKEN_VERSION, position, started]
    body = json.dumps(fields, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(body).decode("ascii").rstrip("=")


def decode_token(token: str) -> tuple[int, int | None]:
    """(position, the announced event's first position or None) of a resume token."""
    try:
        fields = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(fields, list) or len(fields) not in (2, 3):
            raise ValueError(token)
        version, position, *started = fields
        if version != _TOKEN_VERSION or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (position, *started)
        ):
            raise ValueError(token)
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        raise InvalidArgumentError.for_field(
            "resume_token",
            "is malformed; stream without one and back-fill with ListEvents",
            reason=error_reason_pb2.ERROR_REASON_INVALID_PAGE_TOKEN,
        ) from None
    return position, (started[0] if started else None)


@dataclasses.dataclass(frozen=True, slots=True)
class _Row:
    position: int
    first: int  # the change that created the event
    # The hub's position when the read that fetched it began (-1: read for a replay).
    read_start: int
    camera_id: str
    change: _Change

    @classmethod
    def of(cls, record: asyncpg.Record, read_start: int = -1) -> _Row:
        event = event_from_row(record)
        position = int(record["change_seq"])
        first = int(record["first_seq"])
        if record["end_time"] is not None:
            kind = _ENDED
        else:
            kind = _STARTED if first == position else _UPDATED
        change = _Change(event=event, change_type=kind, resume_token=encode_token(position))
        return cls(position, first, read_start, str(record["camera_id"]), change)


@dataclasses.dataclass(eq=False)
class _Client:
    query: StreamQuery
    cameras: frozenset[str] | None
    # Where it joined the hub, and every event created up to ``initial`` needs no STARTED
    # (it began before the stream's start point: the join, or the resume token).
    joined: int
    initial: int
    # The last row it has read (sent, or skipped by its filters).
    cursor: int
    # The event (by first_seq) whose STARTED its resume token says it got, change pending.
    announced: int | None = None
    # Events created between its resume token and its join whose STARTED it got, from the
    # replay: their rows may have moved past the join since, to be read live.
    replayed: set[int] = dataclasses.field(default_factory=set)

    def wants(self, row: _Row) -> bool:
        query = self.query
        if query.camera_id and row.camera_id != query.camera_id:
            return False
        if self.cameras is not None and row.camera_id not in self.cameras:
            return False
        event = row.change.event
        if query.types and event.type not in query.types:
            return False
        # An event below the threshold is held back until it rises to it.
        return event.severity >= query.min_severity

    def messages(self, row: _Row) -> list[_Change]:
        """What ``row`` means to this client (nothing, or its message, after a STARTED when
        the event's start collapsed into this later change), advancing its cursor."""
        before, self.cursor = self.cursor, row.position
        if not self.wants(row):
            return []
        out = []
        # The event the resume token says was announced: its STARTED went out already.
        announced = row.first == self.announced
        if announced:
            self.announced = None
        elif row.change.change_type != _STARTED and not self._had_started(row):
            started = _Change(change_type=_STARTED, resume_token=encode_token(before, row.first))
            started.event.CopyFrom(row.change.event)
            started.event.ClearField("end_time")
            out.append(started)
        if self.initial < row.first <= self.joined:
            self.replayed.add(row.first)
        out.append(row.change)
        return out

    def _had_started(self, row: _Row) -> bool:
        """Whether the event of ``row`` began before the stream's start point or this client
        got its STARTED already."""
        if row.first <= self.initial:
            return True
        if row.first <= self.joined:
            # Between the resume token and the join: the replay announced it, or nobody.
            return row.first in self.replayed
        # Reads after the one it joined in: every event created before that read began was
        # seen by this client in an earlier read, STARTED included.
        return self.joined < row.read_start and row.first <= row.read_start


class EventHub:
    def __init__(self, pool: asyncpg.Pool[Any], settings: QueryServiceSettings) -> None:
        self._pool = pool
        self._settings = settings
        self._position: int | None = None
        # The latest changes, in position order, for clients to read at their own pace:
        # rows[base:] are live; everything up to `evicted` has left.
        self._rows: list[_Row] = []
        self._base = 0
        self._evicted = 0
        self._changed = asyncio.Event()
        self._closing = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="query-event-hub")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def end_streams(self) -> None:
        """Shutdown: every stream ends with UNAVAILABLE (SHUTTING_DOWN) at a message boundary,
        so the server drains instead of waiting out its grace period."""
        self._closing = True
        self._changed.set()

    def wake(self) -> None:
        """Analytics committed event changes: read them now rather than at the next poll."""
        self._wake.set()

    # -- the reader --------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._read()
            except POSTGRES_DOWN as exc:
                _log.warning("event stream cannot read PostgreSQL", extra={"error": str(exc)})
            except Exception:
                # A bug or a schema the reader does not know: streams stall (heartbeats go on)
                # but the hub lives, says why, and tries again at the next poll.
                _log.exception("event stream read failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.stream_poll_seconds)
            self._wake.clear()

    async def _read(self) -> None:
        if self._position is None:
            # Live from here: what committed before the first read is history.
            self._position = self._evicted = int(await self._pool.fetchval(_NEWEST))
            return
        read_start = self._position
        while True:
            records = await self._pool.fetch(_CHANGES, self._position, _NO_END, _PAGE)
            if records:
                self._append([_Row.of(record, read_start) for record in records])
            if len(records) < _PAGE:
                break

    def _append(self, rows: list[_Row]) -> None:
        self._rows.extend(rows)
        self._position = rows[-1].position
        keep = self._settings.stream_buffer_events
        if len(self._rows) - self._base > keep:
            self._base = len(self._rows) - keep
            self._evicted = self._rows[self._base - 1].position
            if self._base > keep:  # compact now and then, not on every read
                del self._rows[: self._base]
                self._base = 0
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _after(self, cursor: int) -> list[_Row]:
        """The kept rows after ``cursor``; raises OVERLOADED when some left unread."""
        if cursor < self._evicted:
            raise UnavailableError(
                "StreamEvents: this client fell too far behind and was disconnected;"
                " reconnect with the last resume_token",
                reason=error_reason_pb2.ERROR_REASON_OVERLOADED,
            )
        start = bisect.bisect_right(self._rows, cursor, lo=self._base, key=_position)
        return self._rows[start:]

    # -- one client --------------------------------------------------------------------------

    async def subscribe(
        self, query: StreamQuery, cameras: frozenset[str] | None
    ) -> AsyncIterator[_Change]:
        """The client's messages until it goes away; raises UNAVAILABLE (OVERLOADED) when it
        falls too far behind, OUT_OF_RANGE when its resume token is too old."""
        resume, announced = decode_token(query.resume_token) if query.resume_token else (None, None)
        if self._position is None:
            raise UnavailableError("event stream not ready: PostgreSQL has not answered yet")
        # Joined at the hub's position: the replay covers it and what lies before, the hub
        # what comes after, from the buffer it reads at its own pace.
        joined = self._position
        # A token from an instance that read further than this one: what lies between was
        # sent already, so the live rows start after the token.
        initial = joined if resume is None else resume
        client = _Client(
            query,
            cameras,
            joined=joined,
            initial=initial,
            cursor=min(initial, joined),
            announced=announced,
        )
        if resume is not None:
            for change in await self._replay(client, joined):
                yield change
        client.cursor = max(joined, initial)
        async for change in self._live(client):
            yield change

    async def _replay(self, client: _Client, until: int) -> list[_Change]:
        limit = self._settings.stream_max_replay_events
        records = await self._pool.fetch(_CHANGES, client.cursor, until, limit + 1)
        if len(records) > limit:
            raise OutOfRangeError(
                f"resume_token: more than {limit} event changes happened since; back-fill with"
                " ListEvents, then stream without a token",
                metadata={"field": "resume_token"},
            )
        return [change for record in records for change in client.messages(_Row.of(record))]

    async def _live(self, client: _Client) -> AsyncIterator[_Change]:
        heartbeat = self._settings.stream_heartbeat_seconds
        while True:
            if self._closing:
                raise UnavailableError(
                    "StreamEvents: the server is shutting down; reconnect with the last"
                    " resume_token",
                    reason=error_reason_pb2.ERROR_REASON_SHUTTING_DOWN,
                )
            changed = self._changed
            rows = self._after(client.cursor)
            if rows:
                for row in rows:
                    for change in client.messages(row):
                        yield change
                continue
            try:
                await asyncio.wait_for(changed.wait(), heartbeat)
            except TimeoutError:
                if self._after(client.cursor):
                    continue  # rows came as the wait timed out
                # Nothing after its cursor: everything up to the hub's position is read.
                assert self._position is not None
                client.cursor = max(client.cursor, self._position)
                yield _Change(change_type=_HEARTBEAT, resume_token=encode_token(client.cursor))


def _position(row: _Row) -> int:
    return row.position
