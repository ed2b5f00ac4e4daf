"""The query service under a dashboard workload, side by side with a bare gRPC echo server.

    .venv/bin/python benchmarks/query_service.py                  # ~5 min, one query process
    .venv/bin/python benchmarks/query_service.py --workers 2      # + scale-out: ~7.5 min
    .venv/bin/python benchmarks/query_service.py --quick          # smoke run, ~1.5 min
    .venv/bin/python benchmarks/query_service.py --markdown out.md --keep-logs

Options: ``--seconds``/``--warmup`` per row, ``--concurrency 1,100,1000``, ``--dsn`` (admin
database), ``--redis-url``, ``--keep-logs`` (the processes' logs stay in a temporary
directory; they always do when the run fails).

What it does, in order (a progress line on stderr shows the whole run with its ETA):

1. Creates a fresh PostgreSQL database (``--dsn`` names the admin database), applies the
   core and analytics migrations and seeds 24 h of traffic of 8 cameras the way analytics
   stores it: 60 s and 900 s bins (scopes camera, line and lane; four classes, two
   directions, per-lane frame statistics; the 900 s bins are the exact merge of the 60 s
   ones), a crossing per counted vehicle, and a few thousand events written with the
   service's own ``UPSERT_EVENT``. Bins and crossings are made by server-side
   ``generate_series`` INSERTs (seconds instead of minutes).
2. Starts, each in its own process: the query service (``its-camera-ai serve query``, no
   decoder: it accepts the cameras that have data), a bare grpc.aio server with only the
   ``grpc.health.v1`` servicer (no interceptors: the floor any gRPC service on this machine
   pays), and a writer that imitates analytics: every 100 ms per camera it upserts the
   current 60 s and 900 s bins with the service's ``UPSERT_BIN`` (and ``INSERT_CROSSING``
   for each vehicle), one transaction per camera and tick, then publishes the commit
   announcement (``commit_json``) on Redis; every 2 s it opens an event (and ends the
   camera's previous one). The channel prefix (``ITS_ANALYTICS__REDIS_PREFIX``) is unique
   to the run, so other services on a shared Redis neither see nor disturb it.
3. For each concurrency C in 1, 100, 1000: the echo's ``Health.Check``, then the query
   service's own ``Health.Check`` (its gRPC stack and interceptors without any query), then
   ``GetTrafficSummary``, ``GetTrafficCounts`` and ``ListEvents``, then the echo again.
   Each measurement is a fresh client process (grpc.aio, up to 16 channels, each its own
   TCP connection) running C coroutines that issue calls back to back: ``--warmup`` seconds
   discarded, then ``--seconds`` measured. Requests are pre-serialised and answers left as
   bytes, so the client spends as little CPU as it can (it shares the 2 cores with the
   servers). The dashboard's distinct requests, one picked at random per call:
   a summary of every camera over the last hour, the counts of each camera over the last
   24 h in 15-minute bins, and the first page (50) of events of each camera and of
   ``cameras/-``. Every range ends at the next 15-minute boundary, so it includes the bin
   the writer is filling (a live dashboard) and each commit announcement makes it stale.
4. Scrapes ``query_cache_requests_total`` from the service's ``/metrics`` before and after
   each measurement: the hit rate of each level per row, and over the whole run.
5. With ``--workers N`` (N > 1): the same query measurements against N query processes
   sharing one port (``ITS_GRPC__REUSE_PORT=true``, SO_REUSEPORT: the kernel spreads the
   client's connections over them), again between two echo runs. Skipped with a message
   when the service refuses the setting.
6. Prints the Markdown report (``--markdown PATH`` writes it too) and cleans up: every
   process gets SIGTERM (then SIGKILL after 10 s) and the database is dropped, also on
   Ctrl-C or failure.

Figures, per row (RPC x concurrency):

- req/s: calls that completed inside the measured window, per second (errors excluded).
- p50 ms, p99 ms: per-call latency percentiles on the client, from issuing the call to
  holding the answer's bytes (queueing in the client included: at 1000 callers on 2 cores
  much of it is waiting for the CPU).
- errors: calls that ended in a gRPC error (by code in the notes).
- req/s vs echo, p99 vs echo: the row over the mean of the two echo runs at the same
  concurrency (the echo is what gRPC itself costs here; drift of this shared machine
  moves both).
- L1 hit, L2 hit: hits / (hits + misses) of each cache level during that row: a hit is
  an answer served without waiting for the database (a stale answer being refreshed in
  the background included). A caller that finds nothing servable in L1 is an L1 miss, also
  when it joins a computation already running; L2 is asked once per waiting computation.
- commits/s: commit announcements each query process applied during the row
  (``query_cache_invalidations_total``): what marks cached answers stale.
- server CPU µs/call: user + system CPU of the server process(es) measured (the echo, or
  the query workers) over the client's whole run, per answered call. Unlike req/s this
  hardly moves with other tenants' load: the cost of the service's stack and queries.
- calls per worker (scale-out): QueryService calls each worker completed
  (``grpc_server_handled_total``): how the kernel spread the client's connections.

Targets (from the issue), PASS/FAIL in the report: cached reads >= 80 % of the echo's
throughput and p99 <= 1.25x the echo's p99 at each concurrency; p99 < 100 ms at 100
concurrent; no errors at 1,000; L1 hit rate > 85 %, L2 > 70 % over the run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import itertools
import json
import math
import os
import random
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _harness as harness
import asyncpg
import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from its.common.v1 import time_range_pb2
from its.query.v1 import query_service_pb2
from its_camera_ai.analytics import (
    INSERT_CROSSING,
    SPEED_BINS,
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
    commit_json,
    event_row,
)
from its_camera_ai.scene import Direction

_NS = 1_000_000_000
_QUARTER_NS = 900 * _NS
_DAY_NS = 86_400 * _NS
_CAMERAS = tuple(f"cam-{i:02d}" for i in range(1, 9))
_LANES = ("lane-1", "lane-2", "lane-3")  # lanes 1 and 2 carry direction 1, lane 3 direction 2
_QUERY_SERVICE = "its.query.v1.QueryService"
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_CONCURRENCY = (1, 100, 1000)
_MAX_CHANNELS = 16
_CALL_TIMEOUT_S = 30.0
_REDIS_URL = "redis://127.0.0.1:6379/0"
# What each measured target calls, and its label in the report.
_TARGETS = {
    "echo": "echo Health.Check",
    "health": "query Health.Check",
    "summary": "GetTrafficSummary",
    "counts": "GetTrafficCounts",
    "events": "ListEvents",
}
_QUERY_RPCS = ("summary", "counts", "events")
Row = tuple[Any, ...]


# -- small helpers ----------------------------------------------------------------------------


def _write_text(path: str, text: str) -> None:
    Path(path).write_text(text, encoding="utf-8")


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        value: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value


def _ceil_quarter_ns(now_ns: int) -> int:
    return -(-now_ns // _QUARTER_NS) * _QUARTER_NS


def _parent_watch(parent: int) -> None:
    """Exit when the process that started this one is gone (never outlive the benchmark)."""

    async def watch() -> None:
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    asyncio.get_running_loop().create_task(watch())


# -- the database: create, seed, drop ---------------------------------------------------------

# Speed histogram of (c1, c2, c3) vehicles at b-8, b and b+8 km/h (SPEED_BINS buckets of
# 1 km/h): positions fixed per camera and class, so the merge of bins is the merge of counts.
_HIST_FUNCTION = f"""
CREATE FUNCTION bench_hist(b int, c1 int, c2 int, c3 int) RETURNS int[] LANGUAGE sql IMMUTABLE
AS $$ SELECT array_fill(0, ARRAY[b - 8]) || c1 || array_fill(0, ARRAY[7]) || c2
          || array_fill(0, ARRAY[7]) || c3 || array_fill(0, ARRAY[{SPEED_BINS} - b - 9]) $$
