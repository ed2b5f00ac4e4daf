"""Iterators over every item of a List RPC, page after page (AIP-158: ``page_token`` in,
``next_page_token`` out, empty on the last page)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

__all__ = ["paginate", "paginate_async"]

_Request = TypeVar("_Request", bound=Message)
_Response = TypeVar("_Response", bound=Message)


def _first_page(request: Message) -> Message:
    """A copy of ``request`` to page with (the caller's stays as it was)."""
    if "page_token" not in request.DESCRIPTOR.fields_by_name:
        raise TypeError(f"request: {request.DESCRIPTOR.full_name} has no page_token field")
    copy = type(request)()
    copy.CopyFrom(request)
    return copy


def _items(response: Message) -> list[Any]:
    """The items of a page: the response's one repeated message field."""
    fields = [
        f
        for f in response.DESCRIPTOR.fields
        if f.is_repeated and f.type == FieldDescriptor.TYPE_MESSAGE
    ]
    if len(fields) != 1:
        names = ", ".join(f.name for f in fields) or "none"
        raise TypeError(
            f"response: {response.DESCRIPTOR.full_name} has no single repeated field ({names})"
        )
    return list(getattr(response, fields[0].name))


def paginate(method: Callable[[_Request], _Response], request: _Request) -> Iterator[Any]:
    """Every item ``method`` (a List RPC of a synchronous stub) lists for ``request``,
    fetching the next page when the previous one is used up.

    ``request`` fixes the filter, ordering and page size for every page; paging stops at
    the first empty ``next_page_token``.
    """
    page: Any = _first_page(request)
    while True:
        response: Any = method(page)
        yield from _items(response)
        if not response.next_page_token:
            return
        page.page_token = response.next_page_token


async def paginate_async(
    method: Callable[[_Request], Awaitable[_Response]], request: _Request
) -> AsyncIterator[Any]:
    """``paginate`` for a grpc.aio stub's List RPC: ``async for item in paginate_async(...)``."""
    page: Any = _first_page(request)
    while True:
        response: Any = await method(page)
        for item in _items(response):
            yield item
        if not response.next_page_token:
            return
        page.page_token = response.next_page_token
