"""The QueryService end to end: real gRPC, PostgreSQL and Redis, analytics writing the data.

A simulator camera with known ground truth (``tests/analytics/simbridge``: a stopped vehicle,
a pedestrian on the road and a wrong-way driver injected into a signalised scene) is streamed
as DetectionBatches into a host running analytics and query, with a fake decoder serving the
camera's scene; then every QueryService method is checked over gRPC against the simulator's
truth (counts exact, speeds within 3 km/h, incidents by type and time), against the engine
run in-process (events exactly as computed), and against each other (the live stream ends
in the state GetEvent reads). Further tests: StreamEvents resumption, bad input (status,
reason and field), the answer cache (hits, invalidation by analytics' commits, Redis down)
and shutdown ending open streams.

Each test has its own database, camera id and Redis prefix, so nothing leaks between tests
(or between runs) through Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import numpy as np
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from redis.asyncio import Redis

from its.analytics.v1 import detection_batch_pb2
from its.camera.v1 import camera_pb2
from its.common.v1 import detection_pb2, geometry_pb2, time_range_pb2
from its.query.v1 import event_pb2, query_service_pb2, query_service_pb2_grpc
from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import (
    AnalyticsServiceSettings,
    QueryCacheSettings,
    QueryServiceSettings,
    RedisSettings,
    ServiceHost,
)
from its_camera_ai.query.server import UNIT as QUERY_UNIT
from its_camera_ai.testing import host_settings, metric_value
from tests.analytics.test_service_support import (
    camera_proto,
    recent_start_ns,
    serve_cameras,
    stored_records,
    stream,
    to_batches,
)
from tests.conftest import POSTGRES_ADMIN_DSN, REDIS_URL, free_port, rpc_error_details

sim = pytest.importorskip("its_camera_ai.sim")

from tests.analytics import simbridge  # noqa: E402

_NS = 1_000_000_000
_HEARTBEAT_S = 0.3
_PER_BATCH = 16
_MOTOR = {"car", "truck", "bus", "motorcycle"}
_MOTOR_CLASSES = {
    "car": detection_pb2.OBJECT_CLASS_CAR,
    "truck": detection_pb2.OBJECT_CLASS_TRUCK,
    "bus": detection_pb2.OBJECT_CLASS_BUS,
    "motorcycle": detection_pb2.OBJECT_CLASS_MOTORCYCLE,
}
_STARTED = query_service_pb2.EVENT_CHANGE_TYPE_STARTED
_UPDATED = query_service_pb2.EVENT_CHANGE_TYPE_UPDATED
_ENDED = query_service_pb2.EVENT_CHANGE_TYPE_ENDED
_HEARTBEAT = query_service_pb2.EVENT_CHANGE_TYPE_HEARTBEAT
_L2R = geometry_pb2.CROSSING_DIRECTION_LEFT_TO_RIGHT
_R2L = geometry_pb2.CROSSING_DIRECTION_RIGHT_TO_LEFT
# Sim direction (+1: left to right of the line) as the wire's CrossingDirection.
_WIRE_DIRECTION = {1: _L2R, -1: _R2L}

# Seed 1's signalised scene with the three incidents: the simulator records all three, the
# engine detects each once (the stopped vehicle's event ends inside the run, the others are
# still open at its end) and counts every observable crossing of the run, so the truth
# below holds over the whole run, not only away from its edges.
_DURATION_S = 80.0
_SCENE = sim.SceneConfig(
    seed=1,
    fps=10.0,
    incidents=(
        sim.IncidentConfig(kind="stopped_vehicle", start_s=5.0, duration_s=30.0),
        sim.IncidentConfig(kind="pedestrian_on_road", start_s=10.0, duration_s=10.0),
        sim.IncidentConfig(kind="wrong_way", start_s=15.0),
    ),
)


# -- the scene and its truth -------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene_run() -> simbridge.SimRun:
    """The scene through the engine in-process, captured recently (made once per module:
    every test streams it into its own fresh database)."""
    return simbridge.run_sim(_SCENE, _DURATION_S, start_ns=recent_start_ns(_DURATION_S))


@dataclass(frozen=True)
class _Truth:
    """What the simulator says a camera could count (motor vehicles, observable crossings)."""

    vehicles: int  # distinct vehicles counted (camera scope)
    by_direction: dict[int, int]  # wire direction -> crossings of the line
    by_class: dict[int, int]  # wire class -> vehicles
    mean_speed_kmh: float  # mean true speed of the vehicles at their (first) crossing
    lines: frozenset[str]


def _truth(run: simbridge.SimRun) -> _Truth:
    observable = simbridge._observable(run)  # the rule score_counts uses
    crossings = sorted(
        (c for c in run.crossings_truth if observable(c) and c.cls in _MOTOR),
        key=lambda c: c.time_s,
    )
    first: dict[int, Any] = {}
    for c in crossings:
        first.setdefault(c.track_id, c)
    directions = Counter(_WIRE_DIRECTION[c.direction] for c in crossings)
    classes = Counter(_MOTOR_CLASSES[c.cls] for c in first.values())
    speeds = [run.truth_speed[(c.track_id, c.frame)] for c in first.values()]
    return _Truth(
        vehicles=len(first),
        by_direction={int(k): n for k, n in directions.items()},
        by_class={int(k): n for k, n in classes.items()},
        mean_speed_kmh=float(np.mean(speeds)),
        lines=frozenset(c.line.lower() for c in crossings),
    )


def _event_key(event: event_pb2.Event) -> tuple[Any, ...]:
    end = event.end_time.ToNanoseconds() // 1000 if event.HasField("end_time") else None
    track = event.track_id if event.HasField("track_id") else None
    return (int(event.type), event.start_time.ToNanoseconds() // 1000, end, track,
            int(event.object_class), event.lane_id)  # fmt: skip


def _record_key(record: Any) -> tuple[Any, ...]:
    # Stored to the microsecond, as the service reads them back.
    end = None if record.end_time_ns is None else record.end_time_ns // 1000
    return (int(record.type), record.start_time_ns // 1000, end, record.track_id,
            int(record.object_class), record.lane_id)  # fmt: skip


# -- one host on loopback --------------------------------------------------------------------


def _batches_until(
    batches: Sequence[detection_batch_pb2.DetectionBatch], scene_s: float, fps: float
) -> int:
    """The index of the first batch at or after scene time ``scene_s``."""
    return min(len(batches), round(scene_s * fps) // _PER_BATCH)


@dataclass
class _Env:
    host: ServiceHost
    stub: query_service_pb2_grpc.QueryServiceAsyncStub
    channel: grpc.aio.Channel
    camera_id: str
    dsn: str
    batches_fed: int = 0
    stopped: bool = False

    @property
    def camera(self) -> str:
        return f"cameras/{self.camera_id}"

    async def feed(self, batches: Sequence[detection_batch_pb2.DetectionBatch]) -> None:
        """The batches on one analytics stream, every frame durably accepted."""
        acks = await stream(self.channel, batches)
        assert sum(a.accepted_frames for a in acks) == sum(len(b.frames) for b in batches)
        self.batches_fed += len(batches)

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.host, name, **labels)

    async def announced(self) -> None:
        """Wait until the query side heard analytics announce every batch fed (one commit
        announcement each): from then on no announcement in flight can drop an answer."""
        deadline = time.monotonic() + 10.0
        while self.metric("query_cache_invalidations_total") < self.batches_fed:
            assert time.monotonic() < deadline, "commit announcements did not arrive"
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.stopped = True
        await self.host.stop()


def _scene_camera(run: simbridge.SimRun | None = None) -> camera_pb2.Camera:
    if run is not None:
        return camera_proto(run.spec, run.size)
    scene = sim.Scene(_SCENE, size=(640, 360))
    return camera_proto(simbridge.analytics_scene(scene), (640, 360))


@contextlib.asynccontextmanager
async def _serving(
    dsn: str,
    tmp_path: Path,
    camera: camera_pb2.Camera,
    *,
    analytics: bool = True,
    redis_url: str | None = REDIS_URL,
    cache: QueryCacheSettings | None = None,
    camera_id: str | None = None,
    poll_seconds: float = 0.1,
    buffer_events: int = 10_000,
) -> AsyncIterator[_Env]:
    """A host running analytics (optionally) and query over a camera (a fresh id unless
    given), its scene served by a fake decoder; Redis under a prefix of its own."""
    camera_id = camera_id or f"sim-{uuid.uuid4().hex[:10]}"
    prefix = f"its:test:query-service:{uuid.uuid4().hex[:12]}"
    async with serve_cameras({camera_id: camera}) as decoder:
        analytics_settings = AnalyticsServiceSettings(
            spool_dir=tmp_path / "spool", decoder_target=decoder, redis_prefix=prefix
        )
        query_settings = QueryServiceSettings(
            decoder_target=decoder,
            stream_heartbeat_seconds=_HEARTBEAT_S,
            stream_poll_seconds=poll_seconds,
            stream_buffer_events=buffer_events,
            cache=cache or QueryCacheSettings(),
        )
        settings = host_settings(dsn).model_copy(
            update={
                "redis": RedisSettings(url=redis_url, socket_timeout_seconds=0.5),
                "analytics": analytics_settings,
                "query": query_settings,
            }
        )
        units = [analytics_unit(analytics_settings), QUERY_UNIT] if analytics else [QUERY_UNIT]
        host = ServiceHost(settings, units)
        await host.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
        env = _Env(host, query_service_pb2_grpc.QueryServiceStub(channel), channel, camera_id, dsn)
        try:
            yield env
        finally:
            await channel.close()
            if not env.stopped:
                await host.stop()
            if redis_url == REDIS_URL:
                redis = Redis.from_url(REDIS_URL)
                try:
                    keys = [k async for k in redis.scan_iter(match=f"{prefix}:*")]
                    if keys:
                        await redis.delete(*keys)
                finally:
                    await redis.aclose()


# -- StreamEvents as a client sees it ----------------------------------------------------------


@dataclass
class _Watch:
    """One StreamEvents call read in the background: messages with their arrival times."""

    call: Any
    received: list[tuple[float, query_service_pb2.StreamEventsResponse]] = field(
        default_factory=list
    )
    error: grpc.aio.AioRpcError | None = None
    task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        stub: query_service_pb2_grpc.QueryServiceAsyncStub,
        request: query_service_pb2.StreamEventsRequest,
    ) -> _Watch:
        """Open the stream and wait until it delivers (the first message, a replayed change or
        a heartbeat, proves the client joined the hub). Retries while the hub is not ready."""
        deadline = time.monotonic() + 10.0
        while True:
            watch = cls(stub.StreamEvents(request))
            watch.task = asyncio.create_task(watch._read())
            await watch.wait(watch.answered, "first message")
            if watch.error is None:
                return watch
            if watch.error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise watch.error
            await asyncio.sleep(0.1)

    def answered(self) -> bool:
        return bool(self.received) or self.error is not None

    async def _read(self) -> None:
        try:
            async for message in self.call:
                self.received.append((time.monotonic(), message))
        except grpc.aio.AioRpcError as error:
            self.error = error

    @property
    def messages(self) -> list[query_service_pb2.StreamEventsResponse]:
        return [m for _, m in self.received]

    @property
    def changes(self) -> list[query_service_pb2.StreamEventsResponse]:
        return [m for m in self.messages if m.change_type != _HEARTBEAT]

    async def wait(self, predicate: Callable[[], object], what: str, seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while not predicate():
            if self.task is not None and self.task.done() and not predicate():
                raise AssertionError(f"stream ended waiting for {what}: {self.error!r}")
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    async def caught_up(self) -> None:
        """Wait for a heartbeat that began waiting after now: the hub (polling every 0.1 s,
        woken by commits) had nothing more for this client for a whole heartbeat period."""
        after = time.monotonic() + _HEARTBEAT_S + 0.1
        await self.wait(
            lambda: any(t >= after and m.change_type == _HEARTBEAT for t, m in self.received),
            "a heartbeat after the changes",
        )

    async def close(self) -> None:
        self.call.cancel()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


# -- request helpers ---------------------------------------------------------------------------


async def _until(predicate: Callable[[], object], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


def _range(start_ns: int, end_ns: int) -> time_range_pb2.TimeRange:
    return time_range_pb2.TimeRange(start_time=_timestamp(start_ns), end_time=_timestamp(end_ns))


def _counts_request(
    camera: str, start_ns: int, end_ns: int, bin_seconds: int = 60, **fields: Any
) -> query_service_pb2.GetTrafficCountsRequest:
    request = query_service_pb2.GetTrafficCountsRequest(
        camera=camera, time_range=_range(start_ns, end_ns), **fields
    )
    request.bin_size.FromSeconds(bin_seconds)
    return request


def _floor(ns: int, seconds: int) -> int:
    return ns - ns % (seconds * _NS)


def _ceil(ns: int, seconds: int) -> int:
    return -(-ns // (seconds * _NS)) * seconds * _NS


def _run_span(run: simbridge.SimRun) -> tuple[int, int]:
    """[first capture, last capture] of the run, ns."""
    return run.inputs[0].capture_time_ns, run.inputs[-1].capture_time_ns


def _volume(response: query_service_pb2.GetTrafficCountsResponse) -> int:
    return sum(b.volume for b in response.bins)


async def _listed(env: _Env) -> dict[str, event_pb2.Event]:
    """The camera's stored events as GetEvent reads them now (names from the table: no
    answer cache between the test and the truth)."""
    _, records = await stored_records(env.dsn, env.camera_id)
    out = {}
    for event_id in records:
        name = f"{env.camera}/events/{event_id}"
        response = await env.stub.GetEvent(query_service_pb2.GetEventRequest(name=name))
        out[name] = response.event
    return out


def _error_info(error: grpc.aio.AioRpcError) -> tuple[str, list[str], dict[str, str]]:
    """(ErrorInfo reason, BadRequest fields, ErrorInfo metadata) of a failed call."""
    reason, fields = rpc_error_details(error)
    status = rpc_status.from_call(error)
    metadata: dict[str, str] = {}
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            metadata = dict(info.metadata)
    return reason, fields, metadata


# -- 1. correctness end to end -----------------------------------------------------------------


async def test_answers_match_the_simulators_ground_truth(
    postgres_dsn: str, tmp_path: Path, scene_run: simbridge.SimRun
) -> None:
    run = scene_run
    truth = _truth(run)
    # The scene as the engine saw it: the incidents the simulator injected are its events.
    missed, false, _ = simbridge.score_incidents(run)
    assert len(run.incidents) == 3
    assert (missed, false) == ([], [])
    assert truth.lines == {"main"}
    first_ns, last_ns = _run_span(run)

    async with _serving(postgres_dsn, tmp_path, _scene_camera(run)) as env:
        # Live streams opened before any data: one for this camera, one for every camera.
        watch = await _Watch.open(
            env.stub, query_service_pb2.StreamEventsRequest(camera=env.camera)
        )
        everything = await _Watch.open(env.stub, query_service_pb2.StreamEventsRequest())
        # ...and two filtered ones: wrong-way only, and critical only (the wrong-way driver;
        # the stopped vehicle and the pedestrian are HIGH).
        wrong_way_only = await _Watch.open(env.stub, query_service_pb2.StreamEventsRequest(
            types=[event_pb2.EVENT_TYPE_WRONG_WAY]))  # fmt: skip
        critical = await _Watch.open(env.stub, query_service_pb2.StreamEventsRequest(
            camera=env.camera, min_severity=event_pb2.SEVERITY_CRITICAL))  # fmt: skip
        await env.feed(to_batches(run.inputs, "sim-0", _PER_BATCH, camera=env.camera_id))

        # -- counts: 60 s bins over a range starting 4 minutes before the data.
        start_ns = _floor(first_ns, 60) - 240 * _NS
        end_ns = _ceil(last_ns, 60) + 120 * _NS
        counts = await env.stub.GetTrafficCounts(_counts_request(env.camera, start_ns, end_ns))
        starts = [b.start_time.ToNanoseconds() for b in counts.bins]
        assert starts == list(range(start_ns, end_ns, 60 * _NS)), "dense, aligned, covering"
        assert _volume(counts) == truth.vehicles
        assert counts.bins[0].volume == 0
        assert not counts.bins[0].partial
        assert sum(b.volume == 0 for b in counts.bins) >= 5, "zeros are present"
        assert counts.bins[-1].partial, "a bin after the newest data is not final"
        by_class: Counter[int] = Counter()
        for b in counts.bins:
            assert sum(c.count for c in b.class_counts) == b.volume
            assert all(c.count > 0 for c in b.class_counts)
            by_class.update({c.object_class: c.count for c in b.class_counts})
        assert dict(by_class) == truth.by_class

        # 900 s bins: the exact merge of the stored bins.
        quarter = await env.stub.GetTrafficCounts(
            _counts_request(env.camera, start_ns, end_ns, 900)
        )
        first_q, end_q = _floor(start_ns, 900), _ceil(end_ns, 900)
        assert [b.start_time.ToNanoseconds() for b in quarter.bins] == list(
            range(first_q, end_q, 900 * _NS)
        )
        assert _volume(quarter) == truth.vehicles

        # By line, by line and direction, by direction alone, by class.
        line = await env.stub.GetTrafficCounts(
            _counts_request(env.camera, start_ns, end_ns, line_id="main")
        )
        assert _volume(line) == sum(truth.by_direction.values())
        for direction in (_L2R, _R2L):
            for line_id in ("main", ""):
                answer = await env.stub.GetTrafficCounts(
                    _counts_request(
                        env.camera, start_ns, end_ns, 900, line_id=line_id, direction=direction
                    )
                )
                assert _volume(answer) == truth.by_direction.get(direction, 0), (
                    line_id,
                    direction,
                    simbridge.missed_crossings(run, 0.0),
                )
        # By lane (each vehicle in the lane it was counted in), and by line within a lane:
        # the engine's crossings carry the lane (the simulator knows none).
        motor = [c for c in run.crossings if int(c.object_class) in _MOTOR_CLASSES.values()]
        lane_vehicles = Counter(
            c.lane_id for c in {c.track_id: c for c in reversed(motor)}.values()
        )
        lane_crossings = Counter(c.lane_id for c in motor if c.line_id == "main")
        assert sum(lane_vehicles.values()) == truth.vehicles
        for lane in run.spec.lanes:
            for line_id, expected in (("", lane_vehicles), ("main", lane_crossings)):
                answer = await env.stub.GetTrafficCounts(
                    _counts_request(
                        env.camera, start_ns, end_ns, 900, lane_id=lane.id, line_id=line_id
                    )
                )
                assert _volume(answer) == expected.get(lane.id, 0), (lane.id, line_id)
        cars = await env.stub.GetTrafficCounts(
            _counts_request(env.camera, start_ns, end_ns, classes=[detection_pb2.OBJECT_CLASS_CAR])
        )
        assert _volume(cars) == truth.by_class[detection_pb2.OBJECT_CLASS_CAR]

        # -- summary over the minutes holding the run.
        summary_range = _range(_floor(first_ns, 60), _ceil(last_ns + 1, 60))
        summary = await env.stub.GetTrafficSummary(
            query_service_pb2.GetTrafficSummaryRequest(
                cameras=[env.camera], time_range=summary_range
            )
        )
        assert [s.camera for s in summary.summaries] == [env.camera]
        total = summary.summaries[0].total
        assert total.volume == truth.vehicles
        assert total.HasField("mean_speed_kmh")
        assert abs(total.mean_speed_kmh - truth.mean_speed_kmh) <= 3.0
        seconds = (_ceil(last_ns + 1, 60) - _floor(first_ns, 60)) / _NS
        assert total.flow_rate_vehicles_per_hour == pytest.approx(truth.vehicles * 3600 / seconds)
        assert [lane.lane_id for lane in summary.summaries[0].lanes] == [
            lane.id for lane in run.spec.lanes
        ]
        # Every camera (empty list): this one is among them, with the same figures.
        every = await env.stub.GetTrafficSummary(
            query_service_pb2.GetTrafficSummaryRequest(time_range=summary_range)
        )
        assert [s.total.volume for s in every.summaries if s.camera == env.camera] == [
            truth.vehicles
        ]

        # -- events: stored exactly as the engine computed them.
        listed = await env.stub.ListEvents(query_service_pb2.ListEventsRequest(parent=env.camera))
        assert not listed.next_page_token
        assert Counter(map(_event_key, listed.events)) == Counter(
            map(_record_key, run.events.values())
        )
        assert {e.type for e in listed.events} == {
            int(simbridge.KIND[i.kind]) for i in run.incidents
        }
        for event in listed.events:
            assert event.name.startswith(f"{env.camera}/events/")
            assert event.HasField("evidence")
            got = await env.stub.GetEvent(query_service_pb2.GetEventRequest(name=event.name))
            assert got.event == event
        ended = [e for e in listed.events if e.HasField("end_time")]
        assert [e.type for e in ended] == [event_pb2.EVENT_TYPE_STOPPED_VEHICLE]
        # Newest first by default.
        assert [e.start_time.ToNanoseconds() for e in listed.events] == sorted(
            (e.start_time.ToNanoseconds() for e in listed.events), reverse=True
        )
        ended_only = await env.stub.ListEvents(
            query_service_pb2.ListEventsRequest(parent=env.camera, filter="end_time:*")
        )
        assert [e.name for e in ended_only.events] == [e.name for e in ended]
        by_severity = await env.stub.ListEvents(
            query_service_pb2.ListEventsRequest(parent=env.camera, order_by="severity desc")
        )
        assert by_severity.events[0].type == event_pb2.EVENT_TYPE_WRONG_WAY
        wrong_way = await env.stub.ListEvents(
            query_service_pb2.ListEventsRequest(
                parent="cameras/-", filter="type = EVENT_TYPE_WRONG_WAY"
            )
        )
        assert [e.type for e in wrong_way.events] == [event_pb2.EVENT_TYPE_WRONG_WAY]

        # -- the live streams: every change, ending in the stored state.
        current = {e.name: e for e in listed.events}

        def settled(w: _Watch) -> bool:
            last = {m.event.name: m.event for m in w.changes}
            return last == current

        for w in (watch, everything):
            await w.wait(lambda w=w: settled(w), "the stream to reach the stored state")  # type: ignore[misc]
            assert all(m.resume_token for m in w.messages)
            per_event: dict[str, list[query_service_pb2.StreamEventsResponse]] = {}
            for m in w.changes:
                per_event.setdefault(m.event.name, []).append(m)
            # (That each event's first message is STARTED is checked deterministically by
            # test_live_stream_starts_every_event_with_started: here, with the hub woken by
            # each commit, it holds unless the host is slow.)
            assert _STARTED in {m.change_type for m in w.changes}
            for name, messages in per_event.items():
                kinds = [m.change_type for m in messages]
                assert _STARTED not in kinds[1:], (name, kinds)
                assert all(m.event.start_time == current[name].start_time for m in messages)
                assert set(kinds[1:-1]) <= {_UPDATED}, (name, kinds)
                if current[name].HasField("end_time"):
                    assert kinds[-1] == _ENDED, (name, kinds)
                else:
                    assert _ENDED not in kinds
                for m in messages:
                    assert (m.change_type == _ENDED) == m.event.HasField("end_time")
            heartbeats = [m for m in w.messages if m.change_type == _HEARTBEAT]
            assert heartbeats
            assert all(not m.HasField("event") for m in heartbeats)
        for w in (wrong_way_only, critical):
            await w.caught_up()
            assert w.changes, "the wrong-way driver reaches the filtered streams"
            assert {m.event.type for m in w.changes} == {event_pb2.EVENT_TYPE_WRONG_WAY}
            assert all(m.event.severity == event_pb2.SEVERITY_CRITICAL for m in w.changes)
            assert w.changes[0].change_type == _STARTED
        for w in (watch, everything, wrong_way_only, critical):
            await w.close()

        # -- live figures.
        stats = await env.stub.GetCameraStats(
            query_service_pb2.GetCameraStatsRequest(name=f"{env.camera}/stats")
        )
        assert stats.stats.name == f"{env.camera}/stats"
        assert stats.stats.HasField("last_frame_time")
        assert stats.stats.last_frame_time.ToNanoseconds() // 1000 == last_ns // 1000
        assert stats.stats.HasField("update_time")
        assert stats.stats.open_events == sum(e.end_time_ns is None for e in run.events.values())
        assert stats.stats.processed_fps >= 0.0


# -- 2. StreamEvents resumption ----------------------------------------------------------------


async def test_stream_resumes_with_exactly_the_missed_changes(
    postgres_dsn: str, tmp_path: Path, scene_run: simbridge.SimRun
) -> None:
    """Four parts of the scene: streamed live; missed while the client was away, then
    replayed; live after the replay; missed across a restart of the server, then replayed
    by the next one."""
    run = scene_run
    camera = _scene_camera(run)
    async with _serving(postgres_dsn, tmp_path, camera) as env:
        batches = to_batches(run.inputs, "sim-0", _PER_BATCH, camera=env.camera_id)
        cuts = [_batches_until(batches, s, run.fps) for s in (38.0, 66.0, 72.0)]
        parts = [batches[a:b] for a, b in zip([0, *cuts], [*cuts, len(batches)], strict=True)]
        request = query_service_pb2.StreamEventsRequest(camera=env.camera)

        before = await _Watch.open(env.stub, request)
        await env.feed(parts[0])
        await before.caught_up()
        seen = {m.event.name: m.event for m in before.changes}
        assert seen, "the first part has events"
        heartbeats = [m for m in before.messages if m.change_type == _HEARTBEAT]
        assert heartbeats
        assert all(m.resume_token and not m.HasField("event") for m in heartbeats)
        token = before.messages[-1].resume_token
        await before.close()

        # Missed while disconnected: every event that changed, in its latest state.
        await env.feed(parts[1])
        now = await _listed(env)
        missed = {name: event for name, event in now.items() if seen.get(name) != event}
        assert missed, "the second part changes events"

        after = await _Watch.open(env.stub, query_service_pb2.StreamEventsRequest(
            camera=env.camera, resume_token=token))  # fmt: skip
        await after.caught_up()
        replay = after.changes
        names = [m.event.name for m in replay]
        assert len(names) == len(set(names)), f"duplicates in the replay: {names}"
        assert {m.event.name: m.event for m in replay} == missed
        for m in replay:
            assert m.resume_token
            assert (m.change_type == _ENDED) == m.event.HasField("end_time")
        assert all(m.change_type != _HEARTBEAT for m in after.messages[: len(replay)]), (
            "the replay comes first"
        )

        # Then live: the third part's changes, none of them a repeat.
        replayed = len(after.received)
        await env.feed(parts[2])
        final = await _listed(env)
        changed = {name: event for name, event in final.items() if now.get(name) != event}
        assert changed, "the third part changes events"

        def live() -> list[query_service_pb2.StreamEventsResponse]:
            return [m for _, m in after.received[replayed:] if m.change_type != _HEARTBEAT]

        def caught_up_live() -> bool:
            last = {m.event.name: m.event for m in live()}
            return all(last.get(name) == event for name, event in changed.items())

        await after.wait(caught_up_live, "the live changes")
        await after.caught_up()
        assert {m.event.name for m in live()} == set(changed), "only what changed, live"
        everything = [*before.changes, *replay, *live()]
        keys = [(m.event.name, m.change_type, m.event.update_time.ToNanoseconds())
                for m in everything]  # fmt: skip
        assert len(keys) == len(set(keys)), "a change was sent twice"

        # Reopened from the last live token: nothing is missed, nothing replayed.
        again = await _Watch.open(env.stub, query_service_pb2.StreamEventsRequest(
            camera=env.camera, resume_token=after.messages[-1].resume_token))  # fmt: skip
        await again.caught_up()
        assert again.changes == []
        await again.close()

        # A malformed token: INVALID_ARGUMENT naming it.
        for bad in ("not-a-token", "eyJ4IjoxfQ", "%%%"):
            call = env.stub.StreamEvents(query_service_pb2.StreamEventsRequest(resume_token=bad))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
            reason, _, metadata = _error_info(caught.value)
            assert metadata.get("field") == "resume_token", (bad, reason, metadata)

        # The server shuts down under the open stream: UNAVAILABLE, reconnect with the token.
        await env.stop()
        await after.wait(lambda: after.error is not None, "the stream to end")
        assert after.error is not None
        assert after.error.code() == grpc.StatusCode.UNAVAILABLE
        token = after.messages[-1].resume_token
        shown = {m.event.name: m.event for m in after.changes}

    async with _serving(postgres_dsn, tmp_path, camera, camera_id=env.camera_id) as env:
        await env.feed(parts[3])
        latest = await _listed(env)
        missed = {name: event for name, event in latest.items() if shown.get(name) != event}
        assert missed, "the fourth part changes events"
        resumed = await _Watch.open(env.stub, query_service_pb2.StreamEventsRequest(
            camera=env.camera, resume_token=token))  # fmt: skip
        await resumed.caught_up()
        names = [m.event.name for m in resumed.changes]
        assert len(names) == len(set(names)), f"duplicates in the replay: {names}"
        assert {m.event.name: m.event for m in resumed.changes} == missed
        await resumed.close()


async def test_live_stream_starts_every_event_with_started(
    postgres_dsn: str, tmp_path: Path, scene_run: simbridge.SimRun
) -> None:
    """A client streaming live gets each event first as STARTED (UPDATED first is reserved
    for an event rising to min_severity; coalescing into the latest state is for replays),
    and an ended one last as ENDED, even when analytics commits several changes of an event
    between two reads of the hub: here Redis is down, so the hub polls (every 2 s), while
    analytics commits batches as fast as they come."""
    run = scene_run
    closed = f"redis://127.0.0.1:{free_port()}/0"
    async with _serving(
        postgres_dsn, tmp_path, _scene_camera(run), redis_url=closed, poll_seconds=2.0
    ) as env:
        watch = await _Watch.open(env.stub, query_service_pb2.StreamEventsRequest())
        await env.feed(to_batches(run.inputs, "sim-0", _PER_BATCH, camera=env.camera_id))
        stored = await _listed(env)
        await watch.wait(
            lambda: {m.event.name: m.event for m in watch.changes} == stored,
            "the stream to reach the stored state",
        )
        kinds: dict[str, list[str]] = {}
        for m in watch.changes:
            name = query_service_pb2.EventChangeType.Name(m.change_type)
            kinds.setdefault(m.event.name, []).append(name.removeprefix("EVENT_CHANGE_TYPE_"))
        await watch.close()

        # A stream broken between a STARTED and the change right behind it (a rolling
        # restart can end it there) resumes with that event's latest change, not a second
        # STARTED.
        changes = watch.changes
        pairs = [
            (m, changes[i + 1])
            for i, m in enumerate(changes[:-1])
            if m.change_type == _STARTED and changes[i + 1].event.name == m.event.name
        ]
        assert pairs, "some event's start collapsed into a later change between two reads"
        for started, _ in pairs[:3]:
            resumed = await _Watch.open(env.stub, query_service_pb2.StreamEventsRequest(
                resume_token=started.resume_token))  # fmt: skip
            await resumed.caught_up()
            await resumed.close()
            first = next(m for m in resumed.changes if m.event.name == started.event.name)
            assert first.change_type != _STARTED, started.event.name
        assert set(kinds) == set(stored)
        for name, sequence in kinds.items():
            assert sequence[0] == "STARTED", f"{name}: {sequence}"
            if stored[name].HasField("end_time"):
                assert sequence[-1] == "ENDED", f"{name}: {sequence}"


@contextlib.asynccontextmanager
async def _transaction_elsewhere() -> AsyncIterator[None]:
    """A write transaction (an xid assigned, nothing written) open in another database of
    the same PostgreSQL server, e.g. another application's, for the duration."""
    name = f"its_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        other = await asyncpg.connect(POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}")
        try:
            transaction = other.transaction()
            await transaction.start()
            await other.fetchval("SELECT pg_current_xact_id()::text")
            yield
            await transaction.rollback()
        finally:
            await other.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_live_stream_is_not_held_back_by_other_databases(
    postgres_dsn: str, tmp_path: Path, scene_run: simbridge.SimRun
) -> None:
    """Events stream live while a transaction runs in another database on the same server
    (held as briefly as the check allows: it holds back every hub on the server)."""
    run = scene_run
    async with _serving(postgres_dsn, tmp_path, _scene_camera(run)) as env:
        batches = to_batches(run.inputs, "sim-0", _PER_BATCH, camera=env.camera_id)
        # Up to just past the first event the engine emits (the pedestrian, at about 25 s).
        first = _batches_until(batches, 27.0, run.fps)
        watch = await _Watch.open(env.stub, query_service_pb2.StreamEventsRequest())
        async with _transaction_elsewhere():
            await env.feed(batches[:first])
            stored = await _listed(env)
            assert stored, "the batches fed have an event"
            arrived = True
            try:
                await watch.wait(
                    lambda: {m.event.name: m.event for m in watch.changes} == stored,
                    "the event while a transaction runs in another database",
                    seconds=2.0,
                )
            except AssertionError:
                arrived = False
        # Released: it arrives now (so it was the other database's transaction).
        await watch.wait(
            lambda: {m.event.name: m.event for m in watch.changes} == stored, "the event"
        )
        await watch.close()
        assert arrived, (
            "StreamEvents delivered nothing while a transaction ran in another database: the"
            " hub's horizon (pg_snapshot_xmin) is cluster-wide"
        )


