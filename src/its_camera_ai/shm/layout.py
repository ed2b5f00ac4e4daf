"""Binary layout of a ring (version 1): offsets, the header/slot codec and pixel formats.

Public: this is the ring's wire format, for readers in other processes and languages and
for tests that write corrupt headers on purpose; code that just reads and writes frames
uses the package's ``create``/``attach``.

Everything is addressed by offset from the start of the object, so processes that map it
at different addresses agree. Little-endian, fields 8-byte aligned; each field that one
side writes while the other polls sits on its own 64-byte cache line so the writer's
stores do not invalidate the line readers spin on.

    0     header (one page)
            line 0  static geometry + CRC-32 (immutable after creation)
            line 1  writer identity: pid, start ticks, pid namespace, epoch, state
            line 2  heartbeat (CLOCK_MONOTONIC ns)
            line 3  last committed sequence
            line 4  reader-table generation
            512     reader table: entries of 64 bytes (pid, start ticks, attach ns, pid ns)
    4096  slot 0: one page of metadata (line 0 seqlock counter, line 1.. frame fields),
          then the payload, page aligned, rounded up to whole pages
    ...   slot i at HEADER_SIZE + i * slot_size
"""

from __future__ import annotations

import enum
import mmap
import struct
import zlib
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

import numpy as np

from its_camera_ai.shm._errors import IncompatibleVersion, InvalidFrame, RingCorrupt

__all__ = [
    "CACHE_LINE",
    "HEADER_SIZE",
    "IDX_HEARTBEAT",
    "IDX_LAST_SEQ",
    "IDX_READER_GEN",
    "IDX_WRITER_EPOCH",
    "IDX_WRITER_PID",
    "IDX_WRITER_PIDNS",
    "IDX_WRITER_START",
    "IDX_WRITER_STATE",
    "MAGIC",
    "MAX_FRAME_BYTES",
    "MAX_READERS_LIMIT",
    "MAX_SLOTS",
    "MIN_SLOTS",
    "OFF_HEARTBEAT",
    "OFF_LAST_SEQ",
    "OFF_READERS",
    "OFF_READER_GEN",
    "OFF_SLOT_META",
    "OFF_WRITER",
    "PAGE",
    "READER_ENTRY",
    "SLOT_META",
    "SLOT_META_SIZE",
    "VERSION",
    "Buffer",
    "Geometry",
    "Header",
    "PixelFormat",
    "SlotMeta",
    "TraceContext",
    "WriterState",
    "array_view",
    "check_geometry",
    "check_ring_geometry",
    "checked_geometry",
    "decode_header",
    "decode_slot_meta",
    "encode_header",
    "encode_slot_meta",
    "encode_static",
    "frame_bytes",
    "meta_from_tuple",
    "min_stride",
    "plane_views",
    "round_up",
    "slot_size_for",
    "total_size_for",
    "trace_from",
]

# Views must be cut from np.frombuffer arrays of a mapping, never from the mmap itself
# (see RingMapping); raw buffers are accepted for the codec and tests.
Buffer: TypeAlias = np.ndarray | mmap.mmap | bytearray | bytes | memoryview

MAGIC = b"ITSRING\x00"
VERSION = 1
PAGE = 4096
CACHE_LINE = 64
HEADER_SIZE = PAGE
SLOT_META_SIZE = PAGE
MIN_SLOTS = 2
MAX_SLOTS = 4096
MAX_FRAME_BYTES = 1 << 30

# Header offsets.
OFF_WRITER = 64
OFF_HEARTBEAT = 128
OFF_LAST_SEQ = 192
OFF_READER_GEN = 256
OFF_READERS = 512
READER_ENTRY = 64
MAX_READERS_LIMIT = (HEADER_SIZE - OFF_READERS) // READER_ENTRY

