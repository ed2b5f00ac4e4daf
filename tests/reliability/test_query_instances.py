"""Two query instances behind one address (issue #19, the query half).

Two ``its-camera-ai serve query`` processes read one PostgreSQL database (no Redis: each
answers from its own L1 cache and PostgreSQL) behind a round-robin TCP balancer on loopback
(``its_camera_ai.testing.Balancer``, what Envoy's ``tcp_proxy`` does). Clients are what a
user runs: ``its_camera_ai.client.aio_channel``, whose service config retries ``UNAVAILABLE``
(and ``CANCELLED`` on reads: what a draining gRPC server answers the calls it had received
but not started, grpc/grpc#41785), up to 4 attempts; nothing in this file retries a unary
call. Eight clients, each on its own connection (so round robin spreads them over both
instances), call GetTrafficCounts, GetTrafficSummary and ListEvents in turn (counts and
summaries checked against the seeded bins, event pages by their size). One client follows
StreamEvents and, when its stream ends with ``UNAVAILABLE``, opens a new one with the last
``resume_token`` it got: the one thing a streaming client must do itself. Meanwhile events
are written (a new one every 0.1 s, every other one ended), as analytics writes them.

Asserted: no unary call fails, in either fault; the stream, across its reconnects, carries
each event written exactly as written (STARTED, then ENDED if it ended): nothing missed,
nothing repeated. Printed with ``-s``: calls, the longest call and the longest gap between
one client's answers, how long after the kill every client had an answer again, and when
the stream resumed.

Also: a stream resumed on an instance whose event reader has not read as far as the client's
token (instances read every ``stream_poll_seconds``, each on its own schedule) repeats
nothing. It did (a product bug, fixed in ``EventHub.subscribe``): the instance started the
stream at its own, older position.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from its.common.v1 import time_range_pb2
from its.query.v1 import query_service_pb2, query_service_pb2_grpc
from its_camera_ai.analytics import (
    UPSERT_BIN,
    UPSERT_EVENT,
    BinKey,
    BinRecord,
    EventRecord,
    EventType,
    ObjectClass,
    Scope,
    Severity,
    bin_row,
    event_row,
)
from its_camera_ai.analytics.server import MIGRATIONS
from its_camera_ai.client import aio_channel
from its_camera_ai.common import MigrationSet, apply_migrations
from its_camera_ai.scene import Direction
from its_camera_ai.testing import Balancer
from tests.analytics import synth
from tests.analytics.test_service_support import CAMERA_ID, camera_proto, serve_cameras
from tests.reliability.conftest import ServiceProcess

pytestmark = pytest.mark.reliability

CAMERA = f"cameras/{CAMERA_ID}"
_NS = 1_000_000_000
START_WITHIN_S = 60.0
# Seeded traffic: one camera-scope bin a minute for three hours of a past day.
DAY_S = 1_700_006_400
MINUTES = 180
# Each counts call asks for this many minutes, from a start that moves call by call (so
# most answers are computed, not cached).
SPAN_MINUTES = 30
CLIENTS = 8
# A client's pause between calls: ~350 calls/s in all on the 2-core machine.
CALL_PAUSE_S = 0.02
WRITE_EVERY_S = 0.1
# Events already there before the load (ListEvents pages through them; the stream starts
# live, after them).
SEEDED_EVENTS = 40
LOAD_BEFORE_S = 2.0
LOAD_AFTER_S = 3.0
CAUGHT_UP_WITHIN_S = 10.0
# How often each instance reads new event changes (the default; no Redis to wake it).
POLL_S = 0.25
# The follower resumes at once: the instance it lands on may not have read as far as its
# token yet (the last test).
RECONNECT_PAUSE_S = 0.05
# Channels of one process to one target share their connection unless told otherwise: each
# client gets its own, as separate client processes would (and the balancer spreads them).
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
_HEARTBEAT = query_service_pb2.EVENT_CHANGE_TYPE_HEARTBEAT
_STARTED = query_service_pb2.EVENT_CHANGE_TYPE_STARTED
_ENDED = query_service_pb2.EVENT_CHANGE_TYPE_ENDED


def _volume(minute: int) -> int:
    return minute % 7 + 1


def _query_process(
    name: str, dsn: str, decoder: str, poll_seconds: float = POLL_S
) -> ServiceProcess:
    """``its-camera-ai serve query`` as a child process, without Redis (each instance answers
    from its own L1 cache)."""
    return ServiceProcess("query", name, {
        "ITS_DATABASE__DSN": dsn,
        "ITS_QUERY__DECODER_TARGET": decoder,
        # Heartbeats carry resume tokens: a quiet stream still learns where it stands.
        "ITS_QUERY__STREAM_HEARTBEAT_SECONDS": "0.5",
        "ITS_QUERY__STREAM_POLL_SECONDS": str(poll_seconds),
    }, without=("ITS_REDIS__",))  # fmt: skip


def _event(number: int, ended: bool = False) -> EventRecord:
    start_ns = (DAY_S + 60 * number) * _NS
    return EventRecord(
        event_id=f"ev-{number:05d}",
        camera=CAMERA_ID,
        type=EventType.STOPPED_VEHICLE,
        severity=Severity.HIGH,
        start_time_ns=start_ns,
        end_time_ns=start_ns + 30 * _NS if ended else None,
        track_id=number,
        object_class=ObjectClass.CAR,
        lane_id="",
        zone_id="",
        evidence=None,
        description=f"event {number}",
        update_time_ns=start_ns + (30 if ended else 1) * _NS,
    )


def _bin(first_minute: int, minutes: int) -> tuple[Any, ...]:
    key = BinKey(CAMERA_ID, Scope.CAMERA, "", ObjectClass.CAR, Direction.NONE,
                 (DAY_S + 60 * first_minute) * _NS, 60 * minutes)  # fmt: skip
    volume = sum(_volume(m) for m in range(first_minute, first_minute + minutes))
    return bin_row(BinRecord(key, final=True, volume=volume))


async def _seed(dsn: str) -> None:
    """The schema and the data, before any instance starts: what was there before is history
    to the instances' event streams, which start live."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        await apply_migrations(pool, [MigrationSet("core", "its_camera_ai.common"), MIGRATIONS])
    finally:
        await pool.close()
    # Both lengths analytics stores: series read the 1-minute bins, summaries the 15-minute.
    bins = [_bin(m, 1) for m in range(MINUTES)] + [_bin(m, 15) for m in range(0, MINUTES, 15)]
    connection = await asyncpg.connect(dsn)
    try:
        await connection.executemany(UPSERT_BIN, bins)
        await connection.executemany(
            UPSERT_EVENT, [event_row(_event(-n, ended=True)) for n in range(1, SEEDED_EVENTS + 1)]
        )
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def _instances(
    dsn: str, b_poll_seconds: float = POLL_S
) -> AsyncIterator[tuple[ServiceProcess, ServiceProcess]]:
    """Two started instances over seeded tables; both killed at the end, whatever happened."""
    async with serve_cameras({CAMERA_ID: camera_proto(synth.road_scene())}) as decoder:
        pair = (
            _query_process("A", dsn, decoder),
            _query_process("B", dsn, decoder, b_poll_seconds),
        )
        try:
            await _seed(dsn)
            for instance in pair:
                await instance.start()
            yield pair
        finally:
            for instance in pair:
                instance.kill()


