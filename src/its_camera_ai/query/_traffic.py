"""The traffic read side: count series and summaries from what analytics stored.

Analytics keeps, per camera, epoch-aligned bins of each configured length (``bin_seconds``,
60 s and 900 s by default) with full cumulative values, ``final`` once the camera's stream
passed the bin's end, and one row per counted line crossing (``analytics_crossings``, at
the interpolated crossing instant). Everything here is summed in SQL over index range scans
(tests/query/test_traffic.py explains each statement against a million rows).

Which rows answer a count (GetTrafficCountsRequest):

* nothing narrowed: the camera-scope bins (distinct tracks, each at its first counted
  crossing);
* a line, with or without a direction: that line's bins;
* a lane alone: the lane's bins (vehicles that were in the lane when first counted);
* a line and a lane: that line's crossings in the lane, each counted crossing once;
* a direction without a line (with or without a lane): the crossings, each track once at
  its first crossing that matches every filter. Track ids restart when a camera's engine
  starts afresh, so an earlier crossing of the same id counts as the same vehicle only
  within ``_SAME_VEHICLE`` (a vehicle still in view after that is counted again).

Bins come from the frame that confirmed a crossing, crossings from its interpolated instant
(up to a frame interval earlier; more after an occlusion), so near a bin's edge a vehicle
can fall on either side depending on the path.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
from numpy.typing import NDArray

from its.common.v1 import detection_pb2
from its.query.v1 import traffic_pb2
from its_camera_ai.analytics import (
    MOTOR_CLASSES,
    SPEED_BINS,
    histogram_percentile,
    level_of_service,
)

__all__ = ["TrafficReader"]

_NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MOTOR = tuple(int(c) for c in MOTOR_CLASSES)
# Longer than any vehicle stays in one camera's view between two of its lines, and short
# enough that a track id reused after an engine reset is rarely taken for the same vehicle.
_SAME_VEHICLE = timedelta(minutes=15)

# $2 is the requested bin length (an interval): the start of the requested bin holding a
# time column, in epoch seconds (date_bin's bins start at whole multiples since the epoch).
_BUCKET = "extract(epoch FROM date_bin($2, {}, timestamptz 'epoch'))::bigint"
# Statements below are assembled from the constant fragments here only (hence noqa: S608).
# $1 camera, $3..$4 the bins' span, $5 classes, then what each path narrows by.
_COUNT_BINS = (
    f"SELECT {_BUCKET.format('bin_start')} AS bucket, object_class, sum(volume) AS volume,"  # noqa: S608
    " bool_and(final) AS final FROM analytics_bins WHERE camera_id = $1 AND bin_seconds = $6"
    " AND bin_start >= $3 AND bin_start < $4 AND object_class = ANY($5::smallint[])"
    " AND scope = $7 AND scope_id = $8 AND ($9::smallint = 0 OR direction = $9) GROUP BY 1, 2"
)
_CROSSING_FILTER = (
    "{0}.camera_id = $1 AND {0}.object_class = ANY($5::smallint[])"
    " AND ($6 = '' OR {0}.lane_id = $6) AND ($7::smallint = 0 OR {0}.direction = $7)"
)
_CROSSINGS = (
    f"SELECT {_BUCKET.format('c.crossing_time')} AS bucket, c.object_class,"  # noqa: S608
    " count(*) AS volume, true AS final FROM analytics_crossings c"
    f" WHERE {_CROSSING_FILTER.format('c')} AND c.crossing_time >= $3 AND c.crossing_time < $4"
)
_COUNT_LINE_CROSSINGS = f"{_CROSSINGS} AND c.line_id = $8 GROUP BY 1, 2"
# Ties at one instant go to the smaller line id, so exactly one crossing is the first. The
# span bounds on e repeat what the per-crossing ones imply, for a plan that reads e apart.
_COUNT_FIRST_CROSSINGS = (
    f"{_CROSSINGS} AND NOT EXISTS (SELECT FROM analytics_crossings e"
    f" WHERE {_CROSSING_FILTER.format('e')} AND e.track_id = c.track_id"
    " AND e.crossing_time >= c.crossing_time - $8::interval AND e.crossing_time <= c.crossing_time"
    " AND (e.crossing_time < c.crossing_time OR e.line_id < c.line_id)"
    " AND e.crossing_time >= $3 - $8::interval AND e.crossing_time < $4) GROUP BY 1, 2"
)
# End (epoch s) of the camera's newest final bin over the stored lengths $2: a backward
# index scan per length that stops at the first final row.
_NEWEST_FINAL_END = (
    "SELECT max(extract(epoch FROM f.bin_start)::bigint + s.secs)"
    " FROM unnest($2::integer[]) AS s(secs) CROSS JOIN LATERAL (SELECT bin_start"
    " FROM analytics_bins WHERE camera_id = $1 AND bin_seconds = s.secs AND final"
    " ORDER BY bin_start DESC LIMIT 1) AS f"
)
_SUMMARY_BINS = (
    "camera_id = ANY($1::text[]) AND bin_seconds = $2 AND bin_start >= $3 AND bin_start < $4"
)
# Per camera and scope id: counted vehicles (and headways) of the classes; per lane, the
# frame statistics row (class 0, motor vehicles whatever the classes) apart.
_SUMMARY_SUMS = (
    "SELECT camera_id, scope, scope_id, object_class = 0 AS frame_row, sum(volume) AS volume,"  # noqa: S608
    " sum(speed_count) AS speed_count, sum(speed_sum_kmh) AS speed_sum,"
    " sum(headway_count) AS headway_count, sum(headway_sum_s) AS headway_sum,"
    " sum(frames) AS frames, sum(occupied_frames) AS occupied,"
    " sum(density_frames) AS density_frames, sum(density_sum_per_km) AS density_sum,"
    " sum(queue_frames) AS queue_frames, sum(queue_sum_m) AS queue_sum,"
    f" max(queue_max_m) AS queue_max FROM analytics_bins WHERE {_SUMMARY_BINS}"
    " AND scope IN ('camera', 'line', 'lane')"
    " AND (object_class = ANY($5::smallint[]) OR (scope = 'lane' AND object_class = 0))"
    " GROUP BY 1, 2, 3, 4"
)
# The speed histograms summed element-wise, sparse: only the non-empty speed bins come back.
_SUMMARY_SPEEDS = (
    "SELECT camera_id, scope, scope_id, h.i - 1 AS speed_bin, sum(h.n) AS n"  # noqa: S608
    " FROM analytics_bins CROSS JOIN LATERAL unnest(speed_hist) WITH ORDINALITY AS h(n, i)"
    f" WHERE {_SUMMARY_BINS} AND scope IN ('camera', 'lane')"
    " AND object_class = ANY($5::smallint[]) AND speed_count > 0 AND h.n > 0 GROUP BY 1, 2, 3, 4"
)
# Distinct cameras by a loose index scan: one primary-key probe per camera, not a scan.
_CAMERAS = (
    "WITH RECURSIVE cameras(camera_id) AS ("
    "(SELECT camera_id FROM analytics_bins ORDER BY camera_id LIMIT 1)"
    " UNION ALL SELECT (SELECT b.camera_id FROM analytics_bins b WHERE b.camera_id > c.camera_id"
    " ORDER BY b.camera_id LIMIT 1) FROM cameras c WHERE c.camera_id IS NOT NULL)"
    " SELECT camera_id FROM cameras WHERE camera_id IS NOT NULL"
)
_HAS_DATA = (
    "SELECT EXISTS (SELECT FROM analytics_bins WHERE camera_id = $1)"
    " OR EXISTS (SELECT FROM analytics_events WHERE camera_id = $1)"
    " OR EXISTS (SELECT FROM analytics_camera_state WHERE camera_id = $1)"
)

_Key = tuple[str, str, bool]  # scope, scope id, frame statistics row


def _at(ns: int) -> datetime:
    # Stored times are whole microseconds: rounding up keeps "at or after ns" exact.
    return _EPOCH + timedelta(microseconds=-(-ns // 1000))


class TrafficReader:
    """Reads counts and summaries; ``bin_seconds`` are the lengths analytics stores
    (``AnalyticsEngineSettings.bin_seconds``, each dividing the next). Arguments are taken as
    validated (times in ns since the epoch, classes as ``ObjectClass`` numbers)."""

    def __init__(self, pool: asyncpg.Pool[Any], bin_seconds: tuple[int, ...]) -> None:
        self._pool = pool
        self._stored = tuple(sorted(bin_seconds))

    async def counts(
        self,
        camera_id: str,
        start_ns: int,
        end_ns: int,
        bin_seconds: int,
        *,
        line_id: str = "",
        direction: int = 0,
        lane_id: str = "",
        classes: tuple[int, ...] = (),
    ) -> list[traffic_pb2.CountBin]:
        """Every bin of ``bin_seconds`` from the one holding ``start_ns`` to the one holding
        ``end_ns - 1``, in time order, zeros included; empty ``classes``: motor vehicles.

        A length analytics does not store is summed from the longest stored one dividing it.
        A bin is ``partial`` when one of the stored bins it is made of is not final yet, or
        when it ends after the newest final bin the camera has (any scope, any length): a
        bin the stream has not passed may still grow, and so may a bin beyond the camera's
        last data (the future, or a camera that went quiet). That end is read before the
        counts, so a bin it calls final cannot change between the two reads. Crossings carry
        no final flag: their bins follow the second rule alone.
        """
        step = bin_seconds * _NS
        first, stop = start_ns // step * bin_seconds, ((end_ns - 1) // step + 1) * bin_seconds
        statement, narrowing = self._count_statement(bin_seconds, line_id, direction, lane_id)
        async with self._pool.acquire() as connection:
            final_end = await connection.fetchval(_NEWEST_FINAL_END, camera_id, self._stored)
            rows = await connection.fetch(
                statement,
                camera_id,
                timedelta(seconds=bin_seconds),
                _at(first * _NS),
                _at(stop * _NS),
                classes or _MOTOR,
                *narrowing,
            )
        return _series(rows, first, stop, bin_seconds, final_end)

    def _count_statement(
        self, bin_seconds: int, line_id: str, direction: int, lane_id: str
    ) -> tuple[str, tuple[Any, ...]]:
        """The statement that answers a count and its arguments after the common five."""
        if line_id and lane_id:
            return _COUNT_LINE_CROSSINGS, (lane_id, direction, line_id)
        if direction and not line_id:
            return _COUNT_FIRST_CROSSINGS, (lane_id, direction, _SAME_VEHICLE)
        dividing = [s for s in self._stored if bin_seconds % s == 0]
        if not dividing:
            raise ValueError(f"no stored bin length divides {bin_seconds} s: {self._stored}")
        if line_id:
            return _COUNT_BINS, (max(dividing), "line", line_id, direction)
        if lane_id:
            return _COUNT_BINS, (max(dividing), "lane", lane_id, 0)
        return _COUNT_BINS, (max(dividing), "camera", "", 0)

    async def summary(
        self,
        camera_ids: list[str],
        start_ns: int,
        end_ns: int,
        classes: tuple[int, ...],
        lanes: dict[str, list[str]],
    ) -> list[traffic_pb2.CameraTrafficSummary]:
        """One summary per camera, in the given order; empty ``classes``: motor vehicles.

        Sums the longest stored bins the range is aligned to (900 s bins for whole quarter
        hours, else 60 s ones); a range aligned to no stored length takes the shortest bins
        that start in it (so up to one bin of data beyond its end, none before its start).
        The flow rate divides by the range as requested. ``lanes[camera]`` lists the
        camera's lanes in configured order; a camera missing there gets the lanes found in
        its data, sorted. A camera's occupancy, density and queue are over those lanes (a
        lane without data adds nothing); occupancy, density and queues are of motor
        vehicles whatever the classes, as analytics measures them per frame. Headways are
        those of the classes' vehicles to the one ahead of them, over all lines.
        """
        aligned = [s for s in self._stored if start_ns % (s * _NS) == end_ns % (s * _NS) == 0]
        args = (camera_ids, max(aligned, default=self._stored[0]), _at(start_ns), _at(end_ns),
                classes or _MOTOR)  # fmt: skip
        async with (
            self._pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            sums = await connection.fetch(_SUMMARY_SUMS, *args)
            speeds = await connection.fetch(_SUMMARY_SPEEDS, *args)
        per_camera: dict[str, dict[_Key, asyncpg.Record]] = defaultdict(dict)
        for row in sums:
            per_camera[row["camera_id"]][row["scope"], row["scope_id"], row["frame_row"]] = row
        histograms = _histograms(speeds)
        seconds = (end_ns - start_ns) / _NS
        return [
            _camera_summary(camera, per_camera[camera], histograms, seconds, lanes.get(camera))
            for camera in camera_ids
        ]

    async def cameras_with_data(self) -> list[str]:
        """The cameras that have bins stored, sorted."""
        return sorted(r["camera_id"] for r in await self._pool.fetch(_CAMERAS))

    async def has_data(self, camera_id: str) -> bool:
        """Whether anything is stored for the camera: a bin, an event or an engine state."""
        return bool(await self._pool.fetchval(_HAS_DATA, camera_id))


def _series(
    rows: Iterable[asyncpg.Record], first: int, stop: int, step: int, final_end: int | None
) -> list[traffic_pb2.CountBin]:
    found: dict[int, list[asyncpg.Record]] = defaultdict(list)
    for row in rows:
        found[row["bucket"]].append(row)
    series = []
    for start in range(first, stop, step):
        here = sorted(found.get(start, ()), key=lambda r: int(r["object_class"]))
        counted = [(int(r["object_class"]), int(r["volume"])) for r in here if r["volume"]]
        partial = final_end is None or start + step > final_end or not all(r["final"] for r in here)
        bin_ = traffic_pb2.CountBin(
            volume=sum(n for _, n in counted),
            class_counts=[
                traffic_pb2.ClassCount(object_class=detection_pb2.ObjectClass.ValueType(c), count=n)
                for c, n in counted
            ],
            partial=partial,
        )
        bin_.start_time.FromSeconds(start)
        series.append(bin_)
    return series


def _histograms(rows: Iterable[asyncpg.Record]) -> dict[tuple[str, str, str], NDArray[np.int64]]:
    """Speed histograms from their non-empty bins, per (camera, scope, scope id)."""
    sparse: dict[tuple[str, str, str], list[tuple[int, int]]] = defaultdict(list)
    for row in rows:
        sparse[row["camera_id"], row["scope"], row["scope_id"]].append((row["speed_bin"], row["n"]))
    out = {}
    for key, cells in sparse.items():
        index, counts = zip(*cells, strict=True)
        out[key] = np.bincount(index, weights=counts, minlength=SPEED_BINS).astype(np.int64)
    return out


@dataclass(frozen=True, slots=True)
class _LaneFrames:
    """A lane's per-frame measures over the range; None where not measured."""

    occupancy: float | None = None
    density: float | None = None
    queue_mean_m: float | None = None
    queue_max_m: float | None = None

    @classmethod
    def of(cls, row: asyncpg.Record | None) -> _LaneFrames:
        if row is None:
            return cls()
        frames, density_frames, queue_frames = (
            row["frames"], row["density_frames"], row["queue_frames"]
        )  # fmt: skip
        return cls(
            row["occupied"] / frames if frames else None,
            row["density_sum"] / density_frames if density_frames else None,
            row["queue_sum"] / queue_frames if queue_frames else None,
            float(row["queue_max"]) if queue_frames else None,
        )


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _metrics(
    counted: asyncpg.Record | None,
    hist: NDArray[np.int64] | None,
    seconds: float,
    lanes: Sequence[_LaneFrames],
    headway: tuple[int, float] = (0, 0.0),
) -> traffic_pb2.TrafficMetrics:
    """Measures from the counted vehicles' sums and histogram and the lanes' frame measures
    (one lane for a lane, all of them for a camera)."""
    volume = int(counted["volume"]) if counted is not None else 0
    metrics = traffic_pb2.TrafficMetrics(
        volume=volume, flow_rate_vehicles_per_hour=volume * 3600.0 / seconds if seconds else 0.0
    )
    if counted is not None and counted["speed_count"]:
        metrics.mean_speed_kmh = counted["speed_sum"] / counted["speed_count"]
    p85 = None if hist is None else histogram_percentile(hist, 85.0)
    if p85 is not None:
        metrics.speed_p85_kmh = p85
    occupancy = _mean(lane.occupancy for lane in lanes)
    if occupancy is not None:
        metrics.occupancy = occupancy
    density = _mean(lane.density for lane in lanes)
    if density is not None:
        metrics.density_vehicles_per_km = density
    metrics.level_of_service = traffic_pb2.LevelOfService.ValueType(level_of_service(density))
    if headway[0]:
        metrics.mean_headway_s = headway[1] / headway[0]
    queue = _mean(lane.queue_mean_m for lane in lanes)
    if queue is not None:
        metrics.mean_queue_length_m = queue
    longest = [lane.queue_max_m for lane in lanes if lane.queue_max_m is not None]
    if longest:
        metrics.max_queue_length_m = max(longest)
    return metrics


