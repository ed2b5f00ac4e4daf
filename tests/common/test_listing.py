"""The shared List compiler: AIP-160 filters of every field kind, AIP-132 orders, page tokens.

Pure Python: what SQL and parameters a request compiles to, and which requests are refused
with which error. (ListCameras and ListEvents run the compiled statements against
PostgreSQL in their own tests.)
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from its.common.v1 import error_reason_pb2
from its.query.v1 import event_pb2
from its_camera_ai.common import (
    FieldKind,
    InvalidArgumentError,
    ListField,
    ListingSpec,
    page_token_after,
)

_START = ListField("start_time", FieldKind.TIMESTAMP)
_END = ListField("end_time", FieldKind.TIMESTAMP, nullable=True)
_SEVERITY = ListField("severity", FieldKind.ENUM, names=dict(event_pb2.Severity.items()))
SPEC = ListingSpec(
    filters={
        "title": ListField("title", FieldKind.TEXT),
        "open": ListField("is_open", FieldKind.BOOL),
        "start": _START,
        "end": _END,
        "count": ListField("n", FieldKind.INTEGER),
        "track": ListField("track_id", FieldKind.INTEGER, nullable=True),
        "severity": _SEVERITY,
    },
    orders={"start": _START, "end": _END, "severity": _SEVERITY},
    default_order="start desc",
    tie_breakers=("camera_id", "event_id"),
    carried={"snap": str.isdigit},
)
MOMENT = datetime(2025, 6, 1, tzinfo=UTC)
ROW = {"start_time": MOMENT, "end_time": None, "severity": 3, "camera_id": "c", "event_id": "e"}


def where(filter_text: str) -> tuple[str, tuple[Any, ...]]:
    query = SPEC.compile(filter_text, "", 0, "")
    return query.where, query.params


@pytest.mark.parametrize(
    ("filter_text", "sql", "params"),
    [
        ('title = "a b"', "(title = $1)", ("a b",)),
        ('title != "x"', "(title <> $1)", ("x",)),
        ('title:"\\"q"', "(strpos(title, $1) > 0)", ('"q',)),
        ("title:*x", "(strpos(title, $1) > 0)", ("*x",)),
        ("open = false", "(is_open = $1)", (False,)),
        ('start >= "2025-06-01T00:00:00Z"', "(start_time >= $1)", (MOMENT,)),
        ('end < "2025-06-01T02:00:00+02:00"', "(end_time < $1)", (MOMENT,)),
        ("count <= -12", "(n <= $1)", (-12,)),
        ("track = 9223372036854775807", "(track_id = $1)", (2**63 - 1,)),
        ("severity >= SEVERITY_HIGH", "(severity >= $1)", (3,)),
        ('severity = "SEVERITY_LOW"', "(severity = $1)", (1,)),
        ("end:*", "(end_time IS NOT NULL)", ()),
        ("NOT track:*", "NOT (track_id IS NOT NULL)", ()),
        ("-end:*", "NOT (end_time IS NOT NULL)", ()),
    ],
)
def test_each_field_kind_compiles_to_parameters(
    filter_text: str, sql: str, params: tuple[Any, ...]
) -> None:
    assert where(filter_text) == (sql, params)


def test_or_binds_tighter_than_and_and_parentheses_group() -> None:
    sql, params = where("open = true severity = SEVERITY_LOW OR end:* AND count > 1")
    assert sql == "((is_open = $1) AND ((severity = $2) OR (end_time IS NOT NULL)) AND (n > $3))"
    assert params == (True, 1, 1)
    sql, _ = where("(open = true AND count > 1) OR NOT title:x")
    assert sql == "((((is_open = $1) AND (n > $2))) OR NOT (strpos(title, $3) > 0))"


def test_values_never_become_sql_text() -> None:
    sql, params = where('title = "x\'; DROP TABLE t; --"')
    assert "DROP" not in sql
    assert params == ("x'; DROP TABLE t; --",)


@pytest.mark.parametrize(
    ("filter_text", "says"),
    [
        ("colour = 1", "'colour' is not a filterable field (use title, open, start"),
        ("severity = HIGH", "'severity' is one of SEVERITY_UNSPECIFIED, SEVERITY_LOW"),
        ("severity:SEVERITY_LOW", "':' (contains) applies to text fields, not 'severity'"),
        ("open < true", "'open' takes = or !="),
        ("open = yes", "'open' is true or false"),
        ("count = 1.5", "'count' takes a 64-bit integer"),
        ("count = 9223372036854775808", "'count' takes a 64-bit integer"),
        ('start > "yesterday"', "'start' takes an RFC 3339 timestamp"),
        ('start > "2025-06-01T00:00:00"', "'start': the timestamp needs a time zone"),
        ("title:*", "'title' is always set: ':*' applies to fields that may be unset (end, track)"),
        ("count:*", "'count' is always set"),
        ("(open = true", "ends too early"),
        ("open = true)", "unexpected ')'"),
        ("open =", "ends too early"),
        ("open true", "expected a comparison after 'open'"),
        ('title = "\\q"', "bad escape in the value for 'title'"),
        ("title = (", "expected a value for 'title'"),
        ('title = "open', "unexpected character at position 7"),
        ("(" * 40 + "open = true" + ")" * 40, "nested too deeply"),
        ("title = x " * 300, "must be at most 2048 characters"),
    ],
)
def test_bad_filters_are_invalid_filter_naming_the_field(filter_text: str, says: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        SPEC.compile(filter_text, "", 0, "")
    error = caught.value
    assert error.reason == error_reason_pb2.ERROR_REASON_INVALID_FILTER
    assert error.metadata == {"field": "filter"}
    assert error.message.startswith("filter: ")
    assert says in error.message


def test_orders_end_with_the_tie_breakers_and_unset_sorts_last() -> None:
    order = SPEC.compile("", "", 0, "").order_by
    assert order == "start_time DESC, camera_id ASC, event_id ASC"
    order = SPEC.compile("", "severity desc, end", 0, "").order_by
    assert order == (
        "severity DESC, coalesce(end_time, 'infinity'::timestamptz) ASC,"
        " camera_id ASC, event_id ASC"
    )
    cameras = ListingSpec(
        filters={},
        orders={"name": ListField("camera_id", FieldKind.TEXT), "start": _START},
        default_order="name",
        tie_breakers=("camera_id",),
    )
    assert cameras.compile("", "", 0, "").order_by == "camera_id ASC"
    assert cameras.compile("", "start desc, name desc", 0, "").order_by == (
        "start_time DESC, camera_id DESC"
    )


@pytest.mark.parametrize(
    ("request_fields", "field", "says"),
    [
        ({"order_by": "title"}, "order_by", "order by start, end, severity"),
        ({"order_by": "start sideways"}, "order_by", "'asc' or 'desc'"),
        ({"order_by": "start, start desc"}, "order_by", "listed twice"),
        ({"order_by": "start,"}, "order_by", "''"),
        ({"page_size": -1}, "page_size", "must not be negative"),
    ],
)
def test_bad_order_and_page_size_name_their_field(
    request_fields: dict[str, Any], field: str, says: str
) -> None:
    request: dict[str, Any] = {"filter_text": "", "order_by": "", "page_size": 0}
    with pytest.raises(InvalidArgumentError) as caught:
        SPEC.compile(**{**request, **request_fields}, page_token="")
    assert caught.value.reason == error_reason_pb2.ERROR_REASON_INVALID_FIELD
    assert [v.field for v in caught.value.violations] == [field]
    assert says in caught.value.message


def test_page_size_defaults_and_clamps() -> None:
    assert SPEC.compile("", "", 0, "").limit == 50
    assert SPEC.compile("", "", 7, "").limit == 7
    assert SPEC.compile("", "", 5000, "").limit == 1000


def test_a_token_round_trips_its_keys_and_carried_values() -> None:
    first = SPEC.compile("open = true", "end desc", 2, "", bound=("cameras/-",))
    token = page_token_after(first, ROW, {"snap": "42"})
    later = SPEC.compile("open = true", "end desc", 9, token, bound=("cameras/-",))
    assert later.carried == {"snap": "42"}
    assert later.limit == 9  # page_size may change between pages
    assert later.params == (True, None, "c", "e")
    end = "coalesce(end_time, 'infinity'::timestamptz)"
    bound = "coalesce($2::timestamptz, 'infinity'::timestamptz)"
    assert later.where == (
        f"(is_open = $1) AND ({end} <= {bound} AND (({end} < {bound})"
        f" OR ({end} = {bound} AND camera_id > $3)"
        f" OR ({end} = {bound} AND camera_id = $3 AND event_id > $4)))"
    )
    # Without new values the next token carries the same ones on.
    token = page_token_after(later, ROW)
    again = SPEC.compile("open = true", "end desc", 9, token, bound=("cameras/-",))
    assert again.carried == {"snap": "42"}


def test_and_where_numbers_its_parameters_after_the_query_s() -> None:
    query = SPEC.compile("count = 1", "", 0, "").and_where("camera_id = ANY({})", ["a", "b"])
    query = query.and_where("x BETWEEN {} AND {}", 1, 2)
    assert query.where == "(n = $1) AND (camera_id = ANY($2)) AND (x BETWEEN $3 AND $4)"
    assert query.params == (1, ["a", "b"], 1, 2)


def _forge(**changes: Any) -> str:
    body = json.loads(base64.urlsafe_b64decode(TOKEN + "=" * (-len(TOKEN) % 4)))
    body.update(changes)
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


TOKEN = page_token_after(SPEC.compile("", "severity", 0, ""), ROW, {"snap": "42"})


@pytest.mark.parametrize(
    ("filter_text", "order_by", "bound", "token", "says"),
    [
        ("open = true", "severity", (), TOKEN, "different request"),
        ("", "severity desc", (), TOKEN, "different request"),
        ("", "", (), TOKEN, "different request"),
        ("", "severity", ("cameras/a",), TOKEN, "different request"),
        ("", "severity", (), TOKEN + "x", "malformed"),
        ("", "severity", (), "garbage!", "malformed"),
        ("", "severity", (), "", None),
        ("", "severity", (), _forge(v=2), "malformed"),
        ("", "severity", (), _forge(c={}), "malformed"),
        ("", "severity", (), _forge(c={"snap": "x"}), "malformed"),
        ("", "severity", (), _forge(c={"snap": "1", "more": "2"}), "malformed"),
        ("", "severity", (), _forge(after=[3, "c"]), "malformed"),
        ("", "severity", (), _forge(after=[9, "c", "e"]), "malformed"),
        ("", "severity", (), _forge(after=[True, "c", "e"]), "malformed"),
        ("", "severity", (), _forge(after=[3, 1, "e"]), "malformed"),
        ("", "severity", (), _forge(after=[None, "c", "e"]), "malformed"),
    ],
)
def test_tokens_from_other_requests_or_forged_are_invalid_page_token(
    filter_text: str, order_by: str, bound: tuple[str, ...], token: str, says: str | None
) -> None:
    if says is None:
        assert SPEC.compile(filter_text, order_by, 0, token).carried == {}
        return
    with pytest.raises(InvalidArgumentError) as caught:
        SPEC.compile(filter_text, order_by, 0, token, bound=bound)
    assert caught.value.reason == error_reason_pb2.ERROR_REASON_INVALID_PAGE_TOKEN
    assert caught.value.metadata == {"field": "page_token"}
    assert caught.value.message.startswith("page_token: ")
    assert says in caught.value.message


@pytest.mark.parametrize("value", ["2025-06-01T00:00:00", "soon", 5])
def test_forged_timestamps_are_malformed(value: Any) -> None:
    token = page_token_after(SPEC.compile("", "", 0, ""), ROW, {"snap": "1"})
    body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    body["after"][0] = value
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).decode()
    with pytest.raises(InvalidArgumentError, match="malformed"):
        SPEC.compile("", "", 0, forged)


def test_only_timestamps_may_be_unset_in_an_order() -> None:
    with pytest.raises(ValueError, match="only timestamps"):
        ListingSpec(
            filters={},
            orders={"n": ListField("n", FieldKind.INTEGER, nullable=True)},
            default_order="n",
            tie_breakers=("id",),
        )
