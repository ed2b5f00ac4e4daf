"""``its.query.v1.QueryService``: the read side over what analytics wrote.

Every request is checked first (``_requests``), then its camera: one the decoder lists, or
one with recorded data (a deleted camera's history stays readable until retention), else
NOT_FOUND. Counts, summaries and event lists go through the answer cache, keyed by what the
answer depends on (a counts series by its bins, so requests inside the same bins share it)
and by the caller's camera scope, and registered bytes in, bytes out: a request seen before
is answered by its raw bytes (``cached``) without parsing it, so those checks ran when it
was first answered. Live figures and streams bypass the cache.

Every path is scoped to the caller's cameras (``Principal.cameras``; None: every camera):
a named camera outside the scope is PERMISSION_DENIED, lists, summaries and streams omit
the others, an event of another camera is NOT_FOUND (its name says nothing of its camera
until read), and the cache alias joins the scope, so one caller's answer never reaches
another with a narrower one.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from its.query.v1 import query_service_pb2
from its_camera_ai.common import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    QueryServiceSettings,
    UnavailableError,
    parse_camera_name,
)
from its_camera_ai.query._cache import END_OF_TIME_NS, AnswerCache, CacheKey
from its_camera_ai.query._events import EventReader
from its_camera_ai.query._requests import (
    CountsQuery,
    check_summary_budget,
    counts_query,
    stream_query,
    summary_query,
)
from its_camera_ai.query._stats import CameraStatsReader
from its_camera_ai.query._stream import EventHub
from its_camera_ai.query._traffic import TrafficReader
from its_camera_ai.scene import CameraDirectory, KnownCamera
from its_camera_ai.security import current_principal

__all__ = ["QueryServicer", "add_query_service"]

_Context = grpc.aio.ServicerContext[Any, Any]
_Request = TypeVar("_Request", bound=Message)
_ALL_TIME = (0, END_OF_TIME_NS)


def _fingerprint(*parts: object) -> str:
    # Sets sorted: every process must derive the same key for L2 to be shared.
    stable = [tuple(sorted(p)) if isinstance(p, frozenset) else p for p in parts]
    return hashlib.blake2b(repr(stable).encode(), digest_size=16).hexdigest()


@functools.lru_cache(maxsize=1024)
def _scope_tag(scope: frozenset[str] | None) -> bytes:
    """The scope's part of a cache alias: the same bytes for the same set of cameras."""
    if scope is None:
        return b"*\0"
    return hashlib.blake2b("\0".join(sorted(scope)).encode(), digest_size=16).digest() + b"\0"


def _not_found(camera_id: str) -> NotFoundError:
    return NotFoundError(
        f"camera 'cameras/{camera_id}' not found",
        metadata={"resource": f"cameras/{camera_id}"},
    )