"""
# Vehicles per minute, camera, class and direction over a day (UTC hours): peaks at 8 and
# 17 h, busy days, quiet nights; class shares and speeds of a suburban arterial road.
_SEED_FLOWS = """
CREATE TEMP TABLE seed_flows AS
SELECT c.camera_id, m.k AS minute, cl.cls, d.dir, (cl.speed + (c.ci % 3) * 5 - 5)::int AS b,
       least(60, floor(cl.share * (4 + 14 * (exp(-((h.h - 8) ^ 2) / 3) + exp(-((h.h - 17) ^ 2) / 4))
                       + 5 * (h.h BETWEEN 7 AND 20)::int) * (0.5 + random())))::int AS volume
FROM unnest($1::text[]) WITH ORDINALITY AS c(camera_id, ci)
CROSS JOIN generate_series($2::bigint, $3::bigint) AS m(k)
CROSS JOIN LATERAL (SELECT (m.k % 1440) / 60.0 AS h) AS h
CROSS JOIN (VALUES (1, 0.80, 55), (2, 0.12, 45), (3, 0.03, 40), (4, 0.05, 62))
    AS cl(cls, share, speed)
CROSS JOIN (VALUES (1), (2)) AS d(dir)
"""
# Every stored row of a 60 s bin: per class and direction for the camera, its line and its
# lanes (direction 1 split 60/40 over lanes 1 and 2), plus each lane's frame statistics.
_SEED_ROWS = """
CREATE TEMP TABLE seed_rows AS
WITH scoped AS (
    SELECT camera_id, 'camera' AS scope, '' AS scope_id, cls, dir, minute, b, volume
      FROM seed_flows WHERE volume > 0
    UNION ALL SELECT camera_id, 'line', 'main', cls, dir, minute, b, volume
      FROM seed_flows WHERE volume > 0
    UNION ALL SELECT camera_id, 'lane', CASE WHEN dir = 2 THEN 'lane-3' ELSE 'lane-1' END, cls,
           dir, minute, b, CASE WHEN dir = 2 THEN volume ELSE volume - volume * 2 / 5 END
      FROM seed_flows WHERE volume > 0
    UNION ALL SELECT camera_id, 'lane', 'lane-2', cls, dir, minute, b, volume * 2 / 5
      FROM seed_flows WHERE dir = 1 AND volume * 2 / 5 > 0
), lanes AS (
    SELECT camera_id, scope_id, minute, sum(volume) AS v, avg(b) AS kmh
      FROM scoped WHERE scope = 'lane' GROUP BY camera_id, scope_id, minute
)
SELECT camera_id, scope, scope_id, cls, dir, minute, b, volume, volume / 4 AS c1,
       volume - 2 * (volume / 4) AS c2, volume / 4 AS c3, greatest(volume - 1, 0) AS headways,
       0.0 AS density, 0.0 AS kmh
  FROM scoped
UNION ALL
SELECT camera_id, 'lane', scope_id, 0, 0, minute, 50, 0, 0, 0, 0, 0, 60.0 * v / kmh, kmh
  FROM lanes
"""
_BIN_SELECT = """
INSERT INTO analytics_bins
SELECT camera_id, scope, scope_id, cls, dir,
       timestamptz 'epoch' + {bin} * interval '{seconds} s', {seconds},
       {bin} < $1::bigint / {seconds},
       sum(volume), sum(c1 + c2 + c3),
       sum(c1 * (b - 7.5) + c2 * (b + 0.5) + c3 * (b + 8.5)),
       sum(c1 * (b - 7.5) ^ 2 + c2 * (b + 0.5) ^ 2 + c3 * (b + 8.5) ^ 2),
       bench_hist(b, sum(c1)::int, sum(c2)::int, sum(c3)::int),
       sum(headways), sum(headways * 60.0 / greatest(volume, 1)),
       sum(headways), sum(headways * 48.0 / greatest(volume, 1)),
       count(*) * 600, sum(round(600 * least(0.95, density * 0.09))),
       sum(round(600 * density * 0.09)), sum(600 * (kmh > 0)::int), sum(600 * density),
       sum(90.0 * density * kmh / 60), sum(90.0 * density * 3.6 / 60),
       sum(600 * (kmh > 0)::int), sum(600 * greatest(0, density - 20) * 2),
       max(greatest(0, density - 20) * 4), 0, 0, 0, now()
FROM seed_rows GROUP BY camera_id, scope, scope_id, cls, dir, b, {bin}
"""
_SEED_CROSSINGS = """
INSERT INTO analytics_crossings (camera_id, line_id, track_id, crossing_time, object_class,
                                 direction, speed_kmh, lane_id)
