"""``InferenceService.Detect`` and ``GetModel`` over real gRPC: shared-memory references and
encoded images, and every bad input answered with its status and reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from fractions import Fraction

import av
import grpc
import numpy as np
import pytest
from grpc_status import rpc_status

from its.common.v1 import frame_pb2
from its.inference.v1 import inference_service_pb2 as pb
from its.inference.v1 import inference_service_pb2_grpc, model_pb2
from its_camera_ai.common import InferenceSettings
from its_camera_ai.inference.models import load_model
from its_camera_ai.testing import RingFeeder, inference_host, recording_analytics, sim_frames
from tests.conftest import rpc_error_details

SLOTS = 4
# What a service serves when its settings name no model.
DEFAULT_MODEL = InferenceSettings().model


@dataclass
class Served:
    stub: inference_service_pb2_grpc.InferenceServiceStub
    feeder: RingFeeder
    frames: list[np.ndarray]


@pytest.fixture
async def served(ring_name: str) -> AsyncIterator[Served]:
    frames = [f for f, _ in sim_frames(3)]
    feeder = RingFeeder(ring_name, frames, slots=SLOTS)
    async with (
        recording_analytics() as (_, target),
        inference_host(cameras={"cam-a": ring_name}, analytics_target=target) as host,
    ):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
        try:
            yield Served(inference_service_pb2_grpc.InferenceServiceStub(channel), feeder, frames)
        finally:
            await channel.close()
    feeder.close()


def _reference(feeder: RingFeeder, seq: int, **changes: object) -> frame_pb2.FrameReference:
    h, w = feeder.frames[0].shape[:2]
    fields: dict[str, object] = {
        "ring_name": feeder.name,
        "slot_index": seq % SLOTS,
        "frame_sequence": seq,
        "width": w,
        "height": h,
        "pixel_format": frame_pb2.PIXEL_FORMAT_RGB24,
    }
    fields.update(changes)
    return frame_pb2.FrameReference(**fields)  # type: ignore[arg-type]


def _png(rgb: np.ndarray) -> bytes:
    ctx = av.CodecContext.create("png", "w")
    ctx.width, ctx.height, ctx.pix_fmt = rgb.shape[1], rgb.shape[0], "rgb24"
    ctx.time_base = Fraction(1, 25)
    picture = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    return b"".join(bytes(p) for p in [*ctx.encode(picture), *ctx.encode(None)])


def _as_arrays(response: pb.DetectResponse) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.array(
        [[d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max] for d in response.detections]
    ).reshape(-1, 4)
    return boxes, np.array([d.score for d in response.detections])


async def test_detect_on_a_frame_reference_and_on_an_image_agree_with_the_detector(
    served: Served,
) -> None:
    seq = served.feeder.write(0)
    by_reference = await served.stub.Detect(
        pb.DetectRequest(frame=_reference(served.feeder, seq), camera="cameras/cam-a")
    )
    by_image = await served.stub.Detect(
        pb.DetectRequest(image=pb.EncodedImage(data=_png(served.frames[0])))
    )
    alone = load_model(DEFAULT_MODEL).detect(served.frames[0])[0]
    order = np.argsort(-alone.scores.numpy(), kind="stable")
    for response in (by_reference, by_image):
        boxes, scores = _as_arrays(response)
        assert len(scores) == len(order) > 0
        assert np.all(np.diff(scores) <= 0)  # sorted by descending score
        assert np.allclose(scores, alone.scores.numpy()[order], atol=1e-5)
        assert np.allclose(boxes, alone.boxes.numpy()[order], atol=1e-3)
        assert response.model == f"models/{DEFAULT_MODEL}"
        assert (response.image_size.width, response.image_size.height) == (640, 360)
        assert response.batch_size >= 1
        t = response.timings
        assert t.total.ToNanoseconds() >= t.inference.ToNanoseconds() > 0
    # A threshold of 1 keeps nothing.
    none = await served.stub.Detect(
        pb.DetectRequest(
            frame=_reference(served.feeder, seq), camera="cameras/cam-a", score_threshold=1.0
        )
    )
    assert len(none.detections) == 0


@pytest.mark.parametrize(
    ("case", "code", "reason", "field"),
    [
        ("stale", grpc.StatusCode.FAILED_PRECONDITION, "STALE_FRAME_REFERENCE", None),
        ("foreign ring", grpc.StatusCode.FAILED_PRECONDITION, "FRAME_REFERENCE_FOREIGN", None),
        ("unknown camera", grpc.StatusCode.FAILED_PRECONDITION, "FRAME_RING_NOT_FOUND", None),
        ("no camera", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "camera"),
        ("wrong size", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "frame.width"),
        ("wrong format", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "frame.pixel_format"),
        ("wrong slot", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "frame.slot_index"),
        ("no input", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "input"),
        ("bad threshold", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "score_threshold"),
        ("undecodable", grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_FORMAT", None),
        ("not an image", grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_FORMAT", None),
        ("unknown model", grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND", None),
    ],
)
async def test_bad_detect_calls_get_their_status_and_reason(
    served: Served, case: str, code: grpc.StatusCode, reason: str, field: str | None
) -> None:
    feeder = served.feeder
    seq = feeder.write(0)
    camera = "cameras/cam-a"
    requests = {
        "foreign ring": pb.DetectRequest(
            frame=_reference(feeder, seq, ring_name="someone-elses-ring"), camera=camera
        ),
        "unknown camera": pb.DetectRequest(frame=_reference(feeder, seq), camera="cameras/cam-z"),
        "no camera": pb.DetectRequest(frame=_reference(feeder, seq)),
        "wrong size": pb.DetectRequest(frame=_reference(feeder, seq, width=1280), camera=camera),
        "wrong format": pb.DetectRequest(
            frame=_reference(feeder, seq, pixel_format=frame_pb2.PIXEL_FORMAT_NV12), camera=camera
        ),
        "wrong slot": pb.DetectRequest(
            frame=_reference(feeder, seq, slot_index=(seq + 1) % SLOTS), camera=camera
        ),
        "no input": pb.DetectRequest(camera=camera),
        "bad threshold": pb.DetectRequest(
            frame=_reference(feeder, seq), camera=camera, score_threshold=1.5
        ),
        "undecodable": pb.DetectRequest(image=pb.EncodedImage(data=_png(served.frames[0])[:400])),
        "not an image": pb.DetectRequest(image=pb.EncodedImage(data=b"GIF89a not supported")),
        "unknown model": pb.DetectRequest(
            frame=_reference(feeder, seq), camera=camera, model="models/yolo-elsewhere"
        ),
    }
    if case == "stale":
        for i in range(SLOTS):  # the ring laps: frame `seq` is gone
            feeder.write(i + 1)
        request = pb.DetectRequest(frame=_reference(feeder, seq), camera=camera)
    else:
        request = requests[case]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.Detect(request)
    assert caught.value.code() == code, caught.value.details()
    got_reason, fields = rpc_error_details(caught.value)
    assert got_reason == reason
    if field is not None:
        assert field in fields
        assert field in (caught.value.details() or "")


async def test_get_model_describes_the_loaded_model(served: Served) -> None:
    by_alias = await served.stub.GetModel(pb.GetModelRequest(name="models/default"))
    model = by_alias.model
    assert model.name == f"models/{DEFAULT_MODEL}"
    assert (await served.stub.GetModel(pb.GetModelRequest(name=model.name))).model == model
    assert model.backend == model_pb2.BACKEND_ONNXRUNTIME_CPU  # inference.backend auto
    assert model.device == "cpu"
    assert model.precision == model_pb2.PRECISION_FP32
    assert (model.input_size.width, model.input_size.height) == load_model(DEFAULT_MODEL).input_size
    assert list(model.classes) == [1, 2, 3, 4, 5, 6]
    assert model.max_batch_size == 8
    assert model.load_time.seconds > 0
    assert "+" in model.version  # manifest version + weights digest
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.GetModel(pb.GetModelRequest(name="models/nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_torch_backend_named_serves_what_the_model_finds(ring_name: str) -> None:
    """``inference.backend: torch`` named (the default on a CPU is onnxruntime, which the
    tests above serve): GetModel reports it, and Detect on a ring frame answers what the
    model's own ``detect`` finds."""
    frames = [f for f, _ in sim_frames(1)]
    feeder = RingFeeder(ring_name, frames, slots=SLOTS)
    try:
        async with (
            recording_analytics() as (_, target),
            inference_host(
                cameras={"cam-a": ring_name}, analytics_target=target, backend="torch"
            ) as host,
            grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}") as channel,
        ):
            stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
            model = (await stub.GetModel(pb.GetModelRequest(name="models/default"))).model
            assert (model.backend, model.precision) == (
                model_pb2.BACKEND_TORCH_CPU,
                model_pb2.PRECISION_FP32,
            )
            seq = feeder.write(0)
            response = await stub.Detect(
                pb.DetectRequest(frame=_reference(feeder, seq), camera="cameras/cam-a")
            )
    finally:
        feeder.close()
    alone = load_model(DEFAULT_MODEL).detect(frames[0])[0]
    order = np.argsort(-alone.scores.numpy(), kind="stable")
    boxes, scores = _as_arrays(response)
    assert len(scores) == len(order) > 0
    assert np.allclose(scores, alone.scores.numpy()[order], atol=1e-4)
    assert np.allclose(boxes, alone.boxes.numpy()[order], atol=1e-2)


