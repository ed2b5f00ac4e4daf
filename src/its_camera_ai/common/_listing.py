"""List requests as SQL: AIP-160 filters, AIP-132 ordering, keyset page tokens.

One implementation for every List method. A resource describes itself once, as a
``ListingSpec``: the fields a filter may name (SQL column and kind), the fields it may be
ordered by, its default order, and the columns that make any order total (its resource
name). ``ListingSpec.compile`` turns a request into the pieces of one parameterised
statement: the filter becomes a WHERE clause (values always travel as parameters, never as
SQL text), the ordering an ORDER BY ending in the tie-breakers, and the page token a keyset
condition "after the last row of the previous page", so pages stay consistent while rows
are added.

The token is base64url JSON: the sort-key values of that last row, a fingerprint of the
filter, the ordering and any other request fields the caller binds (a parent), and the extra
values the resource carries from page to page (ListEvents: its first page's snapshot). It
is opaque to clients and checked on return.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from typing import Any

from its.common.v1 import error_reason_pb2
from its_camera_ai.common._errors import InvalidArgumentError, quoted

__all__ = ["FieldKind", "ListField", "ListQuery", "ListingSpec", "SortKey", "page_token_after"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_FILTER_LENGTH = 2048
_MAX_DEPTH = 32
_TOKEN_VERSION = 1
_INT64 = range(-(2**63), 2**63)
# What an unset (NULL) sort value sorts as: after every value, PostgreSQL's own place for
# NULL in an ascending order, written out so that keyset comparisons work on it too.
_NULL_SORTS_AS = "'infinity'::timestamptz"

_COMPARISONS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<op><=|>=|!=|[=<>:()])|(?P<word>[^\s"=<>!:()]+))'
)
_INTEGER = re.compile(r"-?[0-9]{1,19}")


class FieldKind(Enum):
    TEXT = "text"
    BOOL = "bool"
    TIMESTAMP = "timestamp"  # RFC 3339 in filters, timestamptz in SQL
    INTEGER = "integer"  # int64
    ENUM = "enum"  # written by proto value name, compared by number


# The JSON type of each kind's sort value in a page token; timestamps travel as RFC 3339.
_TOKEN_TYPES: dict[FieldKind, type] = {
    FieldKind.TEXT: str,
    FieldKind.BOOL: bool,
    FieldKind.INTEGER: int,
    FieldKind.ENUM: int,
}


@dataclass(frozen=True, slots=True)
class ListField:
    """A field a filter or an ordering may name. ``nullable``: the column may be NULL (the
    field unset), which ``field:*`` tests; in an ordering, unset sorts after every value.
    ``names``: an ENUM field's proto value names and their numbers."""

    column: str
    kind: FieldKind
    nullable: bool = False
    names: Mapping[str, int] = field(default_factory=dict)


def _filter_error(description: str) -> InvalidArgumentError:
    return InvalidArgumentError.for_field(
        "filter", description, reason=error_reason_pb2.ERROR_REASON_INVALID_FILTER
    )


def _token_error(description: str) -> InvalidArgumentError:
    return InvalidArgumentError.for_field(
        "page_token", description, reason=error_reason_pb2.ERROR_REASON_INVALID_PAGE_TOKEN
    )


def _malformed_token() -> InvalidArgumentError:
    return _token_error("is malformed; restart from the first page")


class _Parser:
    """Recursive descent over AIP-160's grammar, where OR binds tighter than AND:
    ``a AND b OR c`` is ``a AND (b OR c)``; juxtaposition is AND."""

    def __init__(self, text: str, params: list[Any], fields: Mapping[str, ListField]) -> None:
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
        self.fields = fields
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
            raise _filter_error(f"unexpected {quoted(extra[1])}")
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
        spec = self.fields.get(name) if kind == "word" else None
        if spec is None:
            known = ", ".join(self.fields)
            raise _filter_error(f"{quoted(name)} is not a filterable field (use {known})")
        kind, operator = self.take()
        if kind != "op" or operator not in (*_COMPARISONS, ":"):
            raise _filter_error(f"expected a comparison after {quoted(name)}")
        value_token = self.take()
        if operator == ":" and value_token == ("word", "*"):
            return self.presence(name, spec)
        self.params.append(_value(name, spec, value_token))
        placeholder = f"${len(self.params)}"
        if operator == ":":
            if spec.kind is not FieldKind.TEXT:
                raise _filter_error(f"':' (contains) applies to text fields, not {quoted(name)}")
            return f"(strpos({spec.column}, {placeholder}) > 0)"
        if spec.kind is FieldKind.BOOL and operator not in ("=", "!="):
            raise _filter_error(f"{quoted(name)} takes = or !=")
        return f"({spec.column} {_COMPARISONS[operator]} {placeholder})"

    def presence(self, name: str, spec: ListField) -> str:
        """AIP-160's ``field:*``: the field is set."""
        if not spec.nullable:
            unsettable = ", ".join(n for n, f in self.fields.items() if f.nullable) or "none"
            raise _filter_error(
                f"{quoted(name)} is always set: ':*' applies to fields that may be unset"
                f" ({unsettable})"
            )
        return f"({spec.column} IS NOT NULL)"


