"""The open events of a camera, and the records that announce them.

An event is emitted when it opens, at most every ``update_s`` while it lasts (fresh evidence
and description), and once when it closes. Its id is a hash of (camera, incident key, start
time), so the same input always yields the same id: after a restart and a replay, storage
receives the same ids again and upserts instead of duplicating.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from typing import Any

from its_camera_ai.analytics._records import (
    EventEvidence,
    EventRecord,
    EventType,
    ObjectClass,
    Severity,
)

__all__ = ["EventBook"]

_PREFIX = {
    EventType.STOPPED_VEHICLE: "stopped",
    EventType.WRONG_WAY: "wrongway",
    EventType.PEDESTRIAN_ON_ROADWAY: "pedestrian",
    EventType.CONGESTION: "congestion",
    EventType.MODEL_DRIFT: "drift",
}


@dataclass(slots=True)
class _Open:
    record: EventRecord
    last_emit_ns: int


class EventBook:
    def __init__(self, camera: str, update_s: float) -> None:
        self.camera = camera
        self.update_ns = int(update_s * 1e9)
        self._open: dict[str, _Open] = {}

    def __len__(self) -> int:
        return len(self._open)

    def is_open(self, key: str) -> bool:
        return key in self._open

    def open_records(self) -> list[EventRecord]:
        return [o.record for o in self._open.values()]

    def open(
        self,
        key: str,
        type: EventType,
        severity: Severity,
        start_ns: int,
        t_ns: int,
        *,
        track_id: int | None = None,
        object_class: ObjectClass = ObjectClass.UNSPECIFIED,
        lane_id: str = "",
        zone_id: str = "",
        evidence: EventEvidence | None = None,
        description: str = "",
        details: tuple[tuple[str, float], ...] = (),
    ) -> EventRecord:
        digest = hashlib.blake2s(f"{self.camera}|{key}|{start_ns}".encode(), digest_size=8)
        rec = EventRecord(
            event_id=f"{_PREFIX[type]}-{digest.hexdigest()}",
            camera=self.camera,
            type=type,
            severity=severity,
            start_time_ns=start_ns,
            end_time_ns=None,
            track_id=track_id,
            object_class=object_class,
            lane_id=lane_id,
            zone_id=zone_id,
            evidence=evidence,
            description=description,
            update_time_ns=t_ns,
            details=details,
        )
        self._open[key] = _Open(rec, t_ns)
        return rec

    def touch(
        self,
        key: str,
        t_ns: int,
        evidence: EventEvidence | None,
        description: str,
        details: tuple[tuple[str, float], ...] | None = None,
    ) -> EventRecord | None:
        """Refresh an open event; returns the record when an update is due."""
        o = self._open.get(key)
        if o is None:
            return None
        o.record = replace(
            o.record,
            evidence=evidence,
            description=description,
            update_time_ns=t_ns,
            details=o.record.details if details is None else details,
        )
        if t_ns - o.last_emit_ns < self.update_ns:
            return None
        o.last_emit_ns = t_ns
        return o.record

    def adopt(self, key: str, new_key: str, track_id: int, t_ns: int) -> EventRecord | None:
        """Hand an open event to another track (the same object, re-identified)."""
        o = self._open.pop(key, None)
        if o is None:
            return None
        o.record = replace(o.record, track_id=track_id, update_time_ns=t_ns)
        o.last_emit_ns = t_ns
        self._open[new_key] = o
        return o.record

    def close(self, key: str, end_ns: int, t_ns: int) -> EventRecord | None:
        o = self._open.pop(key, None)
        if o is None:
            return None
        end = max(end_ns, o.record.start_time_ns)
        return replace(o.record, end_time_ns=end, update_time_ns=t_ns)

    def close_all(self, t_ns: int, keep: tuple[str, ...] = ()) -> list[EventRecord]:
        """Close everything but ``keep`` (e.g. when the scene changes); end = last update."""
        out = []
        for key in [k for k in self._open if k not in keep]:
            rec = self.close(key, self._open[key].record.update_time_ns, t_ns)
            if rec is not None:
                out.append(rec)
        return out

    # -- persistence -------------------------------------------------------------------------

    def state(self) -> list[dict[str, Any]]:
        out = []
        for key, o in self._open.items():
            d = asdict(o.record)
            d["details"] = [list(x) for x in o.record.details]
            out.append({"key": key, "last_emit_ns": o.last_emit_ns, "record": d})
        return out

    def restore(self, s: list[dict[str, Any]]) -> None:
        self._open = {}
        for item in s:
            d = dict(item["record"])
            ev = d["evidence"]
            d["evidence"] = (
                None
                if ev is None
                else EventEvidence(
                    ev["frame_sequence"],
                    ev["capture_time_ns"],
                    None if ev["box"] is None else tuple(ev["box"]),
                    ev["speed_kmh"],
                )
            )
            d["type"] = EventType(d["type"])
            d["severity"] = Severity(d["severity"])
            d["object_class"] = ObjectClass(d["object_class"])
            d["details"] = tuple((str(a), float(b)) for a, b in d["details"])
            self._open[item["key"]] = _Open(EventRecord(**d), int(item["last_emit_ns"]))
