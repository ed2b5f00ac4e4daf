"""Making a batch durable: PostgreSQL when it answers, the local spool while it does not.

Order is what keeps this exactly-once. Bins are written as full values and producer marks
only grow, so an older write landing after a newer one would undo it (or be skipped by the
mark and lost). Hence: while anything is spooled, new writes are spooled too, behind it, and
the replay task drains the spool in order, one transaction per record, before writes go
straight to PostgreSQL again.

Until the spool is drained, the newest producer marks and camera engine states it holds are
indexed here, so a restart that cannot replay yet still resumes every camera from its last
acknowledged batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import TypeVar

from its_camera_ai.analytics._metrics import AnalyticsMetrics
from its_camera_ai.analytics._records import BinRecord
from its_camera_ai.analytics._spool import Spool
from its_camera_ai.analytics._store import BatchWrite, Row, Store
from its_camera_ai.common import POSTGRES_DOWN, POSTGRES_FAILURES, CircuitBreaker, UnavailableError

__all__ = ["DurableWriter", "Written"]


_log = logging.getLogger(__name__)

T = TypeVar("T")


class Written(Enum):
    COMMITTED = "postgres"
    SPOOLED = "spool"
    ALREADY_APPLIED = "duplicate"


class DurableWriter:
    def __init__(
        self, store: Store, spool: Spool, breaker: CircuitBreaker, metrics: AnalyticsMetrics
    ) -> None:
        self._store = store
        self._spool = spool
        self._breaker = breaker
        self._metrics = metrics
        self._marks: dict[str, int] = {}  # from spooled records not yet replayed
        self._states: dict[str, bytes] = {}
        self._wake = asyncio.Event()

    def recover(self) -> int:
        """Open the spool and index what a previous run left in it; returns the count."""
        for payload in self._spool.open():
            self._index(BatchWrite.from_bytes(payload))
        if self._spool.pending:
            _log.warning("analytics spool left by a previous run",
                         extra={"entries": self._spool.pending})  # fmt: skip
        return self._spool.pending

    def _index(self, write: BatchWrite) -> None:
        self._marks[write.producer_id] = max(self._marks.get(write.producer_id, 0), write.sequence)
        if write.state is not None:
            self._states[write.camera_id] = write.state

    # -- reads that must see spooled writes --------------------------------------------------

    # Without them the batch cannot be applied correctly (it might be applied twice, or
    # from an empty engine over stored bins): UNAVAILABLE, and the producer resends later.

    async def producer_mark(self, producer_id: str) -> int:
        if producer_id in self._marks:
            return self._marks[producer_id]
        return await self._read(lambda: self._store.producer_mark(producer_id))

    async def camera_state(self, camera_id: str) -> bytes | None:
        if camera_id in self._states:
            return self._states[camera_id]
        return await self._read(lambda: self._store.camera_state(camera_id))

    async def open_bins(
        self, camera_id: str, end_after_ns: int, start_until_ns: int
    ) -> list[BinRecord]:
        # Only asked for a camera without engine state, so none of its bins is spooled.
        return await self._read(
            lambda: self._store.open_bins(camera_id, end_after_ns, start_until_ns)
        )

    async def _read(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            return await self._breaker.call(operation)
        except POSTGRES_FAILURES as exc:
            raise UnavailableError("analytics store unavailable") from exc

    # -- writes ------------------------------------------------------------------------------

    async def write(self, write: BatchWrite) -> Written:
        """Make ``write`` durable; raises ``UnavailableError`` only when the spool is full too."""
        started = time.perf_counter()
        if not self._spool.pending:
            try:
                applied = await self._breaker.call(lambda: self._store.commit(write))
            except POSTGRES_DOWN as exc:
                _log.warning("PostgreSQL unavailable, spooling",
                             extra={"error": type(exc).__name__})  # fmt: skip
            else:
                self._metrics.write_latency.labels("postgres").observe(
                    time.perf_counter() - started
                )
                return Written.COMMITTED if applied else Written.ALREADY_APPLIED
        started = time.perf_counter()
        await self._spool.append(write.to_bytes())
        self._index(write)
        self._wake.set()
        self._metrics.write_latency.labels("spool").observe(time.perf_counter() - started)
        return Written.SPOOLED

    async def reset_camera(self, camera_id: str, closed_events: list[Row]) -> None:
        """Drop the camera's persisted engine state and write the events it closed; straight
        to PostgreSQL, never spooled: a spooled record holding the camera's old state would
        be replayed after the reset and bring it back."""
        if self._spool.pending:
            raise UnavailableError(
                "analytics is replaying its spool into PostgreSQL: retry the reset once drained"
            )
        await self._read(lambda: self._store.reset_camera(camera_id, closed_events))

    # -- replay ------------------------------------------------------------------------------

    async def replay(self) -> int:
        """Drain the spool into PostgreSQL in order while it answers; returns records applied.

        Raises ``UnavailableError`` (or a connection error) when PostgreSQL goes away again.
        """
        done = 0
        while (payload := self._spool.peek()) is not None:
            applied = await self._breaker.call(
                functools.partial(self._store.commit, BatchWrite.from_bytes(payload))
            )
            self._metrics.replayed.labels("applied" if applied else "already_applied").inc()
            await self._spool.advance()
            done += 1
        if done:
            # Everything is in PostgreSQL now: it is the one source again.
            self._marks.clear()
            self._states.clear()
            _log.info("analytics spool replayed into PostgreSQL", extra={"entries": done})
        return done

    async def run_replay(self, interval_seconds: float) -> None:
        """The background task: replay whenever the spool holds something."""
        while True:
            if self._spool.pending:
                try:
                    await self.replay()
                except POSTGRES_DOWN:
                    pass  # the breaker counts it; try again next round
                except Exception:
                    # Not an outage (a record PostgreSQL refuses): keep it, say so loudly,
                    # retry; skipping it would lose an acknowledged batch.
                    _log.exception("analytics spool replay failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval_seconds)
            self._wake.clear()
