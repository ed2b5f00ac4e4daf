"""TrafficReader against real PostgreSQL: the real engine's bins and crossings, read back.

The engine runs over synthetic traffic across a day boundary (so every bin size, 60 s to
a day, has a bin on each side of it); its drained bins and crossings are written as the
analytics service writes them. Expected counts are the engine's own crossings counted in
Python, expected summaries its own records summed in Python: neither goes through SQL.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import asyncpg
import numpy as np
import pytest
from asyncpg.pool import PoolConnectionProxy

from its.query.v1 import traffic_pb2
from its_camera_ai.analytics import (
    INSERT_CROSSING,
    UPSERT_BIN,
    BinKey,
    BinRecord,
    CameraAnalytics,
    LineCrossing,
    ObjectClass,
    Scope,
    bin_row,
    level_of_service,
)
from its_camera_ai.analytics.server import MIGRATIONS
from its_camera_ai.common import MigrationSet, apply_migrations
from its_camera_ai.query import TrafficReader
from its_camera_ai.scene import Direction
from tests.analytics import synth

_NS = 1_000_000_000
DAY = 1_700_006_400  # a whole day since the epoch (s); traffic runs 10 min either side
STORED = (60, 900)
MOTOR = (1, 2, 3, 4)  # car, truck, bus, motorcycle
CAM, UNCALIBRATED = synth.CAMERA, "cam-2"
# Mostly cars; bicycles are counted too, but are no motor vehicles.
_KINDS = (
    *[ObjectClass.CAR] * 5,
    ObjectClass.TRUCK,
    ObjectClass.BUS,
    ObjectClass.MOTORCYCLE,
    ObjectClass.BICYCLE,
)


@dataclass
class Recorded:
    """What one engine did: its writes in order, its final records, its crossings."""

    camera: str
    writes: list[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]
    records: dict[BinKey, BinRecord]
    crossings: list[tuple[LineCrossing, int]]  # with the capture time of the frame counting it
    last_ns: int


def _agents(seconds: float, seed: int) -> list[synth.Agent]:
    """Vehicles on three lanes (b1 towards the camera), none from 400 s to 560 s, and three
    cars queueing for 40 s at the end of lane a1 from 200 s."""
    rng = np.random.default_rng(seed)
    agents = []
    for y, sign in ((-1.75, 1.0), (-5.25, 1.0), (1.75, -1.0)):
        t = float(rng.uniform(0.0, 4.0))
        while t < seconds - 20.0:
            quiet = 400.0 <= t < 560.0 or (y == -1.75 and 170.0 <= t < 300.0)
            if not quiet:
                speed = float(rng.uniform(30.0, 90.0))
                kind = _KINDS[int(rng.integers(len(_KINDS)))]
                x0 = 0.0 if sign > 0 else 100.0
                agents.append(synth.Agent(synth.straight(x0, y, sign * speed, t_start=t), kind))
            t += float(rng.uniform(5.0, 11.0))
    v = 40.0 / 3.6
    for i, stop_x in enumerate((90.0, 84.0, 78.0)):
        t0 = 200.0 + 2.0 * i
        arrive, leave = t0 + stop_x / v, 250.0 + 2.0 * i
        knots = [
            (t0, 0.0),
            (arrive, stop_x),
            (leave, stop_x),
            (leave + (105.0 - stop_x) / v, 105.0),
        ]
        agents.append(synth.Agent(synth.piecewise(knots, -1.75)))
    return agents


def _crossing_row(camera: str, c: LineCrossing) -> tuple[Any, ...]:
    return (
        camera,
        c.line_id,
        c.track_id,
        c.time_ns,
        int(c.object_class),
        int(c.direction),
        c.speed_kmh,
        c.lane_id,
    )


@functools.cache
def _recorded(camera: str = CAM, seconds: float = 1200.0, calibrated: bool = True) -> Recorded:
    """Run the engine from 10 min before DAY, draining every 50 frames as the service does;
    the last drain leaves the bins the stream has not passed open (not final)."""
    engine = CameraAnalytics(camera, synth.road_scene(calibrated=calibrated))
    frames = synth.frames(_agents(seconds, seed=7), seconds, fps=4.0, start_ns=(DAY - 600) * _NS)
    out = Recorded(camera, [], {}, [], 0)
    crossing_rows: list[tuple[Any, ...]] = []
    for i, frame in enumerate(frames):
        outcome = engine.process(replace(frame, camera=camera))
        assert outcome.accepted
        out.crossings += [(c, frame.capture_time_ns) for c in outcome.crossings]
        crossing_rows += [_crossing_row(camera, c) for c in outcome.crossings]
        if i % 50 == 49 or i == len(frames) - 1:
            drained = engine.drain_bins()
            out.records.update((r.key, r) for r in drained)
            out.writes.append(([bin_row(r) for r in drained], crossing_rows))
            crossing_rows = []
        out.last_ns = frame.capture_time_ns
    return out


async def _write(pool: asyncpg.Pool[Any], recorded: Recorded) -> None:
    async with pool.acquire() as connection:
        for bins, crossings in recorded.writes:
            await connection.executemany(UPSERT_BIN, bins)
            if crossings:
                await connection.executemany(INSERT_CROSSING, crossings)


@pytest.fixture
async def pool(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    async with asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4) as pool:
        await apply_migrations(pool, [MigrationSet("core", "its_camera_ai.common"), MIGRATIONS])
        yield pool


@pytest.fixture
async def stored(pool: asyncpg.Pool[Any]) -> TrafficReader:
    await _write(pool, _recorded())
    await _write(pool, _recorded(UNCALIBRATED, 300.0, calibrated=False))
    return TrafficReader(pool, STORED)


# -- counts ------------------------------------------------------------------------------------


def _first_per_track(
    crossings: Iterable[tuple[LineCrossing, int]],
) -> list[tuple[LineCrossing, int]]:
    seen: set[int] = set()
    out = []
    for c, frame_ns in crossings:
        if c.track_id not in seen:
            seen.add(c.track_id)
            out.append((c, frame_ns))
    return out


def _stored_ns(c: LineCrossing) -> int:
    return c.time_ns // 1000 * 1000  # the table keeps microseconds


def _counted(
    recorded: Recorded, classes: tuple[int, ...], line: str, direction: int, lane: str
) -> list[tuple[int, int]]:
    """(time, class) of what each path counts, by the contract, from the engine's crossings:
    bins carry the counting frame's time, stored crossings their instant."""
    in_lane = [(c, ns) for c, ns in recorded.crossings if lane in ("", c.lane_id)]
    if line:
        return [
            (_stored_ns(c) if lane else ns, c.object_class)
            for c, ns in in_lane
            if c.line_id == line and direction in (0, c.direction)
        ]
    if direction:
        matching = [c for c, _ in in_lane if c.direction == direction and c.object_class in classes]
        matching.sort(key=lambda c: (_stored_ns(c), c.line_id))
        first = _first_per_track((c, _stored_ns(c)) for c in matching)
    else:
        # The camera's and the lane's bins: each track at its first crossing, in its lane then.
        first = [
            (c, ns) for c, ns in _first_per_track(recorded.crossings) if lane in ("", c.lane_id)
        ]
    return [(ns, c.object_class) for c, ns in first]


