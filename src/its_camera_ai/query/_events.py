"""ListEvents and GetEvent: the events analytics stored (``analytics_events``), by name or
filtered and paginated.

Pages are keyset pages (``ListingSpec``) that also keep the snapshot of their first page:
the first page's statement selects ``pg_current_snapshot()``, which is that statement's own
snapshot, the token carries it, and every later page shows only the events that snapshot
saw (``pg_visible_in_snapshot`` of the transaction that created each one). So events that
analytics inserts while a client pages neither appear on later pages nor shift them: no
duplicates, no skips. Changes to an event already listed (severity, end_time) are read as
they are now.

``cameras``, where given, is the set of cameras the caller may see: any other camera's
events are absent (a list leaves them out, a get answers NOT_FOUND).
"""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg

from its.common.v1 import detection_pb2
from its.query.v1 import event_pb2, query_service_pb2
from its_camera_ai.common import (
    FieldKind,
    InvalidArgumentError,
    ListField,
    ListingSpec,
    NotFoundError,
    camera_id_from_name,
    is_resource_id,
    page_token_after,
)

__all__ = ["EVENT_COLUMNS", "EventReader", "event_from_row"]

# What event_from_row reads, which includes every sort column a page token takes.
EVENT_COLUMNS = (
    "event_id, camera_id, type, severity, start_time, end_time, track_id, object_class,"
    " lane_id, zone_id, evidence, description, update_time"
)
_GET = f"SELECT {EVENT_COLUMNS} FROM analytics_events WHERE event_id = $1 AND camera_id = $2"  # noqa: S608
_ALL_CAMERAS = "cameras/-"
_SNAPSHOT = re.compile(r"([0-9]{1,20}):([0-9]{1,20}):((?:[0-9]{1,20},)*[0-9]{1,20})?")


def _is_snapshot(text: str) -> bool:
    """Whether ``text`` is a ``pg_snapshot`` as PostgreSQL reads one (xmin:xmax:xip,...,
    in order, within [xmin, xmax)): a forged token fails here, as INVALID_ARGUMENT, rather
    than in the database."""
    match = _SNAPSHOT.fullmatch(text)
    if match is None:
        return False
    xmin, xmax = int(match[1]), int(match[2])
    running = [int(x) for x in match[3].split(",")] if match[3] else []
    return (
        0 < xmin <= xmax < 2**64
        and all(xmin <= x < xmax for x in running)
        and running == sorted(running)
    )


_START_TIME = ListField("start_time", FieldKind.TIMESTAMP)
_END_TIME = ListField("end_time", FieldKind.TIMESTAMP, nullable=True)
_SEVERITY = ListField("severity", FieldKind.ENUM, names=dict(event_pb2.Severity.items()))
# ListEventsRequest's filter and order_by fields (query_service.proto), over the columns.
_EVENTS = ListingSpec(
    filters={
        "type": ListField("type", FieldKind.ENUM, names=dict(event_pb2.EventType.items())),
        "severity": _SEVERITY,
        "start_time": _START_TIME,
        "end_time": _END_TIME,
        "track_id": ListField("track_id", FieldKind.INTEGER, nullable=True),
        "object_class": ListField(
            "object_class", FieldKind.ENUM, names=dict(detection_pb2.ObjectClass.items())
        ),
        "lane_id": ListField("lane_id", FieldKind.TEXT),
        "zone_id": ListField("zone_id", FieldKind.TEXT),
    },
    orders={
        "start_time": _START_TIME,
        "end_time": _END_TIME,
        "severity": _SEVERITY,
        "update_time": ListField("update_time", FieldKind.TIMESTAMP),
    },
    default_order="start_time desc",
    tie_breakers=("camera_id", "event_id"),
    carried={"snapshot": _is_snapshot},
)


def _evidence(document: str) -> event_pb2.EventEvidence:
    """The evidence column (JSON, as analytics' ``event_row`` writes it) as the message."""
    fields = json.loads(document)
    evidence = event_pb2.EventEvidence(frame_sequence=fields["frame_sequence"])
    evidence.capture_time.FromNanoseconds(fields["capture_time_ns"])
    if fields["box"] is not None:
        box = evidence.box
        box.x_min, box.y_min, box.x_max, box.y_max = fields["box"]
    if fields["speed_kmh"] is not None:
        evidence.speed_kmh = fields["speed_kmh"]
    return evidence


