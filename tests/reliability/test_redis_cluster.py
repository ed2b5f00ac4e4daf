"""Analytics on a Redis Cluster that loses nodes mid-stream (issue #19).

A real 3-master, 3-replica cluster on loopback (``PrivateRedisCluster``); the service runs
in-process with ``redis.cluster: true`` and one detection stream stays open throughout.
Acknowledgements never wait for Redis, so the stream sees no error and PostgreSQL holds
everything, whatever Redis does. Killed master: its replica takes over in ~2-3 s and live
messages flow again (the client's retry usually rides the failover out, so they arrive
late rather than dropped). Killed shard (master and replica): no failover is possible;
live messages are dropped, counted, the breaker opens, and they flow again once the nodes
are back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from redis.asyncio.cluster import ClusterPubSub, RedisCluster
from redis.exceptions import RedisError

from its.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc, detection_batch_pb2
from its_camera_ai.analytics import CameraAnalytics, FrameInput
from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import AnalyticsServiceSettings, ServiceHost, Settings
from its_camera_ai.scene import scene_from_proto
from tests.analytics import synth
from tests.analytics.test_service_support import (
    CAMERA_ID,
    camera_proto,
    recent_start_ns,
    reference,
    serve_cameras,
    stored,
    to_batches,
)
from tests.reliability.conftest import PrivateRedisCluster

pytestmark = pytest.mark.reliability

_PREFIX = "its:analytics"
_STATS_KEY = f"{_PREFIX}:stats:{CAMERA_ID}"
_PER_BATCH = 8
_BEFORE_KILL = 10  # batches fanned out to the healthy cluster first
# From the kill on, a batch every _PACE_S (~13 s for the rest of the traffic); live
# messages must flow again within _RECOVERY_WITHIN_S of the kill, leaving later events to
# check that nothing is lost once they do.
_PACE_S = 0.2
_RECOVERY_WITHIN_S = 10.0
# A whole shard down: a batch every _SHARD_PACE_S until the breaker opens, within
# _SHARD_OUTAGE_WITHIN_S (at most 50 of the 75 batches: some are left for after).
_SHARD_PACE_S = 0.5
_SHARD_OUTAGE_WITHIN_S = 25.0
_V50 = 50 / 3.6


def _traffic(duration_s: float = 60.0) -> list[FrameInput]:
    """Cars flowing the right way, and a wrong-way driver every 10 s: an event to publish
    at least every ~13 batches, so some are published after the failover whenever it ends."""
    cars = [synth.Agent(synth.straight(0.0, -5.25, 60.0, t_start=3.0 * i)) for i in range(20)]
    ghosts = [
        synth.Agent(synth.piecewise([(t0, 90.0), (t0 + 90.0 / _V50, 0.0)], -1.75))
        for t0 in range(0, int(duration_s) - 6, 10)
    ]
    return synth.frames(
        [*ghosts, *cars], duration_s, fps=10.0, start_ns=recent_start_ns(duration_s)
    )


def _event_ids_by_batch(frames: Sequence[FrameInput]) -> list[set[str]]:
    """The ids of the event records each batch makes the engine publish (undisturbed run)."""
    engine = CameraAnalytics(CAMERA_ID, scene_from_proto(camera_proto(synth.road_scene())))
    out: list[set[str]] = []
    for i in range(0, len(frames), _PER_BATCH):
        ids: set[str] = set()
        for frame in frames[i : i + _PER_BATCH]:
            detections = frame.detections.copy()  # float32 scores, as on the wire
            detections[:, 4] = detections[:, 4].astype(np.float32)
            outcome = engine.process(replace(frame, detections=detections, model_version="1"))
            ids |= {event.event_id for event in outcome.events}
        out.append(ids)
    return out


class _OpenStream:
    """One ``StreamDetectionBatches`` call kept open across the failover: batches are sent
    as the test goes, acknowledgements collected as they come."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._outgoing: asyncio.Queue[detection_batch_pb2.DetectionBatch | None] = asyncio.Queue()
        self.acks: list[analytics_service_pb2.StreamDetectionBatchesResponse] = []
        stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
        self._call = stub.StreamDetectionBatches(self._requests())
        self._reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[analytics_service_pb2.StreamDetectionBatchesRequest]:
        while (batch := await self._outgoing.get()) is not None:
            yield analytics_service_pb2.StreamDetectionBatchesRequest(batch=batch)

    async def _read(self) -> None:
        async for ack in self._call:
            self.acks.append(ack)

    async def send(self, batch: detection_batch_pb2.DetectionBatch, within: float = 10.0) -> None:
        """Send one batch and wait for its acknowledgement (a stream error raises here)."""
        self._outgoing.put_nowait(batch)
        deadline = time.monotonic() + within
        while not self.acks or self.acks[-1].acknowledged_sequence < batch.sequence:
            if self._reader.done():
                self._reader.result()  # the stream's error, if it failed
                raise AssertionError("the stream ended before acknowledging every batch")
            assert time.monotonic() < deadline, f"batch {batch.sequence} never acknowledged"
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self._outgoing.put_nowait(None)
        await asyncio.wait_for(self._reader, 10)

    def cancel(self) -> None:
        self._call.cancel()
        self._reader.cancel()