# -- 3. bad input ------------------------------------------------------------------------------


_EVENTS_INSERTED = 1005


async def _insert_events(dsn: str, camera_id: str, count: int, prefix: str = "ev") -> None:
    """Stored events as analytics writes them (the columns ListEvents reads)."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO analytics_events (event_id, camera_id, type, severity, start_time,"
            " end_time, track_id, object_class, lane_id, zone_id, evidence, description,"
            " details, update_time)"
            " SELECT $3 || '-' || i, $1, 1 + i % 3, 3,"
            " now() - interval '1 hour' + i * interval '1 s', NULL, i, 1, '', '', NULL,"
            " 'test event', '{}'::jsonb, now()"
            " FROM generate_series(1, $2::integer) AS i",
            camera_id,
            count,
            prefix,
        )
    finally:
        await connection.close()


async def test_bad_requests_name_the_field(postgres_dsn: str, tmp_path: Path) -> None:
    async with _serving(postgres_dsn, tmp_path, _scene_camera(), analytics=False) as env:
        await _insert_events(postgres_dsn, env.camera_id, _EVENTS_INSERTED)
        stub, camera = env.stub, env.camera
        now = time.time_ns()
        hour = 3600 * _NS

        async def fails(
            call: Any, code: grpc.StatusCode, reason: str, fields: list[str] | None = None,
            field: str | None = None,
        ) -> None:  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            error = caught.value
            got_reason, got_fields, metadata = _error_info(error)
            assert (error.code(), got_reason) == (code, reason), error.details()
            if fields is not None:
                assert got_fields == fields, error.details()
            if field is not None:
                assert metadata.get("field") == field, (metadata, error.details())

        invalid = grpc.StatusCode.INVALID_ARGUMENT
        # Unknown camera: NOT_FOUND on every method that names one.
        unknown = "cameras/no-such-camera"
        not_found = (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
        await fails(stub.GetTrafficCounts(_counts_request(unknown, now - hour, now)), *not_found)
        await fails(stub.GetTrafficSummary(query_service_pb2.GetTrafficSummaryRequest(
            cameras=[unknown], time_range=_range(now - hour, now))), *not_found)  # fmt: skip
        await fails(stub.ListEvents(query_service_pb2.ListEventsRequest(parent=unknown)),
                    *not_found)  # fmt: skip
        await fails(stub.GetCameraStats(query_service_pb2.GetCameraStatsRequest(
            name=f"{unknown}/stats")), *not_found)  # fmt: skip
        await fails(stub.GetEvent(query_service_pb2.GetEventRequest(
            name=f"{camera}/events/no-such-event")), *not_found)  # fmt: skip
        await fails(stub.StreamEvents(query_service_pb2.StreamEventsRequest(
            camera=unknown)).read(), *not_found)  # fmt: skip
        # An existing event named under another camera is not found either.
        await fails(stub.GetEvent(query_service_pb2.GetEventRequest(
            name=f"{unknown}/events/ev-1")), *not_found)  # fmt: skip
        assert (await stub.GetEvent(query_service_pb2.GetEventRequest(
            name=f"{camera}/events/ev-1"))).event.name == f"{camera}/events/ev-1"  # fmt: skip
        # A camera the decoder does not list but with recorded data (deleted, say) is readable.
        await _insert_events(postgres_dsn, "gone-camera", 2, prefix="gone")
        gone = await stub.ListEvents(query_service_pb2.ListEventsRequest(
            parent="cameras/gone-camera"))  # fmt: skip
        assert len(gone.events) == 2
        gone_counts = await stub.GetTrafficCounts(
            _counts_request("cameras/gone-camera", now - hour, now)
        )
        assert _volume(gone_counts) == 0

        # A camera analytics has no frames for: its stats are all zero, times unset.
        idle = await stub.GetCameraStats(
            query_service_pb2.GetCameraStatsRequest(name=f"{camera}/stats")
        )
        assert idle.stats.name == f"{camera}/stats"
        assert idle.stats.processed_fps == 0.0
        assert idle.stats.active_tracks == 0
        assert not idle.stats.HasField("last_frame_time")

        # Time ranges.
        await fails(stub.GetTrafficCounts(_counts_request(camera, now, now - hour)),
                    invalid, "INVALID_FIELD", ["time_range.end_time"])  # fmt: skip
        for missing in ("start_time", "end_time"):
            request = _counts_request(camera, now - hour, now)
            request.time_range.ClearField(missing)
            await fails(stub.GetTrafficCounts(request), invalid, "INVALID_FIELD",
                        [f"time_range.{missing}"])  # fmt: skip
        request = _counts_request(camera, now - hour, now)
        request.ClearField("time_range")
        await fails(stub.GetTrafficCounts(request), invalid, "INVALID_FIELD", ["time_range"])
        # Bin sizes: only 60, 900, 3600, 86400 s; at most 10,000 of them.
        await fails(stub.GetTrafficCounts(_counts_request(camera, now - hour, now, 120)),
                    invalid, "INVALID_FIELD", ["bin_size"])  # fmt: skip
        request = _counts_request(camera, now - hour, now)
        request.ClearField("bin_size")
        await fails(stub.GetTrafficCounts(request), invalid, "INVALID_FIELD", ["bin_size"])
        week = 7 * 24 * hour  # 10,080 minutes
        await fails(stub.GetTrafficCounts(_counts_request(camera, now - week, now)),
                    invalid, "INVALID_FIELD", ["time_range"])  # fmt: skip
        ok = await stub.GetTrafficCounts(_counts_request(camera, now - week, now, 3600))
        assert len(ok.bins) in (168, 169)
        assert _volume(ok) == 0
        # Classes and directions that are not values of their enums.
        await fails(stub.GetTrafficCounts(_counts_request(camera, now - hour, now,
                    classes=[detection_pb2.OBJECT_CLASS_UNSPECIFIED])),
                    invalid, "INVALID_FIELD", ["classes"])  # fmt: skip
        await fails(stub.GetTrafficCounts(_counts_request(camera, now - hour, now,
                    direction=7)), invalid, "INVALID_FIELD", ["direction"])  # fmt: skip
        # Scene ids the camera does not have, and malformed ones.
        await fails(stub.GetTrafficCounts(_counts_request(camera, now - hour, now,
                    line_id="no-such-line")), invalid, "INVALID_FIELD", ["line_id"])  # fmt: skip
        await fails(stub.GetTrafficCounts(_counts_request(camera, now - hour, now,
                    lane_id="no-such-lane")), invalid, "INVALID_FIELD", ["lane_id"])  # fmt: skip
        await fails(stub.GetTrafficCounts(_counts_request(camera, now - hour, now,
                    line_id="Not An Id")), invalid, "INVALID_FIELD", ["line_id"])  # fmt: skip
        # Camera names of the wrong form.
        for name in ("", "camera/x", "cameras/", "cameras/Bad_Id", f"{camera}/stats", "x" * 300):
            await fails(stub.GetTrafficCounts(_counts_request(name, now - hour, now)),
                        invalid, "INVALID_FIELD", ["camera"])  # fmt: skip
        await fails(stub.ListEvents(query_service_pb2.ListEventsRequest(parent="cameras")),
                    invalid, "INVALID_FIELD", ["parent"])  # fmt: skip
        await fails(stub.GetCameraStats(query_service_pb2.GetCameraStatsRequest(name=camera)),
                    invalid, "INVALID_FIELD", ["name"])  # fmt: skip
        await fails(stub.GetEvent(query_service_pb2.GetEventRequest(name=f"{camera}/ev-1")),
                    invalid, "INVALID_FIELD", ["name"])  # fmt: skip

        # Summaries: at most 31 days, at most 500 cameras.
        await fails(stub.GetTrafficSummary(query_service_pb2.GetTrafficSummaryRequest(
            cameras=[camera], time_range=_range(now - 32 * 24 * hour, now))),
            invalid, "INVALID_FIELD", ["time_range"])  # fmt: skip
        many = [f"cameras/cam-{i}" for i in range(501)]
        await fails(stub.GetTrafficSummary(query_service_pb2.GetTrafficSummaryRequest(
            cameras=many, time_range=_range(now - hour, now))),
            invalid, "INVALID_FIELD", ["cameras"])  # fmt: skip
        month = await stub.GetTrafficSummary(query_service_pb2.GetTrafficSummaryRequest(
            cameras=[camera], time_range=_range(now - 31 * 24 * hour, now)))  # fmt: skip
        assert [s.camera for s in month.summaries] == [camera]
        # Every camera: the one the decoder lists has no traffic data (zeros, its lanes in
        # scene order). ("gone-camera" has events but no bins: whether it is listed is left
        # open, as real analytics data never has one without the other.)
        every = await stub.GetTrafficSummary(query_service_pb2.GetTrafficSummaryRequest(
            time_range=_range(now - hour, now)))  # fmt: skip
        assert camera in [s.camera for s in every.summaries]
        mine = next(s for s in every.summaries if s.camera == camera)
        assert mine.total.volume == 0
        assert not mine.total.HasField("mean_speed_kmh")
        assert [lane.lane_id for lane in mine.lanes] == [lane.id for lane in _scene_camera().lanes]

        # ListEvents: filters, page sizes, page tokens.
        listing = query_service_pb2.ListEventsRequest
        for bad_filter in ('colour = "red"', "type = ", "type = NOT_A_TYPE", "(type"):
            await fails(stub.ListEvents(listing(parent=camera, filter=bad_filter)),
                        invalid, "INVALID_FILTER", field="filter")  # fmt: skip
        await fails(stub.ListEvents(listing(parent=camera, order_by="colour")),
                    invalid, "INVALID_FIELD", ["order_by"])  # fmt: skip
        await fails(stub.ListEvents(listing(parent=camera, page_size=-1)),
                    invalid, "INVALID_FIELD", ["page_size"])  # fmt: skip
        default = await stub.ListEvents(listing(parent=camera))
        assert len(default.events) == 50
        assert default.next_page_token
        # A huge page size is clamped (at most 1000 a page), not refused: paging through
        # returns every event once.
        names: list[str] = []
        token = ""
        pages = 0
        while True:
            huge = await stub.ListEvents(
                listing(parent=camera, page_size=1_000_000, page_token=token)
            )
            assert 0 < len(huge.events) <= 1000
            names += [e.name for e in huge.events]
            pages += 1
            token = huge.next_page_token
            if not token:
                break
        assert pages >= 2
        assert len(names) == len(set(names)) == _EVENTS_INSERTED
        wrong_way = "type = EVENT_TYPE_WRONG_WAY"
        page = await stub.ListEvents(listing(parent=camera, page_size=2, filter=wrong_way))
        assert page.next_page_token
        page_reason = (invalid, "INVALID_PAGE_TOKEN")
        for changed in (
            listing(parent=camera, page_size=2, page_token=page.next_page_token),
            listing(parent=camera, page_size=2, filter="type = EVENT_TYPE_STOPPED_VEHICLE",
                    page_token=page.next_page_token),
            listing(parent=camera, page_size=2, filter=wrong_way, order_by="severity",
                    page_token=page.next_page_token),
            listing(parent="cameras/-", page_size=2, filter=wrong_way,
                    page_token=page.next_page_token),
            listing(parent=camera, page_size=2, filter=wrong_way, page_token="garbage"),
        ):  # fmt: skip
            await fails(stub.ListEvents(changed), *page_reason, field="page_token")
        same = await stub.ListEvents(listing(parent=camera, page_size=2, filter=wrong_way,
                                             page_token=page.next_page_token))  # fmt: skip
        assert [e.type for e in same.events] == [event_pb2.EVENT_TYPE_WRONG_WAY] * 2

        # StreamEvents' own fields.
        not_a_type = event_pb2.EventType.ValueType(99)
        await fails(stub.StreamEvents(query_service_pb2.StreamEventsRequest(
            types=[not_a_type])).read(), invalid, "INVALID_FIELD", ["types"])  # fmt: skip
        await fails(stub.StreamEvents(query_service_pb2.StreamEventsRequest(
            camera="camera/x")).read(), invalid, "INVALID_FIELD", ["camera"])  # fmt: skip


# -- 4. the answer cache through the service -------------------------------------------------


async def test_cache_serves_repeats_and_never_hides_new_data(
    postgres_dsn: str, tmp_path: Path, scene_run: simbridge.SimRun
) -> None:
    run = scene_run
    truth = _truth(run)
    first_ns, last_ns = _run_span(run)
    start_ns, end_ns = _floor(first_ns, 60), _ceil(last_ns + 1, 60)
    # TTLs far longer than the test: only an invalidation can refresh an answer.
    long_lived = QueryCacheSettings(l1_ttl_seconds=300.0, l2_ttl_seconds=600.0)
    async with _serving(postgres_dsn, tmp_path, _scene_camera(run), cache=long_lived) as env:
        batches = to_batches(run.inputs, "sim-0", _PER_BATCH, camera=env.camera_id)
        half = _batches_until(batches, _DURATION_S / 2, run.fps)
        await _until(lambda: env.metric("query_cache_subscribed") == 1, "subscribed")
        await env.feed(batches[:half])
        await env.announced()
        request = _counts_request(env.camera, start_ns, end_ns)
        hits = env.metric("query_cache_requests_total", level="l1", result="hit")
        first = await env.stub.GetTrafficCounts(request)
        second = await env.stub.GetTrafficCounts(request)
        assert second == first
        assert env.metric("query_cache_requests_total", level="l1", result="hit") == hits + 1
        assert 0 < _volume(first) < truth.vehicles
        # A request inside the same bins shares the answer.
        inside = _counts_request(env.camera, start_ns + 5 * _NS, end_ns - 5 * _NS)
        assert await env.stub.GetTrafficCounts(inside) == first
        assert env.metric("query_cache_requests_total", level="l1", result="hit") == hits + 2
        events_request = query_service_pb2.ListEventsRequest(parent=env.camera)
        events_before = await env.stub.ListEvents(events_request)

        # Analytics commits the rest: the next answers include it (the commits' announcements
        # drop the cached ones, long before any TTL).
        await env.feed(batches[half:])
        deadline = time.monotonic() + 3.0
        while _volume(answer := await env.stub.GetTrafficCounts(request)) != truth.vehicles:
            assert time.monotonic() < deadline, f"stale answer: {_volume(answer)}"
            await asyncio.sleep(0.05)
        assert env.metric("query_cache_invalidations_total") > 0
        stored_now = await _listed(env)
        while True:
            listed = await env.stub.ListEvents(events_request)
            if {e.name: e for e in listed.events} == stored_now:
                break
            assert time.monotonic() < deadline, (events_before, listed)
            await asyncio.sleep(0.05)
        # And, once every announcement is in, the fresh answer is cached again.
        await env.announced()
        answer = await env.stub.GetTrafficCounts(request)
        assert _volume(answer) == truth.vehicles
        hits = env.metric("query_cache_requests_total", level="l1", result="hit")
        assert await env.stub.GetTrafficCounts(request) == answer
        assert env.metric("query_cache_requests_total", level="l1", result="hit") == hits + 1


async def test_answers_come_without_redis(
    postgres_dsn: str, tmp_path: Path, scene_run: simbridge.SimRun
) -> None:
    run = scene_run
    truth = _truth(run)
    first_ns, last_ns = _run_span(run)
    start_ns, end_ns = _floor(first_ns, 60), _ceil(last_ns + 1, 60)
    ttl = 2.0
    closed = f"redis://127.0.0.1:{free_port()}/0"
    async with _serving(
        postgres_dsn, tmp_path, _scene_camera(run), redis_url=closed,
        cache=QueryCacheSettings(l1_ttl_seconds=ttl, l2_ttl_seconds=10.0),
    ) as env:  # fmt: skip
        batches = to_batches(run.inputs, "sim-0", _PER_BATCH, camera=env.camera_id)
        # The first half, then a few batches up to just past the next vehicle counted.
        after_half = min(
            run.seconds(c.time_ns)
            for c in run.crossings
            if run.seconds(c.time_ns) > _DURATION_S / 2
            and int(c.object_class) in _MOTOR_CLASSES.values()
        )
        half, more = (
            _batches_until(batches, s, run.fps) for s in (_DURATION_S / 2, after_half + 2)
        )
        watch = await _Watch.open(env.stub, query_service_pb2.StreamEventsRequest())
        await env.feed(batches[:half])
        request = _counts_request(env.camera, start_ns, end_ns)
        computed = time.monotonic()
        first = await env.stub.GetTrafficCounts(request)
        hits = env.metric("query_cache_requests_total", level="l1", result="hit")
        assert await env.stub.GetTrafficCounts(request) == first
        assert env.metric("query_cache_requests_total", level="l1", result="hit") == hits + 1
        assert env.metric("query_cache_requests_total", level="l2", result="error") >= 1
        assert 0 < _volume(first) < truth.vehicles

        # New data inside the TTL (a few batches: normally fed well within it): no
        # announcement can arrive, so the cached answer may still be served, but once the TTL
        # has run from its computation the answer is fresh.
        await env.feed(batches[half:more])
        await asyncio.sleep(computed + ttl + 0.05 - time.monotonic())
        fresh = await env.stub.GetTrafficCounts(request)
        assert _volume(fresh) > _volume(first), "stale beyond the TTL"
        await env.feed(batches[more:])
        await asyncio.sleep(ttl + 0.05)
        assert _volume(await env.stub.GetTrafficCounts(request)) == truth.vehicles
        summary = await env.stub.GetTrafficSummary(query_service_pb2.GetTrafficSummaryRequest(
            cameras=[env.camera], time_range=_range(start_ns, end_ns)))  # fmt: skip
        assert summary.summaries[0].total.volume == truth.vehicles
        listed = await env.stub.ListEvents(query_service_pb2.ListEventsRequest(parent=env.camera))
        assert len(listed.events) == len(run.events)
        # Live figures from the engine state in PostgreSQL; events by polling.
        stats = await env.stub.GetCameraStats(
            query_service_pb2.GetCameraStatsRequest(name=f"{env.camera}/stats")
        )
        assert stats.stats.last_frame_time.ToNanoseconds() // 1000 == last_ns // 1000
        current = {e.name: e for e in listed.events}
        await watch.wait(
            lambda: {m.event.name: m.event for m in watch.changes} == current,
            "the stream to reach the stored state by polling",
        )
        await watch.close()


# -- 5. shutdown -------------------------------------------------------------------------------


async def test_stopping_the_host_ends_open_streams_with_unavailable(
    postgres_dsn: str, tmp_path: Path
) -> None:
    async with _serving(postgres_dsn, tmp_path, _scene_camera(), analytics=False) as env:
        watches = [
            await _Watch.open(env.stub, query_service_pb2.StreamEventsRequest()),
            await _Watch.open(env.stub, query_service_pb2.StreamEventsRequest(camera=env.camera)),
        ]
        started = time.monotonic()
        await env.stop()
        stopped = time.monotonic() - started
        for watch in watches:
            await watch.wait(lambda w=watch: w.error is not None, "the stream to end")  # type: ignore[misc]
            assert watch.error is not None
            assert watch.error.code() == grpc.StatusCode.UNAVAILABLE
            reason, _, _ = _error_info(watch.error)
            assert reason == "SHUTTING_DOWN"
        # Ended at once, not after the drain period ran out on them.
        assert stopped < env.host.settings.grpc.drain_seconds + 1.0


async def test_a_slow_stream_consumer_is_dropped_and_holds_up_nobody(
    postgres_dsn: str, tmp_path: Path
) -> None:
    count = 3000
    async with _serving(
        postgres_dsn, tmp_path, _scene_camera(), analytics=False, buffer_events=1500
    ) as env:
        request = query_service_pb2.StreamEventsRequest(camera=env.camera)
        fast = await _Watch.open(env.stub, request)
        # Opened, never read until the end. Without BDP probing its HTTP/2 window stays at
        # 64 KiB: the server soon cannot write to it, and its place in the hub stays put.
        slow_channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{env.host.grpc_port}", options=[("grpc.http2.bdp_probe", 0)]
        )
        slow_stub = query_service_pb2_grpc.QueryServiceStub(slow_channel)
        slow = slow_stub.StreamEvents(request)
        await asyncio.sleep(0.5)  # both joined the hub
        # Bursts within the buffer: the reader keeps up with each while the other client
        # reads nothing and falls behind what the hub keeps.
        for burst in range(3):
            await _insert_events(env.dsn, env.camera_id, count // 3, prefix=f"burst{burst}")
            done = (burst + 1) * (count // 3)
            await fast.wait(lambda n=done: len(fast.changes) >= n, f"{done} events", 30.0)  # type: ignore[misc]
        assert len(fast.changes) == count
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in slow:
                pass
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        reason, _, _ = _error_info(caught.value)
        assert reason == "OVERLOADED"
        await fast.close()
        await slow_channel.close()