def _expected_series(
    recorded: Recorded, start_ns: int, end_ns: int, secs: int, classes: tuple[int, ...], **path: Any
) -> list[tuple[int, dict[int, int]]]:
    width = secs * _NS
    first, stop = start_ns // width * secs, ((end_ns - 1) // width + 1) * secs
    bins: dict[int, Counter[int]] = {start: Counter() for start in range(first, stop, secs)}
    classes = classes or MOTOR
    narrowing = (path.get("line", ""), path.get("direction", 0), path.get("lane", ""))
    for t_ns, cls in _counted(recorded, classes, *narrowing):
        start = t_ns // width * secs
        if start in bins and cls in classes:
            bins[start][cls] += 1
    return [(start, dict(sorted(c.items()))) for start, c in bins.items()]


def _series(bins: list[traffic_pb2.CountBin]) -> list[tuple[int, dict[int, int]]]:
    for b in bins:
        assert b.volume == sum(c.count for c in b.class_counts)
        assert all(c.count > 0 for c in b.class_counts)
    return [(b.start_time.seconds, {c.object_class: c.count for c in b.class_counts}) for b in bins]


# What a count narrows by, by name: every path of TrafficReader.counts, both directions.
_PATHS: dict[str, dict[str, Any]] = {
    "camera": {},
    "line": {"line": "all"},
    "line+direction": {"line": "all", "direction": 1},
    "other-line+direction": {"line": "a1-only", "direction": 1},
    "lane": {"lane": "a1"},
    "lane-towards": {"lane": "b1"},
    "line+lane": {"line": "all", "lane": "a2"},
    "line+lane+direction": {"line": "all", "lane": "b1", "direction": 2},
    "direction": {"direction": 1},
    "other-direction": {"direction": 2},
    "direction+lane": {"direction": 1, "lane": "a1"},
}


