"""ListAuditLogEntries: the ``audit_log`` table (core migration 0001), filtered and paged.

Pages are keyset pages over (event_time, id), both in the requested direction, so entries
written while a client pages (every service writes them all the time) never shift a page;
a page token is bound to the filter and the ordering it was issued for.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from its.admin.v1 import admin_service_pb2, audit_log_pb2
from its_camera_ai.common import (
    FieldKind,
    InvalidArgumentError,
    ListField,
    ListingSpec,
    page_token_after,
)

__all__ = ["AuditLogReader"]

_OUTCOMES = {
    "success": audit_log_pb2.AUDIT_OUTCOME_SUCCESS,
    "failure": audit_log_pb2.AUDIT_OUTCOME_FAILURE,
    "denied": audit_log_pb2.AUDIT_OUTCOME_DENIED,
}
# The stored outcome (text) as the AuditOutcome number a filter compares with.
_OUTCOME_NUMBER = (
    "(CASE outcome"
    + "".join(f" WHEN '{text}' THEN {number}" for text, number in _OUTCOMES.items())
    + " ELSE 0 END)"
)
_TIME = ListField("event_time", FieldKind.TIMESTAMP)
_TEXT_FIELDS = ("service", "actor", "action", "resource", "client_address", "trace_id")
# ListAuditLogEntriesRequest's filter fields (admin_service.proto). "id" is no field of the
# API: it breaks ties in time, in the same direction, and is never named by a request.
_ENTRIES = ListingSpec(
    filters={
        "time": _TIME,
        **{name: ListField(name, FieldKind.TEXT) for name in _TEXT_FIELDS},
        "outcome": ListField(
            _OUTCOME_NUMBER, FieldKind.ENUM, names=dict(audit_log_pb2.AuditOutcome.items())
        ),
    },
    orders={"time": _TIME, "id": ListField("id", FieldKind.INTEGER)},
    default_order="time desc, id desc",
    tie_breakers=(),
)
# The orderings a request may ask for, as the spec's order_by.
_ORDERS = {
    "": "time desc, id desc",
    "time": "time, id",
    "time asc": "time, id",
    "time desc": "time desc, id desc",
}
_COLUMNS = (
    "id, event_time, service, actor, action, resource, outcome, client_address, trace_id, details"
)


def _entry(row: asyncpg.Record) -> audit_log_pb2.AuditLogEntry:
    entry = audit_log_pb2.AuditLogEntry(
        name=f"auditLogEntries/{row['id']}",
        service=row["service"],
        actor=row["actor"],
        action=row["action"],
        resource=row["resource"],
        outcome=_OUTCOMES.get(row["outcome"], audit_log_pb2.AUDIT_OUTCOME_UNSPECIFIED),
        client_address=row["client_address"],
        trace_id=row["trace_id"],
    )
    entry.time.FromDatetime(row["event_time"])
    details: Any = row["details"]
    if isinstance(details, str):  # asyncpg hands jsonb over as text without a codec
        details = json.loads(details)
    if isinstance(details, dict) and details:
        entry.details.update(details)
    return entry


class AuditLogReader:
    """Reads the audit log for AdminService.ListAuditLogEntries."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def list_entries(
        self, request: admin_service_pb2.ListAuditLogEntriesRequest
    ) -> admin_service_pb2.ListAuditLogEntriesResponse:
        """One page of ``request``, or INVALID_ARGUMENT naming the bad field."""
        order_by = _ORDERS.get(" ".join(request.order_by.split()))
        if order_by is None:
            raise InvalidArgumentError.for_field(
                "order_by", f'{request.order_by!r}: "time" or "time desc"'
            )
        query = _ENTRIES.compile(request.filter, order_by, request.page_size, request.page_token)
        # The clauses are compiled by ListingSpec from a fixed vocabulary; every value the
        # client sent travels as a parameter.
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM audit_log WHERE {query.where}"  # noqa: S608
            f" ORDER BY {query.order_by} LIMIT {query.limit + 1}",
            *query.params,
        )
        page = rows[: query.limit]
        token = page_token_after(query, dict(page[-1])) if len(rows) > query.limit else ""
        return admin_service_pb2.ListAuditLogEntriesResponse(
            audit_log_entries=[_entry(row) for row in page], next_page_token=token
        )
