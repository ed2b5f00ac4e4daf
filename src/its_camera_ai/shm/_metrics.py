"""Counters kept by writers and readers, and their optional Prometheus export.

The hot path only bumps plain integers on the writer/reader object (and, for the handoff
latency, one bisect into fixed buckets). Nothing touches prometheus_client per frame: a
collector registered by `enable_metrics()` reads the live objects at scrape time. Objects
fold their counts into per-ring totals when they close, so exported counters never go
backwards.
"""

from __future__ import annotations

import importlib
import threading
import weakref
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

# Handoff latency buckets, seconds (the budget is 200 us p99; the tail runs to scheduler
# and page-fault territory).
HANDOFF_BUCKETS_S = (
    10e-6,
    25e-6,
    50e-6,
    100e-6,
    200e-6,
    500e-6,
    1e-3,
    2.5e-3,
    5e-3,
    10e-3,
    25e-3,
    100e-3,
)
_BOUNDS_NS = tuple(round(b * 1e9) for b in HANDOFF_BUCKETS_S)


class LatencyHistogram:
    """A fixed-bucket histogram in nanoseconds; counts[i] holds values <= bound i (the last
    entry is +Inf)."""

    __slots__ = ("count", "counts", "sum_ns")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS_NS) + 1)
        self.sum_ns = 0
        self.count = 0

    def observe(self, ns: int) -> None:
        self.counts[bisect_left(_BOUNDS_NS, ns)] += 1
        self.sum_ns += ns
        self.count += 1

    def merge(self, other: LatencyHistogram) -> None:
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.sum_ns += other.sum_ns
        self.count += other.count


@dataclass(slots=True)
class WriterStats:
    frames_written: int = 0
    frames_aborted: int = 0
    bytes_written: int = 0


@dataclass(slots=True)
class ReaderStats:
    frames_read: int = 0
    frames_dropped: int = 0  # sequences this reader never handed out
    overruns: int = 0  # the writer lapped the reader (read_next fell a ring behind)
    torn_reads: int = 0  # a held frame was overwritten (validity check / copy-out failed)
    writer_dead: int = 0  # times WriterDead was raised
    writer_restarts: int = 0  # writer epochs seen change
    handoff: LatencyHistogram = field(default_factory=LatencyHistogram)


class _Tracked(Protocol):
    ring: str

    @property
    def stats(self) -> WriterStats | ReaderStats: ...


_lock = threading.Lock()
_live: weakref.WeakSet[Any] = weakref.WeakSet()
_retired_w: dict[str, WriterStats] = {}
_retired_r: dict[str, ReaderStats] = {}


def track(obj: _Tracked) -> None:
    with _lock:
        _live.add(obj)


def retire(obj: _Tracked) -> None:
    """Fold a closing object's counts into its ring's totals."""
    with _lock:
        if obj not in _live:
            return
        _live.discard(obj)
        _add(obj.ring, obj.stats, _retired_w, _retired_r)


def _add(
    ring: str,
    st: WriterStats | ReaderStats,
    ws: dict[str, WriterStats],
    rs: dict[str, ReaderStats],
) -> None:
    if isinstance(st, WriterStats):
        acc_w = ws.setdefault(ring, WriterStats())
        for f in fields(WriterStats):
            setattr(acc_w, f.name, getattr(acc_w, f.name) + getattr(st, f.name))
        return
    acc = rs.setdefault(ring, ReaderStats())
    for f in fields(ReaderStats):
        if f.name != "handoff":
            setattr(acc, f.name, getattr(acc, f.name) + getattr(st, f.name))
    acc.handoff.merge(st.handoff)


def totals() -> tuple[dict[str, WriterStats], dict[str, ReaderStats]]:
    """Per-ring sums over live and closed writers and readers of this process."""
    with _lock:
        ws = {k: WriterStats() for k in _retired_w}
        rs = {k: ReaderStats() for k in _retired_r}
        for k, w in _retired_w.items():
            _add(k, w, ws, rs)
        for k, r in _retired_r.items():
            _add(k, r, ws, rs)
        for obj in list(_live):
            _add(obj.ring, obj.stats, ws, rs)
    return ws, rs


class ShmCollector:
    """prometheus_client custom collector exporting shm_* metrics labelled by ring."""

    def collect(self) -> Iterator[Any]:
        core = importlib.import_module("prometheus_client.core")
        counter, histogram = core.CounterMetricFamily, core.HistogramMetricFamily
        ws, rs = totals()
        written = counter("shm_frames_written", "Frames committed to the ring", labels=["ring"])
        read = counter("shm_frames_read", "Frames handed to readers", labels=["ring"])
        dropped = counter("shm_frames_dropped", "Frames a reader skipped or lost", labels=["ring"])
        overruns = counter("shm_overruns", "Times the writer lapped a reader", labels=["ring"])
        torn = counter(
            "shm_torn_reads", "Held frames found overwritten on validation", labels=["ring"]
        )
        dead = counter("shm_writer_dead", "Times a reader found the writer dead", labels=["ring"])
        handoff = histogram(
            "shm_handoff_latency_seconds",
            "Writer commit to reader holding the frame",
            labels=["ring"],
        )
        for ring, w in sorted(ws.items()):
            written.add_metric([ring], w.frames_written)
        for ring, r in sorted(rs.items()):
            read.add_metric([ring], r.frames_read)
            dropped.add_metric([ring], r.frames_dropped)
            overruns.add_metric([ring], r.overruns)
            torn.add_metric([ring], r.torn_reads)
            dead.add_metric([ring], r.writer_dead)
            cumulative, buckets = 0, []
            for bound, c in zip((*HANDOFF_BUCKETS_S, float("inf")), r.handoff.counts, strict=True):
                cumulative += c
                buckets.append((_le(bound), cumulative))
            handoff.add_metric([ring], buckets, r.handoff.sum_ns / 1e9)
        yield from (written, read, dropped, overruns, torn, dead, handoff)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


_registered: set[int] = set()


def enable_metrics(registry: Any = None) -> None:
    """Export shm_* metrics through `registry` (default: prometheus_client's global one).
    Idempotent per registry. Needs prometheus-client; the counters are kept regardless."""
    try:
        prometheus = importlib.import_module("prometheus_client")
    except ImportError as exc:
        raise ImportError("shm metrics need the prometheus-client package") from exc
    registry = prometheus.REGISTRY if registry is None else registry
    with _lock:
        if id(registry) in _registered:
            return
        _registered.add(id(registry))
    registry.register(ShmCollector())