def _camera_summary(
    camera: str,
    sums: dict[_Key, asyncpg.Record],
    histograms: dict[tuple[str, str, str], NDArray[np.int64]],
    seconds: float,
    lane_ids: list[str] | None,
) -> traffic_pb2.CameraTrafficSummary:
    if lane_ids is None:
        lane_ids = sorted({scope_id for scope, scope_id, _ in sums if scope == "lane"})
    frames = [_LaneFrames.of(sums.get(("lane", lane, True))) for lane in lane_ids]
    lines = [row for (scope, _, _), row in sums.items() if scope == "line"]
    headway = (sum(r["headway_count"] for r in lines), sum(r["headway_sum"] for r in lines))
    counted, hist = sums.get(("camera", "", False)), histograms.get((camera, "camera", ""))
    total = _metrics(counted, hist, seconds, frames, headway)
    return traffic_pb2.CameraTrafficSummary(
        camera=f"cameras/{camera}",
        total=total,
        lanes=[
            traffic_pb2.LaneTrafficSummary(
                lane_id=lane,
                metrics=_metrics(
                    sums.get(("lane", lane, False)),
                    histograms.get((camera, "lane", lane)),
                    seconds,
                    [lane_frames],
                ),
            )
            for lane, lane_frames in zip(lane_ids, frames, strict=True)
        ],
    )
