"""Time in the ingest loop: real-time pacing, frame-rate limiting and
falling-behind detection.

Media time is a frame's presentation time in seconds (pts x time base); wall time is
``time.monotonic()``. The ``FrameClock`` anchors one to the other at the first frame and
re-anchors on discontinuities (a looped file, a camera that restarted its clock).
"""

from __future__ import annotations

import enum
import threading
import time

__all__ = ["FrameClock", "Verdict"]

# A media-time jump larger than this (either way) is a new timeline, not lateness.
_DISCONTINUITY_SECONDS = 2.0


class Verdict(enum.Enum):
    DELIVER = "deliver"
    # Skipped to honour the camera's target_fps: not a loss, not counted.
    THIN = "thin"
    # Behind real time by more than the allowed lag: a loss, counted as dropped.
    LATE = "late"


class FrameClock:
    """Paces replays, and decides frame by frame whether to deliver, thin or drop.

    ``pace``: the source calls ``wait_until`` with each packet's media time before decoding
    it, so a file (or the simulator) delivers its data when a camera would have sent it.
    ``live``: the source runs in real time by itself. Frames of either kind more than
    ``max_lag`` behind real time are late. With neither, frames go as fast as they decode.
    """

    def __init__(
        self,
        *,
        target_fps: float,
        pace: bool,
        live: bool,
        max_lag: float,
        stop: threading.Event,
    ) -> None:
        self._interval = 1.0 / target_fps if target_fps > 0 else 0.0
        self.pace = pace
        self._real_time = pace or live
        self._max_lag = max_lag
        self._stop = stop
        self._anchor: tuple[float, float] | None = None  # (media, wall)
        self._last_media = 0.0
        self._next_due = 0.0

    def restart(self) -> None:
        """Forget the timeline (after a reconnect or a seek)."""
        self._anchor = None

    def _anchored(self, media_time: float, now: float) -> tuple[float, float]:
        if self._anchor is None or abs(media_time - self._last_media) > _DISCONTINUITY_SECONDS:
            self._anchor = (media_time, now)
            self._next_due = media_time
        self._last_media = media_time
        return self._anchor

    def wait_until(self, media_time: float) -> None:
        """Sleep until ``media_time`` comes round on the wall clock (or a stop request)."""
        now = time.monotonic()
        anchor_media, anchor_wall = self._anchored(media_time, now)
        delay = anchor_wall + (media_time - anchor_media) - now
        if delay > 0:
            self._stop.wait(delay)

    def judge(self, media_time: float) -> Verdict:
        now = time.monotonic()
        anchor_media, anchor_wall = self._anchored(media_time, now)
        if self._interval:
            if media_time + 1e-6 < self._next_due:
                return Verdict.THIN
            # Due times advance by whole intervals, so thinning is even; a long gap
            # restarts them rather than letting a burst through.
            self._next_due = max(self._next_due + self._interval, media_time)
        if not self._real_time:
            return Verdict.DELIVER
        lag = (now - anchor_wall) - (media_time - anchor_media)
        if lag < 0 and not self.pace:
            # A live source ahead of our clock (a burst after a network hiccup): move the
            # anchor so lateness is measured from here on. (A paced source keeps its
            # schedule: moving it would make the replay drift.)
            self._anchor = (media_time, now)
        if lag > self._max_lag:
            # Too far behind to catch up by waiting: this frame is lost (counted), and the
            # schedule moves to now so that the stream goes on, thinned, instead of every
            # later frame being late too (a source slower than real time never catching
            # up: a busy simulator, a decoder behind its camera).
            self._anchor = (media_time, now)
            return Verdict.LATE
        return Verdict.DELIVER