def event_from_row(row: asyncpg.Record) -> event_pb2.Event:
    """An ``analytics_events`` row (``EVENT_COLUMNS``) as the wire Event; the stored enum
    numbers are the wire enums'."""
    event = event_pb2.Event(
        name=f"cameras/{row['camera_id']}/events/{row['event_id']}",
        type=row["type"],
        severity=row["severity"],
        object_class=row["object_class"],
        lane_id=row["lane_id"],
        zone_id=row["zone_id"],
        description=row["description"],
    )
    event.start_time.FromDatetime(row["start_time"])
    if row["end_time"] is not None:
        event.end_time.FromDatetime(row["end_time"])
    if row["track_id"] is not None:
        event.track_id = row["track_id"]
    if row["evidence"] is not None:
        event.evidence.CopyFrom(_evidence(row["evidence"]))
    event.update_time.FromDatetime(row["update_time"])
    return event


def _parent_camera(parent: str) -> str | None:
    """The camera id of a ListEvents parent; None for every camera."""
    if parent == _ALL_CAMERAS:
        return None
    camera_id = camera_id_from_name(parent)
    if camera_id is None:
        raise InvalidArgumentError.for_field(
            "parent", f'must be "cameras/{{camera}}" or "{_ALL_CAMERAS}"'
        )
    return camera_id


def _parse_event_name(name: str) -> tuple[str, str]:
    camera_part, _, event_id = name.rpartition("/events/")
    camera_id = camera_id_from_name(camera_part)
    if camera_id is None or not is_resource_id(event_id):
        raise InvalidArgumentError.for_field("name", 'must be "cameras/{camera}/events/{event}"')
    return camera_id, event_id


class EventReader:
    """Reads stored events for ListEvents and GetEvent (read-only on analytics' table)."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def list_events(
        self,
        request: query_service_pb2.ListEventsRequest,
        *,
        cameras: frozenset[str] | None = None,
    ) -> query_service_pb2.ListEventsResponse:
        """One page of ``request``, or INVALID_ARGUMENT naming the bad field."""
        camera_id = _parent_camera(request.parent)
        query = _EVENTS.compile(
            request.filter,
            request.order_by,
            request.page_size,
            request.page_token,
            bound=(request.parent,),
        )
        if camera_id is not None:
            query = query.and_where("camera_id = {}", camera_id)
        if cameras is not None:
            query = query.and_where("camera_id = ANY({}::text[])", sorted(cameras))
        snapshot = query.carried.get("snapshot")
        if snapshot is not None:
            query = query.and_where(
                "pg_visible_in_snapshot(first_xid, {}::text::pg_snapshot)", snapshot
            )
        # The clauses are compiled by ListingSpec from a fixed vocabulary; every value the
        # client sent travels as a parameter.
        rows = await self._pool.fetch(
            f"SELECT {EVENT_COLUMNS}, pg_current_snapshot()::text AS snapshot"  # noqa: S608
            f" FROM analytics_events WHERE {query.where}"
            f" ORDER BY {query.order_by} LIMIT {query.limit + 1}",
            *query.params,
        )
        page = rows[: query.limit]
        token = ""
        if len(rows) > query.limit:
            carried = {"snapshot": snapshot if snapshot is not None else page[0]["snapshot"]}
            token = page_token_after(query, dict(page[-1]), carried)
        return query_service_pb2.ListEventsResponse(
            events=[event_from_row(row) for row in page], next_page_token=token
        )

    async def get_event(
        self, name: str, *, cameras: frozenset[str] | None = None
    ) -> event_pb2.Event:
        """The event named ``name``, or NOT_FOUND (also for a camera outside ``cameras``)."""
        camera_id, event_id = _parse_event_name(name)
        if cameras is None or camera_id in cameras:
            row = await self._pool.fetchrow(_GET, event_id, camera_id)
            if row is not None:
                return event_from_row(row)
        raise NotFoundError(f"{name} not found", metadata={"resource": name})
