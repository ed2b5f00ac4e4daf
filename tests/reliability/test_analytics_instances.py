"""Two analytics instances behind one address (issue #19, the analytics half).

Two ``its-camera-ai serve analytics`` processes share one PostgreSQL database (each with its
own spool directory and port, both following the same CameraService) behind a round-robin
TCP balancer on loopback (``its_camera_ai.testing.Balancer``: what Envoy's ``tcp_proxy``
does, skipping an upstream that refuses connections). Inference's real ``DetectionProducer``
streams to the balancer's address; its own reconnect and resend of every unacknowledged
batch is the retry on ``UNAVAILABLE`` (its stream has no gRPC retries, by design).

Asserted: every frame acknowledged, none rejected or undelivered, the tables equal an
undisturbed engine's output (nothing lost, nothing counted twice although two instances
wrote), the producer's stored mark equal to its last batch. Printed: the time from the kill
to the next acknowledgement; the longest gap between acknowledgements in a rolling restart.

Also: a stream that moves A -> B -> A without either instance restarting (connections reset
by the network or the balancer) finds A holding the camera's engine in memory, older than the
state B stored; A's write is refused (the stored state's revision moved), and A applies the
batch again on B's state, so nothing B added is overwritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from its.analytics.v1 import detection_batch_pb2
from its_camera_ai.analytics import FrameInput
from its_camera_ai.inference import DetectionProducer, ProducerMetrics, new_producer_id
from its_camera_ai.testing import Balancer
from tests.analytics import synth
from tests.analytics.test_service_support import (
    CAMERA_ID,
    camera_proto,
    producer_mark,
    reference,
    serve_cameras,
    stored,
    to_batches,
    traffic,
)
from tests.reliability.conftest import ServiceProcess

pytestmark = pytest.mark.reliability

CAMERA = f"cameras/{CAMERA_ID}"
# Frames arrive at this pace: the producer batches what queues while its window is full.
PACE_S = 0.02
ACKED_WITHIN_S = 30.0
POLL_S = 0.005
# Frames submitted at once just before the kill.
BURST = 40


def _analytics_process(name: str, dsn: str, spool_dir: Path, decoder: str) -> ServiceProcess:
    """``its-camera-ai serve analytics`` as a child process."""
    return ServiceProcess("analytics", name, {
        "ITS_DATABASE__DSN": dsn,
        "ITS_ANALYTICS__SPOOL_DIR": str(spool_dir),
        "ITS_ANALYTICS__DECODER_TARGET": decoder,
    })  # fmt: skip


@contextlib.asynccontextmanager
async def _instances(
    dsn: str, tmp_path: Path
) -> AsyncIterator[tuple[ServiceProcess, ServiceProcess]]:
    """Two started instances; both killed at the end, whatever happened."""
    async with serve_cameras({CAMERA_ID: camera_proto(synth.road_scene())}) as decoder:
        pair = (
            _analytics_process("A", dsn, tmp_path / "spool-a", decoder),
            _analytics_process("B", dsn, tmp_path / "spool-b", decoder),
        )
        try:
            # One after the other: both apply the migrations (under an advisory lock).
            for instance in pair:
                await instance.start()
            yield pair
        finally:
            for instance in pair:
                instance.kill()


@contextlib.asynccontextmanager
async def _producing(target: str) -> AsyncIterator[DetectionProducer]:
    """Inference's producer (its resend, backoff and window) streaming to ``target``."""
    producer = DetectionProducer(
        target,
        producer_id=new_producer_id("inference-instances"),
        model="models/yolo",
        model_version="1",
        metrics=ProducerMetrics(CollectorRegistry()),
        max_unacked_batches=4,
        backoff_initial_seconds=0.1,
        backoff_max_seconds=0.5,
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.close(drain_timeout=10)


class AckClock:
    """Polls the producer's acknowledged-batch count, keeping when it last moved."""

    def __init__(self, producer: DetectionProducer) -> None:
        self._producer = producer
        self.times: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        seen = self._producer.stats.batches_acknowledged
        while True:
            await asyncio.sleep(POLL_S)
            acked = self._producer.stats.batches_acknowledged
            if acked != seen:
                seen = acked
                self.times.append(time.monotonic())

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def first_after(self, moment: float) -> float:
        return next(t for t in self.times if t > moment)

    def longest_gap(self) -> float:
        return max((b - a for a, b in zip(self.times, self.times[1:], strict=False)), default=0.0)


async def _until(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(POLL_S)


async def _submit(
    producer: DetectionProducer, frames: Sequence[detection_batch_pb2.FrameDetections]
) -> None:
    for frame in frames:
        producer.submit(CAMERA, frame)
        await asyncio.sleep(PACE_S)


def _wire(frames: list[FrameInput]) -> list[detection_batch_pb2.FrameDetections]:
    return [f for batch in to_batches(frames, "unused") for f in batch.frames]


def _acked(producer: DetectionProducer, frames: int) -> Callable[[], bool]:
    return lambda: producer.stats.frames_acknowledged >= frames


def _connected_to(balancer: Balancer, instances: Sequence[ServiceProcess]) -> ServiceProcess:
    """The instance the producer's one connection goes to."""
    upstreams = balancer.open_upstreams()
    assert len(upstreams) == 1, upstreams
    return next(i for i in instances if i.port == upstreams[0])


async def _assert_all_stored_once(
    dsn: str, frames: list[FrameInput], producer: DetectionProducer
) -> None:
    """Every frame acknowledged and in the tables exactly once, whichever instance wrote it."""
    await _until(_acked(producer, len(frames)), ACKED_WITHIN_S, "every frame acknowledged")
    stats = producer.stats
    assert stats.frames_acknowledged == len(frames)
    assert sum(stats.frames_rejected.values()) == 0, stats.frames_rejected
    assert sum(stats.frames_undelivered.values()) == 0, stats.frames_undelivered
    assert await stored(dsn) == reference(frames, synth.road_scene())
    assert await producer_mark(dsn, producer.producer_id) == stats.batches_sent


async def test_instance_killed_under_load_the_other_takes_over(
    postgres_dsn: str, tmp_path: Path
) -> None:
    frames = traffic()
    wire = _wire(frames)
    async with (
        _instances(postgres_dsn, tmp_path) as pair,
        Balancer([i.port for i in pair]) as balancer,
        _producing(balancer.target) as producer,
    ):
        clock = AckClock(producer)
        clock.start()
        burst = len(wire) // 3
        await _submit(producer, wire[:burst])
        sending = asyncio.create_task(_submit(producer, wire[burst + BURST :]))
        try:
            # A burst: the kill finds batches in flight, some perhaps committed, unacknowledged.
            for frame in wire[burst : burst + BURST]:
                producer.submit(CAMERA, frame)
            await _until(lambda: producer.stats.unacked_batches > 0, 5, "batches in flight")
            victim = _connected_to(balancer, pair)
            survivor = pair[1] if victim is pair[0] else pair[0]
            connections = balancer.counters.connections[survivor.port]
            killed_at = time.monotonic()
            victim.kill()
            # Acknowledgements of the victim may still be on their way: the first one that
            # counts comes after the producer reached the survivor.
            await _until(
                lambda: balancer.counters.connections[survivor.port] > connections,
                ACKED_WITHIN_S,
                "reconnected to the survivor",
            )
            reconnected_at = time.monotonic()
            await _until(
                lambda: any(t > reconnected_at for t in clock.times),
                ACKED_WITHIN_S,
                "an acknowledgement from the survivor",
            )
            assert _connected_to(balancer, pair) is survivor
            await sending
            await _assert_all_stored_once(postgres_dsn, frames, producer)
        finally:
            sending.cancel()
            await clock.stop()
        takeover = clock.first_after(reconnected_at) - killed_at
        stats = producer.stats
        print(
            f"\ninstance {victim.name} SIGKILLed: next acknowledgement {takeover * 1000:.0f} ms"
            f" later, from {survivor.name}; reconnects {stats.reconnects}, batches sent"
            f" {stats.batches_sent}, resent {stats.batches_resent}; balancer"
            f" {dict(balancer.counters.connections)} connections, skipped"
            f" {dict(balancer.counters.skipped)}"
        )
    assert stats.batches_resent > 0  # what the kill left unacknowledged went to the other


async def test_rolling_restart_fails_no_call(postgres_dsn: str, tmp_path: Path) -> None:
    frames = traffic(duration_s=40.0)
    wire = _wire(frames)
    async with (
        _instances(postgres_dsn, tmp_path) as pair,
        Balancer([i.port for i in pair]) as balancer,
        _producing(balancer.target) as producer,
    ):
        clock = AckClock(producer)
        clock.start()
        sending = asyncio.create_task(_submit(producer, wire))
        restarts: list[str] = []
        try:
            for instance in pair:
                acked = producer.stats.frames_acknowledged
                await _until(_acked(producer, acked + 40), ACKED_WITHIN_S, "load flowing")
                before = _connected_to(balancer, pair)
                began = time.monotonic()
                status = await instance.terminate()
                assert status == 0, f"instance {instance.name} exited {status} on SIGTERM"
                await instance.start()
                restarts.append(
                    f"{instance.name} (carrying the stream: {before is instance}) restarted in"
                    f" {time.monotonic() - began:.2f} s, {producer.stats.frames_submitted}"
                    f"/{len(wire)} frames submitted by then"
                )
            await sending
            await _assert_all_stored_once(postgres_dsn, frames, producer)
        finally:
            sending.cancel()
            await clock.stop()
        stats = producer.stats
        print(
            "\nrolling restart: " + "; ".join(restarts) + f"; longest gap between"
            f" acknowledgements {clock.longest_gap() * 1000:.0f} ms; reconnects"
            f" {stats.reconnects}, batches sent {stats.batches_sent}, resent"
            f" {stats.batches_resent}; balancer {dict(balancer.counters.connections)}"
            f" connections, skipped {dict(balancer.counters.skipped)}"
        )
    assert stats.reconnects >= 1


async def _move_stream(balancer: Balancer, producer: DetectionProducer, to: ServiceProcess) -> None:
    """Reset the producer's connection (a network blip); round robin hands the new one to
    ``to``."""
    connections = balancer.counters.connections[to.port]
    balancer.drop_connections()
    await _until(
        lambda: balancer.counters.connections[to.port] > connections, ACKED_WITHIN_S, "moved"
    )


async def test_stream_back_to_an_instance_that_kept_the_camera(
    postgres_dsn: str, tmp_path: Path
) -> None:
    frames = traffic()
    wire = _wire(frames)
    third = len(wire) // 3
    async with (
        _instances(postgres_dsn, tmp_path) as pair,
        Balancer([i.port for i in pair]) as balancer,
        _producing(balancer.target) as producer,
    ):
        first = second = None
        for part, frames_from in enumerate((0, third, 2 * third)):
            if part == 1:
                assert first is not None
                second = pair[1] if first is pair[0] else pair[0]
                await _move_stream(balancer, producer, second)
            elif part == 2:
                assert first is not None
                await _move_stream(balancer, producer, first)
            end = len(wire) if part == 2 else frames_from + third
            await _submit(producer, wire[frames_from:end])
            await _until(_acked(producer, end), ACKED_WITHIN_S, "this part acknowledged")
            connected = _connected_to(balancer, pair)
            assert connected is (first or connected if part != 1 else second)
            first = first or connected
        held, expected = await stored(postgres_dsn), reference(frames, synth.road_scene())
        differing = {
            key: (held.bins.get(key), value)
            for key, value in expected.bins.items()
            if held.bins.get(key) != value
        }
        print(
            f"\nstream moved A -> B -> A: balancer {dict(balancer.counters.connections)}"
            f" connections; crossings stored {held.crossings}, reference {expected.crossings};"
            f" {len(differing)} of {len(expected.bins)} bins differ, (volume, frames,"
            f" speed_count) stored vs reference: {differing}"
        )
        await _assert_all_stored_once(postgres_dsn, frames, producer)
