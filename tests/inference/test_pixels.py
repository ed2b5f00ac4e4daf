"""Ring slots and encoded images to network input: colour conversion, letterbox, decoding."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from its_camera_ai import shm
from its_camera_ai.inference import (
    MAX_IMAGE_PIXELS,
    ImageError,
    decode_image,
    frame_rgb,
    image_size,
    letterbox_into,
)
from its_camera_ai.inference.models import letterbox_any

CPU = torch.device("cpu")


def _scene(width: int = 320, height: int = 180) -> np.ndarray:
    """Smooth colour gradients: what chroma subsampling keeps nearly intact."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack((x / width * 255, y / height * 255, (x + y) / (width + height) * 255), -1)
    return rgb.round().astype(np.uint8)


def _encode(rgb: np.ndarray, codec: str, pix_fmt: str) -> bytes:
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = rgb.shape[1], rgb.shape[0], pix_fmt
    ctx.time_base = Fraction(1, 25)
    picture = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
    return b"".join(bytes(p) for p in [*ctx.encode(picture), *ctx.encode(None)])


@pytest.mark.parametrize(
    ("fmt", "av_format"),
    [(shm.PixelFormat.YUV420P, "yuv420p"), (shm.PixelFormat.NV12, "nv12")],
)
def test_yuv_slots_convert_like_ffmpeg(
    ring_name: str, fmt: shm.PixelFormat, av_format: str
) -> None:
    rgb = _scene()
    picture = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=av_format)
    # FFmpeg's own way back to RGB is the reference the decoder's users see elsewhere.
    reference = picture.reformat(format="rgb24").to_ndarray()
    h, w = rgb.shape[:2]
    with shm.create(ring_name, slots=2, max_frame_bytes=shm.frame_bytes(fmt, w, h)) as writer:
        # Plane by plane, as the decoder's sink copies them: FFmpeg pads each plane's rows
        # to its own line size, which differs from plane to plane by the allocator's alignment.
        with writer.reserve(w, h, fmt) as slot:
            for target, plane in zip(slot.planes(), picture.planes, strict=True):
                rows, columns = target.shape[0], target.size // target.shape[0]
                source = np.frombuffer(bytes(plane), np.uint8)[: rows * plane.line_size]
                target[...] = source.reshape(rows, plane.line_size)[:, :columns].reshape(
                    target.shape
                )
        with shm.attach(ring_name) as reader:
            frame = reader.read_latest(timeout=1.0)
            assert frame is not None
            got = frame_rgb(frame, CPU).numpy()
            frame.release()
    assert got.shape == (h, w, 3)
    diff = np.abs(got.astype(int) - reference.astype(int))
    assert np.percentile(diff, 99) <= 3, diff.max()


def test_rgb_slot_is_a_view_and_bgr_is_flipped(ring_name: str) -> None:
    rgb = _scene()
    h, w = rgb.shape[:2]
    with shm.create(ring_name, slots=2, max_frame_bytes=rgb.nbytes) as writer:
        writer.write(rgb, w, h, shm.PixelFormat.RGB24)
        writer.write(np.ascontiguousarray(rgb[..., ::-1]), w, h, shm.PixelFormat.BGR24)
        with shm.attach(ring_name, skip_existing=False) as reader:
            first = reader.read_sequence(1)
            second = reader.read_sequence(2)
            assert first is not None
            assert second is not None
            view = frame_rgb(first, CPU)
            assert view.data_ptr() == first.tensor().data_ptr()  # no copy
            assert np.array_equal(view.numpy(), rgb)
            assert np.array_equal(frame_rgb(second, CPU).numpy(), rgb)
            first.release()
            second.release()


def test_letterbox_into_places_frames_of_different_sizes() -> None:
    small, big = torch.from_numpy(_scene(160, 90)), torch.from_numpy(_scene(640, 480))
    out = torch.empty(3, 3, 96, 128)
    placements = letterbox_into(out, [small, big], 0.5)
    for i, image in enumerate((small, big)):
        alone, lb = letterbox_any(image.unsqueeze(0), (128, 96), 0.5)
        assert torch.equal(out[i], alone[0])
        assert placements[i] == lb


def test_png_and_jpeg_decode_to_rgb() -> None:
    rgb = _scene()
    assert np.array_equal(decode_image(_encode(rgb, "png", "rgb24")), rgb)
    jpeg = decode_image(_encode(rgb, "mjpeg", "yuvj420p"), "jpeg")
    assert jpeg.shape == rgb.shape
    assert np.abs(jpeg.astype(int) - rgb.astype(int)).mean() < 3


@pytest.mark.parametrize(
    ("data", "declared", "message"),
    [
        (b"GIF89a....", None, "neither a JPEG nor a PNG"),
        (b"", None, "neither a JPEG nor a PNG"),
        ("png-truncated", None, "cannot be decoded"),
        ("jpeg-truncated", None, "cannot be decoded"),
        ("png", "jpeg", "format says JPEG but the data is a PNG"),
        ("png-header-only", None, "no IHDR"),
    ],
)
def test_bad_images_are_refused_with_the_reason(
    data: bytes | str, declared: str | None, message: str
) -> None:
    rgb = _scene()
    samples = {
        "png": _encode(rgb, "png", "rgb24"),
        "png-truncated": _encode(rgb, "png", "rgb24")[:300],
        "jpeg-truncated": _encode(rgb, "mjpeg", "yuvj420p")[:1500],
        "png-header-only": _encode(rgb, "png", "rgb24")[:10],
    }
    blob = samples[data] if isinstance(data, str) else data
    with pytest.raises(ImageError, match=message):
        decode_image(blob, declared)


def test_a_huge_declared_canvas_is_refused_before_decoding() -> None:
    header = bytearray(_encode(_scene(16, 16), "png", "rgb24"))
    header[16:24] = (40000).to_bytes(4, "big") + (40000).to_bytes(4, "big")
    with pytest.raises(ImageError, match=f"more than the {MAX_IMAGE_PIXELS} pixels"):
        image_size(bytes(header))
