"""The local append-only spool: where acknowledged batches wait while PostgreSQL is down.

One file of records, each ``magic | length | crc32 | payload``, appended and fsynced before
the batch is acknowledged. Replay reads them in order from ``head`` (the first record not yet
known to be in PostgreSQL); ``head`` lives in memory only, because replay is idempotent (each
write checks its producer's mark), so after a crash replaying from the start is correct.

A record cut short by a crash mid-append was never acknowledged: on open, the file is
truncated before the first record that does not check out. Once everything is replayed the
file is truncated to nothing; if new records keep arriving meanwhile, the replayed prefix is
cut by copying the rest to a new file renamed over the old one (and the directory fsynced),
so no crash leaves a half-compacted spool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from its_camera_ai.common import UnavailableError

__all__ = ["Spool", "SpoolFullError"]

_log = logging.getLogger(__name__)

_MAGIC = b"ASP1"
_HEADER = struct.Struct(">4sII")  # magic, payload length, crc32 of the payload
_FILE_NAME = "batches.spool"
# Compact a partly replayed spool once its replayed prefix is at least this large.
_COMPACT_PREFIX_BYTES = 4 * 1024 * 1024


class SpoolFullError(UnavailableError):
    """The spool has no room for the record: the batch cannot be made durable anywhere."""


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scan(data: bytes) -> tuple[list[int], int]:
    """End offsets of the valid records of ``data``, and where the valid prefix ends."""
    ends: list[int] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        magic, length, crc = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if magic != _MAGIC or end > len(data):
            break
        if zlib.crc32(data[offset + _HEADER.size : end]) != crc:
            break
        ends.append(end)
        offset = end
    return ends, offset


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        alert_fraction: float,
        on_change: Callable[[int, int], None] = lambda entries, size: None,
    ) -> None:
        self._directory = directory
        self._path = directory / _FILE_NAME
        self._max_bytes = max_bytes
        self._alert_bytes = int(max_bytes * alert_fraction)
        self._on_change = on_change  # (pending entries, file bytes): the spool gauges
        self._lock = asyncio.Lock()
        self._fd = -1
        self._size = 0
        self._head = 0
        self._ends: list[int] = []  # end offsets of the records after head
        self._alerted = False

    # -- state -------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records appended and not yet replayed."""
        return len(self._ends)

    @property
    def size(self) -> int:
        return self._size

    def _changed(self) -> None:
        self._on_change(len(self._ends), self._size)
        if self._size >= self._alert_bytes and not self._alerted:
            self._alerted = True
            _log.warning(
                "analytics spool above %d%% of its size",
                round(100 * self._alert_bytes / self._max_bytes),
                extra={"spool_bytes": self._size, "spool_max_bytes": self._max_bytes},
            )
        elif self._size < self._alert_bytes:
            self._alerted = False

    # -- open / close ------------------------------------------------------------------------

    def open(self) -> list[bytes]:
        """Open (or create) the spool; returns the payloads left by a previous run, in order."""
        self._directory.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        data = self._path.read_bytes()
        self._ends, valid = _scan(data)
        if valid < len(data):
            _log.warning(
                "analytics spool: dropping a torn tail (never acknowledged)",
                extra={"offset": valid, "bytes": len(data) - valid},
            )
            os.ftruncate(self._fd, valid)
            os.fsync(self._fd)
        self._size, self._head = valid, 0
        _fsync_directory(self._directory)
        self._changed()
        starts = [0, *self._ends][: len(self._ends)]
        return [data[s + _HEADER.size : e] for s, e in zip(starts, self._ends, strict=True)]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- append ------------------------------------------------------------------------------

    async def append(self, payload: bytes) -> None:
        """Append one record and fsync it; ``SpoolFullError`` when it does not fit."""
        record = _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload
        async with self._lock:
            if self._size + len(record) > self._max_bytes:
                _log.error(
                    "analytics spool full: refusing batches until PostgreSQL is back",
                    extra={"spool_bytes": self._size, "spool_max_bytes": self._max_bytes},
                )
                raise SpoolFullError("analytics store unavailable and the local spool is full")
            try:
                await asyncio.to_thread(self._write, record)
            except OSError as exc:
                # A partial record must not stay in front of the next one.
                await asyncio.to_thread(os.ftruncate, self._fd, self._size)
                raise SpoolFullError(f"cannot write the local spool: {exc.strerror}") from exc
            self._size += len(record)
            self._ends.append(self._size)
            self._changed()

    def _write(self, record: bytes) -> None:
        view = memoryview(record)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    # -- replay ------------------------------------------------------------------------------

    def peek(self) -> bytes | None:
        """The oldest record not yet replayed, or None."""
        if not self._ends:
            return None
        start = self._head + _HEADER.size
        return os.pread(self._fd, self._ends[0] - start, start)

    async def advance(self) -> None:
        """The oldest record is in PostgreSQL: move past it, and compact when worthwhile."""
        async with self._lock:
            self._head = self._ends.pop(0)
            if not self._ends:
                await asyncio.to_thread(self._truncate)
            elif self._head >= _COMPACT_PREFIX_BYTES:
                await asyncio.to_thread(self._cut_prefix)
            self._changed()

    def _truncate(self) -> None:
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self._size = self._head = 0

    def _cut_prefix(self) -> None:
        rest = os.pread(self._fd, self._size - self._head, self._head)
        temporary = self._path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, rest)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self._path)
        _fsync_directory(self._directory)
        os.close(self._fd)
        self._fd = os.open(self._path, os.O_RDWR | os.O_APPEND)
        self._ends = [end - self._head for end in self._ends]
        self._size -= self._head
        self._head = 0
