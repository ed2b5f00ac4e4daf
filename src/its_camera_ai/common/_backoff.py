"""Reconnect backoff, one rule for every service: capped exponential growth with jitter.

Used wherever a service retries a dependency it cannot do without (a camera, the decoder's
status stream, the analytics stream), so all of them back off the same way and are tuned
through the same three numbers.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]

# 2.0 ** 64 is far past any cap; stopping the exponent there keeps the float finite forever.
_MAX_EXPONENT = 64


class Backoff:
    """``initial * multiplier**n`` capped at ``maximum``, then scaled by a random factor in
    ``[1 - jitter, 1 + jitter]`` so that many clients that lost the same network do not
    reconnect in lockstep. ``reset()`` after a success."""

    def __init__(
        self, initial: float, maximum: float, multiplier: float = 2.0, jitter: float = 0.2
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {initial}, {maximum}")
        if multiplier < 1 or not 0 <= jitter < 1:
            raise ValueError(
                f"backoff needs multiplier >= 1 and 0 <= jitter < 1, got {multiplier}, {jitter}"
            )
        self._initial = initial
        self._maximum = maximum
        self._multiplier = multiplier
        self._jitter = jitter
        self._attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds; each call counts one more failure."""
        exponent = min(self._attempt, _MAX_EXPONENT)
        base = min(self._maximum, self._initial * self._multiplier**exponent)
        self._attempt += 1
        return base * random.uniform(1 - self._jitter, 1 + self._jitter)

    def reset(self) -> None:
        """After a success: the next failure starts again from the initial delay."""
        self._attempt = 0