SELECT camera_id, 'main', minute * 10000 + dir * 1000 + cls * 100 + k,
       timestamptz 'epoch' + minute * interval '60 s'
           + ((k - 0.5) * 60.0 / volume + cls * 0.011 + dir * 0.003) * interval '1 s',
       cls, dir,
       CASE WHEN k <= c1 THEN b - 7.5 WHEN k > c1 + c2 THEN b + 8.5 ELSE b + 0.5 END,
       CASE WHEN dir = 2 THEN 'lane-3' WHEN k % 5 < 2 THEN 'lane-2' ELSE 'lane-1' END
FROM seed_rows, generate_series(1, volume) AS k WHERE scope = 'line'
"""


def _seed_events(now_ns: int, rng: random.Random) -> list[Row]:
    """About 15 incidents per camera and hour over the last day; the latest may be open."""
    kinds = (
        (EventType.STOPPED_VEHICLE, ObjectClass.CAR, "vehicle stopped in {lane}"),
        (EventType.WRONG_WAY, ObjectClass.CAR, "wrong-way driver in {lane}"),
        (EventType.PEDESTRIAN_ON_ROADWAY, ObjectClass.PERSON, "pedestrian on {lane}"),
        (EventType.CONGESTION, ObjectClass.UNSPECIFIED, "congestion in {lane}"),
    )
    rows = []
    for camera in _CAMERAS:
        t = now_ns - _DAY_NS
        for n in itertools.count():
            t += int(rng.expovariate(1 / 240) * _NS)
            if t >= now_ns:
                break
            kind, cls, text = rng.choices(kinds, weights=(5, 1, 1, 3))[0]
            lane = rng.choice(_LANES)
            end = t + int(rng.uniform(20, 600) * _NS)
            track = None if kind == EventType.CONGESTION else n + 1
            rows.append(event_row(EventRecord(
                event_id=f"{camera}-{n:05d}", camera=camera, type=kind,
                severity=Severity(rng.choice((1, 2, 2, 3, 4))), start_time_ns=t,
                end_time_ns=end if end < now_ns else None, track_id=track, object_class=cls,
                lane_id=lane, zone_id="",
                evidence=None if track is None else EventEvidence(
                    n * 25, t, (400.0, 300.0, 520.0, 380.0), rng.uniform(0, 20)),
                description=text.format(lane=lane), update_time_ns=min(end, now_ns),
            )))  # fmt: skip
    return rows


async def _seed(dsn: str, now_ns: int) -> dict[str, int]:
    """Migrations, then 24 h of bins, crossings and events up to the last whole minute."""
    await harness.apply_schema(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        last_minute = now_ns // (60 * _NS) - 1
        quarter = now_ns // _QUARTER_NS * 15  # first minute of the current 900 s bin
        await conn.execute("SELECT setseed(0.42)")
        await conn.execute(_HIST_FUNCTION)
        await conn.execute(_SEED_FLOWS, list(_CAMERAS), last_minute - 1439, last_minute)
        await conn.execute(_SEED_ROWS)
        async with conn.transaction():
            await conn.execute(_BIN_SELECT.format(bin="minute", seconds=60), quarter * 60)
            await conn.execute(_BIN_SELECT.format(bin="minute / 15", seconds=900), quarter * 60)
            await conn.execute(_SEED_CROSSINGS)
            await conn.executemany(UPSERT_EVENT, _seed_events(now_ns, random.Random(42)))
        await conn.execute("DROP FUNCTION bench_hist")
        await conn.execute("ANALYZE")
        counts = {}
        for table in ("analytics_bins", "analytics_crossings", "analytics_events"):
            counts[table] = await conn.fetchval(f"SELECT count(*) FROM {table}")
        return counts
    finally:
        await conn.close()


# -- the bare echo server ---------------------------------------------------------------------


async def _echo_server(port: int) -> None:
    """grpc.aio with only grpc.health.v1 (SERVING), nothing else: what gRPC itself costs."""
    _parent_watch(os.getppid())
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)


# -- the writer: analytics' commits during the load -------------------------------------------

_BIN_FIELDS = tuple(f.name for f in dataclasses.fields(BinRecord) if f.name != "key")
_LOAD_BIN = (
    f"SELECT {', '.join(_BIN_FIELDS)} FROM analytics_bins WHERE camera_id = $1 AND scope = $2"
    " AND scope_id = $3 AND object_class = $4 AND direction = $5 AND bin_seconds = $6"
    " AND bin_start = timestamptz 'epoch' + ($7::bigint / 1000) * interval '1 microsecond'"
)


@dataclasses.dataclass
class WriterStats:
    commits: int = 0
    events: int = 0
    late_ticks: int = 0
    tx_ms: list[float] = dataclasses.field(default_factory=list)


class Writer:
    """Imitates analytics: per camera and 100 ms tick, one transaction upserting the current
    bins (and a crossing per vehicle), then the commit announcement; events every 2 s."""

    def __init__(self, pool: asyncpg.Pool[Any], redis: Any, channel: str, tick_s: float) -> None:
        self._pool = pool
        self._redis = redis
        self._channel = channel
        self._tick_s = tick_s
        self._bins: dict[BinKey, BinRecord] = {}
        self._track = int(time.time())
        self.stats = WriterStats()

    async def _current(self, key: BinKey) -> BinRecord:
        rec = self._bins.get(key)
        if rec is None:
            stored = await self._pool.fetchrow(
                _LOAD_BIN, key.camera, key.scope.value, key.scope_id, int(key.object_class),
                int(key.direction), key.bin_seconds, key.bin_start_ns,
            )  # fmt: skip
            rec = BinRecord(key=key)
            if stored is not None:
                values = dict(stored)
                values["speed_hist"] = tuple(values["speed_hist"])
                values["final"] = False
                rec = BinRecord(key=key, **values)
        return rec

    def _deltas(self, camera: str, now_ns: int, rng: random.Random) -> list[BinRecord]:
        """What one tick adds: a frame of lane statistics and, sometimes, a vehicle."""
        out = []
        for seconds in (60, 900):
            start = now_ns - now_ns % (seconds * _NS)
            stat = BinKey(camera, Scope.LANE, "lane-1", ObjectClass.UNSPECIFIED, Direction.NONE,
                          start, seconds)  # fmt: skip
            occupied = int(rng.random() < 0.2)
            out.append(BinRecord(key=stat, frames=1, density_frames=1, density_sum_per_km=12.0,
                                 occupied_frames=occupied, object_frames=occupied))  # fmt: skip
        if rng.random() < 0.35:  # ~21 vehicles a minute
            cls = rng.choices(list(ObjectClass)[1:5], weights=(80, 12, 3, 5))[0]
            direction = rng.choice((Direction.LEFT_TO_RIGHT, Direction.RIGHT_TO_LEFT))
            lane = "lane-3" if direction == Direction.RIGHT_TO_LEFT else rng.choice(_LANES[:2])
            kmh = max(5.0, rng.gauss(52.0, 7.0))
            hist = [0] * SPEED_BINS
            hist[min(int(kmh), SPEED_BINS - 1)] = 1
            for seconds in (60, 900):
                start = now_ns - now_ns % (seconds * _NS)
                for scope, scope_id in (
                    (Scope.CAMERA, ""),
                    (Scope.LINE, "main"),
                    (Scope.LANE, lane),
                ):
                    key = BinKey(camera, scope, scope_id, cls, direction, start, seconds)
                    out.append(BinRecord(key=key, volume=1, speed_count=1, speed_sum_kmh=kmh,
                                         speed_sq_sum_kmh2=kmh * kmh, speed_hist=tuple(hist),
                                         frames=1))  # fmt: skip
        return out

    async def tick(self, camera: str, rng: random.Random) -> None:
        now_ns = time.time_ns()
        deltas = self._deltas(camera, now_ns, rng)
        merged = [(await self._current(d.key)).merge(d) for d in deltas]
        crossings = []
        vehicle = next((d for d in deltas if d.key.scope == Scope.LINE), None)
        if vehicle is not None:
            self._track += 1
            lane = next(d.key.scope_id for d in deltas if d.key.scope == Scope.LANE and d.volume)
            crossings.append((camera, "main", self._track, now_ns, int(vehicle.key.object_class),
                              int(vehicle.key.direction), vehicle.speed_sum_kmh, lane))  # fmt: skip
        started = time.perf_counter()
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(UPSERT_BIN, [bin_row(r) for r in merged])
            if crossings:
                await conn.executemany(INSERT_CROSSING, crossings)
        self.stats.tx_ms.append((time.perf_counter() - started) * 1000)
        for rec in merged:
            self._bins[rec.key] = rec
        self._forget(now_ns)
        starts = [r.key.bin_start_ns for r in merged] + [c[3] for c in crossings]
        ends = [r.key.bin_start_ns + r.key.bin_seconds * _NS for r in merged]
        await self._redis.publish(
            self._channel, commit_json(camera, (min(starts), max(ends)), False)
        )
        self.stats.commits += 1

    def _forget(self, now_ns: int) -> None:
        for key in [k for k in self._bins if k.bin_start_ns + k.bin_seconds * _NS < now_ns]:
            del self._bins[key]

    async def run_camera(self, camera: str, index: int) -> None:
        rng = random.Random(index)
        next_at = time.monotonic() + self._tick_s * index / len(_CAMERAS)
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await self.tick(camera, rng)
            next_at += self._tick_s
            if time.monotonic() > next_at:  # fell behind: skip, as a late batch would merge
                self.stats.late_ticks += 1
                next_at = time.monotonic() + self._tick_s

    async def run_events(self, every_s: float) -> None:
        """Every ``every_s`` one camera (in turn) opens an event and ends its previous one."""
        rng = random.Random(7)
        open_events: dict[str, EventRecord] = {}
        for n in itertools.count():
            await asyncio.sleep(every_s)
            camera, now_ns = _CAMERAS[n % len(_CAMERAS)], time.time_ns()
            rows = []
            previous = open_events.pop(camera, None)
            if previous is not None:
                rows.append(event_row(dataclasses.replace(
                    previous, end_time_ns=now_ns, update_time_ns=now_ns)))  # fmt: skip
            event = EventRecord(
                event_id=f"{camera}-live-{n:05d}", camera=camera,
                type=EventType.STOPPED_VEHICLE, severity=Severity(rng.choice((1, 2, 3))),
                start_time_ns=now_ns, end_time_ns=None, track_id=n, object_class=ObjectClass.CAR,
                lane_id="lane-1", zone_id="", evidence=EventEvidence(n, now_ns, None, 0.0),
                description="vehicle stopped in lane-1", update_time_ns=now_ns,
            )  # fmt: skip
            open_events[camera] = event
            rows.append(event_row(event))
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.executemany(UPSERT_EVENT, rows)
            await self._redis.publish(self._channel, commit_json(camera, None, True))
            self.stats.events += 1


async def _writer_main(config: dict[str, Any]) -> None:
    from redis.asyncio import Redis  # noqa: PLC0415  (only the writer needs it)

    _parent_watch(os.getppid())
    pool = await asyncpg.create_pool(config["dsn"], min_size=2, max_size=len(_CAMERAS) + 1)
    redis = Redis.from_url(config["redis_url"])
    writer = Writer(pool, redis, config["channel"], config["tick_s"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = [asyncio.create_task(writer.run_camera(c, i)) for i, c in enumerate(_CAMERAS)]
    tasks.append(asyncio.create_task(writer.run_events(config["event_every_s"])))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [repr(r) for r in results if not isinstance(r, asyncio.CancelledError)]
    stats = writer.stats
    tx = sorted(stats.tx_ms)
    summary = {
        "commits": stats.commits, "events": stats.events, "late_ticks": stats.late_ticks,
        "tx_p50_ms": harness.percentile(tx, 0.5) if tx else None,
        "tx_p99_ms": harness.percentile(tx, 0.99) if tx else None,
        "failures": failures,
    }  # fmt: skip
    _write_text(config["stats_path"], json.dumps(summary))
    await redis.aclose()
    await pool.close()


# -- the client: one measurement ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunSpec:
    target: str  # a key of _TARGETS
    port: int
    concurrency: int
    warmup_s: float
    seconds: float


@dataclasses.dataclass
class RunResult(harness.Measured):
    target: str
    concurrency: int
    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    check: str
    l1: tuple[int, int] = (0, 0)  # hits, misses during the run
    l2: tuple[int, int] = (0, 0)
    split: list[int] = dataclasses.field(default_factory=list)  # calls per worker
    completed: int = 0  # answered calls, warm-up included (for the CPU per call)
    cpu_us: float | None = None  # the server processes' CPU per answered call
    commits_s: float | None = None  # commit announcements each query process applied, /s


def _span(start_ns: int, end_ns: int) -> time_range_pb2.TimeRange:
    return time_range_pb2.TimeRange(
        start_time=timestamp_pb2.Timestamp(seconds=start_ns // _NS),
        end_time=timestamp_pb2.Timestamp(seconds=end_ns // _NS),
    )


def _dashboard(target: str, now_ns: int) -> list[tuple[str, bytes]]:
    """The distinct requests of a target: (method path, serialised request)."""
    end = _ceil_quarter_ns(now_ns)  # ranges end at the next 15 min boundary: live data
    service = f"/{_QUERY_SERVICE}/"
    if target in ("echo", "health"):
        return [(_HEALTH_CHECK, health_pb2.HealthCheckRequest().SerializeToString())]
    if target == "summary":
        request = query_service_pb2.GetTrafficSummaryRequest(
            time_range=_span(end - 4 * _QUARTER_NS, end)
        )
        return [(service + "GetTrafficSummary", request.SerializeToString())]
    if target == "counts":
        return [
            (service + "GetTrafficCounts", query_service_pb2.GetTrafficCountsRequest(
                camera=f"cameras/{camera}", time_range=_span(end - _DAY_NS, end),
                bin_size=duration_pb2.Duration(seconds=900)).SerializeToString())
            for camera in _CAMERAS
        ]  # fmt: skip
    parents = [f"cameras/{camera}" for camera in _CAMERAS] + ["cameras/-"]
    return [
        (service + "ListEvents",
         query_service_pb2.ListEventsRequest(parent=p, page_size=50).SerializeToString())
        for p in parents
    ]  # fmt: skip


def _describe(target: str, answers: list[bytes]) -> str:
    """What the answers hold: a sanity check that the service computed something real."""
    if target in ("echo", "health"):
        statuses = {health_pb2.HealthCheckResponse.FromString(a).status for a in answers}
        return "SERVING" if statuses == {health_pb2.HealthCheckResponse.SERVING} else "?"
    if target == "summary":
        summaries = query_service_pb2.GetTrafficSummaryResponse.FromString(answers[0]).summaries
        volume = sum(s.total.volume for s in summaries)
        return f"{len(summaries)} cameras, {volume} vehicles in the hour"
    if target == "counts":
        series = [query_service_pb2.GetTrafficCountsResponse.FromString(a).bins for a in answers]
        volume = sum(b.volume for bins in series for b in bins)
        return f"{len(series)} series of {len(series[0])} bins, {volume} vehicles"
    pages = [query_service_pb2.ListEventsResponse.FromString(a).events for a in answers]
    return f"{len(pages)} pages of {min(map(len, pages))}-{max(map(len, pages))} events"


async def _client(spec: RunSpec) -> RunResult:
    """C coroutines calling back to back over up to 16 channels; warm-up, then measure."""
    requests = _dashboard(spec.target, time.time_ns())
    options = [("grpc.use_local_subchannel_pool", 1)]  # each channel its own connection
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{spec.port}", options=options)
        for _ in range(min(spec.concurrency, _MAX_CHANNELS))
    ]
    stubs: list[dict[str, grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]]] = [
        {path: ch.unary_unary(path) for path, _ in requests} for ch in channels
    ]
    try:
        answers = [await stubs[0][path](body, timeout=_CALL_TIMEOUT_S) for path, body in requests]
        check = _describe(spec.target, answers)
    except grpc.aio.AioRpcError as exc:
        check = f"check failed: {exc.code().name}: {exc.details()}"
    latencies: list[int] = []
    errors: collections.Counter[str] = collections.Counter()
    completed = [len(requests)]  # every answered call, warm-up and checks included
    begin = time.perf_counter_ns()
    measure_from = begin + int(spec.warmup_s * _NS)
    end = measure_from + int(spec.seconds * _NS)

    async def caller(i: int) -> None:
        rng, stub = random.Random(i), stubs[i % len(stubs)]
        while (started := time.perf_counter_ns()) < end:
            path, body = requests[rng.randrange(len(requests))]
            try:
                await stub[path](body, timeout=_CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                if started >= measure_from:
                    errors[exc.code().name] += 1
                continue
            done = time.perf_counter_ns()
            completed[0] += 1
            if started >= measure_from and done <= end:
                latencies.append(done - started)

    await asyncio.gather(*(caller(i) for i in range(spec.concurrency)))
    for channel in channels:
        await channel.close()
    latencies.sort()
    return RunResult(
        target=spec.target, concurrency=spec.concurrency, calls=len(latencies),
        seconds=spec.seconds, p50_ms=harness.percentile(latencies, 0.5) / 1e6,
        p99_ms=harness.percentile(latencies, 0.99) / 1e6, errors=dict(errors), check=check,
        completed=completed[0],
    )  # fmt: skip


# -- the orchestrator: processes, measurements, report --------------------------------------------

_SELF = Path(__file__).resolve()


def _python() -> list[str]:
    return [sys.executable, str(_SELF)]


async def _wait_grpc_serving(port: int, service: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)


_CACHE_LINE = re.compile(
    r'^query_cache_requests_total\{(?=[^}]*level="(l[12])")(?=[^}]*result="(\w+)")[^}]*\}\s+(\S+)',
    re.MULTILINE,
)


_HANDLED_LINE = re.compile(
    r'^grpc_server_handled_total\{(?=[^}]*grpc_service="its\.query\.v1\.QueryService")[^}]*\}'
    r"\s+(\S+)",
    re.MULTILINE,
)


_INVALIDATIONS_LINE = re.compile(r"^query_cache_invalidations_total\s+(\S+)", re.MULTILINE)


async def _counters(http_ports: Sequence[int]) -> dict[tuple[str, str], float]:
    """``query_cache_requests_total`` by (level, result), summed over the workers, and the
    QueryService calls each worker completed, by ("worker", index)."""
    totals: dict[tuple[str, str], float] = collections.defaultdict(float)
    for i, port in enumerate(http_ports):
        status, text = await harness.http_get(port, "/metrics")
        if status != 200:
            continue
        for level, result, value in _CACHE_LINE.findall(text):
            totals[level, result] += float(value)
        totals["worker", str(i)] = sum(map(float, _HANDLED_LINE.findall(text)))
        totals["invalidations", ""] += sum(map(float, _INVALIDATIONS_LINE.findall(text)))
    return dict(totals)


def _hits(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], level: str
          ) -> tuple[int, int]:  # fmt: skip
    """(hits, misses) of a level between two scrapes (L2 errors are neither)."""

    def delta(result: str) -> int:
        return round(after.get((level, result), 0.0) - before.get((level, result), 0.0))

    return delta("hit"), delta("miss")


def _hit_rate(counts: tuple[int, int]) -> float | None:
    hits, misses = counts
    return hits / (hits + misses) if hits + misses else None


@dataclasses.dataclass
class Bench:
    """What the measurements need: the processes, ports, plan and the results so far."""

    args: argparse.Namespace
    procs: harness.Processes
    progress: harness.Progress
    echo_port: int = 0
    echo_pids: list[int] = dataclasses.field(default_factory=list)
    query_pids: list[int] = dataclasses.field(default_factory=list)
    query_port: int = 0
    http_ports: list[int] = dataclasses.field(default_factory=list)
    results: list[RunResult] = dataclasses.field(default_factory=list)
    scaled: list[RunResult] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    seeded: dict[str, int] = dataclasses.field(default_factory=dict)
    seed_s: float = 0.0
    writer: dict[str, Any] = dataclasses.field(default_factory=dict)
    cache_total: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)


async def _run_client(spec: RunSpec) -> RunResult:
    """One measurement in a fresh client process."""
    argv = [*_python(), "--client", json.dumps(dataclasses.asdict(spec))]
    last = await harness.run_child(argv, f"client {spec.target} c={spec.concurrency}")
    return RunResult(**json.loads(last))


async def _measure(bench: Bench, target: str, concurrency: int, *, workers: int = 1) -> RunResult:
    """One client process against ``target`` at ``concurrency``, with the servers' CPU per
    call and, for the query service, its cache and commit counters over the run."""
    echo = target == "echo"
    port, pids = (
        (bench.echo_port, bench.echo_pids) if echo else (bench.query_port, bench.query_pids)
    )
    spec = RunSpec(target, port, concurrency, bench.args.warmup, bench.args.seconds)
    suffix = f" x{workers} workers" if workers > 1 else ""
    bench.progress.begin(f"{_TARGETS[target]} c={concurrency}{suffix}")
    before = {} if echo else await _counters(bench.http_ports)
    cpu, started = harness.cpu_seconds(pids), time.monotonic()
    result = await _run_client(spec)
    cpu, wall = harness.cpu_seconds(pids) - cpu, time.monotonic() - started
    result.cpu_us = cpu / result.completed * 1e6 if result.completed else None
    if not echo:
        after = await _counters(bench.http_ports)
        result.l1, result.l2 = _hits(before, after, "l1"), _hits(before, after, "l2")
        heard = after.get(("invalidations", ""), 0) - before.get(("invalidations", ""), 0)
        result.commits_s = heard / len(bench.http_ports) / wall
        if workers > 1:
            result.split = [
                round(after.get(("worker", str(i)), 0) - before.get(("worker", str(i)), 0))
                for i in range(workers)
            ]
    return result


async def _rounds(bench: Bench, targets: Sequence[str], *, workers: int = 1) -> list[RunResult]:
    """At each concurrency: echo, the targets, echo again (drift hits both sides)."""
    out = []
    for concurrency in bench.args.concurrency:
        out.append(await _measure(bench, "echo", concurrency))
        for target in targets:
            out.append(await _measure(bench, target, concurrency, workers=workers))
        out.append(await _measure(bench, "echo", concurrency))
    return out


def _service_env(bench: Bench, grpc_port: int, http_port: int, *, reuse: bool) -> dict[str, str]:
    env = harness.service_env(bench.args.bench_dsn, grpc_port, http_port)
    env.update({
        "ITS_REDIS__URL": bench.args.redis_url,
        "ITS_ANALYTICS__REDIS_PREFIX": bench.args.redis_prefix,
    })  # fmt: skip
    if reuse:
        env["ITS_GRPC__REUSE_PORT"] = "true"
    return env


async def _start_query(bench: Bench, workers: int) -> list[asyncio.subprocess.Process]:
    """``workers`` query processes on one gRPC port (SO_REUSEPORT beyond one), each with its
    own HTTP side port; returns when every one answers /health."""
    bench.query_port = harness.free_port()
    bench.http_ports = [harness.free_port() for _ in range(workers)]
    started = []
    for i, http_port in enumerate(bench.http_ports):
        env = _service_env(bench, bench.query_port, http_port, reuse=workers > 1)
        name = f"query-{workers}w-{i}"
        proc = await bench.procs.spawn(name, harness.service_command(), env)
        started.append(proc)
        bench.query_pids = [p.pid for p in started]
        await harness.wait_http_ready(bench.procs, name, proc, http_port)
    await _wait_grpc_serving(bench.query_port, _QUERY_SERVICE)
    return started


def _fmt(x: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:{spec}}{suffix}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


@dataclasses.dataclass(frozen=True)
class EchoRef:
    mean: RunResult  # the means of the runs
    runs: str  # each run's req/s


def _echo_refs(results: Sequence[RunResult]) -> dict[int, EchoRef]:
    """Per concurrency: the mean of the echo runs around the query runs."""
    refs = {}
    for c in sorted({r.concurrency for r in results}):
        echo = [r for r in results if r.target == "echo" and r.concurrency == c]
        if echo:
            n = len(echo)
            cpu = [r.cpu_us for r in echo if r.cpu_us is not None]
            mean = RunResult(
                "echo", c, round(sum(r.calls for r in echo) / n), echo[0].seconds,
                sum(r.p50_ms for r in echo) / n, sum(r.p99_ms for r in echo) / n,
                {"": sum(r.error_count for r in echo)}, "",
                cpu_us=sum(cpu) / len(cpu) if cpu else None,
            )  # fmt: skip
            refs[c] = EchoRef(mean, " / ".join(f"{r.rate:.0f}" for r in echo))
    return refs


def _row(label: str, r: RunResult, ref: RunResult, split: bool) -> str:
    rate = _fmt(r.rate / ref.rate if ref.rate else None, ".2f")
    p99 = _fmt(r.p99_ms / ref.p99_ms if ref.p99_ms else None, ".2f")
    cache = ["", "", ""]
    if r.target in _QUERY_RPCS:
        cache = [_pct(_hit_rate(r.l1)), _pct(_hit_rate(r.l2)), _fmt(r.commits_s, ".0f")]
    cells = [label, str(r.concurrency), f"{r.rate:.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
             str(r.error_count), rate, p99, *cache, _fmt(r.cpu_us, ".0f")]  # fmt: skip
    if split:
        cells.append(" / ".join(map(str, r.split)))
    return "| " + " | ".join(cells) + " |"


def _table(results: Sequence[RunResult]) -> list[str]:
    """Rows RPC x concurrency; echo rows are the mean of the echo runs at that concurrency."""
    refs = _echo_refs(results)
    split = any(r.split for r in results)
    lines = [
        "| RPC | concurrency | req/s | p50 ms | p99 ms | errors | req/s vs echo | p99 vs echo"
        " | L1 hit | L2 hit | commits/s | server CPU µs/call |"
        + (" calls per worker |" if split else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if split else ""),
    ]
    for target, label in _TARGETS.items():
        for c, ref in refs.items():
            if target == "echo":
                lines.append(_row(f"{label} (mean of {ref.runs})", ref.mean, ref.mean, split))
                continue
            for r in (r for r in results if r.target == target and r.concurrency == c):
                lines.append(_row(label, r, ref.mean, split))
    return lines


def _verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def _targets(bench: Bench) -> list[str]:
    """The issue's targets, PASS/FAIL each, naming the rows that miss."""
    results, refs = bench.results, _echo_refs(bench.results)
    reads = [r for r in results if r.target in _QUERY_RPCS and r.concurrency in refs]

    def misses(check: Callable[[RunResult], bool]) -> str:
        bad = [f"{_TARGETS[r.target]} c={r.concurrency}" for r in reads if not check(r)]
        return "" if not bad else " (misses: " + ", ".join(bad) + ")"

    def rate_ok(r: RunResult) -> bool:
        return r.rate >= 0.8 * refs[r.concurrency].mean.rate

    def p99_ok(r: RunResult) -> bool:
        return r.p99_ms <= 1.25 * refs[r.concurrency].mean.p99_ms

    def at(c: int, check: Callable[[RunResult], bool]) -> Callable[[RunResult], bool]:
        return lambda r: r.concurrency != c or check(r)

    at100 = at(100, lambda r: r.p99_ms < 100)
    at1000 = at(1000, lambda r: r.error_count == 0)
    l1 = _hit_rate(_hits({}, bench.cache_total, "l1"))
    l2 = _hit_rate(_hits({}, bench.cache_total, "l2"))
    covered = {r.concurrency for r in reads}
    return [
        f"- cached reads >= 80 % of the echo's req/s at each concurrency: "
        f"{_verdict(all(map(rate_ok, reads)))}{misses(rate_ok)}",
        f"- cached reads' p99 <= 1.25x the echo's p99 at each concurrency: "
        f"{_verdict(all(map(p99_ok, reads)))}{misses(p99_ok)}",
        "- p99 < 100 ms at 100 concurrent: "
        + (f"{_verdict(all(map(at100, reads)))}{misses(at100)}" if 100 in covered else "not run"),
        "- no errors at 1,000 concurrent: "
        + (
            f"{_verdict(all(map(at1000, reads)))}{misses(at1000)}" if 1000 in covered else "not run"
        ),
        f"- L1 hit rate > 85 %: {_verdict(l1 is not None and l1 > 0.85)} ({_pct(l1)})",
        f"- L2 hit rate > 70 %: {_verdict(l2 is not None and l2 > 0.70)} ({_pct(l2)})",
    ]


