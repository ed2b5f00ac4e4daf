"""Making a batch durable: PostgreSQL when it answers, the local spool while it does not.

Order is what keeps this exactly-once. Bins are written as full values and producer marks
only grow, so an older write landing after a newer one would undo it (or be skipped by the
mark and lost). Hence: while anything is spooled, new writes are spooled too, behind it, and
the replay task drains the spool in order, one transaction per record, before writes go
straight to PostgreSQL again.

Until the spool is drained, the newest producer marks and camera engine states it holds are
indexed here, so a restart that cannot replay yet still resumes every camera from its last
acknowledged batch. An indexed state's revision is the one it will have once replayed.

Another instance may advance a camera while its batches wait here (the stream moved to it,
or its PostgreSQL connection held while this one's did not); the replayed record's revision
then no longer matches (``StaleStateError``). Its frames were acknowledged, so it is neither
dropped nor written as it is (its full bin values, computed from the older state, would
overwrite what the other instance added, and its state would throw that instance's work
away). Instead the record carries its batch (the DetectionBatch's wire bytes) and arrival
time, and the ingestor's rebase hook applies that batch again on the stored state (the other
instance's), time sanity judged by the original arrival; the result is committed at the
stored revision, tried ``STALE_RETRIES`` times before the record is left for the next round.
The records after it, computed from the same older chain, mismatch in turn and are rebased
the same way, in order. This counts every frame exactly once when the spooled frames follow
what the other instance applied (a stream that came back to this instance, whose engine had
fallen behind). When the other instance applied *later* frames of the camera first (this
instance died or lost PostgreSQL with a spool pending, and the stream moved on), the camera's
clock has passed the spooled frames: the engine refuses them as it refuses any frame older
than the camera's clock (or, from the same producer, its mark is already past them and the
record counts as already applied), and they are not counted. The rebase logs the refused
frames by cause; no state can take them in order any more, and overwriting would lose the
other instance's acknowledged frames instead.

Records spooled by the version before revisions carry neither revision nor batch: they are
replayed as that version wrote them, unconditionally (they cannot be rebased, and were
computed by an engine that was the only writer then); their state still advances the stored
revision, so other instances' engines reload. Such a record cannot mismatch.
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
from its_camera_ai.analytics._store import BatchWrite, Row, StaleStateError, Store, StoredState
from its_camera_ai.common import POSTGRES_DOWN, POSTGRES_FAILURES, CircuitBreaker, UnavailableError

__all__ = ["STALE_RETRIES", "DurableWriter", "Rebase", "Written"]


_log = logging.getLogger(__name__)

T = TypeVar("T")

# How many times a batch is computed again on a camera state another writer keeps advancing
# before giving up for now (UNAVAILABLE for a live batch; the next round for a spooled one).
STALE_RETRIES = 3

# A spooled write whose camera moved on, and the camera's stored state: the write computed
# again on that state, at its revision.
Rebase = Callable[[BatchWrite, StoredState], Awaitable[BatchWrite]]


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
        self._states: dict[str, StoredState] = {}
        self._wake = asyncio.Event()
        self._rebase: Rebase | None = None

    def set_rebase(self, rebase: Rebase) -> None:
        """The ingestor's hook for spooled records whose camera another writer advanced;
        until it is set (start-up), replay stops at such a record."""
        self._rebase = rebase

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
            revision = None if write.revision is None else write.revision + 1
            self._states[write.camera_id] = StoredState(write.state, revision)

    # -- reads that must see spooled writes --------------------------------------------------

    # Without them the batch cannot be applied correctly (it might be applied twice, or
    # from an empty engine over stored bins): UNAVAILABLE, and the producer resends later.

    async def producer_mark(self, producer_id: str) -> int:
        if producer_id in self._marks:
            return self._marks[producer_id]
        return await self._read(lambda: self._store.producer_mark(producer_id))

    async def camera_state(self, camera_id: str) -> StoredState:
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
        """Make ``write`` durable; raises ``UnavailableError`` only when the spool is full too,
        ``StaleStateError`` when PostgreSQL refuses it for its revision (nothing written)."""
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

    async def reset_camera(
        self, camera_id: str, closed_events: list[Row], revision: int | None
    ) -> None:
        """Drop the camera's persisted engine state, if still at ``revision``, and write the
        events it closed (``StaleStateError`` otherwise); straight to PostgreSQL, never
        spooled: a spooled record holding the camera's old state would be replayed after the
        reset and bring it back."""
        if self._spool.pending:
            raise UnavailableError(
                "analytics is replaying its spool into PostgreSQL: retry the reset once drained"
            )
        if revision is None:
            # Read from a spooled record since replayed: the stored revision is another.
            raise StaleStateError(f"camera {camera_id!r}: state read from the spool")
        await self._read(lambda: self._store.reset_camera(camera_id, closed_events, revision))

    # -- replay ------------------------------------------------------------------------------

    async def replay(self) -> int:
        """Drain the spool into PostgreSQL in order while it answers; returns records applied.

        Raises ``UnavailableError`` (or a connection error) when PostgreSQL goes away again.
        """
        done = 0
        while (payload := self._spool.peek()) is not None:
            write = BatchWrite.from_bytes(payload)
            try:
                applied = await self._commit(write)
            except StaleStateError:
                if self._rebase is None:
                    break  # start-up: the replay task goes on once the ingestor is there
                applied = await self._commit_rebased(write, self._rebase)
            self._metrics.replayed.labels("applied" if applied else "already_applied").inc()
            await self._spool.advance()
            done += 1
        if done and not self._spool.pending:
            # Everything is in PostgreSQL now: it is the one source again.
            self._marks.clear()
            self._states.clear()
            _log.info("analytics spool replayed into PostgreSQL", extra={"entries": done})
        return done

    async def _commit(self, write: BatchWrite) -> bool:
        return await self._breaker.call(functools.partial(self._store.commit, write))

    async def _commit_rebased(self, write: BatchWrite, rebase: Rebase) -> bool:
        """``write``'s batch computed again on the camera's stored state, and committed."""
        for _ in range(STALE_RETRIES):
            stored = await self._breaker.call(
                functools.partial(self._store.camera_state, write.camera_id)
            )
            again = await rebase(write, stored)
            try:
                return await self._commit(again)
            except StaleStateError:
                continue  # advanced again meanwhile
        raise StaleStateError(
            f"camera {write.camera_id!r}: stored state kept moving while replaying"
            f" {write.producer_id} #{write.sequence}"
        )

    async def run_replay(self, interval_seconds: float) -> None:
        """The background task: replay whenever the spool holds something."""
        while True:
            if self._spool.pending:
                try:
                    await self.replay()
                except POSTGRES_DOWN:
                    pass  # the breaker counts it; try again next round
                except StaleStateError as exc:
                    # Another instance keeps writing the camera: the record stays first.
                    _log.warning("analytics spool replay: %s; retrying", exc)
                except Exception:
                    # Not an outage (a record PostgreSQL refuses): keep it, say so loudly,
                    # retry; skipping it would lose an acknowledged batch.
                    _log.exception("analytics spool replay failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval_seconds)
            self._wake.clear()
