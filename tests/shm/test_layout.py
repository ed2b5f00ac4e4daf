"""The header/slot codec, pixel-format geometry and names: property-based where it pays."""

from __future__ import annotations

import contextlib
import struct
import zlib

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from its_camera_ai import shm
from its_camera_ai.shm import layout as L

u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def headers(draw: st.DrawFn) -> L.Header:
    slots = draw(st.integers(L.MIN_SLOTS, L.MAX_SLOTS))
    max_bytes = draw(st.integers(1, L.MAX_FRAME_BYTES))
    readers = draw(st.integers(1, L.MAX_READERS_LIMIT))
    entries = draw(st.lists(st.tuples(u64, u64, u64, u64), min_size=readers, max_size=readers))
    return L.Header(
        slot_count=slots,
        max_frame_bytes=max_bytes,
        max_readers=readers,
        created_ns=draw(u64),
        writer_pid=draw(u64),
        writer_start=draw(u64),
        writer_pidns=draw(u64),
        writer_epoch=draw(u64),
        writer_state=draw(st.sampled_from(list(L.WriterState))),
        heartbeat_ns=draw(u64),
        last_seq=draw(u64),
        reader_gen=draw(u64),
        readers=tuple(entries),
    )


@st.composite
def geometries(draw: st.DrawFn) -> L.Geometry:
    fmt = draw(st.sampled_from(list(shm.PixelFormat)))
    w = draw(st.integers(1, 4096))
    h = draw(st.integers(1, 4096))
    if fmt.planar:
        w, h = w + w % 2, h + h % 2
    pad = draw(st.integers(0, 64))
    stride = L.min_stride(fmt, w) + (pad + pad % 2 if fmt.planar else pad)
    return L.Geometry.of(fmt, w, h, stride)


traces = st.none() | st.builds(
    L.TraceContext,
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=8, max_size=8),
    st.integers(0, 255),
).filter(lambda t: t is None or t.trace_id != bytes(16) or t.span_id != bytes(8))


@given(headers())
def test_header_round_trip(h: L.Header) -> None:
    page = L.encode_header(h)
    assert len(page) == L.HEADER_SIZE
    assert L.decode_header(page) == h
    assert L.decode_header(page, object_size=h.total_size) == h


@given(st.binary(max_size=5000))
def test_garbage_header_raises_ring_corrupt_only(data: bytes) -> None:
    with pytest.raises(shm.RingCorrupt):
        L.decode_header(data)


@settings(max_examples=300)
@given(headers(), st.integers(0, L.HEADER_SIZE - 1), st.integers(1, 255))
@example(L.Header(slot_count=2, max_frame_bytes=1, max_readers=1), 60, 1)  # reserved bytes
def test_flipped_byte_is_detected_or_harmless(h: L.Header, pos: int, xor: int) -> None:
    page = bytearray(L.encode_header(h))
    page[pos] ^= xor
    try:
        got = L.decode_header(bytes(page))
    except shm.RingCorrupt:
        return
    # Only the dynamic fields (which the writer changes all the time) may differ, and the
    # static geometry that offsets are computed from never does.
    assert pos >= L.CACHE_LINE
    assert (got.slot_count, got.max_frame_bytes, got.max_readers) == (
        h.slot_count,
        h.max_frame_bytes,
        h.max_readers,
    )


def _valid_page() -> bytearray:
    return bytearray(L.encode_header(L.Header(slot_count=4, max_frame_bytes=1000, max_readers=4)))


def test_wrong_magic_is_a_foreign_object() -> None:
    page = _valid_page()
    page[0:8] = b"NOTARING"
    with pytest.raises(shm.RingCorrupt, match="magic"):
        L.decode_header(bytes(page))


def test_other_version_is_incompatible() -> None:
    page = _valid_page()
    struct.pack_into("<I", page, 8, 2)
    with pytest.raises(shm.IncompatibleVersion, match="version 2"):
        L.decode_header(bytes(page))


def test_inconsistent_geometry_with_valid_checksum_is_corrupt() -> None:
    page = _valid_page()
    struct.pack_into("<Q", page, 24, 12345)  # slot_size
    struct.pack_into("<I", page, 56, zlib.crc32(bytes(page[:56])))
    with pytest.raises(shm.RingCorrupt, match="inconsistent"):
        L.decode_header(bytes(page))


def test_truncated_object_is_corrupt() -> None:
    page = bytes(_valid_page())
    with pytest.raises(shm.RingCorrupt, match="truncated"):
        L.decode_header(page[:100])
    with pytest.raises(shm.RingCorrupt, match="truncated"):
        L.decode_header(page, object_size=L.HEADER_SIZE)


@given(st.integers(0, 2**64 - 1), u64, u64, i64, geometries(), traces)
def test_slot_meta_round_trip(
    seq: int, commit: int, capture: int, pts: int, g: L.Geometry, trace: L.TraceContext | None
) -> None:
    m = L.SlotMeta(seq, commit, capture, pts, g.nbytes, g, trace)
    assert L.decode_slot_meta(L.encode_slot_meta(m), max_frame_bytes=g.nbytes) == m