class QueryServicer:
    def __init__(
        self,
        *,
        settings: QueryServiceSettings,
        cameras: CameraDirectory,
        traffic: TrafficReader,
        events: EventReader,
        cache: AnswerCache,
        hub: EventHub,
        stats: CameraStatsReader,
        flag: Callable[[str], bool] = lambda _name: True,
    ) -> None:
        self._settings = settings
        # The feature flags (Runtime.flags): "query-cache" off sends every read to PostgreSQL.
        self._flag = flag
        self._cameras = cameras
        self._traffic = traffic
        self._events = events
        self._cache = cache
        self._hub = hub
        self._stats = stats
        # Cameras found to have recorded data: they exist for reading from then on.
        self._with_data: set[str] = set()

    # -- cameras -----------------------------------------------------------------------------

    async def _camera(self, camera_id: str, scope: frozenset[str] | None) -> KnownCamera | None:
        """The camera's scene (None for a camera known only by its data), NOT_FOUND, or
        PERMISSION_DENIED outside the caller's scope."""
        if scope is not None and camera_id not in scope:
            raise PermissionDeniedError(
                f"camera 'cameras/{camera_id}' is outside the cameras this caller may read",
                metadata={"resource": f"cameras/{camera_id}"},
            )
        known = self._cameras.known.get(camera_id)
        if known is not None or camera_id in self._with_data:
            return known
        try:
            known = await self._cameras.get(camera_id)
        except UnavailableError:
            known = None  # the decoder is down: the data may still say it exists
        if known is not None:
            return known
        if await self._traffic.has_data(camera_id):
            self._with_data.add(camera_id)
            return None
        raise _not_found(camera_id)

    async def _every_camera(self, scope: frozenset[str] | None) -> list[str]:
        listed = set(self._cameras.known) | set(await self._traffic.cameras_with_data())
        return sorted(listed if scope is None else listed & scope)

    # -- cached reads ------------------------------------------------------------------------
    #
    # Take and return bytes: a request seen before (the same bytes, the same caller scope)
    # is answered from the cache without parsing it or serialising the answer again.

    def cached(
        self, request_type: type[_Request], answer: Callable[[_Request, bytes], Awaitable[bytes]]
    ) -> Callable[[bytes, _Context], Awaitable[bytes]]:
        """The behaviour of a cached read: the answer to the raw request's alias if cached,
        else ``answer`` of the parsed request."""
        # The same bytes may parse as another method's request: the alias names the method.
        tag = request_type.DESCRIPTOR.name.encode() + b"\0"

        async def behaviour(raw: bytes, context: _Context) -> bytes:
            alias = tag + _scope_tag(current_principal().cameras) + raw
            hit = self._cache.lookup(alias) if self._flag("query-cache") else None
            if hit is not None:
                return hit
            try:
                request = request_type.FromString(raw)
            except DecodeError:
                raise InvalidArgumentError.for_field(
                    "request", f"is not a valid {request_type.DESCRIPTOR.full_name}"
                ) from None
            return await answer(request, alias)

        return behaviour

    async def counts(
        self, request: query_service_pb2.GetTrafficCountsRequest, alias: bytes
    ) -> bytes:
        query = counts_query(request, self._settings)
        known = await self._camera(query.camera_id, current_principal().cameras)
        if known is not None:
            _check_scene_ids(query, known)
        key = CacheKey("counts", _fingerprint(query.camera_id, query.span_ns, query.bin_seconds,
                       query.line_id, query.direction, query.lane_id, query.classes),
                       frozenset((query.camera_id,)), *query.span_ns)  # fmt: skip

        async def compute() -> bytes:
            bins = await self._traffic.counts(
                query.camera_id, query.start_ns, query.end_ns, query.bin_seconds,
                line_id=query.line_id, direction=query.direction, lane_id=query.lane_id,
                classes=query.classes,
            )  # fmt: skip
            return query_service_pb2.GetTrafficCountsResponse(bins=bins).SerializeToString()

        return await self._cached(key, compute, alias)

    async def summary(
        self, request: query_service_pb2.GetTrafficSummaryRequest, alias: bytes
    ) -> bytes:
        query = summary_query(request, self._settings)
        scope = current_principal().cameras
        for camera_id in query.camera_ids:
            await self._camera(camera_id, scope)
        cameras = frozenset(query.camera_ids) if query.camera_ids else None
        key = CacheKey("summary", _fingerprint(query, _scope_tag(scope)), cameras, query.start_ns,
                       query.end_ns)  # fmt: skip

        async def compute() -> bytes:
            camera_ids = list(query.camera_ids) or await self._every_camera(scope)
            check_summary_budget(query, len(camera_ids), self._settings)
            known = self._cameras.known
            lanes = {
                camera_id: [lane.id for lane in known[camera_id].scene.spec.lanes]
                for camera_id in camera_ids
                if camera_id in known
            }
            summaries = await self._traffic.summary(
                camera_ids, query.start_ns, query.end_ns, query.classes, lanes
            )
            response = query_service_pb2.GetTrafficSummaryResponse(summaries=summaries)
            return response.SerializeToString()

        return await self._cached(key, compute, alias)

    async def events(self, request: query_service_pb2.ListEventsRequest, alias: bytes) -> bytes:
        scope = current_principal().cameras
        cameras = scope
        if request.parent != "cameras/-":
            camera_id = parse_camera_name(request.parent, "parent")
            await self._camera(camera_id, scope)
            cameras = frozenset((camera_id,))
        fingerprint = _fingerprint(request.SerializeToString(deterministic=True), _scope_tag(scope))
        key = CacheKey("events", fingerprint, cameras, *_ALL_TIME)

        async def compute() -> bytes:
            response = await self._events.list_events(request, cameras=scope)
            return response.SerializeToString()

        return await self._cached(key, compute, alias)

    async def _cached(
        self, key: CacheKey, compute: Callable[[], Awaitable[bytes]], alias: bytes
    ) -> bytes:
        if not self._flag("query-cache"):
            return await compute()
        return await self._cache.get_or_compute(key, compute, alias=alias)

    # -- uncached ----------------------------------------------------------------------------

    async def GetEvent(
        self, request: query_service_pb2.GetEventRequest, context: _Context
    ) -> query_service_pb2.GetEventResponse:
        event = await self._events.get_event(request.name, cameras=current_principal().cameras)
        return query_service_pb2.GetEventResponse(event=event)

    async def StreamEvents(
        self, request: query_service_pb2.StreamEventsRequest, context: _Context
    ) -> AsyncIterator[query_service_pb2.StreamEventsResponse]:
        query = stream_query(request)
        scope = current_principal().cameras
        if query.camera_id:
            await self._camera(query.camera_id, scope)
        async for change in self._hub.subscribe(query, scope):
            yield change

    # -- live figures ------------------------------------------------------------------------

    async def GetCameraStats(
        self, request: query_service_pb2.GetCameraStatsRequest, context: _Context
    ) -> query_service_pb2.GetCameraStatsResponse:
        camera_id = parse_camera_name(request.name, "name", "/stats")
        await self._camera(camera_id, current_principal().cameras)
        return query_service_pb2.GetCameraStatsResponse(stats=await self._stats.get(camera_id))


