"""Dynamic batching across cameras, as Triton does it: a maximum batch size and delay.

Work arrives in *lanes*: one per camera (frames its ring reader hands over) and one for
``Detect`` calls. A batch starts as soon as ``max_batch_size`` items wait, or when the
oldest waiting item has waited ``max_queue_delay``; it is filled round-robin, one item per
lane per round, starting each batch one lane further on, so a busy camera (or a flood of
``Detect`` calls) cannot starve the others.

Lanes are short and bounded. A camera lane keeps the newest ``lane_depth`` frames: when the
model falls behind, the oldest waiting frame is *superseded* by the newest (the detector
wants the present, never a growing backlog) and counted. The request lane refuses new items
when full (``Detect`` then fails with UNAVAILABLE/OVERLOADED) rather than drop accepted ones.

The batcher's thread is also where the model is loaded and its engine built (``prepare``):
all of torch's work then runs on one thread. OpenMP gives each thread that starts parallel
work a worker pool of its own; with a second pool in the process (the loader's) there are
more OpenMP threads than cores, libgomp stops its workers spinning between layers, and a
YOLOX-nano frame at two threads took 35 ms instead of 14 (docs/benchmarks.md).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["REQUEST_LANE", "BatcherClosed", "DynamicBatcher", "LaneFull", "Work"]

_log = logging.getLogger(__name__)

REQUEST_LANE = ""  # camera ids are never empty


class LaneFull(Exception):
    """The request lane is at its bound."""


class BatcherClosed(Exception):
    """Work offered after close()."""


@dataclass(eq=False, slots=True)
class Work:
    """One frame waiting for the model, and what to do with its result.

    ``done(work, detections, error)`` runs on the batching thread with exactly one of
    ``detections``/``error`` set, or with both None when the work was superseded."""

    lane: str
    pixels: Any  # shm.Frame (zero copy) or a uint8 [H,W,3] RGB array
    score_threshold: float
    done: Callable[[Work, Any, BaseException | None], None]
    enqueued_ns: int = field(default_factory=time.monotonic_ns)
    # Filled in by the runner, for DetectTimings and the per-stage histograms.
    started_ns: int = 0
    preprocess_ns: int = 0
    model_ns: int = 0
    postprocess_ns: int = 0
    batch_size: int = 0


BatchRun = Callable[[list[Work]], None]


class DynamicBatcher:
    """Collects ``Work`` into batches, on one thread of its own.

    ``prepare`` runs first on that thread and returns what runs each batch; ``ready``
    resolves to it, or to the exception ``prepare`` raised (the thread then ends, and the
    owner closes the batcher)."""

    def __init__(
        self,
        prepare: Callable[[], BatchRun],
        *,
        max_batch_size: int,
        max_queue_delay: float,
        lane_depth: int,
        max_requests: int,
        on_superseded: Callable[[Work], None],
    ) -> None:
        self._prepare = prepare
        self.ready: concurrent.futures.Future[BatchRun] = concurrent.futures.Future()
        self._max_batch = max_batch_size
        self._delay_ns = int(max_queue_delay * 1e9)
        self._lane_depth = lane_depth
        self._max_requests = max_requests
        self._on_superseded = on_superseded
        self._lanes: dict[str, collections.deque[Work]] = {}
        self._waiting = 0
        self._next_lane = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="inference-batcher", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._waiting

    def offer(self, work: Work) -> None:
        """Queue a camera frame, pushing out the lane's oldest beyond ``lane_depth``."""
        superseded = None
        with self._cond:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            lane = self._lanes.setdefault(work.lane, collections.deque())
            lane.append(work)
            if len(lane) > self._lane_depth:
                superseded = lane.popleft()
            else:
                self._waiting += 1
            self._cond.notify()
        if superseded is not None:
            self._on_superseded(superseded)

    def submit(self, work: Work) -> None:
        """Queue a request; ``LaneFull`` when ``max_requests`` already wait."""
        with self._cond:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            lane = self._lanes.setdefault(REQUEST_LANE, collections.deque())
            if len(lane) >= self._max_requests:
                raise LaneFull(f"{len(lane)} requests already wait for the model")
            lane.append(work)
            self._waiting += 1
            self._cond.notify()

    def drop_lane(self, lane: str) -> None:
        """Forget a camera's lane (its ring went away); its waiting frames are superseded."""
        with self._cond:
            gone = self._lanes.pop(lane, collections.deque())
            self._waiting -= len(gone)
            self._cond.notify()
        for work in gone:
            self._on_superseded(work)

    def _oldest_ns(self) -> int:
        return min(lane[0].enqueued_ns for lane in self._lanes.values() if lane)

    def _take(self) -> list[Work]:
        """Round-robin over the lanes, one item each per round (called with the lock)."""
        names = [name for name, lane in self._lanes.items() if lane]
        start = self._next_lane % len(names)
        self._next_lane += 1
        order = names[start:] + names[:start]
        batch: list[Work] = []
        while len(batch) < self._max_batch:
            took = False
            for name in order:
                lane = self._lanes[name]
                if lane and len(batch) < self._max_batch:
                    batch.append(lane.popleft())
                    took = True
            if not took:
                break
        self._waiting -= len(batch)
        return batch

    def _next_batch(self) -> list[Work] | None:
        with self._cond:
            while True:
                while not self._closed and self._waiting == 0:
                    self._cond.wait()
                if self._closed:
                    return None
                deadline = self._oldest_ns() + self._delay_ns
                while not self._closed and 0 < self._waiting < self._max_batch:
                    left = deadline - time.monotonic_ns()
                    if left <= 0:
                        break
                    self._cond.wait(left / 1e9)
                if self._closed:
                    return None
                # drop_lane may have emptied every lane while we waited: wait afresh.
                if self._waiting:
                    return self._take()

    def _loop(self) -> None:
        if not self.ready.set_running_or_notify_cancel():
            return  # the owner stopped waiting (cancelled) before this thread began
        try:
            run_batch = self._prepare()
        except BaseException as exc:  # for whoever waits on ready, not lost on this thread
            self.ready.set_exception(exc)
            return
        self.ready.set_result(run_batch)
        while (batch := self._next_batch()) is not None:
            try:
                run_batch(batch)
            except Exception:  # the runner reports per item; this is a bug in it
                _log.exception("batch runner raised", extra={"batch_size": len(batch)})

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the batch in progress; waiting work is superseded."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            left = [work for lane in self._lanes.values() for work in lane]
            self._lanes.clear()
            self._waiting = 0
        for work in left:
            self._on_superseded(work)
