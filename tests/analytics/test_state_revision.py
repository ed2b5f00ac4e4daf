"""A camera's stored state has a revision (migration 0003): two analytics instances sharing one
PostgreSQL database never let an engine older than the stored state overwrite it.

Two in-process services over gRPC on loopback, each with its own spool, one database. A batch
whose engine started from a revision that is no longer the stored one is refused by
PostgreSQL (nothing of it written) and applied again on the stored state: live (the ingestor)
or, for batches acknowledged from the spool while this instance could not reach PostgreSQL,
on replay. Also: a reset through one instance reaches the engine the other holds, and a spool
left by the version before revisions is replayed as it was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest

from its.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc, detection_batch_pb2
from its_camera_ai.analytics import CameraAnalytics, FrameInput
from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import AnalyticsServiceSettings, ServiceHost
from its_camera_ai.testing import FaultProxy, host_settings, metric_value, until
from tests.analytics import synth
from tests.analytics.test_service_support import (
    CAMERA_ID,
    Totals,
    camera_proto,
    producer_mark,
    reference,
    serve_cameras,
    stored,
    stream,
    to_batches,
    traffic,
)

_Ack = analytics_service_pb2.StreamDetectionBatchesResponse
# Logged by the ingestor when a live batch, or a spooled one on replay, is applied again.
_APPLIED_AGAIN = "applying the batch again"
_REBASED = "spooled batch applied again"


@dataclass
class Analytics:
    host: ServiceHost
    channel: grpc.aio.Channel


@pytest.fixture
async def decoder() -> AsyncIterator[str]:
    async with serve_cameras({CAMERA_ID: camera_proto(synth.road_scene())}) as target:
        yield target


@contextlib.asynccontextmanager
async def _analytics(dsn: str, spool_dir: Path, decoder: str) -> AsyncIterator[Analytics]:
    """One analytics instance; quick to notice PostgreSQL back (breaker, replay)."""
    unit = analytics_unit(
        AnalyticsServiceSettings(
            spool_dir=spool_dir,
            breaker_reset_seconds=0.3,
            replay_interval_seconds=0.2,
            decoder_target=decoder,
        )
    )
    settings = host_settings(dsn, connect_timeout_seconds=1.0, command_timeout_seconds=2.0)
    host = ServiceHost(settings, [unit])
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
    try:
        yield Analytics(host, channel)
    finally:
        await channel.close()
        await host.stop()


def _through(dsn: str, port: int) -> str:
    """``dsn`` reached on loopback ``port`` (a FaultProxy) instead."""
    parts = urlsplit(dsn)
    user, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user}{at}127.0.0.1:{port}"))


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


async def test_a_camera_handed_back_and_forth_loses_no_batch(
    postgres_dsn: str, decoder: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One producer's stream alternates between the instances every few batches: each one
    it comes back to holds an engine older than the stored state."""
    caplog.set_level(logging.INFO, logger="its_camera_ai.analytics")
    frames = traffic()
    batches = to_batches(frames, "inference-0/handover")
    async with (
        _analytics(postgres_dsn, tmp_path / "a", decoder) as a,
        _analytics(postgres_dsn, tmp_path / "b", decoder) as b,
    ):
        acks: list[_Ack] = []
        chunks = [batches[i : i + 4] for i in range(0, len(batches), 4)]
        for turn, chunk in enumerate(chunks):
            acks += await stream((a, b)[turn % 2].channel, chunk)
        counted = sum(
            metric_value(h.host, "analytics_state_conflicts_total", path="live") for h in (a, b)
        )

    assert [ack.acknowledged_sequence for ack in acks] == [b.sequence for b in batches]
    assert sum(ack.accepted_frames for ack in acks) == len(frames)
    assert await stored(postgres_dsn) == reference(frames, synth.road_scene())
    assert await producer_mark(postgres_dsn, "inference-0/handover") == batches[-1].sequence
    # Every chunk after the first two found its instance's engine behind the store.
    assert _messages(caplog, _APPLIED_AGAIN) == len(chunks) - 2
    assert counted == len(chunks) - 2


