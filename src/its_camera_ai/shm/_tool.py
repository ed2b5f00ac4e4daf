"""Operator tool: list rings and clean stale ones (`its-camera-ai shm list|clean`).

`main(argv)` is the entry point the service CLI wires to `its-camera-ai shm ...`.
A ring is stale when its writer is dead (pid gone, reused or zombie) or closed it
without unlinking; `clean` unlinks those, their reader semaphores, semaphores whose ring
is gone, and temporaries left by a writer that died while creating a ring. Corrupt
objects under the ring prefix are only removed with --include-corrupt. `list` shows
reader semaphores whose ring is gone as a row of state "orphaned" (READERS: how many),
under the name of the ring they belonged to.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from typing import TextIO

from its_camera_ai.shm._errors import RingCorrupt, RingNotFound, ShmError
from its_camera_ai.shm._mapping import Liveness, judge_writer, read_header
from its_camera_ai.shm._notify import entry_is_live
from its_camera_ai.shm._system import (
    PREFIX,
    SHM_DIR,
    ShmObject,
    object_name,
    process_alive,
    unlink_object,
    unlink_ring,
    unlink_semaphore,
)

_RING_RE = re.compile(re.escape(PREFIX) + r"([a-z0-9][a-z0-9_-]*)")
_TEMP_RE = re.compile(re.escape(PREFIX) + r"([a-z0-9][a-z0-9_-]*)\.new-(\d+)-[0-9a-f]+")
_SEM_RE = re.compile(r"sem\." + re.escape(PREFIX) + r"([a-z0-9][a-z0-9_-]*)\.r(\d+)")
_STALE = (Liveness.DEAD, Liveness.CLOSED, Liveness.NONE)
# Reader semaphores left without their ring (the row's name is the ring's).
_ORPHANED = "orphaned"


@dataclass(frozen=True, slots=True)
class RingInfo:
    """One row of `list`: what the header says, and the writer as judged from here."""

    name: str
    size: int
    state: str  # alive | stalled | dead | closed | none | corrupt | orphaned
    slot_count: int | None = None
    max_frame_bytes: int | None = None
    readers: int | None = None
    writer_pid: int | None = None
    last_seq: int | None = None
    age_s: float | None = None  # since the writer's last frame or heartbeat
    error: str | None = None

    @property
    def stale(self) -> bool:
        return self.state in {s.value for s in _STALE} or self.state == _ORPHANED


def _entries() -> list[str]:
    try:
        return sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        return []


def _inspect(name: str, stale_after: float) -> RingInfo | None:
    try:
        obj = ShmObject.open(object_name(name), read_only=True)
    except (RingNotFound, ShmError):
        return None
    try:
        try:
            h = read_header(obj)
        except RingCorrupt as exc:
            return RingInfo(name, obj.size, "corrupt", error=str(exc))
        st = judge_writer(h, stale_after)
        readers = sum(1 for pid, start, _, ns in h.readers if entry_is_live(pid, start, ns))
        return RingInfo(
            name,
            obj.size,
            st.liveness.value,
            slot_count=h.slot_count,
            max_frame_bytes=h.max_frame_bytes,
            readers=readers,
            writer_pid=h.writer_pid,
            last_seq=h.last_seq,
            age_s=None if st.heartbeat_age_s is None else round(st.heartbeat_age_s, 3),
        )
    finally:
        obj.close()


def list_rings(stale_after: float = 5.0, match: str = "*") -> list[RingInfo]:
    """Every ring in /dev/shm (whose name matches the glob `match`) with its geometry and
    writer state."""
    out = []
    entries = _entries()
    orphans: dict[str, int] = {}
    for entry in entries:
        if (m := _SEM_RE.fullmatch(entry)) is not None:
            if PREFIX + m.group(1) not in entries and fnmatch.fnmatchcase(m.group(1), match):
                orphans[m.group(1)] = orphans.get(m.group(1), 0) + 1
            continue
        m = _RING_RE.fullmatch(entry)
        if m is None or not fnmatch.fnmatchcase(m.group(1), match):
            continue
        if (info := _inspect(m.group(1), stale_after)) is not None:
            out.append(info)
    out.extend(RingInfo(name, 0, _ORPHANED, readers=count) for name, count in orphans.items())
    return out


def _remove_ring(
    name: str, *, include_corrupt: bool, stale_after: float, min_age: float
) -> list[str]:
    """Unlink ring `name` and its reader semaphores if, re-checked under its lock, it is
    still stale; returns the entries removed."""
    try:
        obj = ShmObject.open(object_name(name), read_only=True)
    except ShmError:
        return []
    try:
        with obj.locked():
            if not obj.still_named():
                return []
            try:
                h = read_header(obj)
            except RingCorrupt:
                if not include_corrupt:
                    return []
                # No header to say how many reader slots: the orphan sweep finds them.
                return [PREFIX + name] if unlink_object(obj.shm_name) else []
            st = judge_writer(h, stale_after)
            if st.liveness not in _STALE:
                return []
            if st.heartbeat_age_s is not None and st.heartbeat_age_s < min_age:
                return []
            return unlink_ring(name, h.max_readers)
    finally:
        obj.close()


def clean_rings(
    *,
    dry_run: bool = False,
    include_corrupt: bool = False,
    stale_after: float = 5.0,
    min_age: float = 0.0,
    match: str = "*",
) -> list[str]:
    """Unlink stale rings and leftovers of rings whose name matches the glob `match`;
    returns the /dev/shm entries removed (or, with dry_run, that would be)."""
    removed: list[str] = []
    rings = {i.name: i for i in list_rings(stale_after, match)}
    gone: set[str] = set()
    for info in rings.values():
        wanted = info.stale or (include_corrupt and info.state == "corrupt")
        if info.state == _ORPHANED or not wanted:
            continue  # orphaned semaphores: the sweep below
        if info.age_s is not None and info.age_s < min_age:
            continue
        if dry_run:
            removed.append(PREFIX + info.name)
            gone.add(info.name)  # its semaphores would go with it
        else:
            # Its semaphores go with it, under its lock.
            removed.extend(
                _remove_ring(
                    info.name,
                    include_corrupt=include_corrupt,
                    stale_after=stale_after,
                    min_age=min_age,
                )
            )
    for entry in _entries():
        m = _SEM_RE.fullmatch(entry) or _TEMP_RE.fullmatch(entry)
        if m is None or not fnmatch.fnmatchcase(m.group(1), match):
            continue
        if m.re is _SEM_RE:
            ring = m.group(1)
            # Re-check existence now: a ring created since the listing is not an orphan.
            if ring in gone or not os.path.exists(os.path.join(SHM_DIR, PREFIX + ring)):
                if not dry_run:
                    unlink_semaphore(f"/{PREFIX}{ring}.r{m.group(2)}")
                removed.append(entry)
        elif not process_alive(int(m.group(2)), 0):
            if not dry_run:
                unlink_object("/" + entry)
            removed.append(entry)
    return removed


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n}B"
    v = n / 1024
    for unit in ("KiB", "MiB"):
        if v < 1024:
            return f"{v:.1f}{unit}"
        v /= 1024
    return f"{v:.1f}GiB"


def _print_table(rows: list[RingInfo], out: TextIO) -> None:
    head = ("NAME", "SIZE", "SLOTS", "FRAME", "READERS", "WRITER", "STATE", "LAST_SEQ", "AGE_S")
    table = [head]
    for r in rows:
        table.append(
            (
                r.name,
                _fmt_bytes(r.size),
                "-" if r.slot_count is None else str(r.slot_count),
                _fmt_bytes(r.max_frame_bytes),
                "-" if r.readers is None else str(r.readers),
                "-" if not r.writer_pid else str(r.writer_pid),
                r.state,
                "-" if r.last_seq is None else str(r.last_seq),
                "-" if r.age_s is None else f"{r.age_s:.1f}",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """`list [--json] [--match GLOB]` and
    `clean [--dry-run] [--include-corrupt] [--min-age S] [--match GLOB]`."""
    out = sys.stdout if out is None else out
    parser = argparse.ArgumentParser(
        prog="its-camera-ai shm", description="List and clean ITS frame rings."
    )
    parser.add_argument("--stale-after", type=float, default=5.0, help="heartbeat age (s)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list rings, their geometry and writer state")
    p_list.add_argument("--json", action="store_true", help="one JSON object per line")
    p_list.add_argument("--match", default="*", help="only rings whose name matches this glob")
    p_clean = sub.add_parser("clean", help="unlink stale rings and their semaphores")
    p_clean.add_argument("--dry-run", action="store_true", help="only say what would go")
    p_clean.add_argument("--include-corrupt", action="store_true", help="also corrupt ones")
    p_clean.add_argument("--min-age", type=float, default=0.0, help="skip younger rings (s)")
    p_clean.add_argument("--match", default="*", help="only rings whose name matches this glob")
    args = parser.parse_args(argv)

    if args.command == "list":
        rows = list_rings(args.stale_after, args.match)
        if args.json:
            for r in rows:
                out.write(json.dumps(asdict(r)) + "\n")
        else:
            _print_table(rows, out)
        return 0
    removed = clean_rings(
        dry_run=args.dry_run,
        include_corrupt=args.include_corrupt,
        stale_after=args.stale_after,
        min_age=args.min_age,
        match=args.match,
    )
    verb = "would remove" if args.dry_run else "removed"
    for entry in removed:
        out.write(f"{verb} {entry}\n")
    out.write(f"{verb} {len(removed)} object(s)\n")
    return 0