def _narrowing(path: dict[str, Any]) -> dict[str, Any]:
    return {
        "line_id": path.get("line", ""),
        "direction": path.get("direction", 0),
        "lane_id": path.get("lane", ""),
    }


@pytest.mark.parametrize("path", _PATHS.values(), ids=_PATHS.keys())
async def test_counts_equal_the_engines_crossings(
    stored: TrafficReader, path: dict[str, Any]
) -> None:
    recorded = _recorded()
    # The newest final bin ends at the last whole minute the stream passed.
    final_until = recorded.last_ns // (60 * _NS) * 60
    assert final_until == DAY + 540
    start, end = (DAY - 600) * _NS, (DAY + 600) * _NS
    for secs in (60, 900, 3600, 86400):
        for classes in ((), (ObjectClass.TRUCK, ObjectClass.BICYCLE)):
            bins = await stored.counts(CAM, start, end, secs, classes=classes, **_narrowing(path))
            expected = _expected_series(recorded, start, end, secs, classes, **path)
            assert _series(bins) == expected, (secs, classes)
            assert [b.partial for b in bins] == [s + secs > final_until for s, _ in expected]
    volumes = [b.volume for b in await stored.counts(CAM, start, end, 60, **_narrowing(path))]
    assert sum(volumes) > 10
    assert 0 in volumes


async def test_counts_over_a_day_are_dense(stored: TrafficReader) -> None:
    start = (DAY - 43_200) * _NS
    bins = await stored.counts(CAM, start + 17 * _NS, start + 86_400 * _NS, 60)
    assert [b.start_time.seconds for b in bins] == list(range(DAY - 43_200, DAY + 43_200, 60))
    busy = [b for b in bins if b.volume]
    assert 10 <= len(busy) <= 20  # data on a few minutes only
    assert sum(b.volume for b in bins) == len(
        {c.track_id for c, _ in _first_per_track(_recorded().crossings) if c.object_class in MOTOR}
    )
    # Final up to DAY + 540 s, the newest final bin; partial (may grow) from there on.
    assert next(b.start_time.seconds for b in bins if b.partial) == DAY + 540
    assert all(b.partial for b in bins if b.start_time.seconds >= DAY + 540)


