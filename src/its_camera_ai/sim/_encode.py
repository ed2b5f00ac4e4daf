"""Video and image output: H.264 through PyAV (real compression artefacts), PNG for looking.

Frames are RGB uint8 (H, W, 3). H.264 uses 4:2:0 chroma, so sizes must be even. PyAV is
imported where it is used, so rendering and datasets work on machines without it.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import numpy as np
from numpy.typing import NDArray

__all__ = ["VideoWriter", "h264_roundtrip", "read_video", "write_png"]

U8 = NDArray[np.uint8]


class VideoWriter:
    """Encode frames to an mp4 (or any container PyAV infers from the file name)."""

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: float,
        *,
        codec: str = "libx264",
        crf: int = 23,
        preset: str = "veryfast",
        gop: int | None = None,
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"width and height must be even for 4:2:0 video, got {width}x{height}")
        import av  # noqa: PLC0415 (optional dependency, see module docstring)
        from av.video.stream import VideoStream  # noqa: PLC0415

        self._vframe = av.VideoFrame
        self._container = av.open(str(path), mode="w")
        rate = Fraction(fps).limit_denominator(1001)
        stream = self._container.add_stream(codec, rate=rate)
        if not isinstance(stream, VideoStream):
            raise ValueError(f"{codec!r} is not a video codec")
        self._stream = stream
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        opts: dict[str, object] = {"crf": str(crf), "preset": preset}
        if gop is not None:
            opts["g"] = str(gop)
        self._stream.options = opts
        self._stream.codec_context.time_base = 1 / rate
        self._n = 0
        self.width, self.height = width, height

    def write(self, frame: U8) -> None:
        if frame.shape != (self.height, self.width, 3):
            raise ValueError(f"frame shape {frame.shape} != {(self.height, self.width, 3)}")
        vf = self._vframe.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self._n
        self._n += 1
        for packet in self._stream.encode(vf):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_video(path: str | Path) -> Iterator[U8]:
    """Decode every frame of a video file as RGB."""
    import av  # noqa: PLC0415 (optional dependency, see module docstring)

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)


def h264_roundtrip(frames: Iterable[U8], crf: int = 28, fps: float = 30.0) -> list[U8]:
    """Encode with libx264 and decode again, in memory: frames as a decoder would see them."""
    import av  # noqa: PLC0415 (optional dependency, see module docstring)
    from av.video.stream import VideoStream  # noqa: PLC0415

    items = list(frames)
    if not items:
        return []
    h, w = items[0].shape[:2]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="h264") as out:
        rate = Fraction(fps).limit_denominator(1001)
        st = out.add_stream("libx264", rate=rate)
        assert isinstance(st, VideoStream)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
        for i, f in enumerate(items):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts = i
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    buf.seek(0)
    with av.open(buf, mode="r", format="h264") as inp:
        return [
            np.asarray(fr.to_ndarray(format="rgb24"), dtype=np.uint8) for fr in inp.decode(video=0)
        ]


def write_png(path: str | Path, image: U8) -> None:
    """Minimal RGB PNG writer (zlib only), for looking at frames without extra packages."""
    h, w = image.shape[:2]
    raw = np.empty((h, w * 3 + 1), np.uint8)
    raw[:, 0] = 0
    raw[:, 1:] = image.reshape(h, w * 3)

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)
