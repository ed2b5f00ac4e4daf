"""The audit log: who did what to which resource, and how it ended.

Written by every service through the ``ServiceHost``: the security interceptor records an
entry for every refused call (authentication failure, permission denial, rate limit) and
for every call of an audited method (changes: cameras, keys, flags, resets), with the
outcome the call ended with. A servicer adds what only it knows (the resource it acted on,
details) with ``note_audit`` while it serves the call.

Entries go to the JSON log at once (logger ``its_camera_ai.audit``) and to the
``audit_log`` table in batches from a background task, so a call never waits for the
audit write; while the database is down they queue (bounded) and are written when it is
back. Details never hold secrets: the interceptor records no metadata values, and servicers
note only what a reader may see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge

from its_camera_ai.common._storage import POSTGRES_FAILURES, Database

__all__ = ["AuditEntry", "AuditLog", "AuditNote", "begin_note", "note_audit"]

_log = logging.getLogger("its_camera_ai.audit")

Outcome = Literal["success", "failure", "denied"]
# Entries written per INSERT; and the most that wait while the database is down (beyond
# it the oldest are dropped from the table, counted; the JSON log still has them).
_BATCH = 500
_MAX_QUEUED = 50_000
_RETRY_SECONDS = 1.0
_FLUSH_SECONDS = 5.0

Detail = str | int | float | bool


@dataclass
class AuditNote:
    """What a servicer adds to the audit entry of the call it serves."""

    resource: str = ""
    details: dict[str, Detail] = field(default_factory=dict)


_note: ContextVar[AuditNote | None] = ContextVar("its_audit_note", default=None)


def begin_note(audited: bool) -> AuditNote | None:
    """Start the current task's note (the interceptor, once per audited RPC)."""
    note = AuditNote() if audited else None
    _note.set(note)
    return note


def note_audit(resource: str | None = None, **details: Detail) -> None:
    """Add the acted-on resource (e.g. ``"apiKeys/k1"``) and details to this call's audit
    entry; nothing outside an RPC, or for a method that is not audited."""
    note = _note.get()
    if note is None:
        return
    if resource is not None:
        note.resource = resource
    note.details.update(details)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of ``audit_log`` (``its.admin.v1.AuditLogEntry``)."""

    service: str
    actor: str
    action: str
    outcome: Outcome
    resource: str = ""
    client_address: str = ""
    trace_id: str = ""
    details: dict[str, Detail] = field(default_factory=dict)
    time: datetime = field(default_factory=lambda: datetime.now(UTC))


class AuditLog:
    """Records entries to the JSON log at once and to ``audit_log`` in the background."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._database: Database | None = None
        self._queue: list[AuditEntry] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._recorded = Counter(
            "audit_entries_total",
            "Audit log entries recorded, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self._dropped = Counter(
            "audit_entries_dropped_total",
            "Audit entries never written to the database (queue full while it was down);"
            " the JSON log has them.",
            registry=registry,
        )
        self._pending = Gauge(
            "audit_entries_pending", "Audit entries waiting to be written.", registry=registry
        )
        self._pending.set_function(lambda: len(self._queue))

    def record(self, entry: AuditEntry) -> None:
        """Log ``entry`` and queue it for the database; never blocks, never raises."""
        self._recorded.labels(entry.outcome).inc()
        _log.info(
            "audit",
            extra={
                "audit": {
                    "time": entry.time.isoformat(),
                    "service": entry.service,
                    "actor": entry.actor,
                    "action": entry.action,
                    "resource": entry.resource,
                    "outcome": entry.outcome,
                    "client_address": entry.client_address,
                    "trace_id": entry.trace_id,
                    "details": entry.details,
                }
            },
        )
        if self._database is None:
            return
        self._queue.append(entry)
        if len(self._queue) > _MAX_QUEUED:
            del self._queue[0]
            self._dropped.inc()
        self._wake.set()

    def start(self, database: Database | None) -> None:
        """Write to ``database`` from now on (None: the JSON log only)."""
        self._database = database
        if database is not None and self._task is None:
            self._task = asyncio.create_task(self._write_forever(), name="audit-writer")

    async def flush(self) -> None:
        """Wait (at most ``_FLUSH_SECONDS``) until what was recorded so far is in the
        database: shutdown, and tests reading the table."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_FLUSH_SECONDS):
                while self._queue and self._task is not None and not self._task.done():
                    self._wake.set()
                    await asyncio.sleep(0.01)

    async def close(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue:
            self._dropped.inc(len(self._queue))
            _log.warning("audit entries not written at shutdown", extra={"count": len(self._queue)})
            self._queue.clear()

    async def _write_forever(self) -> None:
        assert self._database is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._queue[:_BATCH]
                try:
                    await _insert(self._database, batch)
                except POSTGRES_FAILURES as exc:
                    _log.warning("audit log write failed; will retry", extra={"error": str(exc)})
                    await asyncio.sleep(_RETRY_SECONDS)
                    continue
                # Entries dropped meanwhile shifted the queue: remove what was written.
                written = {id(entry) for entry in batch}
                self._queue = [entry for entry in self._queue if id(entry) not in written]


async def _insert(database: Database, batch: list[AuditEntry]) -> None:
    await database.pool.execute(
        """
        INSERT INTO audit_log (event_time, service, actor, action, resource, outcome,
                               client_address, trace_id, details)
        SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[],
                             $5::text[], $6::text[], $7::text[], $8::text[], $9::jsonb[])
        """,
        [e.time for e in batch],
        [e.service for e in batch],
        [e.actor for e in batch],
        [e.action for e in batch],
        [e.resource for e in batch],
        [e.outcome for e in batch],
        [e.client_address for e in batch],
        [e.trace_id for e in batch],
        [json.dumps(e.details) for e in batch],
    )