def _time_range(start_s: int, end_s: int) -> time_range_pb2.TimeRange:
    return time_range_pb2.TimeRange(
        start_time=timestamp_pb2.Timestamp(seconds=start_s),
        end_time=timestamp_pb2.Timestamp(seconds=end_s),
    )


def _call(number: int) -> tuple[str, Any, Callable[[Any], None]]:
    """The ``number``-th call of a client: (method, request, check of the answer)."""
    kind = number % 3
    if kind == 0:
        first = number * 7 % (MINUTES - SPAN_MINUTES)
        start_s = DAY_S + 60 * first
        request = query_service_pb2.GetTrafficCountsRequest(
            camera=CAMERA,
            time_range=_time_range(start_s, start_s + 60 * SPAN_MINUTES),
            bin_size=duration_pb2.Duration(seconds=60),
        )
        expected = [_volume(m) for m in range(first, first + SPAN_MINUTES)]

        def counts(reply: Any) -> None:
            assert [b.volume for b in reply.bins] == expected

        return "GetTrafficCounts", request, counts
    if kind == 1:
        summary = query_service_pb2.GetTrafficSummaryRequest(
            cameras=[CAMERA], time_range=_time_range(DAY_S, DAY_S + 60 * MINUTES)
        )
        total = sum(_volume(m) for m in range(MINUTES))

        def summed(reply: Any) -> None:
            assert [s.total.volume for s in reply.summaries] == [total]

        return "GetTrafficSummary", summary, summed
    listing = query_service_pb2.ListEventsRequest(parent=CAMERA, page_size=20)

    def listed(reply: Any) -> None:
        assert len(reply.events) == 20

    return "ListEvents", listing, listed