# Index of each hot header field in a uint64 view of the header page.
IDX_WRITER_PID = OFF_WRITER // 8
IDX_WRITER_START = IDX_WRITER_PID + 1
IDX_WRITER_PIDNS = IDX_WRITER_PID + 2
IDX_WRITER_EPOCH = IDX_WRITER_PID + 3
IDX_WRITER_STATE = IDX_WRITER_PID + 4
IDX_HEARTBEAT = OFF_HEARTBEAT // 8
IDX_LAST_SEQ = OFF_LAST_SEQ // 8
IDX_READER_GEN = OFF_READER_GEN // 8

# Slot offsets (relative to the slot start).
OFF_SLOT_META = 64

_STATIC = struct.Struct("<8sIIIIQQQQ")  # 56 bytes, CRC-32 of them at 56, then 4 zero bytes
_CRC = struct.Struct("<I")
_WRITER = struct.Struct("<QQQQQ")
_U64 = struct.Struct("<Q")
_READER = struct.Struct("<QQQQ")  # pid, start ticks, attach ns (wall), pid namespace
SLOT_META = struct.Struct("<QQQqQIIII16s8sB")


class WriterState(enum.IntEnum):
    """What the header says about its writer (liveness is judged separately)."""

    NONE = 0
    RUNNING = 1
    CLOSED = 2


class PixelFormat(enum.IntEnum):
    """Payload layouts. Packed formats are (height, width, channels) rows of `stride` bytes;
    planar 4:2:0 formats hold a full-resolution Y plane then chroma at half resolution."""

    RGB24 = 1
    BGR24 = 2
    RGBA = 3
    GRAY8 = 4
    YUV420P = 5
    NV12 = 6

    @property
    def channels(self) -> int:
        return _CHANNELS.get(self, 1)

    @property
    def planar(self) -> bool:
        return self in (PixelFormat.YUV420P, PixelFormat.NV12)

    @property
    def ffmpeg_name(self) -> str:
        """FFmpeg's (and PyAV's) name of this layout."""
        return "gray" if self is PixelFormat.GRAY8 else self.name.lower()

    @classmethod
    def from_name(cls, name: str) -> PixelFormat:
        """The format of a lower-case name ("rgb24"), as configuration and the API's enum
        (``PIXEL_FORMAT_RGB24``) spell it; KeyError for an unknown one."""
        return cls[name.upper()]


_CHANNELS = {PixelFormat.RGB24: 3, PixelFormat.BGR24: 3, PixelFormat.RGBA: 4}
_FORMATS = {f.value: f for f in PixelFormat}


def round_up(n: int, to: int = PAGE) -> int:
    return (n + to - 1) // to * to


def slot_size_for(max_frame_bytes: int) -> int:
    return SLOT_META_SIZE + round_up(max_frame_bytes)


def total_size_for(slot_count: int, max_frame_bytes: int) -> int:
    return HEADER_SIZE + slot_count * slot_size_for(max_frame_bytes)


def min_stride(fmt: PixelFormat, width: int) -> int:
    return width * fmt.channels


def frame_bytes(fmt: PixelFormat, width: int, height: int, stride: int | None = None) -> int:
    """Payload size of a frame; raises InvalidFrame when the geometry is impossible."""
    stride = min_stride(fmt, width) if stride is None else stride
    check_geometry(fmt, width, height, stride)
    if fmt.planar:
        return stride * height * 3 // 2
    return stride * height


def check_geometry(fmt: PixelFormat, width: int, height: int, stride: int) -> None:
    if width <= 0 or height <= 0 or width > 65535 or height > 65535:
        raise InvalidFrame(f"frame size {width}x{height} out of range")
    if stride < min_stride(fmt, width) or stride > 1 << 20:
        raise InvalidFrame(f"stride {stride} invalid for {fmt.name} width {width}")
    if fmt.planar and (width % 2 or height % 2 or stride % 2):
        raise InvalidFrame(f"{fmt.name} needs even width, height and stride")