def _checks_and_errors(results: Sequence[RunResult]) -> list[str]:
    lines = []
    for target, label in _TARGETS.items():
        checks = list(dict.fromkeys(r.check for r in results if r.target == target))
        if checks:  # the first and the last: the writer's traffic grows between them
            lines.append(f"- {label}: " + " ... ".join(dict.fromkeys([checks[0], checks[-1]])))
    failed = [r for r in results if r.errors]
    for r in failed:
        codes = ", ".join(f"{code} {n}" for code, n in sorted(r.errors.items()))
        lines.append(f"- errors, {_TARGETS[r.target]} c={r.concurrency}: {codes}")
    return lines


def _report(bench: Bench, elapsed_s: float) -> str:
    args, w = bench.args, bench.writer
    total = bench.cache_total
    l1, l2 = _hits({}, total, "l1"), _hits({}, total, "l2")
    commits_s = w.get("commits", 0) / w["seconds"] if w.get("seconds") else 0.0
    lines = [
        *harness.report_head(
            "## Query service under a dashboard workload (`benchmarks/query_service.py`)",
            _SELF, elapsed_s,
        ),
        f"Data: 8 cameras x 24 h: {bench.seeded.get('analytics_bins', 0):,} bins (60 s and 900 s),"
        f" {bench.seeded.get('analytics_crossings', 0):,} crossings,"
        f" {bench.seeded.get('analytics_events', 0):,} events, seeded in {bench.seed_s:.0f} s."
        f" Writer during the load: {w.get('commits', 0):,} commits ({commits_s:.0f}/s, one"
        f" transaction each: p50 {_fmt(w.get('tx_p50_ms'), '.1f')} ms, p99"
        f" {_fmt(w.get('tx_p99_ms'), '.1f')} ms; {w.get('late_ticks', 0)} late ticks),"
        f" {w.get('events', 0)} events.",
        "",
        f"Each row: {args.warmup:g} s warm-up, then {args.seconds:g} s measured; one client"
        f" process per row, min(C, {_MAX_CHANNELS}) channels. Echo rows: the mean of the echo"
        " runs before and after the query rows at that concurrency (each run's req/s in"
        " brackets).",
        "", "### One query process", "", *_table(bench.results), "",
        f"Cache over the whole run: L1 {l1[0]:,} hits / {l1[1]:,} misses ({_pct(_hit_rate(l1))}),"
        f" L2 {l2[0]:,} hits / {l2[1]:,} misses ({_pct(_hit_rate(l2))}),"
        f" {round(total.get(('l2', 'error'), 0.0)):,} L2 errors.",
        "", "Targets:", "", *_targets(bench), "",
        "What the answers held (checked once per row), and errors by code:", "",
        *_checks_and_errors([*bench.results, *bench.scaled]), "",
    ]  # fmt: skip
    if args.workers > 1:
        lines += [f"### {args.workers} query processes on one port (SO_REUSEPORT)", ""]
        lines += _table(bench.scaled) if bench.scaled else ["Skipped: see the note below."]
        lines += [""]
    lines += [*(f"Note: {n}" for n in bench.notes)]
    return "\n".join(lines).rstrip() + "\n"