def _metric(host: ServiceHost, name: str, labels: dict[str, str]) -> float:
    return host.runtime.metrics.get_sample_value(name, labels) or 0.0


def _fanout(host: ServiceHost, result: str) -> float:
    return _metric(host, "analytics_fanout_total", {"result": result})


async def _until(check: Callable[[], bool], failure: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, failure
        await asyncio.sleep(0.05)


async def _stats_frame_time(reader: RedisCluster) -> int | None:
    """The newest frame time in the camera's cached stats; None while Redis cannot say."""
    try:
        raw = await reader.get(_STATS_KEY)
    except RedisError:  # the test's own client meets the failover too
        return None
    return None if raw is None else int(json.loads(raw)["last_frame_time_ns"])


async def _collect_events(pubsub: ClusterPubSub, heard: set[str]) -> None:
    """Add the id of every event published on the subscribed channel to ``heard``."""
    while True:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if message is not None:
            heard.add(json.loads(message["data"])["event_id"])


async def _failover_seconds(cluster: PrivateRedisCluster, replica: int, killed_at: float) -> float:
    """Seconds from the kill until ``replica`` is a master and every live node says
    ``cluster_state:ok`` (the bus may still call it ok before it noticed the death, hence
    the role first)."""
    while True:
        with contextlib.suppress(RedisError):
            promoted = await asyncio.to_thread(cluster.role, replica) == "master"
            if promoted and all(
                [await asyncio.to_thread(cluster.is_ok, port) for port in cluster.live_ports]
            ):
                return time.monotonic() - killed_at
        await asyncio.sleep(0.05)


def _last_capture_ns(batch: detection_batch_pb2.DetectionBatch) -> int:
    return int(batch.frames[-1].capture_time.ToNanoseconds())


async def _start_analytics(
    dsn: str, cluster: PrivateRedisCluster, decoder: str, spool_dir: Path
) -> ServiceHost:
    settings = Settings(
        grpc={"host": "127.0.0.1", "port": 0, "drain_seconds": 0.5},
        http={"host": "127.0.0.1", "port": 0},
        database={"dsn": dsn, "connect_timeout_seconds": 1.0, "command_timeout_seconds": 2.0},
        redis={"url": cluster.url, "cluster": True, "socket_timeout_seconds": 0.5},
    )
    unit = analytics_unit(
        AnalyticsServiceSettings(
            spool_dir=spool_dir,
            breaker_reset_seconds=0.3,
            replay_interval_seconds=0.2,
            decoder_target=decoder,
        )
    )
    host = ServiceHost(settings, [unit])
    await host.start()
    return host


def _check_outcome(
    host: ServiceHost,
    feed: _OpenStream,
    batches: Sequence[detection_batch_pb2.DetectionBatch],
    first_after_recovery: int,
) -> None:
    """The failover cost live messages at most: every batch acknowledged once, in order,
    none refused; every live message published or counted as dropped for Redis (none for
    a full queue); every one offered after the recovery published; the breaker closed.

    Whether any was dropped depends on a race: the cluster client retries a failed command
    (10 times, jittered backoff capped at 1 s: ~1.5-5 s) while the replica takes over in
    ~2-3 s. Riding it out delays the live messages; giving up first drops the one being
    sent (and opens the breaker after 3 in a row), and the next goes through."""
    assert [ack.acknowledged_sequence for ack in feed.acks] == [b.sequence for b in batches]
    assert not any(ack.rejections or ack.duplicate for ack in feed.acks)
    published = _fanout(host, "published")
    assert published + _fanout(host, "dropped_redis_unavailable") == len(batches)
    assert _fanout(host, "dropped_queue_full") == 0
    assert published >= _BEFORE_KILL + len(batches) - first_after_recovery
    assert _metric(host, "circuit_breaker_state", {"dependency": "redis"}) == 0  # closed


def _report(host: ServiceHost, failover_s: float, recovered_s: float) -> None:
    redis = {"dependency": "redis"}
    opened = _metric(host, "circuit_breaker_transitions_total", {**redis, "state": "open"})
    print(
        f"\nredis cluster, master SIGKILLed: failover (replica promoted, every node"
        f" cluster_state:ok) {failover_s:.2f} s; first live message published"
        f" {recovered_s:.2f} s after the kill; fan-out published"
        f" {_fanout(host, 'published'):.0f}, dropped"
        f" {_fanout(host, 'dropped_redis_unavailable'):.0f}; redis breaker opened"
        f" {opened:.0f} times"
    )


async def _kill_and_recover(
    cluster: PrivateRedisCluster,
    host: ServiceHost,
    feed: _OpenStream,
    batches: Sequence[detection_batch_pb2.DetectionBatch],
) -> tuple[float, float, int]:
    """SIGKILL the master of the stats key's slot while the rest of the batches stream, one
    every _PACE_S. Returns the seconds from the kill to the failover and to the first live
    message published after it, and the index of the first batch offered after that."""
    victim = cluster.master_of(_STATS_KEY)
    (replica,) = cluster.replicas_of(victim)
    killed_at = time.monotonic()
    cluster.kill(victim)
    failover = asyncio.create_task(_failover_seconds(cluster, replica, killed_at))
    feeder = asyncio.create_task(_feed_paced(feed, batches[_BEFORE_KILL:]))
    try:
        await _until(
            lambda: _fanout(host, "published") > _BEFORE_KILL,
            "the fan-out never recovered",
            within=_RECOVERY_WITHIN_S,
        )
        recovered_s = time.monotonic() - killed_at
        # Acknowledged batches were offered already; the one in flight may have been too.
        first_after_recovery = len(feed.acks) + 1
        failover_s = await asyncio.wait_for(failover, _RECOVERY_WITHIN_S)
        await feeder
    finally:
        failover.cancel()
        feeder.cancel()
    assert cluster.master_of(_STATS_KEY) == replica
    return failover_s, recovered_s, first_after_recovery


async def _feed_paced(
    feed: _OpenStream, batches: Sequence[detection_batch_pb2.DetectionBatch]
) -> None:
    for batch in batches:
        await feed.send(batch)
        await asyncio.sleep(_PACE_S)


@contextlib.asynccontextmanager
async def _analytics_on(
    cluster: PrivateRedisCluster, dsn: str, spool_dir: Path
) -> AsyncIterator[tuple[ServiceHost, _OpenStream, RedisCluster]]:
    """Analytics on the cluster, one open stream to it, and the test's own cluster client."""
    async with contextlib.AsyncExitStack() as stack:
        scene = camera_proto(synth.road_scene())
        decoder = await stack.enter_async_context(serve_cameras({CAMERA_ID: scene}))
        host = await _start_analytics(dsn, cluster, decoder, spool_dir)
        stack.push_async_callback(host.stop)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
        stack.push_async_callback(channel.close)
        reader = RedisCluster.from_url(cluster.url, decode_responses=True)
        stack.push_async_callback(reader.aclose)
        await reader.initialize()  # learns the nodes, which pubsub() picks from
        feed = _OpenStream(channel)
        stack.callback(feed.cancel)
        yield host, feed, reader


async def test_master_killed_mid_stream_fails_over_and_fanout_recovers(
    postgres_dsn: str, private_redis_cluster: PrivateRedisCluster, tmp_path: Path
) -> None:
    cluster = private_redis_cluster
    frames = _traffic()
    batches = to_batches(frames, "inference-0/cluster", per_batch=_PER_BATCH)
    events_by_batch = _event_ids_by_batch(frames)
    heard: set[str] = set()
    async with (
        _analytics_on(cluster, postgres_dsn, tmp_path / "spool") as (host, feed, reader),
        contextlib.AsyncExitStack() as stack,
    ):
        # On a node that is not killed: the master of another slot range.
        listen_port = next(p for p in cluster.ports if cluster.role(p) == "master"
                           and p != cluster.master_of(_STATS_KEY))  # fmt: skip
        pubsub = reader.pubsub(host="127.0.0.1", port=listen_port)
        await pubsub.subscribe(f"{_PREFIX}:events")
        stack.push_async_callback(pubsub.aclose)
        listener = asyncio.create_task(_collect_events(pubsub, heard))
        stack.callback(listener.cancel)

        for batch in batches[:_BEFORE_KILL]:
            await feed.send(batch)
        await _until(lambda: _fanout(host, "published") == _BEFORE_KILL, "no fan-out at all")
        assert await _stats_frame_time(reader) == _last_capture_ns(batches[_BEFORE_KILL - 1])
        before_kill = set().union(*events_by_batch[:_BEFORE_KILL])
        assert before_kill, "the traffic publishes no event before the kill"
        await _until(lambda: before_kill <= heard, "events never reached the subscriber")

        failover_s, recovered_s, first_after = await _kill_and_recover(cluster, host, feed, batches)
        await feed.close()  # raises the stream's error, had it failed
        await _until(
            lambda: (
                _fanout(host, "published") + _fanout(host, "dropped_redis_unavailable")
                == len(batches)
            ),
            "fan-out messages unaccounted for",
        )
        after_recovery = set().union(*events_by_batch[first_after:])
        assert after_recovery, "the traffic publishes no event after the recovery"
        await _until(lambda: after_recovery <= heard, "events after the failover were lost")
        _report(host, failover_s, recovered_s)
        _check_outcome(host, feed, batches, first_after)
        assert heard <= (await stored(postgres_dsn)).events
        assert await stored(postgres_dsn) == reference(frames, synth.road_scene())
        assert await _stats_frame_time(reader) == _last_capture_ns(batches[-1])


async def test_a_shard_lost_entirely_drops_live_messages_only(
    postgres_dsn: str, private_redis_cluster: PrivateRedisCluster, tmp_path: Path
) -> None:
    """Master and replica of one slot range killed: no failover is possible and the cluster
    refuses every command (CLUSTERDOWN). Live messages are dropped, counted, through the
    open breaker; acknowledgements go on. With both nodes back, live messages flow again."""
    cluster = private_redis_cluster
    frames = _traffic()
    batches = to_batches(frames, "inference-0/shard", per_batch=_PER_BATCH)
    redis = {"dependency": "redis"}
    async with _analytics_on(cluster, postgres_dsn, tmp_path / "spool") as (host, feed, reader):
        for batch in batches[:5]:
            await feed.send(batch)
        await _until(lambda: _fanout(host, "published") == 5, "no fan-out at all")
        master = cluster.master_of(_STATS_KEY)
        (replica,) = cluster.replicas_of(master)
        down_at = time.monotonic()
        cluster.kill(replica)
        cluster.kill(master)
        sent = 5
        # Each message fails only once the client's retries are spent (~1.5-5 s), and the
        # breaker opens at the third failure in a row.
        while not _metric(host, "circuit_breaker_transitions_total", {**redis, "state": "open"}):
            assert time.monotonic() - down_at < _SHARD_OUTAGE_WITHIN_S, "the breaker never opened"
            await feed.send(batches[sent])
            sent += 1
            await asyncio.sleep(_SHARD_PACE_S)
        opened_s = time.monotonic() - down_at
        cluster.restart(master)
        cluster.restart(replica)
        back_at = time.monotonic()
        published = _fanout(host, "published")
        feeder = asyncio.create_task(_feed_paced(feed, batches[sent:]))
        try:
            await _until(
                lambda: _fanout(host, "published") > published,
                "no live message after the restart",
                within=_RECOVERY_WITHIN_S,
            )
            recovered_s = time.monotonic() - back_at
            await feeder
        finally:
            feeder.cancel()
        await feed.close()  # raises the stream's error, had it failed
        await _until(
            lambda: (
                _fanout(host, "published") + _fanout(host, "dropped_redis_unavailable")
                == len(batches)
            ),
            "fan-out messages unaccounted for",
        )
        assert _fanout(host, "dropped_redis_unavailable") >= 1
        assert _fanout(host, "dropped_queue_full") == 0
        assert _metric(host, "circuit_breaker_state", redis) == 0  # closed again
        assert [ack.acknowledged_sequence for ack in feed.acks] == [b.sequence for b in batches]
        assert await stored(postgres_dsn) == reference(frames, synth.road_scene())
        assert await _stats_frame_time(reader) == _last_capture_ns(batches[-1])
        print(
            f"\nredis cluster, a whole shard SIGKILLed: breaker open {opened_s:.2f} s after"
            f" the kill; nodes restarted {back_at - down_at:.2f} s after it, first live"
            f" message published {recovered_s:.2f} s after the restart; fan-out"
            f" published {_fanout(host, 'published'):.0f}, dropped"
            f" {_fanout(host, 'dropped_redis_unavailable'):.0f}"
        )