async def _send(
    channel: grpc.aio.Channel, batches: Sequence[detection_batch_pb2.DetectionBatch]
) -> list[_Ack]:
    """A producer's way: on UNAVAILABLE (the camera kept moving under this instance), send
    again from the first batch not acknowledged."""
    acks: list[_Ack] = []
    while len(acks) < len(batches):
        try:
            for batch in batches[len(acks) :]:
                # One batch a stream: the two producers' batches interleave finely.
                acks += await stream(channel, [batch])
        except grpc.aio.AioRpcError as error:
            if error.code() is not grpc.StatusCode.UNAVAILABLE:
                raise
    return acks


def _accepted(
    batches: Sequence[detection_batch_pb2.DetectionBatch],
    acks: Sequence[_Ack],
    frames: Sequence[FrameInput],
) -> list[FrameInput]:
    by_sequence = {f.frame_sequence: f for f in frames}
    accepted = []
    for batch, ack in zip(batches, acks, strict=True):
        assert not ack.duplicate
        refused = {r.frame_sequence for r in ack.rejections}
        accepted += [by_sequence[f.frame_sequence] for f in batch.frames
                     if f.frame_sequence not in refused]  # fmt: skip
    return accepted


async def test_concurrent_writers_of_one_camera_never_lose_a_batch(
    postgres_dsn: str, decoder: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two producers of one camera (say an inference process and its replacement), one on
    each instance, at the same time: alternate stretches of the traffic. Whichever order
    the batches land in, the camera's frames are one chain: a stretch behind the camera's
    clock is refused, every accepted frame is stored, and the tables equal one engine's
    output from exactly the accepted frames."""
    caplog.set_level(logging.INFO, logger="its_camera_ai.analytics")
    frames = traffic()
    stretches = [frames[i : i + 24] for i in range(0, len(frames), 24)]
    own = [[f for s in stretches[k::2] for f in s] for k in (0, 1)]
    batches = [to_batches(own[k], f"inference-{k}/concurrent", per_batch=6) for k in (0, 1)]
    async with (
        _analytics(postgres_dsn, tmp_path / "a", decoder) as a,
        _analytics(postgres_dsn, tmp_path / "b", decoder) as b,
    ):
        acks = await asyncio.gather(_send(a.channel, batches[0]), _send(b.channel, batches[1]))

    accepted = sorted(
        _accepted(batches[0], acks[0], own[0]) + _accepted(batches[1], acks[1], own[1]),
        key=lambda f: f.capture_time_ns,
    )
    assert sum(ack.accepted_frames for k in (0, 1) for ack in acks[k]) == len(accepted)
    assert await stored(postgres_dsn) == reference(accepted, synth.road_scene())
    conflicts = _messages(caplog, _APPLIED_AGAIN)
    print(
        f"\ntwo writers of one camera: {len(accepted)} of {len(frames)} frames accepted"
        f" ({[sum(a.accepted_frames > 0 for a in acks[k]) for k in (0, 1)]} batches each),"
        f" {conflicts} batches applied again on the other's state"
    )
    # The writes interleaved: some found the other instance's state (which stretches are
    # accepted depends on the interleaving, so no more is asserted about them).
    assert conflicts >= 1


async def test_spool_replayed_after_another_instance_advanced_the_camera_counts_all_once(
    postgres_dsn: str, decoder: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A -> B -> A, and A cannot reach PostgreSQL when the stream comes back: its engine,
    behind B's state, computes the last third, acknowledged from A's spool. On replay each
    spooled record finds the revision moved; its batch, kept in the record, is applied again
    on the stored state."""
    caplog.set_level(logging.INFO, logger="its_camera_ai.analytics")
    frames = traffic()
    batches = to_batches(frames, "inference-0/spool")
    third = len(batches) // 3
    upstream = urlsplit(postgres_dsn).port or 5432
    async with (
        FaultProxy(upstream) as proxy,
        _analytics(_through(postgres_dsn, proxy.port), tmp_path / "a", decoder) as a,
        _analytics(postgres_dsn, tmp_path / "b", decoder) as b,
    ):
        acks = await stream(a.channel, batches[:third])
        acks += await stream(b.channel, batches[third : 2 * third])
        proxy.refuse()
        proxy.drop_connections()
        acks += await stream(a.channel, batches[2 * third :])
        spooled = len(batches) - 2 * third
        assert metric_value(a.host, "analytics_spool_entries") == spooled
        proxy.heal()
        healed = time.monotonic()
        await until(lambda: metric_value(a.host, "analytics_spool_entries") == 0, "replayed")
        drained_s = time.monotonic() - healed
        replayed = metric_value(a.host, "analytics_spool_replayed_total", result="applied")
        rebased = metric_value(a.host, "analytics_state_conflicts_total", path="replay")
    print(f"\n{spooled} spooled batches computed by a stale engine, each applied again on the"
          f" stored state: spool drained {drained_s:.2f} s after PostgreSQL was back")  # fmt: skip

    assert [ack.acknowledged_sequence for ack in acks] == [b.sequence for b in batches]
    assert sum(ack.accepted_frames for ack in acks) == len(frames)
    assert replayed == spooled
    assert _messages(caplog, _REBASED) == spooled
    assert rebased == spooled
    assert await stored(postgres_dsn) == reference(frames, synth.road_scene())
    assert await producer_mark(postgres_dsn, "inference-0/spool") == batches[-1].sequence


async def test_spooled_frames_behind_the_stored_state_overwrite_nothing(
    postgres_dsn: str, decoder: str, tmp_path: Path
) -> None:
    """The limit of the rule above: A acknowledged the middle third from its spool, then
    the stream moved to B, whose PostgreSQL still had the first third only, and B applied
    the last third on it. A's spooled batches come after B's on replay: they are behind the
    stored state (the producer's mark already past them), so they are not counted, and
    nothing B stored is overwritten, nor its state rolled back."""
    frames = traffic()
    batches = to_batches(frames, "inference-0/behind")
    third = len(batches) // 3
    upstream = urlsplit(postgres_dsn).port or 5432
    async with (
        FaultProxy(upstream) as proxy,
        _analytics(_through(postgres_dsn, proxy.port), tmp_path / "a", decoder) as a,
        _analytics(postgres_dsn, tmp_path / "b", decoder) as b,
    ):
        await stream(a.channel, batches[:third])
        proxy.refuse()
        proxy.drop_connections()
        await stream(a.channel, batches[third : 2 * third])
        await stream(b.channel, batches[2 * third :])
        proxy.heal()
        await until(lambda: metric_value(a.host, "analytics_spool_entries") == 0, "replayed")
        skipped = metric_value(a.host, "analytics_spool_replayed_total", result="already_applied")

    assert skipped == third
    applied = [f for b in batches[:third] + batches[2 * third :] for f in b.frames]
    kept = [f for f in frames if f.frame_sequence in {w.frame_sequence for w in applied}]
    assert await stored(postgres_dsn) == reference(kept, synth.road_scene())
    assert await producer_mark(postgres_dsn, "inference-0/behind") == batches[-1].sequence


async def _stored_state(dsn: str) -> bytes:
    connection = await asyncpg.connect(dsn)
    try:
        state = await connection.fetchval(
            "SELECT state FROM analytics_camera_state WHERE camera_id = $1", CAMERA_ID
        )
    finally:
        await connection.close()
    assert state is not None
    return bytes(state)


def _added(a: Totals, b: Totals) -> dict[tuple[object, ...], tuple[int, ...]]:
    out: dict[tuple[object, ...], tuple[int, ...]] = dict(a.bins)
    for key, values in b.bins.items():
        out[key] = tuple(x + y for x, y in zip(out.get(key, (0, 0, 0)), values, strict=True))
    return out


async def test_a_reset_through_one_instance_reaches_the_engine_another_holds(
    postgres_dsn: str, decoder: str, tmp_path: Path
) -> None:
    """A reset keeps the camera's row, without state, at the next revision: the instance
    still holding the camera's engine finds it moved and starts afresh too, rather than
    writing the discarded state back."""
    frames = traffic()
    half = len(frames) // 2
    batches = to_batches(frames, "inference-0/reset", per_batch=10)
    async with (
        _analytics(postgres_dsn, tmp_path / "a", decoder) as a,
        _analytics(postgres_dsn, tmp_path / "b", decoder) as b,
    ):
        await stream(a.channel, batches[: half // 10])
        before = await stored(postgres_dsn)
        request = analytics_service_pb2.ResetCameraStateRequest(camera=f"cameras/{CAMERA_ID}")
        stub = analytics_service_pb2_grpc.AnalyticsServiceStub(b.channel)
        response = await stub.ResetCameraState(request)
        assert response.discarded_last_capture_time.ToNanoseconds() == (
            frames[half - 1].capture_time_ns
        )
        await stream(a.channel, batches[half // 10 :])

    # A fresh engine added the second half to the bins stored before the reset; the state
    # stored is that engine's (the discarded one had counted the first half too).
    after_reset = reference(frames[half:], synth.road_scene())
    assert (await stored(postgres_dsn)).bins == _added(before, after_reset)
    state = await _stored_state(postgres_dsn)
    assert CameraAnalytics.from_state_bytes(state).frames_accepted == len(frames) - half


# The spool's record framing (``_spool``): magic | payload length | crc32 of the payload.
_RECORD = struct.Struct(">4sII")


def _as_previous_version(spool_file: Path) -> int:
    """Rewrite every record as the version before revisions spooled it: the write's first
    seven JSON elements, no revision, arrival or batch. Returns how many records."""
    data, out, offset, count = spool_file.read_bytes(), bytearray(), 0, 0
    while offset < len(data):
        magic, length, _ = _RECORD.unpack_from(data, offset)
        payload = data[offset + _RECORD.size : offset + _RECORD.size + length]
        document = json.loads(payload.partition(b"\0")[0])
        old = json.dumps(document[:7], separators=(",", ":")).encode()
        out += _RECORD.pack(magic, len(old), zlib.crc32(old)) + old
        offset += _RECORD.size + length
        count += 1
    spool_file.write_bytes(bytes(out))
    return count


async def test_a_spool_left_by_the_previous_version_is_replayed_as_it_was_written(
    postgres_dsn: str, decoder: str, tmp_path: Path
) -> None:
    """A spool survives an upgrade: records without a revision (nor the batch) are written
    unconditionally, as before, and the camera then goes on from the state they stored."""
    frames = traffic()
    batches = to_batches(frames, "inference-0/upgrade")
    third = len(batches) // 3
    upstream = urlsplit(postgres_dsn).port or 5432
    async with (
        FaultProxy(upstream) as proxy,
        _analytics(_through(postgres_dsn, proxy.port), tmp_path, decoder) as old,
    ):
        # The producer's mark and the camera's engine known first: neither is read again.
        await stream(old.channel, batches[:third])
        proxy.refuse()
        proxy.drop_connections()
        await stream(old.channel, batches[third : 2 * third])
        assert metric_value(old.host, "analytics_spool_entries") == third
    assert _as_previous_version(tmp_path / "batches.spool") == third

    async with _analytics(postgres_dsn, tmp_path, decoder) as new:
        # Replayed on start, PostgreSQL being there.
        assert metric_value(new.host, "analytics_spool_entries") == 0
        acks = await stream(new.channel, batches[2 * third :])

    assert sum(a.accepted_frames for a in acks) == sum(len(b.frames) for b in batches[2 * third :])
    assert await stored(postgres_dsn) == reference(frames, synth.road_scene())
    assert await producer_mark(postgres_dsn, "inference-0/upgrade") == batches[-1].sequence
