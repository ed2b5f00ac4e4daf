"""``its.inference.v1.InferenceService``: ``Detect`` and ``GetModel``.

``Detect`` takes a frame either by reference to a slot of a ring on this host (Triton's
shared-memory style: nothing but the reference crosses gRPC) or as an encoded image. Both
join the pipeline's batches through the batcher's request lane, so on-demand calls ride
the same GPU batches as the cameras. A reference is checked against what the server knows
(the camera's ring), then under the slot's seqlock: a slot that no longer holds the frame
is FAILED_PRECONDITION/STALE_FRAME_REFERENCE, whether it was overwritten before the read
or during it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from its.common.v1 import detection_pb2, error_reason_pb2, frame_pb2, geometry_pb2
from its.inference.v1 import inference_service_pb2, inference_service_pb2_grpc, model_pb2
from its_camera_ai import shm
from its_camera_ai.common import (
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
    parse_camera_name,
    quoted,
)
from its_camera_ai.inference._batching import (
    REQUEST_LANE,
    BatcherClosed,
    DynamicBatcher,
    LaneFull,
    Work,
)
from its_camera_ai.inference._feeds import Feeds, to_detection_protos
from its_camera_ai.inference._pixels import ImageError, decode_image
from its_camera_ai.inference.models import DetectionModel, Detections, Engine
from its_camera_ai.security import current_principal

__all__ = ["InferenceServicer", "model_resource"]

_Context = grpc.aio.ServicerContext[Any, Any]
_IMAGE_FORMATS = {
    inference_service_pb2.IMAGE_FORMAT_UNSPECIFIED: None,
    inference_service_pb2.IMAGE_FORMAT_JPEG: "jpeg",
    inference_service_pb2.IMAGE_FORMAT_PNG: "png",
}
# The API's pixel formats in the ring's terms: the same names, other numbers.
_PIXEL_FORMATS = {
    value: shm.PixelFormat.from_name(name.removeprefix("PIXEL_FORMAT_").lower())
    for name, value in frame_pb2.PixelFormat.items()
    if value != frame_pb2.PIXEL_FORMAT_UNSPECIFIED
}


def model_resource(
    model: DetectionModel, engine: Engine, max_batch_size: int, load_time_ns: int
) -> model_pb2.Model:
    """The ``its.inference.v1.Model`` a server reports for its loaded model."""
    w, h = model.input_size
    return model_pb2.Model(
        name=f"models/{model.name}",
        version=model.version,
        backend=model_pb2.Backend.ValueType(engine.backend),
        device=str(engine.device),
        precision=model_pb2.Precision.ValueType(engine.precision),
        input_size=geometry_pb2.ImageSize(width=w, height=h),
        classes=[detection_pb2.ObjectClass.ValueType(c) for c in model.class_ids],
        max_batch_size=max_batch_size,
        default_score_threshold=model.default_score_threshold,
        load_time=timestamp_pb2.Timestamp(
            seconds=load_time_ns // 1_000_000_000, nanos=load_time_ns % 1_000_000_000
        ),
    )


def _duration(ns: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def _stale(reference: frame_pb2.FrameReference) -> FailedPreconditionError:
    # Only a reference to this server's ring gets here, but spelled with any number of
    # leading slashes: without them it is the ring's own (bounded) name.
    ring_name = reference.ring_name.lstrip("/")
    return FailedPreconditionError(
        f"frame {reference.frame_sequence} is no longer in slot {reference.slot_index} of ring "
        f"{quoted(ring_name)}: the decoder overwrote it (read references promptly)",
        reason=error_reason_pb2.ERROR_REASON_STALE_FRAME_REFERENCE,
        metadata={
            "ring_name": ring_name,
            "frame_sequence": str(reference.frame_sequence),
        },
    )


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    def __init__(
        self,
        model: DetectionModel,
        resource: model_pb2.Model,
        batcher: DynamicBatcher,
        feeds: Feeds,
        flag: Callable[[str], bool] = lambda _name: True,
    ) -> None:
        self._model = model
        # The feature flags (Runtime.flags): "on-demand-detect" off refuses Detect.
        self._flag = flag
        self._resource = resource
        self._batcher = batcher
        self._feeds = feeds
        self._names = {"models/default", resource.name}
        # Readers used only on the event loop's thread (a reader is single-threaded).
        self._readers: dict[str, shm.RingReader] = {}

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    async def GetModel(
        self, request: inference_service_pb2.GetModelRequest, context: _Context
    ) -> inference_service_pb2.GetModelResponse:
        if not request.name:
            raise InvalidArgumentError.for_field("name", 'is required ("models/{model}")')
        if request.name not in self._names:
            raise NotFoundError(
                f"model {quoted(request.name)} is not loaded here (this server runs "
                f"{self._resource.name!r}, also known as 'models/default')"
            )
        return inference_service_pb2.GetModelResponse(model=self._resource)

    # --- Detect -----------------------------------------------------------------------

    def _threshold(self, request: inference_service_pb2.DetectRequest) -> float:
        if not request.HasField("score_threshold"):
            return self._model.default_score_threshold
        value = request.score_threshold
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            raise InvalidArgumentError.for_field(
                "score_threshold", f"must be in [0, 1], got {value}"
            )
        return value

    def _reader(self, ring: str) -> shm.RingReader:
        reader = self._readers.get(ring)
        if reader is not None and not reader.closed:
            return reader
        try:
            reader = shm.attach(ring, notify=False)
        except shm.ShmError as exc:
            raise FailedPreconditionError(
                f"ring {ring!r} cannot be read on this server: {exc}",
                reason=error_reason_pb2.ERROR_REASON_FRAME_RING_NOT_FOUND,
            ) from exc
        self._readers[ring] = reader
        return reader

    def _referenced_frame(self, request: inference_service_pb2.DetectRequest) -> shm.Frame:
        ref = request.frame
        if not request.camera:
            raise InvalidArgumentError.for_field("camera", "is required with frame")
        camera_id = parse_camera_name(request.camera, "camera")
        if not current_principal().may_see(camera_id):
            raise PermissionDeniedError(
                f"camera {quoted(request.camera)} is outside the cameras this caller may access"
            )
        for field, ok in (
            ("frame.ring_name", bool(ref.ring_name)),
            ("frame.slot_index", ref.slot_index >= 0),
            ("frame.frame_sequence", ref.frame_sequence > 0),
            ("frame.width", ref.width > 0),
            ("frame.height", ref.height > 0),
            ("frame.pixel_format", ref.pixel_format in _PIXEL_FORMATS),
        ):
            if not ok:
                raise InvalidArgumentError.for_field(field, "is missing or out of range")
        ring = self._feeds.ring_of(camera_id)
        if ring is None:
            raise FailedPreconditionError(
                f"camera {quoted(request.camera)} has no ring on this server",
                reason=error_reason_pb2.ERROR_REASON_FRAME_RING_NOT_FOUND,
            )
        if ref.ring_name.lstrip("/") != ring.lstrip("/"):
            raise FailedPreconditionError(
                f"ring {quoted(ref.ring_name)} is not the ring of {quoted(request.camera)} on this"
                " server",
                reason=error_reason_pb2.ERROR_REASON_FRAME_REFERENCE_FOREIGN,
            )
        reader = self._reader(ring)
        if ref.slot_index >= reader.slot_count or ref.frame_sequence % reader.slot_count != (
            ref.slot_index
        ):
            raise InvalidArgumentError.for_field(
                "frame.slot_index",
                f"frame {ref.frame_sequence} lives in slot {ref.frame_sequence % reader.slot_count}"
                f" of {reader.slot_count}, not {ref.slot_index}",
            )
        frame = reader.read_sequence(ref.frame_sequence)
        if frame is None:
            raise _stale(ref)
        want = (ref.width, ref.height, _PIXEL_FORMATS[ref.pixel_format])
        got = (frame.width, frame.height, frame.format)
        if want != got:
            field = "frame.pixel_format" if want[:2] == got[:2] else "frame.width"
            raise InvalidArgumentError.for_field(
                field,
                f"the slot holds a {got[0]}x{got[1]} {got[2].name} frame, "
                f"the reference says {want[0]}x{want[1]} {want[2].name}",
            )
        return frame

    async def _image(self, request: inference_service_pb2.DetectRequest) -> Any:
        image = request.image
        if request.camera:
            parse_camera_name(request.camera, "camera")
        if not image.data:
            raise InvalidArgumentError.for_field("image.data", "is required")
        try:
            return await asyncio.to_thread(
                decode_image, image.data, _IMAGE_FORMATS.get(image.format)
            )
        except ImageError as exc:
            raise InvalidArgumentError(
                f"image.data: {exc}",
                [],
                reason=error_reason_pb2.ERROR_REASON_UNSUPPORTED_FORMAT,
            ) from exc

    async def Detect(
        self, request: inference_service_pb2.DetectRequest, context: _Context
    ) -> inference_service_pb2.DetectResponse:
        received = time.monotonic_ns()
        if not self._flag("on-demand-detect"):
            raise FailedPreconditionError(
                "on-demand detection is switched off (feature flag featureFlags/on-demand-detect)"
            )
        if request.model and request.model not in self._names:
            raise NotFoundError(f"model: {quoted(request.model)} is not loaded on this server")
        threshold = self._threshold(request)
        which = request.WhichOneof("input")
        if which is None:
            raise InvalidArgumentError.for_field("input", "set frame or image")
        pixels: Any = (
            self._referenced_frame(request) if which == "frame" else await self._image(request)
        )

        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Work, Detections]] = loop.create_future()

        def done(work: Work, result: Any, error: BaseException | None) -> None:
            def settle() -> None:
                if future.done():
                    return
                if result is not None:
                    future.set_result((work, result))
                else:
                    future.set_exception(error or BatcherClosed("the server is shutting down"))

            loop.call_soon_threadsafe(settle)

        try:
            self._batcher.submit(Work(REQUEST_LANE, pixels, threshold, done))
        except LaneFull as exc:
            raise UnavailableError(
                f"the model's queue is full: {exc}; retry with backoff",
                reason=error_reason_pb2.ERROR_REASON_OVERLOADED,
            ) from exc
        except BatcherClosed as exc:
            raise UnavailableError(
                str(exc), reason=error_reason_pb2.ERROR_REASON_NOT_READY
            ) from exc
        try:
            work, result = await future
        except shm.FrameOverwritten as exc:
            raise _stale(request.frame) from exc
        except BatcherClosed as exc:
            raise UnavailableError(
                str(exc), reason=error_reason_pb2.ERROR_REASON_NOT_READY
            ) from exc
        except Exception as exc:
            raise InternalError(f"detection failed: {type(exc).__name__}") from exc
        height, width = (
            (pixels.height, pixels.width) if isinstance(pixels, shm.Frame) else pixels.shape[:2]
        )
        if isinstance(pixels, shm.Frame):
            pixels.release()
        order = result.scores.argsort(descending=True)
        ranked = Detections(result.boxes[order], result.scores[order], result.classes[order])
        return inference_service_pb2.DetectResponse(
            detections=to_detection_protos(ranked),
            model=self._resource.name,
            model_version=self._resource.version,
            image_size=geometry_pb2.ImageSize(width=width, height=height),
            batch_size=work.batch_size,
            timings=inference_service_pb2.DetectTimings(
                queue=_duration(work.started_ns - work.enqueued_ns),
                preprocess=_duration(work.preprocess_ns),
                inference=_duration(work.model_ns),
                postprocess=_duration(work.postprocess_ns),
                total=_duration(time.monotonic_ns() - received),
            ),
        )
