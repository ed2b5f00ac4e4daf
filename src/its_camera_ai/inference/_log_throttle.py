"""Repeated log lines (drops, an outage, rejections) let through at most once per interval."""

from __future__ import annotations

import time

__all__ = ["LOG_INTERVAL_SECONDS", "LogThrottle"]

# Repeated conditions are logged at most this often.
LOG_INTERVAL_SECONDS = 10.0


class LogThrottle:
    """Lets a repeated log line through at most once per interval; counts the ones held back."""

    def __init__(self, interval: float = LOG_INTERVAL_SECONDS) -> None:
        self._interval = interval
        self._next = 0.0
        self.held_back = 0

    def ready(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            self.held_back += 1
            return False
        self._next = now + self._interval
        return True

    def take_held_back(self) -> int:
        held, self.held_back = self.held_back, 0
        return held