def _check_scene_ids(query: CountsQuery, known: KnownCamera) -> None:
    """A line or lane the camera's scene does not have is a mistake, not zero traffic."""
    spec = known.scene.spec
    for field, wanted, ids in (
        ("line_id", query.line_id, [line.id for line in spec.lines]),
        ("lane_id", query.lane_id, [lane.id for lane in spec.lanes]),
    ):
        if wanted and wanted not in ids:
            listed = ", ".join(ids) or "none"
            raise InvalidArgumentError.for_field(
                field, f"camera 'cameras/{query.camera_id}' has no {wanted!r} (it has: {listed})"
            )


def add_query_service(servicer: QueryServicer, server: grpc.aio.Server) -> None:
    """Register QueryService: the cached reads as bytes in, bytes out (``cached``), the
    others with the generated messages."""
    m = query_service_pb2
    unary = grpc.unary_unary_rpc_method_handler
    methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "GetTrafficCounts": unary(servicer.cached(m.GetTrafficCountsRequest, servicer.counts)),
        "GetTrafficSummary": unary(servicer.cached(m.GetTrafficSummaryRequest, servicer.summary)),
        "ListEvents": unary(servicer.cached(m.ListEventsRequest, servicer.events)),
        "GetEvent": unary(
            servicer.GetEvent, m.GetEventRequest.FromString, m.GetEventResponse.SerializeToString
        ),
        "StreamEvents": grpc.unary_stream_rpc_method_handler(
            servicer.StreamEvents,
            m.StreamEventsRequest.FromString,
            m.StreamEventsResponse.SerializeToString,
        ),
        "GetCameraStats": unary(
            servicer.GetCameraStats,
            m.GetCameraStatsRequest.FromString,
            m.GetCameraStatsResponse.SerializeToString,
        ),
    }
    name = m.DESCRIPTOR.services_by_name["QueryService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, methods),))
    server.add_registered_method_handlers(name, methods)