@dataclasses.dataclass
class Load:
    """What the unary clients saw."""

    calls: Counter[str] = dataclasses.field(default_factory=Counter)
    failures: list[str] = dataclasses.field(default_factory=list)
    # Per client, when each of its calls returned.
    answered: list[list[float]] = dataclasses.field(default_factory=list)
    longest_call: float = 0.0

    def longest_gap(self) -> float:
        return max(
            (b - a for times in self.answered for a, b in itertools.pairwise(times)),
            default=0.0,
        )

    def recovered_after(self, moment: float) -> float:
        """How long after ``moment`` every client had an answer again."""
        return max(next(t for t in times if t > moment) for times in self.answered) - moment


async def _client(target: str, load: Load, stop: asyncio.Event) -> None:
    answered: list[float] = []
    load.answered.append(answered)
    async with aio_channel(target, options=OWN_CONNECTION) as channel:
        stub = query_service_pb2_grpc.QueryServiceStub(channel)
        number = len(load.answered)  # clients start at different points of the rotation
        while not stop.is_set():
            method, request, check = _call(number)
            started = time.monotonic()
            try:
                reply = await getattr(stub, method)(request)
            except grpc.aio.AioRpcError as exc:
                load.failures.append(f"{method}: {exc.code().name} {exc.details()}")
            else:
                check(reply)
                load.calls[method] += 1
            answered.append(time.monotonic())
            load.longest_call = max(load.longest_call, answered[-1] - started)
            number += 1
            await asyncio.sleep(CALL_PAUSE_S)


@dataclasses.dataclass
class Follower:
    """A StreamEvents client: on ``UNAVAILABLE`` it reconnects with its last resume token."""

    target: str
    token: str = ""
    # Every change (not heartbeats) by event name: its change types in arrival order.
    changes: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    ended: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    # When the first message of each stream after the first arrived.
    resumed: list[float] = dataclasses.field(default_factory=list)
    failure: str | None = None
    heard: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async with aio_channel(self.target, options=OWN_CONNECTION) as channel:
            stub = query_service_pb2_grpc.QueryServiceStub(channel)
            while True:
                request = query_service_pb2.StreamEventsRequest(
                    camera=CAMERA, resume_token=self.token
                )
                first = True
                try:
                    async for message in stub.StreamEvents(request):
                        if first and self.ended:
                            self.resumed.append(time.monotonic())
                        first = False
                        self.token = message.resume_token
                        if message.change_type != _HEARTBEAT:
                            name = message.event.name
                            self.changes.setdefault(name, []).append(message.change_type)
                        self.heard.set()
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        self.failure = f"{exc.code().name} {exc.details()}"
                        return
                    self.ended.append((time.monotonic(), exc.details() or ""))
                await asyncio.sleep(RECONNECT_PAUSE_S)


@dataclasses.dataclass
class Writer:
    """Writes events as analytics does (its statement, one commit each): event ``n`` starts,
    and with an even ``n`` the event before it ends."""

    dsn: str
    # Event name -> the change types a stream must carry for it.
    expected: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    async def write(self, connection: asyncpg.Connection[Any], number: int) -> None:
        await connection.execute(UPSERT_EVENT, *event_row(_event(number)))
        self.expected[f"{CAMERA}/events/{_event(number).event_id}"] = [_STARTED]
        if number % 2 == 0:
            ended = _event(number - 1, ended=True)
            await connection.execute(UPSERT_EVENT, *event_row(ended))
            self.expected[f"{CAMERA}/events/{ended.event_id}"].append(_ENDED)

    async def run(self, stop: asyncio.Event) -> None:
        """One event every ``WRITE_EVERY_S`` until ``stop``."""
        connection = await asyncpg.connect(self.dsn)
        try:
            number = 0
            while not stop.is_set():
                number += 1
                await self.write(connection, number)
                await asyncio.sleep(WRITE_EVERY_S)
        finally:
            await connection.close()


