"""Chaos: the spool's disk fills while PostgreSQL is down (issue #19).

The spool directory is a small tmpfs the test mounts (the sandbox runs as root; without
CAP_SYS_ADMIN the test skips, saying so), so the filesystem itself runs out of space, not
the spool's own byte limit. Invariants: once a batch no longer fits, analytics refuses it
with UNAVAILABLE instead of acknowledging what it cannot keep; the service keeps serving;
after PostgreSQL returns, every acknowledged batch is stored, and once the producer resends
the refused ones, the tables equal an undisturbed engine's output (exactly once).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from its.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc, detection_batch_pb2
from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import AnalyticsServiceSettings, ServiceHost
from its_camera_ai.testing import host_settings, metric_value, until
from tests.analytics import synth
from tests.analytics.test_service_support import (
    CAMERA_ID,
    camera_proto,
    producer_mark,
    reference,
    serve_cameras,
    stored,
    stream,
    to_batches,
    traffic,
)
from tests.conftest import rpc_error_details
from tests.reliability.conftest import PrivatePostgres

pytestmark = pytest.mark.reliability

_TMPFS_BYTES = 96 * 1024


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 96 KiB tmpfs, unmounted afterwards (lazily, should anything still hold it)."""
    mount_point = Path(tempfile.mkdtemp(prefix="its-test-spool-fs-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={_TMPFS_BYTES},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        mount_point.rmdir()


@pytest.fixture
async def decoder() -> AsyncIterator[str]:
    async with serve_cameras({CAMERA_ID: camera_proto(synth.road_scene())}) as target:
        yield target


async def _send_until_refused(
    channel: grpc.aio.Channel, batches: list[detection_batch_pb2.DetectionBatch]
) -> tuple[int, grpc.aio.AioRpcError | None]:
    """Send on one stream, each batch after the previous ack; (batches acked, the error)."""
    stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
    call = stub.StreamDetectionBatches()
    acked = 0
    try:
        for batch in batches:
            await call.write(analytics_service_pb2.StreamDetectionBatchesRequest(batch=batch))
            ack = await call.read()
            assert isinstance(ack, analytics_service_pb2.StreamDetectionBatchesResponse)
            assert ack.acknowledged_sequence == batch.sequence
            acked += 1
    except grpc.aio.AioRpcError as error:
        return acked, error
    await call.done_writing()
    return acked, None


async def test_full_spool_disk_refuses_batches_and_loses_no_ack(
    private_postgres: PrivatePostgres, small_disk: Path, decoder: str
) -> None:
    unit = analytics_unit(
        AnalyticsServiceSettings(
            spool_dir=small_disk / "spool",
            breaker_reset_seconds=0.3,
            replay_interval_seconds=0.2,
            decoder_target=decoder,
        )
    )
    settings = host_settings(
        private_postgres.dsn, connect_timeout_seconds=1.0, command_timeout_seconds=2.0
    )
    host = ServiceHost(settings, [unit])
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
    try:
        frames = traffic(duration_s=60.0)
        batches = to_batches(frames, "inference-0/disk-full")
        await stream(channel, batches[:5])

        private_postgres.stop()
        acked, error = await _send_until_refused(channel, batches[5:])
        assert error is not None, f"all {acked} batches fitted on {_TMPFS_BYTES} bytes"
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert rpc_error_details(error)[0] == "DEPENDENCY_UNAVAILABLE"
        spooled = metric_value(host, "analytics_spool_entries")
        assert spooled == acked > 0  # every ack of the outage is a record on the full disk
        # Still serving: the next batch is refused the same way, nothing is acknowledged.
        again, error = await _send_until_refused(channel, batches[5 + acked :])
        assert again == 0
        assert error is not None
        assert error.code() is grpc.StatusCode.UNAVAILABLE

        private_postgres.start()
        restarted_at = time.monotonic()
        # Replay wakes on its own interval; what was acknowledged reaches PostgreSQL.
        await until(lambda: metric_value(host, "analytics_spool_entries") == 0, "spool drained")
        drained_s = time.monotonic() - restarted_at
        mark = await producer_mark(private_postgres.dsn, "inference-0/disk-full")
        assert mark == 5 + acked
        # The producer resends from its first unacknowledged batch.
        await stream(channel, batches[5 + acked :])
        assert await stored(private_postgres.dsn) == reference(frames, synth.road_scene())
        print(f"\nspool disk full ({_TMPFS_BYTES // 1024} KiB tmpfs): {acked} batches spooled, "
              f"then refused with UNAVAILABLE; drained {drained_s:.2f} s after PostgreSQL "
              "returned; nothing acknowledged lost")  # fmt: skip
    finally:
        await channel.close()
        await host.stop()
