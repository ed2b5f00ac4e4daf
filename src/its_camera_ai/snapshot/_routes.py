"""The snapshot routes of the HTTP side port: ``/``, ``/cameras.json`` and
``/cameras/{camera}/snapshot.jpg``.

Images of roads are sensitive: both data routes take the credentials the gRPC port takes
(``authorization: Bearer <JWT>`` or ``x-api-key``), through the host's own authenticator,
and need at least the viewer role and the camera in the caller's scope. In dev the
anonymous role (admin) lets a loopback browser in without one. Client certificates do not
apply to this plain-HTTP port. Refusals are logged as warnings and, outside dev, every
snapshot served is logged with its caller (a read, like the query API's, so not an audit
row: a page refreshing every few seconds would flood the audit log).

The page itself holds no data: its script fetches the JSON and the images with the
credential given after ``#token=`` in its address (a fragment never leaves the browser).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from its_camera_ai.common import PermissionDeniedError, UnauthenticatedError, is_resource_id
from its_camera_ai.common._http import HttpRequest, HttpResponse, HttpRoutes
from its_camera_ai.security import Access, Principal, Role, is_allowed
from its_camera_ai.security._interceptor import FORWARDED_CLAIMS_HEADER, Authenticator
from its_camera_ai.snapshot._frames import RingFrames
from its_camera_ai.snapshot._page import PAGE
from its_camera_ai.snapshot._picture import CameraPicture, draw_snapshot

__all__ = ["CameraSource", "add_snapshot_routes"]

_log = logging.getLogger(__name__)
_VIEWER = Access(Role.VIEWER)
_CREDENTIAL_HEADERS = ("authorization", "x-api-key", FORWARDED_CLAIMS_HEADER)
_NO_STORE = (("Cache-Control", "no-store"),)


class CameraSource(Protocol):
    """The cameras as the analytics engine holds them."""

    def camera_ids(self) -> Sequence[str]: ...

    async def picture(self, camera_id: str) -> CameraPicture | None: ...


class _PlainHttpPeer:
    """What the authenticator reads of a gRPC context beyond the metadata: the client
    certificate (none on this port) and the peer address."""

    def __init__(self, client: str) -> None:
        self._client = client

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def peer(self) -> str:
        return f"ipv4:{self._client}"


def _refusal(status: int, message: str) -> HttpResponse:
    response = HttpResponse.json(status, {"error": message})
    if status == 401:
        return HttpResponse(
            status, response.content_type, response.body, (("WWW-Authenticate", "Bearer"),)
        )
    return response


class _SnapshotRoutes:
    def __init__(
        self,
        source: CameraSource,
        frames: RingFrames,
        authenticator: Authenticator,
        *,
        log_access: bool,
    ) -> None:
        self._source = source
        self._frames = frames
        self._authenticator = authenticator
        self._log_access = log_access

    async def _viewer(self, request: HttpRequest) -> Principal:
        """The caller, if a viewer or more; raises the errors the gRPC port would."""
        metadata = {k: request.headers[k] for k in _CREDENTIAL_HEADERS if k in request.headers}
        context = cast(Any, _PlainHttpPeer(request.client))
        principal = await self._authenticator.authenticate(metadata, context)
        if not is_allowed(principal, _VIEWER):
            raise PermissionDeniedError(
                f"{principal.actor} (role {principal.role.name.lower()}) may not see"
                " snapshots: it needs viewer"
            )
        return principal

    async def _admit(self, request: HttpRequest, camera_id: str | None) -> Principal | HttpResponse:
        try:
            principal = await self._viewer(request)
            if camera_id is not None and not principal.may_see(camera_id):
                raise PermissionDeniedError(f"{principal.actor} may not see camera {camera_id!r}")
        except (UnauthenticatedError, PermissionDeniedError) as exc:
            status = 401 if isinstance(exc, UnauthenticatedError) else 403
            where = {"path": request.path, "client": request.client, "error": exc.message}
            _log.warning("http access refused", extra=where)
            return _refusal(status, exc.message)
        return principal

    async def page(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, "text/html; charset=utf-8", PAGE, _NO_STORE)

    async def cameras(self, request: HttpRequest) -> HttpResponse:
        admitted = await self._admit(request, None)
        if isinstance(admitted, HttpResponse):
            return admitted
        listed = []
        for camera_id in sorted(self._source.camera_ids()):
            picture = await self._source.picture(camera_id) if admitted.may_see(camera_id) else None
            if picture is not None:
                listed.append(_camera_json(picture))
        return HttpResponse.json(200, {"cameras": listed})

    async def snapshot(self, request: HttpRequest) -> HttpResponse:
        camera_id = request.params["camera"]
        if not is_resource_id(camera_id):
            return _refusal(400, f"camera: {camera_id[:80]!r} is not a camera id")
        admitted = await self._admit(request, camera_id)
        if isinstance(admitted, HttpResponse):
            return admitted
        picture = await self._source.picture(camera_id)
        if picture is None:
            return _refusal(404, f"camera {camera_id!r} not found")
        sequence = picture.frame_sequence

        def render() -> bytes:
            return draw_snapshot(picture, self._frames.frame(camera_id, sequence))

        jpeg = await self._frames.run(render)
        if self._log_access:
            _log.info("snapshot served", extra={"camera": camera_id, "actor": admitted.actor,
                                                "client": request.client})  # fmt: skip
        # Which frame of the engine the drawing shows (tracks and counts as of it).
        drawn = (("X-Frame-Sequence", str(sequence or 0)),)
        return HttpResponse(200, "image/jpeg", jpeg, _NO_STORE + drawn)


def _camera_json(picture: CameraPicture) -> dict[str, Any]:
    since = picture.counts_since_ns
    return {
        "camera": picture.camera_id,
        "state": picture.state,
        "frame_size": {"width": picture.width, "height": picture.height},
        "frame_sequence": picture.frame_sequence,
        "tracks": [
            {"id": t.track_id, "class": t.label, "box": list(t.box)} for t in picture.tracks
        ],
        "counts_since": None
        if since is None
        else datetime.fromtimestamp(since / 1e9, UTC).isoformat(),
        "lines": picture.counts_by_line(),
    }


def add_snapshot_routes(
    routes: HttpRoutes,
    source: CameraSource,
    frames: RingFrames,
    authenticator: Authenticator,
    *,
    log_access: bool,
) -> None:
    """Serve the page, the cameras' JSON and their snapshots on a host's side port;
    ``log_access``: log each snapshot served with its caller (outside dev)."""
    handlers = _SnapshotRoutes(source, frames, authenticator, log_access=log_access)
    routes.add("/", handlers.page)
    routes.add("/cameras.json", handlers.cameras)
    routes.add("/cameras/{camera}/snapshot.jpg", handlers.snapshot)