def _log_problems(log_dir: Path) -> list[str]:
    """Errors the processes logged (their warnings are expected: no decoder to talk to);
    for a traceback, its exception line."""
    notes = []
    for path in sorted(log_dir.glob("*.log")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        bad = []
        for i, line in enumerate(lines):
            if line.startswith("Traceback"):
                rest = (x for x in lines[i + 1 :] if x and not x.startswith((" ", "\t")))
                bad.append("Traceback: " + next(rest, "?"))
            elif re.search(r"\b(ERROR|CRITICAL)\b", line):
                bad.append(line)
        if bad:
            notes.append(f"{path.stem} logged {len(bad)} errors; the first: `{bad[0][:300]}`")
    return notes


def _plan(args: argparse.Namespace) -> list[tuple[str, float]]:
    """Planned steps and seconds, in the order ``_run`` begins them (for the ETA)."""
    run = args.warmup + args.seconds + 2.0  # + the client's start-up and checks
    targets = ["echo", "health", *_QUERY_RPCS, "echo"]
    plan = [("seed", 35.0), ("start", 8.0)]
    plan += [(t, run) for _ in args.concurrency for t in targets]
    if args.workers > 1:
        plan += [("start workers", 6.0 * args.workers)]
        plan += [(t, run) for _ in args.concurrency for t in ["echo", *_QUERY_RPCS, "echo"]]
    return [*plan, ("stop", 5.0)]


async def _scale_out(bench: Bench, single: list[asyncio.subprocess.Process]) -> None:
    """The query rounds again against ``--workers`` processes sharing one port."""
    workers = bench.args.workers
    for proc in single:  # two cores: the single process must not compete
        await bench.procs.stop(proc)
    bench.progress.begin(f"start {workers} query workers (SO_REUSEPORT)")
    try:
        await _start_query(bench, workers)
    except harness.ServiceFailed as exc:
        refused = re.search(r"reuse_port[^\n]*", str(exc))
        why = refused.group(0) if refused else str(exc).splitlines()[0]
        bench.notes.append(f"scale-out skipped: {workers} workers could not share a port: {why}")
        print(f"\nscale-out skipped: {exc}", file=sys.stderr)
        return
    bench.scaled = await _rounds(bench, _QUERY_RPCS, workers=workers)


async def _run(bench: Bench) -> None:
    """Seed, start the processes, measure; ``bench`` collects what the report needs."""
    args, procs = bench.args, bench.procs
    bench.progress.begin("create the database and seed 24 h of 8 cameras")
    started = time.monotonic()
    bench.seeded = await _seed(args.bench_dsn, time.time_ns())
    bench.seed_s = time.monotonic() - started
    bench.progress.begin("start echo server, query service, writer")
    bench.echo_port = harness.free_port()
    echo = await procs.spawn("echo", [*_python(), "--echo-server", str(bench.echo_port)])
    bench.echo_pids = [echo.pid]
    single = await _start_query(bench, 1)
    await _wait_grpc_serving(bench.echo_port, "")
    writer_config = {
        "dsn": args.bench_dsn, "redis_url": args.redis_url, "tick_s": 0.1, "event_every_s": 2.0,
        "channel": f"{args.redis_prefix}:commits", "stats_path": str(procs.log_dir / "writer.json"),
    }  # fmt: skip
    writer = await procs.spawn("writer", [*_python(), "--writer", json.dumps(writer_config)])
    writer_started = time.monotonic()
    await asyncio.sleep(1.0)  # the writer's first commits land before the first measurement
    if writer.returncode is not None:
        raise harness.ServiceFailed(f"writer exited:\n{procs.log_tail('writer')}")
    bench.results = await _rounds(bench, ("health", *_QUERY_RPCS))
    bench.cache_total = await _counters(bench.http_ports)
    if args.workers > 1:
        await _scale_out(bench, single)
    bench.progress.begin("stop")
    await procs.stop(writer)
    stats = _read_json(writer_config["stats_path"])
    if stats is not None:
        bench.writer = stats
        bench.writer["seconds"] = time.monotonic() - writer_started
        if bench.writer.get("failures"):
            bench.notes.append(f"writer failures: {bench.writer['failures']}")


async def _orchestrate(args: argparse.Namespace) -> str:
    """Run everything; the session cleans up (processes, database) whatever happens."""
    plan = [seconds for _, seconds in _plan(args)]
    async with harness.open_session(args.dsn, "query", plan, keep_files=args.keep_logs) as run:
        args.bench_dsn = run.dsn
        args.redis_prefix = f"its:bench:{uuid.uuid4().hex[:8]}"
        bench = Bench(args, run.procs, run.progress)
        await _run(bench)
        bench.notes += _log_problems(run.tmp)
        return _report(bench, time.monotonic() - run.started)


def _arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--redis-url", default=_REDIS_URL)
    parser.add_argument("--quick", action="store_true", help="2 s per row, 0.5 s warm-up")
    parser.add_argument("--seconds", type=float, help="measured seconds per row (default 10)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per row (default 2)")
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=list(_CONCURRENCY),
        help="comma-separated (default 1,100,1000)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also measure N query processes on one port (SO_REUSEPORT)",
    )
    internal = parser.add_mutually_exclusive_group()  # the benchmark's own subprocesses
    internal.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    internal.add_argument("--writer", metavar="JSON", help=argparse.SUPPRESS)
    internal.add_argument("--client", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (2.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    return args


def main() -> None:
    args = _arguments()
    if args.echo_server:
        asyncio.run(_echo_server(args.echo_server))
    elif args.writer:
        asyncio.run(_writer_main(json.loads(args.writer)))
    elif args.client:
        result = asyncio.run(_client(RunSpec(**json.loads(args.client))))
        print(json.dumps(dataclasses.asdict(result)))
    else:
        harness.run_and_report(_orchestrate(args), args.markdown)


if __name__ == "__main__":
    main()