def _value(name: str, spec: ListField, token: tuple[str, str]) -> Any:
    """A filter value as the parameter for ``spec``'s column."""
    kind, text = token
    if kind == "string":
        try:
            text = json.loads(text)
        except ValueError:
            raise _filter_error(f"bad escape in the value for {quoted(name)}") from None
    elif kind != "word":
        raise _filter_error(f"expected a value for {quoted(name)}")
    if spec.kind is FieldKind.BOOL:
        if text not in ("true", "false"):
            raise _filter_error(f"{quoted(name)} is true or false")
        return text == "true"
    if spec.kind is FieldKind.TIMESTAMP:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise _filter_error(f"{quoted(name)} takes an RFC 3339 timestamp") from None
        if moment.tzinfo is None:
            raise _filter_error(f"{quoted(name)}: the timestamp needs a time zone (e.g. Z)")
        return moment
    if spec.kind is FieldKind.INTEGER:
        if _INTEGER.fullmatch(text) is None or int(text) not in _INT64:
            raise _filter_error(f"{quoted(name)} takes a 64-bit integer")
        return int(text)
    if spec.kind is FieldKind.ENUM:
        if text not in spec.names:
            raise _filter_error(f"{quoted(name)} is one of {', '.join(spec.names)}")
        return spec.names[text]
    return text


@dataclass(frozen=True, slots=True)
class SortKey:
    """One key of an ordering: ``source.column`` is where a row holds its value."""

    source: ListField
    descending: bool

    @property
    def column(self) -> str:
        return self.source.column

    @property
    def expression(self) -> str:
        """What the statement orders by (an index on a nullable key must use the same)."""
        if self.source.nullable:
            return f"coalesce({self.column}, {_NULL_SORTS_AS})"
        return self.column

    def bound(self, placeholder: str) -> str:
        """A parameter holding a row's value of this key, comparable with ``expression``."""
        if self.source.nullable:
            return f"coalesce({placeholder}::timestamptz, {_NULL_SORTS_AS})"
        return placeholder


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A compiled List request: WHERE (with its parameters), ORDER BY, LIMIT, and what its
    next page token needs. ``carried``: the values the request's token carried (empty on a
    first page)."""

    where: str
    params: tuple[Any, ...]
    order: tuple[SortKey, ...]
    limit: int
    fingerprint: str
    carried: Mapping[str, str] = field(default_factory=dict)

    @property
    def order_by(self) -> str:
        return ", ".join(f"{k.expression} {'DESC' if k.descending else 'ASC'}" for k in self.order)

    def and_where(self, condition: str, *values: Any) -> ListQuery:
        """This query narrowed by ``condition``, whose ``{}`` placeholders take ``values``
        as parameters (numbered after the ones the query has)."""
        first = len(self.params) + 1
        sql = condition.format(*(f"${first + i}" for i in range(len(values))))
        return replace(self, where=f"{self.where} AND ({sql})", params=(*self.params, *values))


@dataclass(frozen=True, slots=True)
class ListingSpec:
    """What one resource's List method may filter and order by.

    ``orders`` name the sortable fields; ``default_order`` is an ``order_by`` string used
    when the request has none; ``tie_breakers`` are non-null text columns, unique together,
    appended (ascending) to every order that lacks them, so that the order is total, which
    keyset pagination needs. ``carried``: the extra values every page token of this
    resource carries, each with the check a returned one must pass.
    """

    filters: Mapping[str, ListField]
    orders: Mapping[str, ListField]
    default_order: str
    tie_breakers: tuple[str, ...]
    carried: Mapping[str, Callable[[str], bool]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, source in self.orders.items():
            if source.nullable and source.kind is not FieldKind.TIMESTAMP:
                raise ValueError(f"order field {quoted(name)}: only timestamps may be unset")

    def compile(
        self,
        filter_text: str,
        order_by: str,
        page_size: int,
        page_token: str,
        *,
        bound: Sequence[str] = (),
    ) -> ListQuery:
        """Check and compile a List request, or raise INVALID_ARGUMENT. ``bound``: the
        request's other fields a page token must have been issued for (e.g. the parent)."""
        if len(filter_text) > MAX_FILTER_LENGTH:
            raise _filter_error(f"must be at most {MAX_FILTER_LENGTH} characters")
        limit = _page_size(page_size)
        order = self._parse_order(order_by)
        params: list[Any] = []
        conditions = (
            [_Parser(filter_text, params, self.filters).parse()] if filter_text.strip() else []
        )
        fingerprint = hashlib.sha256(
            json.dumps(
                [filter_text, [(k.column, k.descending) for k in order], list(bound)]
            ).encode()
        ).hexdigest()[:16]
        carried: Mapping[str, str] = {}
        if page_token:
            after, carried = self._decode(page_token, fingerprint, order)
            conditions.append(_keyset(order, after, params))
        where = " AND ".join(conditions) if conditions else "TRUE"
        return ListQuery(where, tuple(params), order, limit, fingerprint, carried)

    def _parse_order(self, order_by: str) -> tuple[SortKey, ...]:
        keys: list[SortKey] = []
        text = order_by if order_by.strip() else self.default_order
        for part in (p.strip() for p in text.split(",")):
            words = part.split()
            if not words or len(words) > 2 or words[0] not in self.orders:
                known = ", ".join(self.orders)
                raise InvalidArgumentError.for_field(
                    "order_by",
                    f"{quoted(part)}: order by {known}, each optionally followed by ' desc'",
                )
            if len(words) == 2 and words[1] not in ("asc", "desc"):
                raise InvalidArgumentError.for_field("order_by", f"{quoted(part)}: 'asc' or 'desc'")
            source = self.orders[words[0]]
            if any(k.column == source.column for k in keys):
                raise InvalidArgumentError.for_field(
                    "order_by", f"{quoted(words[0])} is listed twice"
                )
            keys.append(SortKey(source, descending=len(words) == 2 and words[1] == "desc"))
        for column in self.tie_breakers:
            if all(k.column != column for k in keys):
                keys.append(SortKey(ListField(column, FieldKind.TEXT), descending=False))
        return tuple(keys)

    def _decode(
        self, token: str, fingerprint: str, order: tuple[SortKey, ...]
    ) -> tuple[list[Any], dict[str, str]]:
        """The sort values and carried values of a returned token issued for this query."""
        try:
            padded = token + "=" * (-len(token) % 4)
            body = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        except (ValueError, binascii.Error, UnicodeError):
            raise _malformed_token() from None
        if not isinstance(body, dict) or body.get("v") != _TOKEN_VERSION:
            raise _malformed_token()
        if body.get("q") != fingerprint:
            raise _token_error(
                "was issued for a different request: keep every field but page_size as it was"
            )
        after, carried = body.get("after"), body.get("c", {})
        if not isinstance(after, list) or len(after) != len(order):
            raise _malformed_token()
        if not isinstance(carried, dict) or set(carried) != set(self.carried):
            raise _malformed_token()
        for name, value in carried.items():
            if not isinstance(value, str) or not self.carried[name](value):
                raise _malformed_token()
        return [_sort_value(k, v) for k, v in zip(order, after, strict=True)], carried


