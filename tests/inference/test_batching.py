"""Dynamic batching: size and delay bounds, round-robin fairness, newest-frame policy."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from its_camera_ai.inference import REQUEST_LANE, DynamicBatcher, LaneFull, Work


class Recorder:
    """A run_batch that records batches and can hold the batching thread."""

    def __init__(self) -> None:
        self.batches: list[list[Work]] = []
        self.superseded: list[Work] = []
        self.release = threading.Event()
        self.release.set()
        self.ran = threading.Event()

    def run(self, batch: list[Work]) -> None:
        self.batches.append(batch)
        self.ran.set()
        self.release.wait(5)

    def supersede(self, work: Work) -> None:
        self.superseded.append(work)


def _work(lane: str, tag: Any = None) -> Work:
    return Work(lane, tag, 0.5, lambda *_: None)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_batcher(recorder: Recorder) -> Iterator[Any]:
    made: list[DynamicBatcher] = []

    def make(prepare: Any = None, **options: Any) -> DynamicBatcher:
        config = {"max_batch_size": 4, "max_queue_delay": 0.05, "lane_depth": 2, "max_requests": 3}
        config.update(options)
        batcher = DynamicBatcher(
            prepare or (lambda: recorder.run), on_superseded=recorder.supersede, **config
        )
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close()


def _wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


def test_a_full_batch_starts_at_once_and_a_partial_one_after_the_delay(
    recorder: Recorder, make_batcher: Any
) -> None:
    batcher = make_batcher(max_queue_delay=10.0, lane_depth=8)
    started = time.monotonic()
    for i in range(4):
        batcher.offer(_work(f"cam-{i}"))
    _wait_for(lambda: len(recorder.batches) == 1)
    assert time.monotonic() - started < 5.0  # not the 10 s delay
    assert len(recorder.batches[0]) == 4

    batcher = make_batcher(max_queue_delay=0.05)
    recorder.batches.clear()
    offered = time.monotonic()
    batcher.offer(_work("cam-a"))
    _wait_for(lambda: len(recorder.batches) == 1)
    waited = time.monotonic() - offered
    assert 0.04 <= waited < 2.0
    assert len(recorder.batches[0]) == 1


def test_batches_take_lanes_round_robin_so_no_camera_starves(
    recorder: Recorder, make_batcher: Any
) -> None:
    batcher = make_batcher(max_batch_size=4, lane_depth=100, max_queue_delay=0.01)
    recorder.release.clear()
    batcher.offer(_work("blocker"))  # occupies the thread while the lanes fill
    recorder.ran.wait(2)
    for i in range(12):
        batcher.offer(_work("busy", i))
    batcher.offer(_work("quiet", "q"))
    batcher.submit(_work(REQUEST_LANE, "r"))
    recorder.release.set()
    _wait_for(lambda: sum(len(b) for b in recorder.batches) == 15)
    second = recorder.batches[1]
    lanes = [w.lane for w in second]
    # The quiet camera and the request ride in the first batch after the flood, not after
    # the busy camera's twelve frames; the busy lane keeps its order.
    assert "quiet" in lanes
    assert REQUEST_LANE in lanes
    busy = [w.pixels for b in recorder.batches for w in b if w.lane == "busy"]
    assert busy == list(range(12))


def test_a_camera_lane_keeps_the_newest_frames(recorder: Recorder, make_batcher: Any) -> None:
    batcher = make_batcher(lane_depth=2, max_queue_delay=0.01)
    recorder.release.clear()
    batcher.offer(_work("blocker"))
    recorder.ran.wait(2)
    for i in range(5):
        batcher.offer(_work("cam", i))
    assert [w.pixels for w in recorder.superseded] == [0, 1, 2]
    recorder.release.set()
    _wait_for(lambda: sum(len(b) for b in recorder.batches) == 3)
    assert [w.pixels for w in recorder.batches[1]] == [3, 4]


def test_the_request_lane_refuses_beyond_its_bound_and_close_supersedes(
    recorder: Recorder, make_batcher: Any
) -> None:
    batcher = make_batcher(max_requests=2, max_queue_delay=0.01)
    recorder.release.clear()
    batcher.offer(_work("blocker"))
    recorder.ran.wait(2)
    batcher.submit(_work(REQUEST_LANE, 1))
    batcher.submit(_work(REQUEST_LANE, 2))
    with pytest.raises(LaneFull):
        batcher.submit(_work(REQUEST_LANE, 3))
    batcher.offer(_work("cam", "c"))
    recorder.release.set()
    batcher.close()
    ran = [w.pixels for b in recorder.batches for w in b]
    gone = [w.pixels for w in recorder.superseded]
    assert sorted(map(str, ran[1:] + gone)) == ["1", "2", "c"]  # each exactly once


def test_dropping_the_only_waiting_lane_leaves_the_batcher_running(
    recorder: Recorder, make_batcher: Any
) -> None:
    # A camera removed while its frame waits out the delay: nothing is left to batch. The
    # batching thread must go back to waiting, not take a batch from no lanes (it died).
    batcher = make_batcher(max_queue_delay=0.3)
    batcher.offer(_work("cam-a", 1))
    time.sleep(0.05)
    batcher.drop_lane("cam-a")
    assert [w.pixels for w in recorder.superseded] == [1]
    time.sleep(0.4)  # past the dropped frame's deadline
    batcher.offer(_work("cam-b", 2))
    _wait_for(lambda: len(recorder.batches) == 1)
    assert [w.pixels for w in recorder.batches[0]] == [2]


def test_prepare_runs_on_the_batching_thread_before_the_first_batch(make_batcher: Any) -> None:
    """The model is loaded where batches run: torch's OpenMP pool is per thread (a loader's
    pool beside the batcher's made every batch 2.5x slower on two cores)."""
    threads: dict[str, threading.Thread] = {}

    def run(batch: list[Work]) -> None:
        threads["batch"] = threading.current_thread()
        for work in batch:
            work.done(work, "ok", None)

    def prepare() -> Any:
        threads["prepare"] = threading.current_thread()
        return run

    batcher = make_batcher(prepare, max_queue_delay=0.0)
    assert batcher.ready.result(timeout=5) is run
    done = threading.Event()
    batcher.submit(Work(REQUEST_LANE, None, 0.5, lambda *_: done.set()))
    assert done.wait(5)
    assert threads["prepare"] is threads["batch"] is not threading.current_thread()


def test_a_failing_prepare_reaches_ready(make_batcher: Any) -> None:
    def prepare() -> Any:
        raise RuntimeError("model file is corrupt")

    batcher = make_batcher(prepare)
    with pytest.raises(RuntimeError, match="model file is corrupt"):
        batcher.ready.result(timeout=5)