@given(st.binary(max_size=200), st.integers(1, 2**31))
def test_garbage_slot_meta_raises_ring_corrupt_only(data: bytes, cap: int) -> None:
    try:
        m = L.decode_slot_meta(data, cap)
    except shm.RingCorrupt:
        return
    assert m.payload_len == m.geometry.nbytes <= cap


@given(
    st.integers(-5, 300), st.integers(-5, 70000), st.integers(-5, 70000), st.integers(-5, 1 << 21)
)
def test_geometry_validation_never_crashes(fmt: int, w: int, h: int, stride: int) -> None:
    try:
        g = L.Geometry.of(fmt, w, h, stride)
    except shm.InvalidFrame:
        return
    assert g.nbytes >= w * h


@pytest.mark.parametrize(
    ("fmt", "w", "h", "shape", "nbytes"),
    [
        (shm.PixelFormat.RGB24, 640, 360, (360, 640, 3), 640 * 360 * 3),
        (shm.PixelFormat.BGR24, 4, 2, (2, 4, 3), 24),
        (shm.PixelFormat.RGBA, 4, 2, (2, 4, 4), 32),
        (shm.PixelFormat.GRAY8, 4, 2, (2, 4), 8),
        (shm.PixelFormat.YUV420P, 1920, 1080, (1620, 1920), 1920 * 1080 * 3 // 2),
        (shm.PixelFormat.NV12, 8, 4, (6, 8), 48),
    ],
)
def test_format_geometry(
    fmt: shm.PixelFormat, w: int, h: int, shape: tuple[int, ...], nbytes: int
) -> None:
    g = L.Geometry.of(fmt, w, h)
    assert g.nbytes == nbytes == shm.frame_bytes(fmt, w, h)
    buf = bytearray(nbytes)
    assert L.array_view(buf, 0, g).shape == shape


@pytest.mark.parametrize(
    ("fmt", "w", "h", "stride"),
    [
        (shm.PixelFormat.YUV420P, 3, 2, None),  # odd width
        (shm.PixelFormat.NV12, 4, 3, None),  # odd height
        (shm.PixelFormat.RGB24, 10, 10, 29),  # stride below width * 3
        (shm.PixelFormat.RGB24, 0, 10, None),
        (shm.PixelFormat.GRAY8, 70000, 1, None),
    ],
)
def test_impossible_geometry_is_rejected(
    fmt: shm.PixelFormat, w: int, h: int, stride: int | None
) -> None:
    with pytest.raises(shm.InvalidFrame):
        L.Geometry.of(fmt, w, h, stride)


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8), st.integers(0, 255))
def test_traceparent_round_trip(tid: bytes, sid: bytes, flags: int) -> None:
    t = shm.TraceContext(tid, sid, flags)
    assert shm.TraceContext.from_traceparent(t.traceparent) == t


@given(st.text(max_size=80))
def test_bad_traceparent_is_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        shm.TraceContext.from_traceparent(text)


@pytest.mark.parametrize("name", ["cam-1", "a", "x_9-y", "0" * 64])
def test_valid_names(name: str) -> None:
    assert shm.validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Cam", "a/b", "a.b", "../x", "-a", "_a", "a b", "x" * 65, "é", "a\0"]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(shm.InvalidRingName):
        shm.validate_name(name)
    with pytest.raises(shm.InvalidRingName):
        shm.create(name, max_frame_bytes=100)
    with pytest.raises(shm.InvalidRingName):
        shm.attach(name)


def test_slot_payloads_are_page_aligned() -> None:
    for cap in (1, 4095, 4096, 4097, 6_220_800):
        assert L.slot_size_for(cap) % L.PAGE == 0
        assert (L.HEADER_SIZE + L.SLOT_META_SIZE) % L.PAGE == 0
    assert np.dtype(np.uint64).itemsize == 8


def test_pixel_formats_one_table_for_configuration_ffmpeg_and_the_api() -> None:
    from typing import get_args

    from its.common.v1 import frame_pb2
    from its_camera_ai.common import PixelFormatName

    assert [shm.PixelFormat.from_name(name) for name in get_args(PixelFormatName)] == list(
        shm.PixelFormat
    )
    assert shm.PixelFormat.GRAY8.ffmpeg_name == "gray"
    assert shm.PixelFormat.NV12.ffmpeg_name == "nv12"
    for value in frame_pb2.PixelFormat.values():
        name = frame_pb2.PixelFormat.Name(value).removeprefix("PIXEL_FORMAT_")
        if name != "UNSPECIFIED":
            assert shm.PixelFormat.from_name(name.lower()).name == name
    with pytest.raises(KeyError):
        shm.PixelFormat.from_name("yuyv422")
