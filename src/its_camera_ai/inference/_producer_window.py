"""The detection producer's ack window: batches sent and not yet acknowledged, and their resend.

Batches are numbered once (``sequence``: 1, 2, ... over the producer's lifetime) and kept
until a cumulative acknowledgement covers them, at most ``size`` at a time. When a stream
breaks, every batch still here is resent, in order, on the next one before any new batch;
analytics recognises those it already made durable (``duplicate``), so each frame is counted
exactly once. Event-loop only: the stream reads and writes it, nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections import deque
from typing import Protocol

from its.analytics.v1 import analytics_service_pb2
from its.common.v1 import error_reason_pb2
from its_camera_ai.inference._log_throttle import LogThrottle
from its_camera_ai.inference._producer_accounting import (
    INVALID_BATCH,
    ProducerLedger,
    ProducerMetrics,
)

__all__ = ["AckWindow", "Batch", "BatchWriter"]

_log = logging.getLogger(__name__)

_Request = analytics_service_pb2.StreamDetectionBatchesRequest
_Ack = analytics_service_pb2.StreamDetectionBatchesResponse


class BatchWriter(Protocol):
    """Where a batch is written: the open stream."""

    async def write(self, request: _Request) -> None: ...


def _reason_name(reason: int) -> str:
    """An ``ErrorReason``'s wire name (``RESOURCE_NOT_FOUND``), or its number if unknown."""
    try:
        name = error_reason_pb2.ErrorReason.Name(reason)  # type: ignore[arg-type]
    except ValueError:
        return str(reason)
    return name.removeprefix("ERROR_REASON_")


class Batch:
    """A numbered batch, kept until an acknowledgement covers it."""

    __slots__ = ("camera", "frames", "request", "sent", "sent_at", "sequence")

    def __init__(self, request: _Request) -> None:
        self.sequence = request.batch.sequence
        self.camera = request.batch.camera
        self.frames = len(request.batch.frames)
        self.request = request
        self.sent = False
        self.sent_at = 0.0


class AckWindow:
    """The unacknowledged batches of one producer, oldest first, at most ``size``."""

    def __init__(self, size: int, ledger: ProducerLedger, metrics: ProducerMetrics) -> None:
        self._size = size
        self._ledger = ledger
        self._metrics = metrics
        self._unacked: deque[Batch] = deque()
        self._next_sequence = 1
        self._reject_log = LogThrottle()

    def __len__(self) -> int:
        return len(self._unacked)

    def has_room(self) -> bool:
        return len(self._unacked) < self._size

    def open(self, request: _Request) -> Batch:
        """Number ``request`` and keep it unacknowledged from now on: if its write fails it
        is resent."""
        request.batch.sequence = self._next_sequence
        self._next_sequence += 1
        batch = Batch(request)
        self._unacked.append(batch)
        self._metrics.unacked_batches.set(len(self._unacked))
        return batch

    async def resend(self, stream: BatchWriter, acknowledged: asyncio.Event) -> None:
        """Resend, in order, what a broken stream left unacknowledged. The first one goes
        alone (``acknowledged`` is set on every acknowledgement): if analytics finds it
        malformed the stream fails with INVALID_ARGUMENT and nothing else in flight. (A write
        racing a stream's failure turns its status into INTERNAL in grpc.aio, which would
        hide which batch was at fault.)"""
        for i, batch in enumerate(list(self._unacked)):
            if not self._unacked or batch.sequence < self._unacked[0].sequence:
                continue  # covered meanwhile by a cumulative acknowledgement
            await self.send(stream, batch)
            while i == 0 and self._unacked and self._unacked[0] is batch:
                acknowledged.clear()
                await acknowledged.wait()

    async def send(self, stream: BatchWriter, batch: Batch) -> None:
        await stream.write(batch.request)
        batch.sent_at = time.monotonic()
        if batch.sent:
            self._ledger.count_sent(resent=True)
            return
        batch.sent = True
        self._ledger.count_sent(resent=False)
        now = time.time()
        observe = self._metrics.capture_to_send.observe
        for frame in batch.request.batch.frames:
            if frame.HasField("capture_time"):
                captured = frame.capture_time.seconds + frame.capture_time.nanos / 1e9
                observe(max(0.0, now - captured))

    def acknowledge(self, ack: _Ack) -> bool:
        """Settle the batches ``ack`` covers; False if it covers none outstanding."""
        sequence = ack.acknowledged_sequence
        if not self._unacked or sequence < self._unacked[0].sequence:
            _log.warning(
                "analytics acknowledged a batch not outstanding",
                extra={"sequence": sequence, "duplicate": ack.duplicate},
            )
            return False
        now = time.monotonic()
        while self._unacked and self._unacked[0].sequence <= sequence:
            batch = self._unacked.popleft()
            # Earlier batches are confirmed by the cumulative acknowledgement, without detail.
            self._settle(batch, ack if batch.sequence == sequence else None)
            if batch.sent_at:
                self._metrics.ack_latency.observe(now - batch.sent_at)
        self._metrics.unacked_batches.set(len(self._unacked))
        return True

    def _settle(self, batch: Batch, ack: _Ack | None) -> None:
        rejected: Tally[str] = Tally()
        if ack is not None and not ack.duplicate:
            for rejection in ack.rejections:
                rejected[_reason_name(rejection.reason)] += 1
        self._ledger.count_settled(batch.frames, rejected)
        if rejected and ack is not None and self._reject_log.ready():
            _log.warning(
                "analytics rejected frames",
                extra={
                    "camera": batch.camera,
                    "sequence": batch.sequence,
                    "rejected": dict(rejected),
                    "example": ack.rejections[0].message,
                    "similar_logs_held_back": self._reject_log.take_held_back(),
                },
            )

    def drop_refused_head(self, details: str) -> bool:
        """Analytics refused the oldest batch as malformed, having acknowledged everything
        before it: drop it, counted ``invalid_batch``. False if there is none."""
        if not self._unacked:
            return False
        batch = self._unacked.popleft()
        self._metrics.unacked_batches.set(len(self._unacked))
        self._ledger.count_undelivered(INVALID_BATCH, batch.frames)
        _log.error(
            "analytics refused a malformed detection batch; dropped",
            extra={"details": details, "sequence": batch.sequence, "camera": batch.camera,
                   "frames": batch.frames},
        )  # fmt: skip
        return True

    def abandon(self) -> tuple[int, int]:
        """At shutdown: forget every unacknowledged batch; (frames, batches) given up."""
        frames = sum(batch.frames for batch in self._unacked)
        batches = len(self._unacked)
        self._unacked.clear()
        self._metrics.unacked_batches.set(0)
        return frames, batches
