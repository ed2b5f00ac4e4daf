"""``its.analytics.v1.AnalyticsService``: the ``StreamDetectionBatches`` protocol, and resets.

The stream's own rules are checked here (required fields, one producer per stream, strictly
increasing sequences); each batch is then applied by the ``Ingestor`` and answered in order,
one acknowledgement per batch. A stream error (raised ``ItsError``, mapped to a status by the
error interceptor) ends the stream; the batches not acknowledged by then were not applied.
Flow control needs no code: a batch is read only after the previous one was answered, and
HTTP/2 flow control holds a producer that runs ahead of its 64-batch window.

Producer streams live as long as their producer, so a stopping server would wait its whole
drain time for them: ``close_streams`` (on the server's way down) ends each stream between
batches with UNAVAILABLE instead, and the producer reconnects and resends what was not
acknowledged.

``ResetCameraState`` (operators) discards a camera's engine state through the ``Ingestor``,
under the camera's lock, so it falls between two of the camera's batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc

from its.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc, detection_batch_pb2
from its.common.v1 import error_reason_pb2
from its_camera_ai.analytics._ingest import Ingestor
from its_camera_ai.analytics._owners import ProducerOwners
from its_camera_ai.common import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    UnavailableError,
    is_token,
    parse_camera_name,
)
from its_camera_ai.security import current_principal, note_audit

__all__ = ["AnalyticsServicer"]

_Context = grpc.aio.ServicerContext[Any, Any]
_MAX_FRAMES = 256


def _check(batch: detection_batch_pb2.DetectionBatch) -> str:
    """The batch's camera id, once its stream-level fields are valid."""
    if not batch.producer_id:
        raise InvalidArgumentError.for_field("batch.producer_id", "is required")
    if not is_token(batch.producer_id):
        raise InvalidArgumentError.for_field(
            "batch.producer_id", "must be 1-128 printable ASCII characters"
        )
    if batch.sequence <= 0:
        raise InvalidArgumentError.for_field("batch.sequence", "is required (starts at 1)")
    if not batch.camera:
        raise InvalidArgumentError.for_field("batch.camera", "is required")
    camera_id = parse_camera_name(batch.camera, "batch.camera")
    model = batch.model.removeprefix("models/")
    if model == batch.model or not is_token(model):
        raise InvalidArgumentError.for_field("batch.model", 'must be "models/{model}"')
    if not is_token(batch.model_version):
        raise InvalidArgumentError.for_field(
            "batch.model_version", "is required: 1-128 printable ASCII characters"
        )
    if not 1 <= len(batch.frames) <= _MAX_FRAMES:
        raise InvalidArgumentError.for_field(
            "batch.frames", f"must hold 1 to {_MAX_FRAMES} frames, got {len(batch.frames)}"
        )
    return camera_id


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class AnalyticsServicer(analytics_service_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, ingestor: Ingestor, owners: ProducerOwners) -> None:
        self._ingestor = ingestor
        self._owners = owners
        self._closing = asyncio.Event()

    async def close_streams(self) -> None:
        """End every stream at its next batch boundary (the batch being applied is still
        applied and acknowledged)."""
        self._closing.set()

    async def StreamDetectionBatches(
        self,
        request_iterator: AsyncIterator[analytics_service_pb2.StreamDetectionBatchesRequest],
        context: _Context,
    ) -> AsyncIterator[analytics_service_pb2.StreamDetectionBatchesResponse]:
        producer: str | None = None
        last_sequence = 0
        requests = self._until_closing(request_iterator)
        try:
            async for request in requests:
                batch = request.batch
                if producer is None and is_token(batch.producer_id):
                    # Before the batch's other checks: an impostor learns nothing more.
                    await self._owners.claim(batch.producer_id, current_principal().actor)
                camera_id = _check(batch)
                if producer is None:
                    producer = batch.producer_id
                    self._ingestor.open_stream(producer)
                elif batch.producer_id != producer:
                    raise InvalidArgumentError.for_field(
                        "batch.producer_id", f"changed within the stream (was {producer!r})"
                    )
                if batch.sequence <= last_sequence:
                    raise FailedPreconditionError(
                        f"batch.sequence {batch.sequence} does not increase"
                        f" (after {last_sequence})",
                        reason=error_reason_pb2.ERROR_REASON_SEQUENCE_OUT_OF_ORDER,
                        metadata={"sequence": str(batch.sequence), "previous": str(last_sequence)},
                    )
                last_sequence = batch.sequence
                yield await self._ingestor.apply(batch, camera_id)
        finally:
            await requests.aclose()  # now, not when collected: it holds a waiting task
            if producer is not None:
                self._ingestor.close_stream(producer)

    async def ResetCameraState(
        self, request: analytics_service_pb2.ResetCameraStateRequest, context: _Context
    ) -> analytics_service_pb2.ResetCameraStateResponse:
        if not request.camera:
            raise InvalidArgumentError.for_field("camera", "is required")
        camera_id = parse_camera_name(request.camera, "camera")
        if not current_principal().may_see(camera_id):
            raise PermissionDeniedError(
                f"camera {request.camera!r} is outside the cameras this caller may change"
            )
        note_audit(resource=f"cameras/{camera_id}")
        last_ns, closed_events = await self._ingestor.reset(camera_id)
        response = analytics_service_pb2.ResetCameraStateResponse(
            camera=f"cameras/{camera_id}", closed_events=closed_events
        )
        if last_ns is not None:
            response.discarded_last_capture_time.FromNanoseconds(last_ns)
        return response

    async def _until_closing(
        self, request_iterator: AsyncIterator[analytics_service_pb2.StreamDetectionBatchesRequest]
    ) -> AsyncGenerator[analytics_service_pb2.StreamDetectionBatchesRequest, None]:
        """The stream's requests, until the client ends it or ``close_streams`` is called
        (then UNAVAILABLE, even while waiting for the next request)."""
        requests = aiter(request_iterator)
        closing = asyncio.ensure_future(self._closing.wait())
        read: asyncio.Future[analytics_service_pb2.StreamDetectionBatchesRequest] | None = None
        try:
            while not self._closing.is_set():
                read = asyncio.ensure_future(anext(requests))
                await asyncio.wait((read, closing), return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    read.cancel()
                    break
                try:
                    request = read.result()
                except StopAsyncIteration:
                    return
                yield request
            raise UnavailableError(
                "analytics is shutting down: reconnect and resend the batches not acknowledged",
                reason=error_reason_pb2.ERROR_REASON_SHUTTING_DOWN,
            )
        finally:
            closing.cancel()
            if read is not None:
                # Closed while waiting (the call cancelled, its connection reset): the read
                # still pending ends on its own later; mark its outcome seen, else asyncio
                # logs "Task exception was never retrieved" for its StopAsyncIteration.
                read.cancel()
                read.add_done_callback(_consume)
