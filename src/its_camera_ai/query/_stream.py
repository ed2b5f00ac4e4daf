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
stream's start point (then its first message is whatever comes next).

The hub reads when analytics announces a commit with events (``wake``, from the Redis
announcement) and every ``stream_poll_seconds`` anyway (no Redis, or a lost announcement).
Each client has its own bounded queue: one that falls ``stream_client_queue`` messages
behind is dropped (UNAVAILABLE, OVERLOADED) and nobody else waits for it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
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
# Put on a client's queue when the server shuts down (never sent).
_CLOSE = _Change()

_NEWEST = "SELECT coalesce(max(change_seq), 0) FROM analytics_events"
# Changes after a position, in commit order (the unique index on change_seq).
_CHANGES = (
    f"SELECT {EVENT_COLUMNS}, change_seq, first_seq FROM analytics_events"  # noqa: S608
    " WHERE change_seq > $1 AND change_seq <= $2 ORDER BY change_seq LIMIT $3"
)
_NO_END = 2**63 - 1


def encode_token(position: int) -> str:
    body = json.dumps([_TOKEN_VERSION, position], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(body).decode("ascii").rstrip("=")


def decode_token(token: str) -> int:
    try:
        version, position = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if version != _TOKEN_VERSION or not isinstance(position, int) or position < 0:
            raise ValueError(token)
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        raise InvalidArgumentError.for_field(
            "resume_token",
            "is malformed; stream without one and back-fill with ListEvents",
            reason=error_reason_pb2.ERROR_REASON_INVALID_PAGE_TOKEN,
        ) from None
    return position


@dataclasses.dataclass(frozen=True, slots=True)
class _Row:
    position: int
    first: int  # the change that created the event
    camera_id: str
    change: _Change

    @classmethod
    def of(cls, record: asyncpg.Record) -> _Row:
        event = event_from_row(record)
        position = int(record["change_seq"])
        first = int(record["first_seq"])
        if record["end_time"] is not None:
            kind = _ENDED
        else:
            kind = _STARTED if first == position else _UPDATED
        change = _Change(event=event, change_type=kind, resume_token=encode_token(position))
        return cls(position, first, str(record["camera_id"]), change)


@dataclasses.dataclass(eq=False)
class _Client:
    query: StreamQuery
    cameras: frozenset[str] | None
    queue: asyncio.Queue[_Change]
    # The position of the last message offered, and up to where every event created has had
    # its STARTED offered (or was created before the stream's start point).
    position: int
    started_through: int
    overloaded: bool = False

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
        the event's start collapsed into this later change), advancing its position."""
        if not self.wants(row):
            return []
        out = []
        if row.change.change_type != _STARTED and row.first > self.started_through:
            started = _Change(change_type=_STARTED, resume_token=encode_token(self.position))
            started.event.CopyFrom(row.change.event)
            started.event.ClearField("end_time")
            out.append(started)
        out.append(row.change)
        self.position = row.position
        return out

    def offer(self, change: _Change) -> None:
        if self.overloaded:
            return
        try:
            self.queue.put_nowait(change)
        except asyncio.QueueFull:
            self.overloaded = True

    def close(self) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # it is disconnected anyway: make room for the end
        self.queue.put_nowait(_CLOSE)


class EventHub:
    def __init__(self, pool: asyncpg.Pool[Any], settings: QueryServiceSettings) -> None:
        self._pool = pool
        self._settings = settings
        self._clients: set[_Client] = set()
        self._position: int | None = None
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
        for client in self._clients:
            client.close()

    def wake(self) -> None:
        """Analytics committed event changes: read them now rather than at the next poll."""
        self._wake.set()

    @property
    def clients(self) -> int:
        return len(self._clients)

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
            self._position = int(await self._pool.fetchval(_NEWEST))
            return
        while True:
            records = await self._pool.fetch(_CHANGES, self._position, _NO_END, _PAGE)
            for record in records:
                row = _Row.of(record)
                for client in self._clients:
                    for change in client.messages(row):
                        client.offer(change)
                self._position = row.position
            if len(records) < _PAGE:
                break
        for client in self._clients:
            client.started_through = self._position

    # -- one client --------------------------------------------------------------------------

    async def subscribe(
        self, query: StreamQuery, cameras: frozenset[str] | None
    ) -> AsyncIterator[_Change]:
        """The client's messages until it goes away; raises UNAVAILABLE (OVERLOADED) when it
        falls too far behind, OUT_OF_RANGE when its resume token is too old."""
        resume = decode_token(query.resume_token) if query.resume_token else None
        if self._position is None:
            raise UnavailableError("event stream not ready: PostgreSQL has not answered yet")
        # Joined at the hub's position: the replay covers it and what lies before, the hub
        # what comes after (no await between reading it and joining: nothing slips between).
        joined = self._position
        start = joined if resume is None else min(resume, joined)
        queue: asyncio.Queue[_Change] = asyncio.Queue(self._settings.stream_client_queue)
        client = _Client(query, cameras, queue, position=start, started_through=start)
        self._clients.add(client)
        try:
            if resume is not None:
                # Its own copy of the client's starting state: live reads may advance the
                # client meanwhile (their messages wait in its queue, after these).
                for change in await self._replay(dataclasses.replace(client), joined):
                    yield change
            async for change in self._live(client):
                yield change
        finally:
            self._clients.discard(client)

    async def _replay(self, client: _Client, until: int) -> list[_Change]:
        limit = self._settings.stream_max_replay_events
        records = await self._pool.fetch(_CHANGES, client.position, until, limit + 1)
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
            try:
                change = await asyncio.wait_for(client.queue.get(), heartbeat)
            except TimeoutError:
                position = self._position if self._position is not None else client.position
                change = _Change(change_type=_HEARTBEAT, resume_token=encode_token(position))
            if change is _CLOSE:
                raise UnavailableError(
                    "StreamEvents: the server is shutting down; reconnect with the last"
                    " resume_token",
                    reason=error_reason_pb2.ERROR_REASON_SHUTTING_DOWN,
                )
            if client.overloaded and client.queue.empty():
                raise UnavailableError(
                    "StreamEvents: this client fell too far behind and was disconnected;"
                    " reconnect with the last resume_token",
                    reason=error_reason_pb2.ERROR_REASON_OVERLOADED,
                )
            yield change