@contextlib.asynccontextmanager
async def _load(target: str, dsn: str) -> AsyncIterator[tuple[Load, Follower, Writer]]:
    """The stream follower (connected first, so it is the balancer's first connection), the
    event writer and the unary clients, all running; stopped at the end (the writer first,
    then the follower once it caught up)."""
    load, follower, writer = Load(), Follower(target), Writer(dsn)
    stop, stop_writing = asyncio.Event(), asyncio.Event()
    following = asyncio.create_task(follower.run())
    tasks = []
    try:
        await asyncio.wait_for(follower.heard.wait(), START_WITHIN_S)  # live from here on
        tasks.append(asyncio.create_task(writer.run(stop_writing)))
        tasks += [asyncio.create_task(_client(target, load, stop)) for _ in range(CLIENTS)]
        yield load, follower, writer
        stop_writing.set()
        await tasks[0]
        deadline = time.monotonic() + CAUGHT_UP_WITHIN_S
        while follower.changes != writer.expected and follower.failure is None:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        stop_writing.set()
        following.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(following, *tasks, return_exceptions=True)


def _assert_nothing_failed(load: Load, follower: Follower, writer: Writer) -> None:
    assert load.failures == [], f"{len(load.failures)} failed calls: {load.failures[:5]}"
    assert follower.failure is None, follower.failure
    missed = {n: c for n, c in writer.expected.items() if follower.changes.get(n) != c}
    extra = set(follower.changes) - set(writer.expected)
    assert not missed, (
        f"stream differs for {len(missed)} events (expected vs received):"
        f" {[(n, c, follower.changes.get(n)) for n, c in list(missed.items())[:5]]}"
    )
    assert not extra, f"events never written: {sorted(extra)[:5]}"


def _figures(load: Load, follower: Follower, writer: Writer, balancer: Balancer) -> str:
    return (
        f"{sum(load.calls.values())} calls ({dict(load.calls)}), 0 failed; longest call"
        f" {load.longest_call * 1000:.0f} ms, longest gap between a client's answers"
        f" {load.longest_gap() * 1000:.0f} ms; stream: {len(writer.expected)} events,"
        f" {sum(map(len, writer.expected.values()))} changes received exactly once across"
        f" {len(follower.ended)} reconnects ({[d for _, d in follower.ended]}); balancer"
        f" {dict(balancer.counters.connections)} connections, skipped"
        f" {dict(balancer.counters.skipped)}"
    )


def _carrying_the_stream(
    balancer: Balancer, pair: tuple[ServiceProcess, ServiceProcess]
) -> ServiceProcess:
    upstreams = balancer.open_upstreams()
    assert len(upstreams) == 1, upstreams  # only the follower's connection so far
    return next(i for i in pair if i.port == upstreams[0])


async def test_instance_killed_under_load_fails_no_call(postgres_dsn: str) -> None:
    async with (
        _instances(postgres_dsn) as pair,
        Balancer([i.port for i in pair]) as balancer,
    ):
        async with _load(balancer.target, postgres_dsn) as (load, follower, writer):
            # Established before the clients connect: the follower's is the one connection.
            streamed_by = _carrying_the_stream(balancer, pair)
            await asyncio.sleep(LOAD_BEFORE_S)
            calls_before = sum(load.calls.values())
            killed_at = time.monotonic()
            streamed_by.kill()
            await asyncio.sleep(LOAD_AFTER_S)
        _assert_nothing_failed(load, follower, writer)
        assert calls_before > 0, "the kill found no load"
        assert follower.ended, "the stream did not notice the kill"
        recovered = load.recovered_after(killed_at)
        resumed = follower.resumed[0] - killed_at
        print(
            f"\nquery instance {streamed_by.name} (carrying the stream) SIGKILLed under load:"
            f" every client answered again {recovered * 1000:.0f} ms after the kill, the stream"
            f" resumed {resumed * 1000:.0f} ms after it;"
            f" {_figures(load, follower, writer, balancer)}"
        )


async def test_rolling_restart_fails_no_call(postgres_dsn: str) -> None:
    async with (
        _instances(postgres_dsn) as pair,
        Balancer([i.port for i in pair]) as balancer,
    ):
        restarts = []
        async with _load(balancer.target, postgres_dsn) as (load, follower, writer):
            for instance in pair:
                await asyncio.sleep(LOAD_BEFORE_S)
                began = time.monotonic()
                status = await instance.terminate()
                assert status == 0, f"instance {instance.name} exited {status} on SIGTERM"
                stopped = time.monotonic() - began
                await instance.start()
                restarts.append(
                    f"{instance.name} stopped in {stopped:.2f} s, serving again"
                    f" {time.monotonic() - began:.2f} s after SIGTERM"
                )
            await asyncio.sleep(LOAD_BEFORE_S)
        _assert_nothing_failed(load, follower, writer)
        assert len(follower.ended) >= 1, "the stream never moved"
        print(
            f"\nrolling restart of two query instances under load: {'; '.join(restarts)};"
            f" {_figures(load, follower, writer, balancer)}"
        )