def _sort_value(key: SortKey, value: Any) -> Any:
    """A token's sort value as a parameter for ``key``, or a malformed-token error."""
    source = key.source
    if value is None and source.nullable:
        return None
    if source.kind is FieldKind.TIMESTAMP:
        try:
            moment = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise _malformed_token() from None
        if moment.tzinfo is None:
            raise _malformed_token()
        return moment
    if type(value) is not _TOKEN_TYPES[source.kind]:
        raise _malformed_token()
    # Numbers the column could not hold would fail in the database instead.
    if source.kind is FieldKind.INTEGER and value not in _INT64:
        raise _malformed_token()
    if source.kind is FieldKind.ENUM and value not in source.names.values():
        raise _malformed_token()
    return value


def _keyset(order: tuple[SortKey, ...], after: list[Any], params: list[Any]) -> str:
    """Rows strictly after ``after`` in ``order``, each key in its own direction: k1 beyond
    v1, or k1 = v1 and k2 beyond v2, and so on. The leading "k1 at or beyond v1" is implied
    by that, but spelt out it is a range an index scan can start from."""
    placeholders = []
    for key, value in zip(order, after, strict=True):
        params.append(value)
        placeholders.append(key.bound(f"${len(params)}"))
    alternatives = []
    for i, key in enumerate(order):
        terms = [f"{k.expression} = {p}" for k, p in zip(order[:i], placeholders, strict=False)]
        terms.append(f"{key.expression} {'<' if key.descending else '>'} {placeholders[i]}")
        alternatives.append("(" + " AND ".join(terms) + ")")
    first = order[0]
    start = f"{first.expression} {'<=' if first.descending else '>='} {placeholders[0]}"
    return f"({start} AND ({' OR '.join(alternatives)}))"


def _page_size(page_size: int) -> int:
    if page_size < 0:
        raise InvalidArgumentError.for_field("page_size", "must not be negative")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _encode(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def page_token_after(
    query: ListQuery, last_row: Mapping[str, Any], carried: Mapping[str, str] | None = None
) -> str:
    """The token for the page after ``last_row`` (a row holding every sort column).
    ``carried``: the values it carries (default: the ones ``query``'s token carried)."""
    body: dict[str, Any] = {
        "v": _TOKEN_VERSION,
        "q": query.fingerprint,
        "after": [_encode(last_row[key.column]) for key in query.order],
    }
    values = query.carried if carried is None else carried
    if values:
        body["c"] = dict(values)
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode("ascii").rstrip("=")
