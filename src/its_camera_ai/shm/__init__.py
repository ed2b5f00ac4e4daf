"""Zero-copy shared-memory frame rings: one POSIX shm object per camera stream.

A single writer (the decoder) commits frames into fixed slots without ever blocking; any
number of readers (inference) take numpy/torch views of them in other processes::

    from its_camera_ai import shm

    with shm.create("cam-7", slots=8, max_frame_bytes=shm.frame_bytes(
            shm.PixelFormat.RGB24, 1920, 1080)) as writer:
        writer.write(rgb, 1920, 1080, shm.PixelFormat.RGB24, pts=pts)

    reader = shm.attach("cam-7")
    frame = reader.read_latest(timeout=1.0)      # or read_next() for every frame
    if frame is not None:
        with frame:                              # raises FrameOverwritten if torn
            batch.append(frame.tensor())

Layout, seqlock protocol and memory-ordering assumptions: ``_layout.py``, ``_mapping.py``;
notification scheme: ``_notify.py``. Operators list and clean rings with
``its-camera-ai shm list|clean`` (``_tool.py``).
"""

from __future__ import annotations

from its_camera_ai.shm._cuda import cuda_available
from its_camera_ai.shm._errors import (
    FrameOverwritten,
    FrameTooLarge,
    IncompatibleVersion,
    InvalidFrame,
    InvalidRingName,
    NoWriter,
    ReadersFull,
    RingClosed,
    RingCorrupt,
    RingExists,
    RingNotFound,
    ShmError,
    WriterDead,
)
from its_camera_ai.shm._frame import Frame
from its_camera_ai.shm._mapping import Liveness, WriterStatus
from its_camera_ai.shm._metrics import ReaderStats, WriterStats, enable_metrics
from its_camera_ai.shm._reader import RingReader, attach
from its_camera_ai.shm._slot import WriteSlot
from its_camera_ai.shm._system import SHM_DIR, validate_name
from its_camera_ai.shm._tool import RingInfo, clean_rings, list_rings, main
from its_camera_ai.shm._writer import RingWriter, create
from its_camera_ai.shm.layout import Geometry, PixelFormat, TraceContext, frame_bytes

__all__ = [
    "SHM_DIR",
    "Frame",
    "FrameOverwritten",
    "FrameTooLarge",
    "Geometry",
    "IncompatibleVersion",
    "InvalidFrame",
    "InvalidRingName",
    "Liveness",
    "NoWriter",
    "PixelFormat",
    "ReaderStats",
    "ReadersFull",
    "RingClosed",
    "RingCorrupt",
    "RingExists",
    "RingInfo",
    "RingNotFound",
    "RingReader",
    "RingWriter",
    "ShmError",
    "TraceContext",
    "WriteSlot",
    "WriterDead",
    "WriterStats",
    "WriterStatus",
    "attach",
    "clean_rings",
    "create",
    "cuda_available",
    "enable_metrics",
    "frame_bytes",
    "list_rings",
    "main",
    "validate_name",
]