async def test_counts_by_direction_take_a_vehicle_once_whatever_the_range(
    stored: TrafficReader,
) -> None:
    """A series that starts between a vehicle's crossings of two lines does not count it
    again: its first crossing stays the one before the series."""
    minutes: dict[int, set[int]] = {}
    for c, _ in _recorded().crossings:
        if c.direction == 1:
            minutes.setdefault(c.track_id, set()).add(_stored_ns(c) // (60 * _NS))
    assert any(len(m) > 1 for m in minutes.values())  # some straddle a minute's edge
    end = (DAY + 600) * _NS
    full = await stored.counts(CAM, (DAY - 600) * _NS, end, 60, direction=1)
    for start in range(DAY - 600, DAY + 600, 60):
        tail = await stored.counts(CAM, start * _NS, end, 60, direction=1)
        assert tail == [b for b in full if b.start_time.seconds >= start]


async def test_a_track_id_names_one_vehicle_for_a_while_only(pool: asyncpg.Pool[Any]) -> None:
    """Track ids restart with a camera's engine: crossings of one id 20 minutes apart are
    two vehicles, a minute apart one."""
    crossings = [
        LineCrossing(line, 5, ObjectClass.CAR, Direction.LEFT_TO_RIGHT, (DAY + t) * _NS, None, "")
        for line, t in (("all", 0), ("a1-only", 60), ("all", 1200))
    ]
    await pool.executemany(INSERT_CROSSING, [_crossing_row("cam-r", c) for c in crossings])
    bins = await TrafficReader(pool, STORED).counts(
        "cam-r", DAY * _NS, (DAY + 1800) * _NS, 900, direction=1
    )
    assert [b.volume for b in bins] == [1, 1]


async def test_partial_when_a_stored_row_is_not_final(pool: asyncpg.Pool[Any]) -> None:
    def row(start_s: int, secs: int, final: bool, volume: int) -> tuple[Any, ...]:
        key = BinKey(
            "cam-p", Scope.CAMERA, "", ObjectClass.CAR, Direction.NONE, start_s * _NS, secs
        )
        return bin_row(BinRecord(key, final=final, volume=volume))

    rows = [
        row(DAY, 60, True, 2),
        row(DAY + 60, 60, False, 1),
        row(DAY + 120, 60, True, 3),
        row(DAY, 900, False, 6),
    ]
    await pool.executemany(UPSERT_BIN, rows)
    reader = TrafficReader(pool, STORED)
    bins = await reader.counts("cam-p", DAY * _NS, (DAY + 240) * _NS, 60)
    assert [(b.volume, b.partial) for b in bins] == [(2, False), (1, True), (3, False), (0, True)]
    (quarter,) = await reader.counts("cam-p", DAY * _NS, (DAY + 900) * _NS, 900)
    assert (quarter.volume, quarter.partial) == (6, True)
    # A camera with no final bin at all: everything may still grow.
    assert all(b.partial for b in await reader.counts("cam-none", DAY * _NS, (DAY + 120) * _NS, 60))


# -- summaries ---------------------------------------------------------------------------------


def _merged(records: Iterable[BinRecord]) -> BinRecord | None:
    """The engine's own merge of records of different keys (all under one)."""
    rows = list(records)
    if not rows:
        return None
    key = BinKey("", Scope.CAMERA, "", ObjectClass.UNSPECIFIED, Direction.NONE, 0, 0)
    return functools.reduce(BinRecord.merge, (replace(r, key=key) for r in rows))


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _expected_metrics(
    counted: BinRecord | None,
    frames: list[BinRecord | None],
    seconds: float,
    headways: BinRecord | None = None,
) -> dict[str, Any]:
    volume = counted.volume if counted else 0
    density = _mean(f.density_vehicles_per_km for f in frames if f)
    queues = [f for f in frames if f and f.queue_frames]
    return {
        "volume": volume,
        "flow_rate_vehicles_per_hour": volume * 3600.0 / seconds,
        "mean_speed_kmh": counted.mean_speed_kmh if counted else None,
        "speed_p85_kmh": counted.speed_p85_kmh if counted else None,
        "occupancy": _mean(f.occupancy for f in frames if f),
        "density_vehicles_per_km": density,
        "level_of_service": int(level_of_service(density)),
        "mean_headway_s": headways.mean_headway_s if headways else None,
        "mean_queue_length_m": _mean(f.mean_queue_m for f in queues),
        "max_queue_length_m": max((f.queue_max_m for f in queues), default=None),
    }


def _expected_summary(
    recorded: Recorded,
    secs: int,
    start_ns: int,
    end_ns: int,
    classes: tuple[int, ...],
    lanes: list[str],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Total and per-lane measures from the engine's records of ``secs`` starting in range."""
    records = [
        r
        for r in recorded.records.values()
        if r.key.bin_seconds == secs and start_ns <= r.key.bin_start_ns < end_ns
    ]

    def merged(scope: Scope, sid: str | None, frame_row: bool = False) -> BinRecord | None:
        return _merged(
            r
            for r in records
            if r.key.scope == scope
            and sid in (None, r.key.scope_id)
            and (r.key.object_class == 0 if frame_row else r.key.object_class in classes)
        )

    seconds = (end_ns - start_ns) / _NS
    frames = [merged(Scope.LANE, lane, frame_row=True) for lane in lanes]
    total = _expected_metrics(merged(Scope.CAMERA, ""), frames, seconds, merged(Scope.LINE, None))
    per_lane = {
        lane: _expected_metrics(merged(Scope.LANE, lane), [f], seconds)
        for lane, f in zip(lanes, frames, strict=True)
    }
    return total, per_lane


_Optional = Literal[
    "mean_speed_kmh",
    "speed_p85_kmh",
    "occupancy",
    "density_vehicles_per_km",
    "mean_headway_s",
    "mean_queue_length_m",
    "max_queue_length_m",
]
_OPTIONAL_MEASURES: tuple[_Optional, ...] = get_args(_Optional)


def _metrics(m: traffic_pb2.TrafficMetrics) -> dict[str, Any]:
    out: dict[str, Any] = {
        "volume": m.volume,
        "level_of_service": m.level_of_service,
        "flow_rate_vehicles_per_hour": m.flow_rate_vehicles_per_hour,
    }
    for name in _OPTIONAL_MEASURES:
        out[name] = getattr(m, name) if m.HasField(name) else None
    return out


def _approx(expected: dict[str, Any]) -> dict[str, Any]:
    return {k: v if v is None else pytest.approx(v, rel=1e-9) for k, v in expected.items()}


@pytest.mark.parametrize(
    ("start_s", "end_s", "secs"),
    [
        pytest.param(DAY - 900, DAY + 900, 900, id="quarter-hours"),
        pytest.param(DAY - 600, DAY + 600, 60, id="minutes"),
        pytest.param(DAY - 570, DAY + 590, 60, id="unaligned"),
    ],
)
async def test_summary_equals_the_engines_records(
    stored: TrafficReader, start_s: int, end_s: int, secs: int
) -> None:
    recorded, lanes = _recorded(), ["b1", "a1", "a2"]  # configured order, not sorted
    start, end = start_s * _NS, end_s * _NS
    for classes in ((), (ObjectClass.CAR, ObjectClass.BICYCLE)):
        (summary,) = await stored.summary([CAM], start, end, classes, {CAM: lanes})
        total, per_lane = _expected_summary(recorded, secs, start, end, classes or MOTOR, lanes)
        assert summary.camera == f"cameras/{CAM}"
        assert _metrics(summary.total) == _approx(total)
        assert [lane.lane_id for lane in summary.lanes] == lanes
        for lane in summary.lanes:
            assert _metrics(lane.metrics) == _approx(per_lane[lane.lane_id])
    # Measured, not vacuous: every measure is known for the calibrated camera.
    assert all(v is not None for v in total.values())
    assert total["max_queue_length_m"] > 5.0
    assert total["mean_headway_s"] > 0.0


async def test_summary_volume_and_speeds_are_the_counted_vehicles(stored: TrafficReader) -> None:
    recorded = _recorded()
    start, end = (DAY - 600) * _NS, (DAY + 600) * _NS
    (summary,) = await stored.summary([CAM], start, end, (), {})
    first = [
        c
        for c, ns in _first_per_track(recorded.crossings)
        if start <= ns < end and c.object_class in MOTOR
    ]
    speeds = [c.speed_kmh for c in first if c.speed_kmh is not None]
    assert summary.total.volume == len(first)
    assert summary.total.mean_speed_kmh == pytest.approx(float(np.mean(speeds)))
    assert abs(summary.total.speed_p85_kmh - float(np.percentile(speeds, 85))) < 1.5
    by_lane = Counter(c.lane_id for c in first)
    # No lanes configured: those in the data, sorted.
    assert [(lane.lane_id, lane.metrics.volume) for lane in summary.lanes] == [
        (lane, by_lane[lane]) for lane in ("a1", "a2", "b1")
    ]


async def test_summary_leaves_unknown_measures_unset(stored: TrafficReader) -> None:
    start, end = (DAY - 600) * _NS, (DAY + 600) * _NS
    cameras = ["cam-none", CAM, UNCALIBRATED]
    summaries = await stored.summary(cameras, start, end, (), {"cam-none": ["x"], CAM: []})
    assert [s.camera for s in summaries] == [f"cameras/{c}" for c in cameras]
    nothing, no_lanes, uncalibrated = (_metrics(s.total) for s in summaries)
    assert nothing == {
        **dict.fromkeys(nothing),
        "volume": 0,
        "level_of_service": 0,
        "flow_rate_vehicles_per_hour": 0.0,
    }
    assert [(lane.lane_id, _metrics(lane.metrics)) for lane in summaries[0].lanes] == [
        ("x", nothing)
    ]
    assert not summaries[1].lanes
    assert no_lanes["occupancy"] is None
    assert no_lanes["density_vehicles_per_km"] is None
    assert no_lanes["volume"] > 0
    assert no_lanes["mean_headway_s"] is not None
    assert uncalibrated["volume"] > 0
    assert uncalibrated["occupancy"] is not None
    assert uncalibrated["mean_headway_s"] is not None
    unknown = (
        "mean_speed_kmh",
        "speed_p85_kmh",
        "density_vehicles_per_km",
        "mean_queue_length_m",
        "max_queue_length_m",
    )
    assert [uncalibrated[k] for k in unknown] == [None] * len(unknown)
    assert uncalibrated["level_of_service"] == traffic_pb2.LEVEL_OF_SERVICE_UNSPECIFIED
    assert [lane.lane_id for lane in summaries[2].lanes] == ["a1", "a2", "b1"]
    assert not any(lane.metrics.HasField("mean_headway_s") for lane in summaries[2].lanes)


async def test_cameras_with_data_and_has_data(
    stored: TrafficReader, pool: asyncpg.Pool[Any]
) -> None:
    await pool.execute(
        "INSERT INTO analytics_events (event_id, camera_id, type, severity, start_time,"
        " object_class, lane_id, zone_id, description, details, update_time)"
        " VALUES ('e1', 'cam-event', 1, 1, now(), 1, '', '', '', '{}', now())"
    )
    await pool.execute(
        "INSERT INTO analytics_camera_state (camera_id, state) VALUES ('cam-state', '')"
    )
    assert await stored.cameras_with_data() == [CAM, UNCALIBRATED]
    for camera in (CAM, UNCALIBRATED, "cam-event", "cam-state"):
        assert await stored.has_data(camera), camera
    assert not await stored.has_data("cam-none")


# -- plans -------------------------------------------------------------------------------------

# Over two million bin rows: 200 cameras, a day of 60 s and 900 s bins, 7 rows a bin (short
# speed histograms: the plans matter here, not the bytes); a crossing every 30 s a camera.
_LOAD = (
    "INSERT INTO analytics_bins (camera_id, scope, scope_id, object_class, direction,"
    " bin_start, bin_seconds, final, volume, speed_count, speed_sum_kmh, speed_sq_sum_kmh2,"
    " speed_hist, headway_count, headway_sum_s, gap_count, gap_sum_s, frames, occupied_frames,"
    " object_frames, density_frames, density_sum_per_km, travel_distance_m, travel_time_s,"
    " queue_frames, queue_sum_m, queue_max_m, dwell_count, dwell_sum_s, dwell_max_s)"
    " SELECT 'cam-' || lpad(c::text, 3, '0'), k.scope, k.scope_id, k.cls, k.dir,"
    " to_timestamp($1 + b * l.secs), l.secs, true, 3, 3, 150, 7500, '{0,3}', 2, 10, 2, 6,"
    " 240, 80, 100, 240, 30, 900, 60, 240, 120, 12, 0, 0, 0"
    " FROM generate_series(0, 199) AS c, (VALUES (60, 1440), (900, 96)) AS l(secs, n),"
    " generate_series(0, l.n - 1) AS b, (VALUES ('camera', '', 1, 0), ('line', 'all', 1, 1),"
    " ('line', 'all', 1, 2), ('lane', 'a1', 1, 0), ('lane', 'a1', 0, 0), ('lane', 'a2', 1, 0),"
    " ('lane', 'a2', 0, 0)) AS k(scope, scope_id, cls, dir)",
    "INSERT INTO analytics_crossings SELECT 'cam-' || lpad(c::text, 3, '0'),"
    " (ARRAY['all', 'a1-only'])[1 + n % 2], n / 2, to_timestamp($1 + n * 30), 1 + n % 4,"
    " 1 + n % 2, 50, (ARRAY['a1', 'a2'])[1 + n % 3 / 2]"
    " FROM generate_series(0, 99) AS c, generate_series(0, 2879) AS n",
    "INSERT INTO analytics_events (event_id, camera_id, type, severity, start_time,"
    " object_class, lane_id, zone_id, description, details, update_time)"
    " SELECT format('e-%s-%s', c, n), 'cam-' || lpad(c::text, 3, '0'), 1, 1,"
    " to_timestamp($1 + n * 864), 1, '', '', '', '{}', now()"
    " FROM generate_series(0, 99) AS c, generate_series(0, 99) AS n",
)
_BIG_TABLES = frozenset({"analytics_bins", "analytics_crossings", "analytics_events"})


def _seq_scans(plan: dict[str, Any]) -> list[str]:
    found = []
    if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") in _BIG_TABLES:
        found.append(plan["Relation Name"])
    for child in plan.get("Plans", ()):
        found += _seq_scans(child)
    return found


async def _read_every_shape(reader: TrafficReader) -> None:
    camera, start, end = "cam-050", (DAY - 86_400) * _NS, DAY * _NS
    for path in _PATHS.values():
        for secs in (60, 900, 3600, 86_400):
            await reader.counts(camera, start, end, secs, **_narrowing(path))
    cameras = ["cam-010", "cam-050", "cam-090"]
    await reader.summary(cameras, start, end, (), {})  # whole quarter hours: 900 s bins
    await reader.summary(cameras, start + 60 * _NS, end, (1,), {})  # whole minutes: 60 s bins
    await reader.cameras_with_data()
    await reader.has_data(camera)
    await reader.has_data("cam-none")


async def _generic_plan(
    connection: PoolConnectionProxy[Any], query: str, args: tuple[Any, ...]
) -> Any:
    """The plan a prepared statement gets once PostgreSQL stops planning it per call."""
    statement = await connection.prepare(query)
    literals = []
    for parameter, arg in zip(statement.get_parameters(), args, strict=True):
        type_ = await connection.fetchval("SELECT format_type($1, NULL)", parameter.oid)
        literal = await connection.fetchval(f"SELECT quote_nullable($1::{type_})", arg)
        literals.append(f"{literal}::{type_}")
    call = statement.get_name() + (f"({', '.join(literals)})" if literals else "")
    await connection.execute("SET plan_cache_mode = force_generic_plan")
    try:
        return json.loads(await connection.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {call}"))
    finally:
        await connection.execute("RESET plan_cache_mode")


async def test_every_statement_uses_an_index(postgres_dsn: str) -> None:
    began = time.perf_counter()
    issued: list[Any] = []

    async def log_queries(connection: asyncpg.Connection[Any]) -> None:
        connection.add_query_logger(issued.append)

    async with asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1, init=log_queries) as pool:
        await apply_migrations(pool, [MigrationSet("core", "its_camera_ai.common"), MIGRATIONS])
        for statement in _LOAD:
            await pool.execute(statement, DAY - 86_400)
        await pool.execute("ANALYZE analytics_bins, analytics_crossings, analytics_events")
        assert await pool.fetchval("SELECT count(*) FROM analytics_bins") > 2_000_000
        loaded = time.perf_counter()
        issued.clear()
        await _read_every_shape(TrafficReader(pool, STORED))
        read = time.perf_counter()
        # What the reader sent (not the pool's own reset statements), each argument set once.
        shapes = {(q.query, repr(q.args)): q for q in issued if "analytics_" in q.query}
        assert len({q for q, _ in shapes}) == 8  # every statement the reader has
        bad = []
        async with pool.acquire() as connection:
            for query in shapes.values():
                custom = await connection.fetchval(
                    f"EXPLAIN (FORMAT JSON) {query.query}", *query.args
                )
                generic = await _generic_plan(connection, query.query, query.args)
                for kind, plan in (("custom", json.loads(custom)), ("generic", generic)):
                    if scans := _seq_scans(plan[0]["Plan"]):
                        bad.append(f"{kind} plan scans {scans}: {query.query}")
    planned = time.perf_counter()
    print(f"load {loaded - began:.1f} s, reads {read - loaded:.2f} s, plans {planned - read:.1f} s")
    assert not bad, "\n".join(bad)