class Geometry(NamedTuple):
    """Pixel format and dimensions of one frame; `stride` is the byte pitch of a row of the
    first plane (chroma planes of YUV420P use stride / 2)."""

    format: PixelFormat
    width: int
    height: int
    stride: int

    @classmethod
    def of(
        cls, fmt: PixelFormat | int, width: int, height: int, stride: int | None = None
    ) -> Geometry:
        pf = _FORMATS.get(int(fmt))
        if pf is None:
            raise InvalidFrame(f"unknown pixel format {fmt}")
        st = min_stride(pf, width) if stride is None else stride
        check_geometry(pf, width, height, st)
        return cls(pf, width, height, st)

    @property
    def nbytes(self) -> int:
        return frame_bytes(self.format, self.width, self.height, self.stride)


def array_view(buf: Buffer, offset: int, g: Geometry) -> np.ndarray:
    """A numpy view of a payload: (h, w, c) for packed, (h, w) for GRAY8, and for planar
    formats the raw (h * 3 / 2, stride) byte image (what cv2 I420/NV12 converters take)."""
    fmt, width, height, stride = g
    if fmt.planar:
        shape: tuple[int, ...] = (height * 3 // 2, stride)
        strides: tuple[int, ...] = (stride, 1)
    elif fmt is PixelFormat.GRAY8:
        shape, strides = (height, width), (stride, 1)
    else:
        c = fmt.channels
        shape, strides = (height, width, c), (stride, c, 1)
    return np.ndarray(shape, dtype=np.uint8, buffer=buf, offset=offset, strides=strides)


def plane_views(buf: Buffer, offset: int, g: Geometry) -> tuple[np.ndarray, ...]:
    """Per-plane views cropped to the visible width: (Y, U, V) for YUV420P, (Y, UV) for NV12
    with UV shaped (h/2, w/2, 2), and the single packed plane otherwise."""
    fmt, width, height, stride = g
    if not fmt.planar:
        return (array_view(buf, offset, g),)
    y = np.ndarray((height, width), np.uint8, buf, offset, (stride, 1))
    c_off = offset + stride * height
    hh, hw = height // 2, width // 2
    if fmt is PixelFormat.NV12:
        uv = np.ndarray((hh, hw, 2), np.uint8, buf, c_off, (stride, 2, 1))
        return (y, uv)
    cs = stride // 2
    u = np.ndarray((hh, hw), np.uint8, buf, c_off, (cs, 1))
    v = np.ndarray((hh, hw), np.uint8, buf, c_off + cs * hh, (cs, 1))
    return (y, u, v)


@dataclass(frozen=True, slots=True)
class TraceContext:
    """W3C trace context of the span that produced a frame (carried in its slot)."""

    trace_id: bytes
    span_id: bytes
    flags: int = 1

    def __post_init__(self) -> None:
        if len(self.trace_id) != 16 or len(self.span_id) != 8 or not 0 <= self.flags <= 255:
            raise ValueError("trace_id must be 16 bytes, span_id 8 bytes, flags 0..255")

    @classmethod
    def from_traceparent(cls, value: str) -> TraceContext:
        parts = value.strip().split("-")
        if len(parts) != 4 or parts[0] != "00" or len(parts[1]) != 32 or len(parts[2]) != 16:
            raise ValueError(f"not a version-00 traceparent: {value!r}")
        try:
            return cls(bytes.fromhex(parts[1]), bytes.fromhex(parts[2]), int(parts[3], 16))
        except ValueError as exc:
            raise ValueError(f"not a version-00 traceparent: {value!r}") from exc

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id.hex()}-{self.span_id.hex()}-{self.flags:02x}"


_NO_TRACE = (bytes(16), bytes(8), 0)


@dataclass(frozen=True, slots=True)
class Header:
    """Decoded ring header (static geometry plus a snapshot of the dynamic fields)."""

    slot_count: int
    max_frame_bytes: int
    max_readers: int
    created_ns: int = 0
    writer_pid: int = 0
    writer_start: int = 0
    writer_pidns: int = 0
    writer_epoch: int = 0
    writer_state: int = WriterState.NONE
    heartbeat_ns: int = 0
    last_seq: int = 0
    reader_gen: int = 0
    readers: tuple[tuple[int, int, int, int], ...] = ()
    version: int = VERSION

    @property
    def slot_size(self) -> int:
        return slot_size_for(self.max_frame_bytes)

    @property
    def total_size(self) -> int:
        return total_size_for(self.slot_count, self.max_frame_bytes)


