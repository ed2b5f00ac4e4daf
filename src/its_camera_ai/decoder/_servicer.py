"""``its.camera.v1.CameraService``: camera CRUD (AIP-131..135) and live decoder status.

Writes go to PostgreSQL first, then the supervisor is told what the camera should now be
doing, so a camera's decoder starts, stops or restarts with its RPC and the others run on.
Source URIs arrive in plain text, are checked, sealed with the primary key and from then
on exist only sealed (in the table) and masked (in every response and status message);
the plain text reaches only the camera's worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import grpc

from its.camera.v1 import (
    camera_pb2,
    camera_service_pb2,
    camera_service_pb2_grpc,
)
from its_camera_ai.common import (
    DecoderSettings,
    FieldKind,
    InvalidArgumentError,
    ListField,
    ListingSpec,
    ListQuery,
    PermissionDeniedError,
    parse_camera_name,
)
from its_camera_ai.decoder._crypto import KeyRing, Sealed, SealedUnreadable
from its_camera_ai.decoder._egress import EgressPolicy
from its_camera_ai.decoder._sources import probe_file, scene_config
from its_camera_ai.decoder._status import StatusBoard, watch_messages
from its_camera_ai.decoder._store import CameraStore, StoredCamera, camera_not_found
from its_camera_ai.decoder._supervisor import Supervisor
from its_camera_ai.decoder._uri import SourceKind, SourceUri, UriError, parse_source_uri
from its_camera_ai.decoder._validation import (
    CheckedCamera,
    check_camera,
    check_camera_id,
    check_source_uri,
    check_update_mask,
    invalid_source,
)
from its_camera_ai.decoder._worker import DecodeSpec
from its_camera_ai.security import current_principal, note_audit

__all__ = ["CameraServicer", "compile_list_query"]

_Context = grpc.aio.ServicerContext[Any, Any]
_OUTPUT_ONLY = ("name", "create_time", "update_time", "etag")
_MIN_REFRESH_SECONDS = 1.0

_DISPLAY_NAME = ListField("display_name", FieldKind.TEXT)
_CREATE_TIME = ListField("create_time", FieldKind.TIMESTAMP)
_UPDATE_TIME = ListField("update_time", FieldKind.TIMESTAMP)
# ListCamerasRequest's filter and order_by fields, over the decoder_cameras columns.
_CAMERAS = ListingSpec(
    filters={
        "display_name": _DISPLAY_NAME,
        "enabled": ListField("enabled", FieldKind.BOOL),
        "loop": ListField("loop", FieldKind.BOOL),
        "create_time": _CREATE_TIME,
        "update_time": _UPDATE_TIME,
    },
    orders={
        "name": ListField("camera_id", FieldKind.TEXT),
        "display_name": _DISPLAY_NAME,
        "create_time": _CREATE_TIME,
        "update_time": _UPDATE_TIME,
    },
    default_order="name",
    tie_breakers=("camera_id",),
)


def compile_list_query(
    filter_text: str, order_by: str, page_size: int, page_token: str
) -> ListQuery:
    """Check and compile a ListCameras request, or raise INVALID_ARGUMENT."""
    return _CAMERAS.compile(filter_text, order_by, page_size, page_token)


def _prepared(camera: camera_pb2.Camera, checked: CheckedCamera) -> camera_pb2.Camera:
    """``camera`` as stored: output-only fields cleared or computed, source masked."""
    prepared = camera_pb2.Camera()
    prepared.CopyFrom(camera)
    for name in _OUTPUT_ONLY:
        prepared.ClearField(name)  # type: ignore[arg-type]
    if checked.source is not None:
        prepared.source_uri = checked.source.masked
    if checked.rms_reprojection_error is not None:
        prepared.calibration.rms_reprojection_error_pixels = checked.rms_reprojection_error
    return prepared


class CameraServicer(camera_service_pb2_grpc.CameraServiceServicer):
    def __init__(
        self,
        *,
        settings: DecoderSettings,
        store: CameraStore,
        keys: KeyRing,
        board: StatusBoard,
        supervisor: Supervisor,
        egress: EgressPolicy,
    ) -> None:
        self._settings = settings
        self._egress = egress
        self._store = store
        self._keys = keys
        self._board = board
        self._supervisor = supervisor

    # --- the decoders ---------------------------------------------------------------------

    def supervise(self, stored: StoredCamera, source: SourceUri | None = None) -> None:
        """Tell the supervisor what the stored camera should be doing. ``source``: the
        checked plain source when the caller has it, else it is unsealed here."""
        camera, camera_id = stored.camera, stored.camera_id
        if not camera.enabled:
            self._supervisor.apply(camera_id, None)
            return
        if source is None:
            try:
                plain = self._keys.open(stored.sealed, context=camera_id)
                source = parse_source_uri(plain, file_roots=self._settings.file_roots)
                # The policy may have changed since the camera was written.
                self._egress.check_uri(source)
            except (SealedUnreadable, UriError) as exc:
                self._supervisor.apply(camera_id, None, failure=f"source unusable: {exc}")
                return
        resolution = (camera.resolution.width, camera.resolution.height)
        spec = DecodeSpec(
            camera_id=camera_id,
            source=source,
            loop=camera.loop,
            target_fps=camera.target_fps,
            resolution=resolution if resolution != (0, 0) else None,
        )
        self._supervisor.apply(camera_id, spec)

    async def _check_openable(self, source: SourceUri, field: str) -> None:
        """The egress policy first (its scheme rule before any probe; a refused
        destination is PERMISSION_DENIED). Then sources the decoder can inspect right away
        (local files, simulator scenes) are checked on write; network sources report
        problems in the camera's status."""
        await self._egress.check_source(source, field=field)
        try:
            if source.kind is SourceKind.FILE:
                await asyncio.to_thread(probe_file, source)
            elif source.kind is SourceKind.SYNTHETIC:
                scene_config(source)
        except UriError as exc:
            raise invalid_source(field, exc) from None

    def _check(self, camera: camera_pb2.Camera, *, check_source: bool) -> CheckedCamera:
        return check_camera(
            camera,
            prefix="camera",
            file_roots=self._settings.file_roots,
            check_source=check_source,
        )

    # --- CRUD -----------------------------------------------------------------------------

    async def CreateCamera(
        self, request: camera_service_pb2.CreateCameraRequest, context: _Context
    ) -> camera_service_pb2.CreateCameraResponse:
        if request.camera_id:
            camera_id = check_camera_id(request.camera_id, "camera_id")
        else:
            camera_id = f"cam-{secrets.token_hex(6)}"
        _may_access(camera_id)
        if not request.HasField("camera"):
            raise InvalidArgumentError.for_field("camera", "is required")
        checked = self._check(request.camera, check_source=True)
        assert checked.source is not None
        await self._check_openable(checked.source, "camera.source_uri")
        sealed = self._keys.seal(checked.source.uri, context=camera_id)
        stored = await self._store.create(camera_id, _prepared(request.camera, checked), sealed)
        self.supervise(stored, checked.source)
        return camera_service_pb2.CreateCameraResponse(camera=stored.camera)

    async def GetCamera(
        self, request: camera_service_pb2.GetCameraRequest, context: _Context
    ) -> camera_service_pb2.GetCameraResponse:
        stored = await self._store.get(_may_access(parse_camera_name(request.name, "name")))
        return camera_service_pb2.GetCameraResponse(camera=stored.camera)

    async def ListCameras(
        self, request: camera_service_pb2.ListCamerasRequest, context: _Context
    ) -> camera_service_pb2.ListCamerasResponse:
        query = compile_list_query(
            request.filter, request.order_by, request.page_size, request.page_token
        )
        scope = current_principal().cameras
        if scope is not None:
            query = query.and_where("camera_id = ANY({}::text[])", sorted(scope))
        page, token = await self._store.page(query)
        return camera_service_pb2.ListCamerasResponse(
            cameras=[stored.camera for stored in page], next_page_token=token
        )

    async def UpdateCamera(
        self, request: camera_service_pb2.UpdateCameraRequest, context: _Context
    ) -> camera_service_pb2.UpdateCameraResponse:
        camera_id = _may_access(parse_camera_name(request.camera.name, "camera.name"))
        paths = check_update_mask(list(request.update_mask.paths))
        source = None
        if "source_uri" in paths:
            # Checked (and probed) before the row is locked: probing may read a file.
            source = check_source_uri(
                request.camera.source_uri,
                field="camera.source_uri",
                file_roots=self._settings.file_roots,
            )
            await self._check_openable(source, "camera.source_uri")

        def change(current: StoredCamera) -> tuple[camera_pb2.Camera, Sealed]:
            merged = camera_pb2.Camera()
            merged.CopyFrom(current.camera)
            for path in paths:
                _replace_field(request.camera, merged, path)
            checked = self._check(merged, check_source=False)
            sealed = current.sealed
            if source is not None:
                sealed = self._keys.seal(source.uri, context=camera_id)
                merged.source_uri = source.masked
            return _prepared(merged, checked), sealed

        stored = await self._store.update(camera_id, request.camera.etag, change)
        self.supervise(stored, source)
        return camera_service_pb2.UpdateCameraResponse(camera=stored.camera)

    async def DeleteCamera(
        self, request: camera_service_pb2.DeleteCameraRequest, context: _Context
    ) -> camera_service_pb2.DeleteCameraResponse:
        camera_id = _may_access(parse_camera_name(request.name, "name"))
        if await self._store.delete(camera_id, request.etag, allow_missing=request.allow_missing):
            await self._supervisor.remove(camera_id)
        return camera_service_pb2.DeleteCameraResponse()

    # --- status ---------------------------------------------------------------------------

    async def GetCameraStatus(
        self, request: camera_service_pb2.GetCameraStatusRequest, context: _Context
    ) -> camera_service_pb2.GetCameraStatusResponse:
        camera_id = _may_access(parse_camera_name(request.name, "name", "/status"))
        tracker = self._board.get(camera_id)
        if tracker is None:
            raise camera_not_found(camera_id)
        return camera_service_pb2.GetCameraStatusResponse(status=tracker.snapshot())

    async def WatchCameraStatus(
        self, request: camera_service_pb2.WatchCameraStatusRequest, context: _Context
    ) -> AsyncIterator[camera_service_pb2.WatchCameraStatusResponse]:
        camera_id = parse_camera_name(request.camera, "camera") if request.camera else None
        if camera_id is not None:
            _may_access(camera_id)
        scope = current_principal().cameras
        refresh = None
        if request.HasField("refresh_interval"):
            # From seconds and nanos: a timedelta keeps microseconds only, so 1 ns read
            # as 0 (unset) and slipped past the minimum.
            interval = request.refresh_interval
            refresh = (interval.seconds + interval.nanos / 1e9) or None
            if refresh is not None and refresh < _MIN_REFRESH_SECONDS:
                raise InvalidArgumentError.for_field(
                    "refresh_interval", "must be at least 1 second (or unset)"
                )
        if camera_id is not None and self._board.get(camera_id) is None:
            raise camera_not_found(camera_id)
        # Messages are written here rather than yielded. grpc writes a yielded message
        # outside this generator's frames, and a client cancelling during that write left
        # the generators (the tracing interceptor's among them) suspended, to be closed
        # later in another context, where detaching the span's context fails. Written
        # here, a cancellation unwinds every generator in the RPC's own task.
        async with contextlib.aclosing(watch_messages(self._board, camera_id, refresh)) as stream:
            async for message in stream:
                if scope is not None and _camera_of(message) not in scope:
                    continue
                try:
                    await context.write(message)
                except grpc.aio.BaseError:
                    # The call is over (client gone, server stopping); grpc reports that
                    # itself once this returns.
                    return
        return
        # Unreachable, on purpose: the yield makes this an async generator, the form of
        # streaming handler the interceptors (tracing, metrics, errors) wrap.
        yield


def _may_access(camera_id: str) -> str:
    """``camera_id``, noted for the audit log, if the caller's scope includes it."""
    note_audit(resource=f"cameras/{camera_id}")
    if not current_principal().may_see(camera_id):
        raise PermissionDeniedError(
            f"camera 'cameras/{camera_id}' is outside the cameras this caller may access",
            metadata={"resource": f"cameras/{camera_id}"},
        )
    return camera_id


def _camera_of(message: camera_service_pb2.WatchCameraStatusResponse) -> str:
    return message.status.name.removeprefix("cameras/").removesuffix("/status")


def _replace_field(source: camera_pb2.Camera, target: camera_pb2.Camera, path: str) -> None:
    """Replace ``target.path`` with ``source.path`` as a whole (AIP-134: repeated and message
    fields are not merged)."""
    target.ClearField(path)  # type: ignore[arg-type]
    value = getattr(source, path)
    if path in ("lines", "zones", "lanes"):
        getattr(target, path).extend(value)
    elif path in ("resolution", "calibration"):
        if source.HasField(path):  # type: ignore[arg-type]
            getattr(target, path).CopyFrom(value)
    else:
        setattr(target, path, value)