async def _stream_on(
    target: str, token: str, changes: dict[str, list[int]], until: Callable[[], bool]
) -> str:
    """Follow StreamEvents on ``target`` from ``token``, recording changes, until a heartbeat
    finds ``until()`` true; the last resume token."""
    async with aio_channel(target) as channel:
        stub = query_service_pb2_grpc.QueryServiceStub(channel)
        request = query_service_pb2.StreamEventsRequest(camera=CAMERA, resume_token=token)
        async with asyncio.timeout(CAUGHT_UP_WITHIN_S):
            async for message in stub.StreamEvents(request):
                token = message.resume_token
                if message.change_type != _HEARTBEAT:
                    changes.setdefault(message.event.name, []).append(message.change_type)
                elif until():
                    return token
    raise AssertionError("the stream ended")


async def test_resuming_on_an_instance_that_has_read_less_repeats_nothing(
    postgres_dsn: str,
) -> None:
    """A stream moves A -> B -> A, B's reader behind A's (it polls once a minute; between
    instances polling as configured the gap is up to a poll interval). B used to start the
    stream at its own position (``min(resume, joined)``): it resent what the client already
    had, and its heartbeats handed back that older position, so back on A the client got
    every change since again (10 of 10 events)."""
    async with _instances(postgres_dsn, b_poll_seconds=60.0) as (a, b):
        on_a, on_b = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
        changes: dict[str, list[int]] = {}
        token = await _stream_on(on_a, "", changes, lambda: True)
        await _stream_on(on_b, "", {}, lambda: True)  # B's reader has its (first) position
        writer = Writer(postgres_dsn)
        connection = await asyncpg.connect(postgres_dsn)
        try:
            for number in range(1, 11):
                await writer.write(connection, number)
        finally:
            await connection.close()
        token = await _stream_on(on_a, token, changes, lambda: changes == writer.expected)
        token = await _stream_on(on_b, token, changes, lambda: True)
        await _stream_on(on_a, token, changes, lambda: True)
        repeated = {n: c for n, c in changes.items() if c != writer.expected[n]}
        print(
            f"\nstream moved A -> B (reader behind) -> A: {len(repeated)} of"
            f" {len(writer.expected)} events repeated, e.g. {list(repeated.items())[:2]}"
        )
        assert changes == writer.expected


async def test_an_event_the_replay_announced_is_not_announced_again_live(
    postgres_dsn: str,
) -> None:
    """A stream resumed from a token older than the instance's position gets, in the replay,
    the STARTED of an event created in between; that event's next change, read live, used
    to come with a second STARTED ([STARTED, STARTED, ENDED] for one event across the
    rolling restart above)."""
    async with _instances(postgres_dsn) as (a, _):
        on_a = f"127.0.0.1:{a.port}"
        writer = Writer(postgres_dsn)
        connection = await asyncpg.connect(postgres_dsn)
        try:
            token = await _stream_on(on_a, "", {}, lambda: True)
            await writer.write(connection, 1)
            # A has read event 1 (a stream from the token got it): the next stream joins
            # past it, so its replay from the older token announces it.
            seen: dict[str, list[int]] = {}
            await _stream_on(on_a, token, seen, lambda: seen == writer.expected)
            changes: dict[str, list[int]] = {}
            following = asyncio.create_task(_stream_on(on_a, token, changes, lambda: all(
                len(changes.get(n, [])) >= len(c) for n, c in writer.expected.items()
            )))  # fmt: skip
            deadline = time.monotonic() + CAUGHT_UP_WITHIN_S
            while changes != {n: [_STARTED] for n in writer.expected}:
                assert time.monotonic() < deadline, f"no replay of event 1: {changes}"
                await asyncio.sleep(0.02)
            await writer.write(connection, 2)  # event 2 starts, event 1 ends
            await following
        finally:
            await connection.close()
        assert changes == writer.expected