def check_ring_geometry(slot_count: int, max_frame_bytes: int, max_readers: int) -> None:
    if not MIN_SLOTS <= slot_count <= MAX_SLOTS:
        raise ValueError(f"slot count must be {MIN_SLOTS}..{MAX_SLOTS}, got {slot_count}")
    if not 1 <= max_frame_bytes <= MAX_FRAME_BYTES:
        raise ValueError(f"max frame bytes must be 1..{MAX_FRAME_BYTES}, got {max_frame_bytes}")
    if not 1 <= max_readers <= MAX_READERS_LIMIT:
        raise ValueError(f"max readers must be 1..{MAX_READERS_LIMIT}, got {max_readers}")


def encode_static(h: Header) -> bytes:
    check_ring_geometry(h.slot_count, h.max_frame_bytes, h.max_readers)
    body = _STATIC.pack(
        MAGIC,
        h.version,
        HEADER_SIZE,
        h.slot_count,
        h.max_readers,
        h.slot_size,
        h.max_frame_bytes,
        h.total_size,
        h.created_ns,
    )
    return body + _CRC.pack(zlib.crc32(body)) + bytes(4)


def encode_header(h: Header) -> bytes:
    """The whole header page; the inverse of decode_header."""
    page = bytearray(HEADER_SIZE)
    page[0:CACHE_LINE] = encode_static(h)
    _WRITER.pack_into(
        page,
        OFF_WRITER,
        h.writer_pid,
        h.writer_start,
        h.writer_pidns,
        h.writer_epoch,
        h.writer_state,
    )
    _U64.pack_into(page, OFF_HEARTBEAT, h.heartbeat_ns)
    _U64.pack_into(page, OFF_LAST_SEQ, h.last_seq)
    _U64.pack_into(page, OFF_READER_GEN, h.reader_gen)
    if len(h.readers) > h.max_readers:
        raise ValueError("more reader entries than max_readers")
    for i, entry in enumerate(h.readers):
        _READER.pack_into(page, OFF_READERS + i * READER_ENTRY, *entry)
    return bytes(page)


def decode_header(buf: bytes | bytearray | memoryview, object_size: int | None = None) -> Header:
    """Validate and decode a header page. Raises RingCorrupt (or IncompatibleVersion) with
    the reason for anything that is not a version-1 ring header; never anything else."""
    if len(buf) < HEADER_SIZE:
        raise RingCorrupt(f"truncated: {len(buf)} bytes, a ring header needs {HEADER_SIZE}")
    magic, version, hsize, slots, readers, slot_size, max_bytes, total, created = (
        _STATIC.unpack_from(buf, 0)
    )
    if magic != MAGIC:
        raise RingCorrupt(f"bad magic {bytes(magic)!r}: not an ITS ring")
    if version != VERSION:
        raise IncompatibleVersion(f"ring layout version {version}, this library reads {VERSION}")
    (crc,) = _CRC.unpack_from(buf, _STATIC.size)
    if crc != zlib.crc32(bytes(buf[0 : _STATIC.size])):
        raise RingCorrupt("header checksum mismatch")
    if any(buf[_STATIC.size + _CRC.size : CACHE_LINE]):
        raise RingCorrupt("reserved header bytes are not zero")
    try:
        check_ring_geometry(slots, max_bytes, readers)
    except ValueError as exc:
        raise RingCorrupt(f"bad geometry: {exc}") from None
    if hsize != HEADER_SIZE or slot_size != slot_size_for(max_bytes):
        raise RingCorrupt("inconsistent header or slot size")
    if total != total_size_for(slots, max_bytes):
        raise RingCorrupt("inconsistent total size")
    if object_size is not None and object_size < total:
        raise RingCorrupt(f"truncated: object is {object_size} bytes, header declares {total}")
    pid, start, pidns, epoch, state = _WRITER.unpack_from(buf, OFF_WRITER)
    if state not in WriterState._value2member_map_:
        raise RingCorrupt(f"bad writer state {state}")
    entries = tuple(
        _READER.unpack_from(buf, OFF_READERS + i * READER_ENTRY) for i in range(readers)
    )
    return Header(
        slot_count=slots,
        max_frame_bytes=max_bytes,
        max_readers=readers,
        created_ns=created,
        writer_pid=pid,
        writer_start=start,
        writer_pidns=pidns,
        writer_epoch=epoch,
        writer_state=state,
        heartbeat_ns=_U64.unpack_from(buf, OFF_HEARTBEAT)[0],
        last_seq=_U64.unpack_from(buf, OFF_LAST_SEQ)[0],
        reader_gen=_U64.unpack_from(buf, OFF_READER_GEN)[0],
        readers=entries,
        version=version,
    )


