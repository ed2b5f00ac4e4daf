"""ListCameras' query language: AIP-160 filters, AIP-132 ordering, keyset page tokens.

A request becomes one parameterised SQL statement: the filter compiles to a WHERE clause
(values always travel as parameters, never as SQL text), the ordering to ORDER BY with the
camera id as the final tie-breaker, and the page token to a keyset condition "after the
last row of the previous page", so pages stay consistent while cameras are added.

The token is base64url JSON: the sort-key values of that last row plus a fingerprint of
the filter and ordering it was issued for. It is opaque to clients and checked on return.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from its.common.v1 import error_reason_pb2
from its_camera_ai.common import InvalidArgumentError

__all__ = ["ListQuery", "SortKey", "compile_list_query", "page_token_after"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_FILTER_LENGTH = 2048
_MAX_DEPTH = 32
_TOKEN_VERSION = 1

# Filterable fields and their SQL column and type (ListCamerasRequest.filter).
_FILTER_FIELDS = {
    "display_name": ("display_name", str),
    "enabled": ("enabled", bool),
    "loop": ("loop", bool),
    "create_time": ("create_time", datetime),
    "update_time": ("update_time", datetime),
}
# Orderable fields (ListCamerasRequest.order_by).
_ORDER_FIELDS = {
    "name": "camera_id",
    "display_name": "display_name",
    "create_time": "create_time",
    "update_time": "update_time",
}
_COMPARISONS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<op><=|>=|!=|[=<>:()])|(?P<word>[^\s"=<>!:()]+))'
)


def _filter_error(description: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"filter: {description}",
        [],
        reason=error_reason_pb2.ERROR_REASON_INVALID_FILTER,
        metadata={"field": "filter"},
    )


def _token_error(description: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"page_token: {description}",
        [],
        reason=error_reason_pb2.ERROR_REASON_INVALID_PAGE_TOKEN,
        metadata={"field": "page_token"},
    )


class _Parser:
    """Recursive descent over AIP-160's grammar, where OR binds tighter than AND:
    ``a AND b OR c`` is ``a AND (b OR c)``; juxtaposition is AND."""

    def __init__(self, text: str, params: list[Any]) -> None:
        self.tokens: list[tuple[str, str]] = []
        position = 0
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                if text[position:].strip() == "":
                    break
                raise _filter_error(f"unexpected character at position {position}")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind)))
            position = match.end()
        self.position = 0
        self.params = params
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise _filter_error("ends too early")
        self.position += 1
        return token

    def parse(self) -> str:
        sql = self.conjunction()
        extra = self.peek()
        if extra is not None:
            raise _filter_error(f"unexpected {extra[1]!r}")
        return sql

    def conjunction(self) -> str:
        terms = [self.disjunction()]
        while (token := self.peek()) is not None and token != ("op", ")"):
            if token == ("word", "AND"):
                self.take()
            terms.append(self.disjunction())
        return terms[0] if len(terms) == 1 else "(" + " AND ".join(terms) + ")"

    def disjunction(self) -> str:
        terms = [self.unary()]
        while self.peek() == ("word", "OR"):
            self.take()
            terms.append(self.unary())
        return terms[0] if len(terms) == 1 else "(" + " OR ".join(terms) + ")"

    def unary(self) -> str:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _filter_error("nested too deeply")
        try:
            token = self.take()
            if token == ("word", "NOT"):
                return f"NOT {self.unary()}"
            if token[0] == "word" and token[1].startswith("-") and len(token[1]) > 1:
                self.tokens.insert(self.position, ("word", token[1][1:]))
                return f"NOT {self.unary()}"
            if token == ("op", "("):
                inner = self.conjunction()
                if self.take() != ("op", ")"):
                    raise _filter_error("missing ')'")
                return f"({inner})"
            return self.comparison(token)
        finally:
            self.depth -= 1

    def comparison(self, field_token: tuple[str, str]) -> str:
        kind, name = field_token
        if kind != "word" or name not in _FILTER_FIELDS:
            known = ", ".join(_FILTER_FIELDS)
            raise _filter_error(f"{name!r} is not a filterable field (use {known})")
        column, value_type = _FILTER_FIELDS[name]
        kind, operator = self.take()
        if kind != "op" or operator not in (*_COMPARISONS, ":"):
            raise _filter_error(f"expected a comparison after {name!r}")
        value = self.value(name, value_type, self.take())
        self.params.append(value)
        placeholder = f"${len(self.params)}"
        if operator == ":":
            if value_type is not str:
                raise _filter_error(f"':' (contains) applies to text fields, not {name!r}")
            return f"(strpos({column}, {placeholder}) > 0)"
        if value_type is bool and operator not in ("=", "!="):
            raise _filter_error(f"{name!r} takes = or !=")
        return f"({column} {_COMPARISONS[operator]} {placeholder})"

    @staticmethod
    def value(name: str, value_type: type, token: tuple[str, str]) -> Any:
        kind, text = token
        if kind == "string":
            try:
                text = json.loads(text)
            except ValueError:
                raise _filter_error(f"bad escape in the value for {name!r}") from None
        elif kind != "word":
            raise _filter_error(f"expected a value for {name!r}")
        if value_type is bool:
            if text not in ("true", "false"):
                raise _filter_error(f"{name!r} is true or false")
            return text == "true"
        if value_type is datetime:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise _filter_error(f"{name!r} takes an RFC 3339 timestamp") from None
            if moment.tzinfo is None:
                raise _filter_error(f"{name!r}: the timestamp needs a time zone (e.g. Z)")
            return moment
        return text


@dataclass(frozen=True, slots=True)
class SortKey:
    column: str
    descending: bool


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A compiled ListCameras request: WHERE (with its parameters), ORDER BY, LIMIT."""

    where: str
    params: tuple[Any, ...]
    order: tuple[SortKey, ...]
    limit: int
    fingerprint: str

    @property
    def order_by(self) -> str:
        return ", ".join(f"{k.column} {'DESC' if k.descending else 'ASC'}" for k in self.order)


