"""Circuit breakers around the services' dependencies (PostgreSQL, Redis, peer services).

While a dependency fails, calling it again on every request only stacks timeouts: after
``failure_threshold`` consecutive failures the breaker opens and calls fail at once with
``CircuitOpenError`` (callers degrade: spool instead of write, skip the cache). After
``reset_timeout_seconds`` one trial call is let through (half-open); its success closes the
breaker, its failure opens it again for another period.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from its_camera_ai.common._errors import UnavailableError

__all__ = ["BreakerState", "CircuitBreaker", "CircuitOpenError"]

_log = logging.getLogger(__name__)

# While half-open with its trial in flight the breaker still refuses: a short wait, not zero.
_MIN_RETRY_DELAY_SECONDS = 0.1

T = TypeVar("T")


class BreakerState(enum.IntEnum):
    # Values are what the ``circuit_breaker_state`` gauge exports.
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitOpenError(UnavailableError):
    """The dependency is known to be down; the call was not attempted."""


class _BreakerMetrics:
    """One set of metric families per registry, shared by every breaker registered on it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = Gauge(
            "circuit_breaker_state",
            "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open.",
            ["dependency"],
            registry=registry,
        )
        self.transitions = Counter(
            "circuit_breaker_transitions_total",
            "Circuit breaker state changes per dependency and new state.",
            ["dependency", "state"],
            registry=registry,
        )
        self.rejected = Counter(
            "circuit_breaker_rejected_calls_total",
            "Calls failed fast because the breaker was open.",
            ["dependency"],
            registry=registry,
        )

    @classmethod
    def of(cls, registry: CollectorRegistry) -> _BreakerMetrics:
        if registry not in _METRICS_BY_REGISTRY:
            _METRICS_BY_REGISTRY[registry] = cls(registry)
        return _METRICS_BY_REGISTRY[registry]


_METRICS_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, _BreakerMetrics] = (
    weakref.WeakKeyDictionary()
)


class CircuitBreaker:
    def __init__(
        self,
        dependency: str,
        *,
        failure_threshold: int = 3,
        reset_timeout_seconds: float = 5.0,
        failures: tuple[type[BaseException], ...] = (OSError, TimeoutError),
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.dependency = dependency
        self._threshold = failure_threshold
        self._reset_timeout = reset_timeout_seconds
        self._failures = failures
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._opened_at = 0.0
        # Only one trial call at a time while half-open.
        self._trial = asyncio.Lock()
        self._metrics = _BreakerMetrics.of(registry) if registry is not None else None
        if self._metrics is not None:
            self._metrics.state.labels(dependency).set(BreakerState.CLOSED)

    @property
    def state(self) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self._reset_timeout
        ):
            return BreakerState.HALF_OPEN
        return self._state

    def _move(self, state: BreakerState) -> None:
        if state is self._state:
            return
        self._state = state
        _log.warning(
            "circuit breaker %s", state.name.lower(), extra={"dependency": self.dependency}
        )
        if self._metrics is not None:
            self._metrics.state.labels(self.dependency).set(state)
            self._metrics.transitions.labels(self.dependency, state.name.lower()).inc()

    def record_success(self) -> None:
        self._consecutive_failures = 0
        self._move(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._consecutive_failures += 1
        if self._state is BreakerState.HALF_OPEN or self._consecutive_failures >= self._threshold:
            self._opened_at = self._clock()
            self._move(BreakerState.OPEN)

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` through the breaker; raise ``CircuitOpenError`` while open."""
        state = self.state
        if state is BreakerState.OPEN or (state is BreakerState.HALF_OPEN and self._trial.locked()):
            if self._metrics is not None:
                self._metrics.rejected.labels(self.dependency).inc()
            # Retry when the breaker lets a trial call through, not blindly after a second.
            until_trial = self._reset_timeout - (self._clock() - self._opened_at)
            raise CircuitOpenError(
                f"{self.dependency} is unavailable (circuit open)",
                metadata={"dependency": self.dependency},
                retry_delay_seconds=max(until_trial, _MIN_RETRY_DELAY_SECONDS),
            )
        if state is BreakerState.HALF_OPEN:
            async with self._trial:
                self._move(BreakerState.HALF_OPEN)
                return await self._attempt(operation)
        return await self._attempt(operation)

    async def _attempt(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            result = await operation()
        except self._failures:
            self.record_failure()
            raise
        self.record_success()
        return result