@dataclass(frozen=True, slots=True)
class SlotMeta:
    """Per-frame metadata stored after a slot's seqlock counter."""

    sequence: int
    commit_ns: int
    capture_ns: int
    pts: int
    payload_len: int
    geometry: Geometry
    trace: TraceContext | None = None

    def pack(self) -> tuple[object, ...]:
        tid, sid, flags = _NO_TRACE
        if self.trace is not None:
            tid, sid, flags = self.trace.trace_id, self.trace.span_id, self.trace.flags
        fmt, width, height, stride = self.geometry
        return (
            self.sequence,
            self.commit_ns,
            self.capture_ns,
            self.pts,
            self.payload_len,
            width,
            height,
            stride,
            int(fmt),
            tid,
            sid,
            flags,
        )


def encode_slot_meta(m: SlotMeta) -> bytes:
    return SLOT_META.pack(*m.pack())


def checked_geometry(
    fmt: int, width: int, height: int, stride: int, *, payload_len: int, max_frame_bytes: int
) -> Geometry:
    """Validate a committed slot's geometry (cheap: runs once per frame handed out)."""
    pf = _FORMATS.get(fmt)
    if pf is None:
        raise RingCorrupt(f"bad slot metadata: unknown pixel format {fmt}")
    try:
        expected = frame_bytes(pf, width, height, stride)
    except InvalidFrame as exc:
        raise RingCorrupt(f"bad slot metadata: {exc}") from None
    if payload_len != expected or payload_len > max_frame_bytes:
        raise RingCorrupt(f"bad slot payload length {payload_len} (expected {expected})")
    return Geometry(pf, width, height, stride)


def trace_from(trace_id: bytes, span_id: bytes, flags: int) -> TraceContext | None:
    if trace_id == _NO_TRACE[0] and span_id == _NO_TRACE[1]:
        return None
    try:
        return TraceContext(trace_id, span_id, flags)
    except ValueError:
        return None


def meta_from_tuple(t: tuple[Any, ...], max_frame_bytes: int) -> SlotMeta:
    """Build and validate SlotMeta from SLOT_META.unpack output; RingCorrupt if invalid."""
    seq, commit, capture, pts, plen, w, h, stride, fmt, tid, sid, flags = t
    g = checked_geometry(fmt, w, h, stride, payload_len=plen, max_frame_bytes=max_frame_bytes)
    return SlotMeta(seq, commit, capture, pts, plen, g, trace_from(tid, sid, flags))


def decode_slot_meta(buf: bytes | bytearray | memoryview, max_frame_bytes: int) -> SlotMeta:
    if len(buf) < SLOT_META.size:
        raise RingCorrupt(f"truncated slot metadata: {len(buf)} bytes")
    return meta_from_tuple(SLOT_META.unpack_from(buf, 0), max_frame_bytes)