LONG = "x" * 100_000
# What an error may quote of a request string: the bounded prefix, never the whole value.
QUOTED_LIMIT = 100


def _quotes_little(error: grpc.aio.AioRpcError) -> None:
    details = error.details() or ""
    assert "x" * (QUOTED_LIMIT + 1) not in details, f"{len(details)} characters of details"
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    assert len(status.SerializeToString()) < 2_000


async def test_a_huge_model_name_is_not_found_and_not_echoed_back(served: Served) -> None:
    seq = served.feeder.write(0)
    detect = pb.DetectRequest(
        frame=_reference(served.feeder, seq), camera="cameras/cam-a", model=f"models/{LONG}"
    )
    for call in (
        served.stub.GetModel(pb.GetModelRequest(name=f"models/{LONG}")),
        served.stub.Detect(detect),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
        assert "models/xxxx" in (caught.value.details() or "")
        _quotes_little(caught.value)


async def test_a_huge_ring_name_in_a_reference_is_not_echoed_back(served: Served) -> None:
    feeder = served.feeder
    seq = feeder.write(0)
    foreign = _reference(feeder, seq, ring_name=LONG)
    # Leading slashes are allowed on a ring's name, so this one matches the camera's ring;
    # once the ring has lapped, the stale reference's name would be echoed, slashes and all.
    slashed = _reference(feeder, seq, ring_name="/" * 100_000 + feeder.name)
    for request, lap in ((foreign, False), (slashed, True)):
        if lap:
            for i in range(SLOTS):
                feeder.write(i + 1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await served.stub.Detect(pb.DetectRequest(frame=request, camera="cameras/cam-a"))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "/" * (QUOTED_LIMIT + 1) not in (caught.value.details() or "")
        _quotes_little(caught.value)