def _parse_order(order_by: str) -> tuple[SortKey, ...]:
    keys: list[SortKey] = []
    for part in (p.strip() for p in order_by.split(",")) if order_by.strip() else ["name"]:
        words = part.split()
        if not words or len(words) > 2 or words[0] not in _ORDER_FIELDS:
            known = ", ".join(_ORDER_FIELDS)
            raise InvalidArgumentError.for_field(
                "order_by", f"{part!r}: order by {known}, each optionally followed by ' desc'"
            )
        if len(words) == 2 and words[1] not in ("asc", "desc"):
            raise InvalidArgumentError.for_field("order_by", f"{part!r}: 'asc' or 'desc'")
        column = _ORDER_FIELDS[words[0]]
        if any(k.column == column for k in keys):
            raise InvalidArgumentError.for_field("order_by", f"{words[0]!r} is listed twice")
        keys.append(SortKey(column, descending=len(words) == 2 and words[1] == "desc"))
    if keys[-1].column != "camera_id" and all(k.column != "camera_id" for k in keys):
        # The id makes the order total, which keyset pagination needs.
        keys.append(SortKey("camera_id", descending=False))
    return tuple(keys)


def _page_size(page_size: int) -> int:
    if page_size < 0:
        raise InvalidArgumentError.for_field("page_size", "must not be negative")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _encode(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _decode_after(token: str, fingerprint: str, order: tuple[SortKey, ...]) -> list[Any]:
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        raise _token_error("is malformed; restart from the first page") from None
    if not isinstance(body, dict) or body.get("v") != _TOKEN_VERSION:
        raise _token_error("is malformed; restart from the first page")
    if body.get("q") != fingerprint:
        raise _token_error("was issued for a different filter or order_by")
    after = body.get("after")
    if not isinstance(after, list) or len(after) != len(order):
        raise _token_error("is malformed; restart from the first page")
    values: list[Any] = []
    for key, value in zip(order, after, strict=True):
        if not isinstance(value, str):
            raise _token_error("is malformed; restart from the first page")
        if key.column.endswith("_time"):
            try:
                values.append(datetime.fromisoformat(value))
            except ValueError:
                raise _token_error("is malformed; restart from the first page") from None
        else:
            values.append(value)
    return values


def compile_list_query(
    filter_text: str, order_by: str, page_size: int, page_token: str
) -> ListQuery:
    """Check and compile a ListCameras request, or raise INVALID_ARGUMENT."""
    if len(filter_text) > MAX_FILTER_LENGTH:
        raise _filter_error(f"must be at most {MAX_FILTER_LENGTH} characters")
    limit = _page_size(page_size)
    order = _parse_order(order_by)
    params: list[Any] = []
    conditions = [_Parser(filter_text, params).parse()] if filter_text.strip() else []
    fingerprint = hashlib.sha256(
        json.dumps([filter_text, [(k.column, k.descending) for k in order]]).encode()
    ).hexdigest()[:16]
    if page_token:
        after = _decode_after(page_token, fingerprint, order)
        # (k1, k2, ...) strictly after the last row, each key in its own direction:
        # k1 beyond v1, or k1 = v1 and k2 beyond v2, and so on.
        alternatives = []
        for i, key in enumerate(order):
            terms = []
            for earlier, value in zip(order[:i], after[:i], strict=True):
                params.append(value)
                terms.append(f"{earlier.column} = ${len(params)}")
            params.append(after[i])
            terms.append(f"{key.column} {'<' if key.descending else '>'} ${len(params)}")
            alternatives.append("(" + " AND ".join(terms) + ")")
        conditions.append("(" + " OR ".join(alternatives) + ")")
    where = " AND ".join(conditions) if conditions else "TRUE"
    return ListQuery(where, tuple(params), order, limit, fingerprint)


def page_token_after(query: ListQuery, last_row: dict[str, Any]) -> str:
    """The token for the page after ``last_row`` (a row holding every sort column)."""
    body = {
        "v": _TOKEN_VERSION,
        "q": query.fingerprint,
        "after": [_encode(last_row[key.column]) for key in query.order],
    }
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode("ascii").rstrip("=")
