"""Writing and reading in one process: formats, reading modes, overruns, torn frames."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from its_camera_ai import shm

from ._procs import FRAME_BYTES, HEIGHT, WIDTH, check_pattern, pattern

PF = shm.PixelFormat


@pytest.fixture
def pair(ring_name: str) -> Iterator[tuple[shm.RingWriter, shm.RingReader]]:
    w = shm.create(ring_name, slots=4, max_frame_bytes=FRAME_BYTES)
    r = shm.attach(ring_name)
    yield w, r
    r.close()
    w.close()


def _write(w: shm.RingWriter, n: int = 1) -> int:
    seq = 0
    for _ in range(n):
        seq = w.write(pattern(w.last_sequence + 1), WIDTH, HEIGHT)
    return seq


# --- pixel formats ----------------------------------------------------------------------


def _planar_source(fmt: PF, w: int, h: int, stride: int, rng: np.random.Generator) -> bytes:
    """An I420/NV12 buffer built plane by plane, independently of the library."""
    y = rng.integers(0, 256, (h, stride), dtype=np.uint8)
    if fmt is PF.NV12:
        uv = rng.integers(0, 256, (h // 2, stride), dtype=np.uint8)
        return y.tobytes() + uv.tobytes()
    u = rng.integers(0, 256, (h // 2, stride // 2), dtype=np.uint8)
    v = rng.integers(0, 256, (h // 2, stride // 2), dtype=np.uint8)
    return y.tobytes() + u.tobytes() + v.tobytes()


@pytest.mark.parametrize("fmt", list(PF))
@pytest.mark.parametrize("pad", [0, 32])
def test_every_format_round_trips_with_stride(ring_name: str, fmt: PF, pad: int) -> None:
    w_, h_ = 96, 54
    stride = shm.Geometry.of(fmt, w_, h_).stride + pad
    g = shm.Geometry.of(fmt, w_, h_, stride)
    rng = np.random.default_rng(int(fmt) * 100 + pad)
    with shm.create(ring_name, slots=2, max_frame_bytes=g.nbytes) as w, shm.attach(ring_name) as r:
        if fmt.planar:
            raw = _planar_source(fmt, w_, h_, stride, rng)
            w.write(raw, w_, h_, fmt, stride=stride)
            src = np.frombuffer(raw, np.uint8)
        else:
            c = fmt.channels
            shape = (h_, w_, c) if c > 1 else (h_, w_)
            visible = rng.integers(0, 256, shape, dtype=np.uint8)
            w.write(visible, w_, h_, fmt, stride=stride)
        f = r.read_latest(timeout=1)
        assert f is not None
        assert (f.format, f.width, f.height, f.stride, f.nbytes) == (fmt, w_, h_, stride, g.nbytes)
        a = f.array
        assert not a.flags.writeable
        t = f.tensor()
        assert t.dtype == torch.uint8
        assert tuple(t.shape) == a.shape
        assert np.shares_memory(a, t.numpy())
        if fmt.planar:
            assert a.shape == (h_ * 3 // 2, stride)
            assert np.array_equal(a.reshape(-1), src)
            planes = f.planes()
            y = src[: stride * h_].reshape(h_, stride)[:, :w_]
            assert np.array_equal(planes[0], y)
            if fmt is PF.NV12:
                assert planes[1].shape == (h_ // 2, w_ // 2, 2)
                uv = src[stride * h_ :].reshape(h_ // 2, stride)[:, :w_]
                assert np.array_equal(planes[1].reshape(h_ // 2, w_), uv)
            else:
                cs, hh = stride // 2, h_ // 2
                u = src[stride * h_ : stride * h_ + cs * hh].reshape(hh, cs)[:, : w_ // 2]
                v = src[stride * h_ + cs * hh :].reshape(hh, cs)[:, : w_ // 2]
                assert [p.shape for p in planes] == [(h_, w_), (hh, w_ // 2), (hh, w_ // 2)]
                assert np.array_equal(planes[1], u)
                assert np.array_equal(planes[2], v)
        else:
            assert a.strides[0] == stride
            assert np.array_equal(a, visible)
            assert np.array_equal(t.numpy(), visible)
        assert np.array_equal(f.copy(), a)
        del f, a, t


def test_write_from_torch_tensor_and_reserve_in_place(
    pair: tuple[shm.RingWriter, shm.RingReader],
) -> None:
    w, r = pair
    w.write(torch.from_numpy(pattern(1)), WIDTH, HEIGHT)
    with w.reserve(WIDTH, HEIGHT, pts=42) as slot:
        slot.array[...] = pattern(2)
    f = r.read_next(timeout=1)
    assert f is not None
    assert f.sequence == 1
    assert check_pattern(f.array) == (True, 1)
    f = r.read_next(timeout=1)
    assert f is not None
    assert f.sequence == 2
    assert f.pts == 42
    assert check_pattern(f.array) == (True, 2)


def test_aborted_reservation_is_never_published(
    pair: tuple[shm.RingWriter, shm.RingReader],
) -> None:
    w, r = pair
    _write(w)

    def decode_into_slot() -> None:
        with w.reserve(WIDTH, HEIGHT) as slot:
            slot.array[...] = 7
            raise RuntimeError("decoder failed")

    with pytest.raises(RuntimeError):
        decode_into_slot()
    assert w.last_sequence == 1
    assert w.stats.frames_aborted == 1
    assert _write(w) == 2  # the sequence is reused
    seqs = [f.sequence for f in iter(lambda: r.read_next(timeout=0), None)]
    assert seqs == [1, 2]


def test_metadata_and_trace_context(pair: tuple[shm.RingWriter, shm.RingReader]) -> None:
    w, r = pair
    trace = shm.TraceContext.from_traceparent(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    )
    w.write(pattern(1), WIDTH, HEIGHT, pts=-5, capture_ns=123456789, trace=trace)
    f = r.read_latest(timeout=1)
    assert f is not None
    assert (f.pts, f.capture_ns, f.trace) == (-5, 123456789, trace)
    assert 0 <= f.handoff_ns < 5_000_000_000
    w.write(pattern(2), WIDTH, HEIGHT)
    f = r.read_latest(timeout=1)
    assert f is not None
    assert f.trace is None


# --- reading modes, overruns, torn frames -----------------------------------------------


def test_read_next_returns_every_frame_in_order(ring_name: str) -> None:
    with shm.create(ring_name, slots=8, max_frame_bytes=FRAME_BYTES) as w:
        r = shm.attach(ring_name)
        _write(w, 6)
        seqs = []
        while (f := r.read_next(timeout=0)) is not None:
            assert check_pattern(f.array) == (True, f.sequence)
            seqs.append(f.sequence)
        assert seqs == [1, 2, 3, 4, 5, 6]
        assert r.stats.frames_dropped == 0
        assert r.stats.overruns == 0
        r.close()


def test_read_latest_skips_to_newest_and_counts_drops(
    pair: tuple[shm.RingWriter, shm.RingReader],
) -> None:
    w, r = pair
    _write(w)
    f = r.read_latest(timeout=1)
    assert f is not None
    assert f.sequence == 1
    _write(w, 4)
    f = r.read_latest(timeout=1)
    assert f is not None
    assert f.sequence == 5
    assert r.stats.frames_dropped == 3
    assert r.stats.frames_read == 2
    assert r.read_latest(timeout=0) is None


def test_overrun_skips_to_newest_and_counts(pair: tuple[shm.RingWriter, shm.RingReader]) -> None:
    w, r = pair
    _write(w)
    assert r.read_next(timeout=1) is not None
    _write(w, 10)  # 4 slots: the reader has been lapped
    f = r.read_next(timeout=1)
    assert f is not None
    assert f.sequence == 11
    assert r.stats.overruns == 1
    assert r.stats.frames_dropped == 9
    _write(w, 2)  # within the ring: no loss
    assert [r.read_next(timeout=0).sequence, r.read_next(timeout=0).sequence] == [12, 13]  # type: ignore[union-attr]
    assert r.stats.overruns == 1


def test_first_read_returns_newest_existing_frame(ring_name: str) -> None:
    with shm.create(ring_name, slots=4, max_frame_bytes=FRAME_BYTES) as w:
        _write(w, 3)
        with shm.attach(ring_name) as r:
            f = r.read_next(timeout=0)
            assert f is not None
            assert f.sequence == 3
        with shm.attach(ring_name, skip_existing=True) as r:
            assert r.read_next(timeout=0) is None
            _write(w)
            f = r.read_next(timeout=0)
            assert f is not None
            assert f.sequence == 4


def test_held_frame_overwritten_is_detected(pair: tuple[shm.RingWriter, shm.RingReader]) -> None:
    w, r = pair
    _write(w)
    f = r.read_latest(timeout=1)
    assert f is not None
    assert f.is_valid()
    view = f.tensor()
    _write(w, 3)
    assert f.is_valid()  # its slot has not come round yet
    _write(w, 1)
    assert not f.is_valid()
    # The view now shows another frame: exactly what validation exists to catch.
    assert check_pattern(view.numpy()) == (True, 5)
    with pytest.raises(shm.FrameOverwritten):
        f.copy()
    with pytest.raises(shm.FrameOverwritten), f:
        pass
    assert r.stats.torn_reads == 2


def test_frame_overwritten_mid_use_fails_on_context_exit(
    pair: tuple[shm.RingWriter, shm.RingReader],
) -> None:
    w, r = pair
    _write(w)
    f = r.read_latest(timeout=1)
    assert f is not None

    def compute() -> None:
        with f:
            _ = f.array.sum()
            _write(w, 4)  # the writer laps the reader while it "computes"

    with pytest.raises(shm.FrameOverwritten):
        compute()
    assert r.stats.torn_reads == 1
    g = r.read_latest(timeout=1)
    assert g is not None
    with g:  # a frame that stayed valid exits quietly
        _ = g.array.sum()


def test_copy_is_private_and_verified(pair: tuple[shm.RingWriter, shm.RingReader]) -> None:
    w, r = pair
    _write(w)
    f = r.read_latest(timeout=1)
    assert f is not None
    c = f.copy()
    ct = f.copy_tensor()
    assert c.flags.writeable
    assert c.flags.c_contiguous
    _write(w, 4)
    assert check_pattern(c) == (True, 1)
    assert check_pattern(ct.numpy()) == (True, 1)


# --- bad input -------------------------------------------------------------------------


def test_bad_frames_are_rejected(pair: tuple[shm.RingWriter, shm.RingReader]) -> None:
    w, r = pair
    with pytest.raises(shm.FrameTooLarge):
        w.write(bytes(10), 1920, 1080)
    with pytest.raises(shm.InvalidFrame, match="uint8"):
        w.write(np.zeros((HEIGHT, WIDTH, 3), np.float32), WIDTH, HEIGHT)
    with pytest.raises(shm.InvalidFrame, match="shape"):
        w.write(np.zeros((HEIGHT, WIDTH, 4), np.uint8), WIDTH, HEIGHT)
    with pytest.raises(shm.InvalidFrame):
        w.write(bytes(FRAME_BYTES - 1), WIDTH, HEIGHT)
    with pytest.raises(shm.InvalidFrame):
        w.write(bytes(12), 3, 3, PF.YUV420P)
    assert w.last_sequence == 0
    assert w.stats.frames_aborted == 3
    assert r.read_latest(timeout=0) is None
    w.write(bytes(FRAME_BYTES), WIDTH, HEIGHT)  # a flat buffer of the right size is fine
    assert r.read_latest(timeout=0) is not None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"slots": 1}, "slot count"),
        ({"slots": 100000}, "slot count"),
        ({"max_frame_bytes": 0}, "max frame bytes"),
        ({"max_readers": 0}, "max readers"),
        ({"max_readers": 1000}, "max readers"),
    ],
)
def test_bad_ring_geometry(ring_name: str, kwargs: dict[str, int], match: str) -> None:
    args = {"slots": 4, "max_frame_bytes": 100, **kwargs}
    with pytest.raises(ValueError, match=match):
        shm.create(ring_name, **args)
    assert not os.path.exists(f"{shm.SHM_DIR}/its-ring-{ring_name}")


def test_closed_objects_refuse_use(ring_name: str) -> None:
    w = shm.create(ring_name, slots=2, max_frame_bytes=FRAME_BYTES)
    r = shm.attach(ring_name)
    r.close()
    r.close()
    with pytest.raises(shm.ShmError):
        r.read_latest(timeout=0)
    w.close()
    w.close()
    with pytest.raises(shm.RingClosed):
        w.write(pattern(1), WIDTH, HEIGHT)


def test_objects_are_owner_only(ring_name: str) -> None:
    old = os.umask(0)
    try:
        with shm.create(ring_name, slots=2, max_frame_bytes=FRAME_BYTES), shm.attach(ring_name):
            ring = os.stat(f"{shm.SHM_DIR}/its-ring-{ring_name}")
            sem = os.stat(f"{shm.SHM_DIR}/sem.its-ring-{ring_name}.r0")
            assert stat.S_IMODE(ring.st_mode) == 0o600
            assert stat.S_IMODE(sem.st_mode) == 0o600
            assert ring.st_uid == os.getuid()
    finally:
        os.umask(old)


def test_readers_full(ring_name: str) -> None:
    with shm.create(ring_name, slots=2, max_frame_bytes=100, max_readers=2) as w:
        a, b = shm.attach(ring_name), shm.attach(ring_name)
        with pytest.raises(shm.ReadersFull):
            shm.attach(ring_name)
        poll = shm.attach(ring_name, notify=False)  # polling readers need no slot
        b.close()
        c = shm.attach(ring_name)  # a closed reader's slot is reused
        w.write(bytes(100), 100, 1, PF.GRAY8)
        assert w.reader_count == 2
        for r in (a, c, poll):
            assert r.read_latest(timeout=0) is not None
            r.close()


def test_close_unmaps_when_no_frame_is_held(ring_name: str) -> None:
    w = shm.create(ring_name, slots=2, max_frame_bytes=FRAME_BYTES)
    r = shm.attach(ring_name)
    _write(w)
    f = r.read_latest(timeout=1)
    assert f is not None
    f.tensor()
    del f
    r.close()
    assert r._map.slots.closed
    assert r._map._hmap.closed
    w.close()
    assert w._map.slots.closed


def test_frames_outlive_their_reader(
    pair: tuple[shm.RingWriter, shm.RingReader], ring_name: str
) -> None:
    w, _ = pair
    _write(w)
    r = shm.attach(ring_name)
    f = r.read_latest(timeout=1)
    assert f is not None
    t = f.tensor()
    r.close()  # mmap.close() would raise BufferError under live views: must not
    assert check_pattern(t.numpy()) == (True, 1)
    assert f.is_valid()
    del f, t


def test_no_cuda_means_no_pinning(ring_name: str) -> None:
    if shm.cuda_available():
        pytest.skip("CUDA present: covered by test_cuda.py")
    with shm.create(ring_name, slots=2, max_frame_bytes=100, pin_memory=True) as w:
        assert not w.pinned
        with shm.attach(ring_name, pin_memory=True) as r:
            assert not r.pinned
