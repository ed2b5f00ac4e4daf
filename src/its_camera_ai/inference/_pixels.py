"""Frames in, network input out: ring slots and encoded images to a letterboxed batch.

A ring slot is read where it lies: for RGB on the CPU the letterbox's resize reads the
shared-memory view directly (no copy before it); on CUDA the slot is copied to the device
first (a DMA when the reader pinned the ring) and everything after runs there. YUV slots
(what a decoder writes when it skips colour conversion) are converted in torch on the
target device with BT.601 limited-range coefficients, FFmpeg's default for frames whose
stream does not say otherwise, and chroma upsampled by replication, as swscale's fast path
does.

Encoded images (``Detect`` from remote callers) are decoded with FFmpeg through PyAV, after
their header says their size: a small PNG or JPEG can declare a huge canvas, and decoding
it first would allocate it.
"""

from __future__ import annotations

import struct
from typing import Any

import av
import numpy as np
import torch

from its_camera_ai import shm
from its_camera_ai.inference.models import letterbox_into

__all__ = [
    "MAX_IMAGE_PIXELS",
    "ImageError",
    "decode_image",
    "frame_rgb",
    "image_size",
    "letterbox_into",
]

# 8K UHD: larger images are refused before decoding.
MAX_IMAGE_PIXELS = 7680 * 4320

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
# JPEG start-of-frame markers (baseline, progressive, lossless...): they carry the size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageError(ValueError):
    """An encoded image that cannot be used; the message says why."""


def _yuv_to_rgb(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full-resolution Y and half-resolution U, V (uint8) -> uint8 [H,W,3] RGB."""
    h, w = y.shape
    yf = (y.float() - 16.0) * (255.0 / 219.0)
    uf = (u.float() - 128.0).repeat_interleave(2, 0).repeat_interleave(2, 1)[:h, :w]
    vf = (v.float() - 128.0).repeat_interleave(2, 0).repeat_interleave(2, 1)[:h, :w]
    r = yf + 1.596027 * vf
    g = yf - 0.391762 * uf - 0.812968 * vf
    b = yf + 2.017232 * uf
    return torch.stack((r, g, b), dim=-1).round_().clamp_(0, 255).to(torch.uint8)


def _planes(frame: shm.Frame, device: torch.device) -> list[torch.Tensor]:
    planes: list[torch.Tensor] = list(frame.plane_tensors())
    if device.type == "cpu":
        return planes
    return [p.to(device, non_blocking=True) for p in planes]


def frame_rgb(frame: shm.Frame, device: torch.device) -> torch.Tensor:
    """uint8 ``[H,W,3]`` RGB of a ring frame on ``device``: a view of the slot itself for
    RGB24 on the CPU, otherwise converted (on the device, after one copy to it)."""
    fmt = frame.format
    if fmt is shm.PixelFormat.RGB24:
        t: torch.Tensor = frame.tensor()
        return t if device.type == "cpu" else t.to(device, non_blocking=True)
    if fmt in (shm.PixelFormat.BGR24, shm.PixelFormat.RGBA, shm.PixelFormat.GRAY8):
        (packed,) = _planes(frame, device)
        if fmt is shm.PixelFormat.BGR24:
            return packed.flip(-1)
        if fmt is shm.PixelFormat.RGBA:
            return packed[..., :3]
        return packed.unsqueeze(-1).expand(-1, -1, 3)
    planes = _planes(frame, device)
    if fmt is shm.PixelFormat.NV12:
        y, uv = planes
        return _yuv_to_rgb(y, uv[..., 0], uv[..., 1])
    y, u, v = planes
    return _yuv_to_rgb(y, u, v)


def _png_size(data: bytes) -> tuple[int, int]:
    # The IHDR chunk comes first: 4 bytes length, "IHDR", then width and height.
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageError("PNG data has no IHDR header: truncated or not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ImageError(f"JPEG data is corrupt at byte {i}: expected a marker")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _JPEG_SOF:
            if i + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    raise ImageError("JPEG data has no frame header (SOF): truncated or not a JPEG")


def image_size(data: bytes, declared: str | None = None) -> tuple[str, int, int]:
    """(format, width, height) from an encoded image's header, without decoding it.
    ``declared`` ("jpeg"/"png"/None) must agree with the data's signature."""
    if data.startswith(_PNG_SIGNATURE):
        fmt, (width, height) = "png", _png_size(data)
    elif data.startswith(_JPEG_SIGNATURE):
        fmt, (width, height) = "jpeg", _jpeg_size(data)
    else:
        raise ImageError("data is neither a JPEG nor a PNG (unknown signature bytes)")
    if declared is not None and declared != fmt:
        raise ImageError(f"format says {declared.upper()} but the data is a {fmt.upper()}")
    if width <= 0 or height <= 0:
        raise ImageError(f"image declares an empty size {width}x{height}")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"image is {width}x{height}, more than the {MAX_IMAGE_PIXELS} pixels accepted"
        )
    return fmt, width, height


def decode_image(data: bytes, declared: str | None = None) -> np.ndarray[Any, Any]:
    """An encoded JPEG or PNG -> uint8 ``[H,W,3]`` RGB (alpha dropped, grey expanded)."""
    fmt, width, height = image_size(data, declared)
    codec = av.CodecContext.create("mjpeg" if fmt == "jpeg" else "png", "r")
    # FFmpeg conceals damage (a truncated JPEG decodes to a grey-filled picture) unless told
    # to fail: a caller must learn its image is broken, not get detections on half of it.
    codec.options = {"err_detect": "explode"}
    try:
        frames = [*codec.decode(av.Packet(data)), *codec.decode(None)]
    except av.FFmpegError as exc:
        raise ImageError(f"{fmt.upper()} data cannot be decoded: {exc}") from exc
    if not frames:
        raise ImageError(f"{fmt.upper()} data holds no complete picture (truncated?)")
    picture = frames[0]
    if (picture.width, picture.height) != (width, height):
        raise ImageError(
            f"{fmt.upper()} decodes to {picture.width}x{picture.height}, "
            f"its header says {width}x{height}"
        )
    rgb: np.ndarray[Any, Any] = picture.to_ndarray(format="rgb24")
    return rgb
