"""CameraService CRUD over loopback gRPC against the real PostgreSQL: validation, AIP
semantics (field masks, etags, page tokens, filters), sealed and masked credentials."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pydantic import SecretStr

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its.camera.v1 import camera_status_pb2 as status_pb2
from its.common.v1 import geometry_pb2
from its_camera_ai.common import DecoderSettings
from its_camera_ai.decoder import KeyRing, Sealed
from tests.decoder.conftest import Decoder, new_key, start_decoder

SECRET_URI = "rtsp://admin:s3cr%40t!@127.0.0.1:9/stream1?Token=abc123xyz&channel=2"
MASKED_URI = "rtsp://admin:***@127.0.0.1:9/stream1?Token=***&channel=2"


def point(x: float, y: float) -> geometry_pb2.Point:
    return geometry_pb2.Point(x=x, y=y)


def polygon(*xy: tuple[float, float]) -> geometry_pb2.Polygon:
    return geometry_pb2.Polygon(vertices=[point(x, y) for x, y in xy])


def segment(a: tuple[float, float], b: tuple[float, float]) -> geometry_pb2.LineSegment:
    return geometry_pb2.LineSegment(start=point(*a), end=point(*b))


def scene_camera(**fields: object) -> camera_pb2.Camera:
    """A disabled camera with one of everything (so nothing connects during CRUD tests)."""
    camera = camera_pb2.Camera(
        display_name="A4 km 12.3 northbound",
        source_uri=SECRET_URI,
        target_fps=15,
        resolution=geometry_pb2.ImageSize(width=640, height=360),
        lines=[camera_pb2.CountingLine(id="stop-line", segment=segment((10, 300), (600, 300)))],
        zones=[camera_pb2.Zone(id="box", polygon=polygon((0, 0), (100, 0), (100, 80), (0, 80)))],
        lanes=[
            camera_pb2.Lane(
                id="nb-1",
                polygon=polygon((100, 360), (300, 360), (320, 150), (280, 150)),
                travel_direction=segment((200, 350), (300, 160)),
            )
        ],
    )
    camera.MergeFrom(camera_pb2.Camera(**fields))  # type: ignore[arg-type]
    return camera


def rpc_error(caught: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> tuple[str, list[str]]:
    """(ErrorInfo reason, BadRequest fields) of a failed call."""
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    reason, fields = "", []
    for detail in status.details:
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(bad):
            fields = [v.field for v in bad.field_violations]
    return reason, fields


async def create(
    decoder: Decoder, camera: camera_pb2.Camera, camera_id: str = ""
) -> camera_pb2.Camera:
    reply = await decoder.stub.CreateCamera(
        camera_service_pb2.CreateCameraRequest(camera=camera, camera_id=camera_id)
    )
    return reply.camera


async def test_create_get_update_delete_with_sealed_masked_credentials(decoder: Decoder) -> None:
    created = await create(decoder, scene_camera(), "north-gate")
    assert created.name == "cameras/north-gate"
    assert created.source_uri == MASKED_URI
    assert created.etag
    assert created.create_time.seconds > 0
    assert created.update_time == created.create_time
    assert [line.id for line in created.lines] == ["stop-line"]

    got = (
        await decoder.stub.GetCamera(camera_service_pb2.GetCameraRequest(name=created.name))
    ).camera
    assert got == created

    # In the table: sealed under the configured key, bound to the camera; never in clear.
    connection = await asyncpg.connect(decoder.dsn)
    try:
        row = await connection.fetchrow(
            "SELECT * FROM decoder_cameras WHERE camera_id = 'north-gate'"
        )
        dump = await connection.fetchval("SELECT decoder_cameras::text FROM decoder_cameras")
    finally:
        await connection.close()
    assert row["source_key_id"] == "k1"
    for secret in ("s3cr", "abc123xyz", SECRET_URI):
        assert secret.encode() not in bytes(row["source_sealed"])
        assert secret not in dump
    keys = KeyRing.parse(decoder.settings.source_keys.get_secret_value(), origin="test")  # type: ignore[union-attr]
    sealed = Sealed(row["source_key_id"], bytes(row["source_sealed"]))
    assert keys.open(sealed, context="north-gate") == SECRET_URI

    # An update that leaves source_uri out of the mask keeps the stored credentials.
    change = camera_pb2.Camera(name=created.name, display_name="renamed", etag=created.etag)
    updated = (
        await decoder.stub.UpdateCamera(
            camera_service_pb2.UpdateCameraRequest(
                camera=change, update_mask=field_mask_pb2.FieldMask(paths=["display_name"])
            )
        )
    ).camera
    assert updated.display_name == "renamed"
    assert updated.source_uri == MASKED_URI
    assert updated.etag != created.etag
    assert updated.update_time.ToNanoseconds() > created.update_time.ToNanoseconds()
    assert updated.create_time == created.create_time
    assert list(updated.zones) == list(created.zones)  # untouched fields stay

    listed = (await decoder.stub.ListCameras(camera_service_pb2.ListCamerasRequest())).cameras
    assert [c.source_uri for c in listed] == [MASKED_URI]

    # The old etag no longer matches: ABORTED, for update and delete alike.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await decoder.stub.DeleteCamera(
            camera_service_pb2.DeleteCameraRequest(name=created.name, etag=created.etag)
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert rpc_error(caught)[0] == "ETAG_MISMATCH"

    await decoder.stub.DeleteCamera(
        camera_service_pb2.DeleteCameraRequest(name=created.name, etag=updated.etag)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await decoder.stub.GetCamera(camera_service_pb2.GetCameraRequest(name=created.name))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await decoder.stub.DeleteCamera(camera_service_pb2.DeleteCameraRequest(name=created.name))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    await decoder.stub.DeleteCamera(
        camera_service_pb2.DeleteCameraRequest(name=created.name, allow_missing=True)
    )


async def test_duplicate_id_is_already_exists_and_ids_are_assigned(decoder: Decoder) -> None:
    await create(decoder, scene_camera(), "twin")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(decoder, scene_camera(), "twin")
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assigned = await create(decoder, scene_camera())
    assert assigned.name.startswith("cameras/cam-")


def _bad(**fields: object) -> camera_pb2.Camera:
    camera = scene_camera()
    for name, value in fields.items():
        camera.ClearField(name)  # type: ignore[arg-type]
        if isinstance(value, list):
            getattr(camera, name).extend(value)
        elif isinstance(value, camera_pb2.Calibration | geometry_pb2.ImageSize):
            getattr(camera, name).CopyFrom(value)
        else:
            setattr(camera, name, value)
    return camera


def _calibration(*pairs: tuple[tuple[float, float], tuple[float, float]]) -> camera_pb2.Calibration:
    return camera_pb2.Calibration(
        points=[
            camera_pb2.CalibrationPoint(
                image_point=point(*image), world_point=geometry_pb2.WorldPoint(x=w[0], y=w[1])
            )
            for image, w in pairs
        ]
    )


@pytest.mark.parametrize(
    ("camera", "field", "reason"),
    [
        (_bad(source_uri="ftp://cam.example/video"), "camera.source_uri", "UNSUPPORTED_SOURCE"),
        (_bad(source_uri="file:///etc/passwd"), "camera.source_uri", "INVALID_FIELD"),
        (_bad(source_uri="rtsp:///stream"), "camera.source_uri", "INVALID_FIELD"),
        (_bad(source_uri="rtsp://admin:***@10.0.0.5/s"), "camera.source_uri", "INVALID_FIELD"),
        (_bad(source_uri="not a uri"), "camera.source_uri", "INVALID_FIELD"),
        (_bad(source_uri=""), "camera.source_uri", "INVALID_FIELD"),
        (_bad(target_fps=10_000.0), "camera.target_fps", "INVALID_FIELD"),
        (_bad(target_fps=float("nan")), "camera.target_fps", "INVALID_FIELD"),
        (_bad(display_name="x" * 129), "camera.display_name", "INVALID_FIELD"),
        (
            _bad(resolution=geometry_pb2.ImageSize(width=641, height=360)),
            "camera.resolution",
            "INVALID_FIELD",
        ),
        (
            _bad(
                zones=[
                    camera_pb2.Zone(
                        id="bow", polygon=polygon((0, 0), (100, 100), (100, 0), (0, 100))
                    )
                ]
            ),
            "camera.zones[0].polygon",
            "INVALID_FIELD",
        ),
        (
            _bad(zones=[camera_pb2.Zone(id="far", polygon=polygon((0, 0), (900, 0), (0, 90)))]),
            "camera.zones[0].polygon.vertices[1]",
            "INVALID_FIELD",
        ),
        (
            _bad(
                lines=[
                    camera_pb2.CountingLine(id="a", segment=segment((0, 0), (10, 10))),
                    camera_pb2.CountingLine(id="a", segment=segment((0, 5), (10, 15))),
                ]
            ),
            "camera.lines[1].id",
            "INVALID_FIELD",
        ),
        (
            _bad(lines=[camera_pb2.CountingLine(id="dot", segment=segment((5, 5), (5, 5)))]),
            "camera.lines[0].segment",
            "INVALID_FIELD",
        ),
        (
            _bad(
                calibration=_calibration(
                    ((0, 0), (0, 0)), ((10, 10), (1, 0)), ((20, 20), (2, 5)), ((5, 90), (0, 9))
                )
            ),
            "camera.calibration.points",
            "INVALID_FIELD",
        ),
        (
            _bad(calibration=_calibration(((0, 0), (0, 0)), ((10, 0), (1, 0)))),
            "camera.calibration.points",
            "INVALID_FIELD",
        ),
    ],
)
async def test_bad_cameras_are_invalid_argument_naming_the_field(
    decoder: Decoder, camera: camera_pb2.Camera, field: str, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(decoder, camera, "bad")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc_error(caught) == (reason, [field])
    assert field in (caught.value.details() or "")
    assert "s3cr" not in (caught.value.details() or "")


async def test_file_sources_are_probed_on_create(decoder: Decoder, samples: Path) -> None:
    (samples / "notes.txt").write_text("not a video")
    for uri, reason in [
        (f"file://{samples}/missing.mp4", "INVALID_FIELD"),
        (f"file://{samples}/notes.txt", "UNSUPPORTED_SOURCE"),
        (f"file://{samples}/../../../../etc/hostname", "INVALID_FIELD"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create(decoder, camera_pb2.Camera(source_uri=uri), "probe")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, uri
        assert rpc_error(caught) == (reason, ["camera.source_uri"]), uri
    for bad_id in ("Upper", "9lives", "trailing-", "x" * 64):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create(decoder, scene_camera(), bad_id)
        assert rpc_error(caught)[1] == ["camera_id"]


async def test_calibration_gets_its_reprojection_error(decoder: Decoder) -> None:
    # An exact homography: the image points are the world points scaled and shifted.
    pairs = [
        ((100 + 10 * x, 300 - 10 * y), (x, y))
        for x, y in [(0, 0), (20, 0), (20, 20), (0, 20), (10, 5)]
    ]
    created = await create(decoder, _bad(calibration=_calibration(*pairs)), "calibrated")
    assert created.calibration.rms_reprojection_error_pixels == pytest.approx(0, abs=1e-6)
    assert len(created.calibration.points) == 5


async def update(decoder: Decoder, camera: camera_pb2.Camera, *paths: str) -> camera_pb2.Camera:
    reply = await decoder.stub.UpdateCamera(
        camera_service_pb2.UpdateCameraRequest(
            camera=camera, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
        )
    )
    return reply.camera


async def test_update_masks_follow_aip_134(decoder: Decoder) -> None:
    created = await create(decoder, scene_camera(), "masked")
    for paths, fragment in [
        ((), "update_mask"),
        (("name",), "update_mask"),
        (("etag",), "update_mask"),
        (("calibration.points",), "update_mask"),
        (("colour",), "update_mask"),
        (("*", "display_name"), "update_mask"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await update(decoder, camera_pb2.Camera(name=created.name), *paths)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, paths
        assert rpc_error(caught)[1][0] == fragment, paths

    # The masked value sent back is refused rather than stored as the new password.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await update(
            decoder, camera_pb2.Camera(name=created.name, source_uri=MASKED_URI), "source_uri"
        )
    assert rpc_error(caught) == ("INVALID_FIELD", ["camera.source_uri"])

    # Repeated fields are replaced as a whole; an emptied one is cleared.
    zones = [camera_pb2.Zone(id="new", polygon=polygon((1, 1), (50, 1), (50, 50)))]
    changed = await update(
        decoder, camera_pb2.Camera(name=created.name, zones=zones), "zones", "lines"
    )
    assert [z.id for z in changed.zones] == ["new"]
    assert list(changed.lines) == []
    assert [lane.id for lane in changed.lanes] == ["nb-1"]

    # The merged camera is validated: geometry must still fit a smaller resolution.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await update(
            decoder,
            camera_pb2.Camera(
                name=created.name, resolution=geometry_pb2.ImageSize(width=64, height=48)
            ),
            "resolution",
        )
    fields = rpc_error(caught)[1]
    assert "camera.zones[0].polygon.vertices[2]" in fields
    assert any(field.startswith("camera.lanes[0]") for field in fields)

    # "*" replaces every writable field: unset ones are cleared, the source must be given.
    replaced = await update(
        decoder,
        camera_pb2.Camera(name=created.name, source_uri="rtsp://viewer@127.0.0.1:9/other"),
        "*",
    )
    assert replaced.source_uri == "rtsp://viewer@127.0.0.1:9/other"
    assert (replaced.display_name, list(replaced.zones), replaced.HasField("resolution")) == (
        "",
        [],
        False,
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await update(
            decoder, camera_pb2.Camera(name="cameras/nope", display_name="x"), "display_name"
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await update(decoder, camera_pb2.Camera(name="nope", display_name="x"), "display_name")
    assert rpc_error(caught)[1] == ["camera.name"]


async def list_all(decoder: Decoder, **request: object) -> list[str]:
    names, token = [], ""
    while True:
        reply = await decoder.stub.ListCameras(
            camera_service_pb2.ListCamerasRequest(page_token=token, **request)  # type: ignore[arg-type]
        )
        names += [c.name.removeprefix("cameras/") for c in reply.cameras]
        token = reply.next_page_token
        if not token:
            return names


async def test_list_pages_orders_and_filters(decoder: Decoder) -> None:
    for index, name in enumerate(["e", "b", "d", "a", "c"]):
        await create(
            decoder,
            scene_camera(display_name=f"A{index % 2} {name}", loop=index % 2 == 0),
            f"cam-{name}",
        )
    assert await list_all(decoder, page_size=2) == ["cam-a", "cam-b", "cam-c", "cam-d", "cam-e"]
    assert await list_all(decoder, page_size=2, order_by="display_name desc") == [
        "cam-b",
        "cam-a",
        "cam-e",
        "cam-d",
        "cam-c",
    ]
    assert await list_all(decoder, page_size=1, order_by="create_time desc, name") == [
        "cam-c",
        "cam-a",
        "cam-d",
        "cam-b",
        "cam-e",
    ]
    assert await list_all(decoder, filter='display_name:"A1"') == ["cam-a", "cam-b"]
    assert await list_all(decoder, filter='loop = true AND NOT display_name = "A0 e"') == [
        "cam-c",
        "cam-d",
    ]
    assert await list_all(
        decoder, filter='loop = false OR display_name:"e" AND enabled = false'
    ) == ["cam-a", "cam-b", "cam-e"]
    assert await list_all(decoder, filter='create_time > "2000-01-01T00:00:00Z"', page_size=3) == [
        "cam-a",
        "cam-b",
        "cam-c",
        "cam-d",
        "cam-e",
    ]

    first = await decoder.stub.ListCameras(
        camera_service_pb2.ListCamerasRequest(page_size=2, filter="loop = true")
    )
    assert first.next_page_token
    for request, reason in [
        (dict(page_token=first.next_page_token, filter="loop = false"), "INVALID_PAGE_TOKEN"),
        (dict(page_token=first.next_page_token + "x"), "INVALID_PAGE_TOKEN"),
        (dict(page_token="garbage!"), "INVALID_PAGE_TOKEN"),
        (dict(filter="colour = 1"), "INVALID_FILTER"),
        (dict(filter="enabled > true"), "INVALID_FILTER"),
        (dict(filter='create_time < "yesterday"'), "INVALID_FILTER"),
        (dict(filter="(enabled = true"), "INVALID_FILTER"),
        (dict(page_size=-1), "INVALID_FIELD"),
        (dict(order_by="source_uri"), "INVALID_FIELD"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await decoder.stub.ListCameras(camera_service_pb2.ListCamerasRequest(**request))  # type: ignore[arg-type]
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert rpc_error(caught)[0] == reason, request
    # Page size may change between pages.
    second = await decoder.stub.ListCameras(
        camera_service_pb2.ListCamerasRequest(
            page_size=5, filter="loop = true", page_token=first.next_page_token
        )
    )
    assert [c.name for c in second.cameras] == ["cameras/cam-e"]


async def test_key_rotation_reseals_on_start(
    postgres_dsn: str, decoder_settings: DecoderSettings
) -> None:
    host, channel = await start_decoder(decoder_settings, postgres_dsn)
    try:
        stub = camera_service_pb2_grpc.CameraServiceStub(channel)
        decoder = Decoder(host, stub, decoder_settings, postgres_dsn)
        await create(decoder, scene_camera(), "rotated")
    finally:
        await channel.close()
        await host.stop()

    old = decoder_settings.source_keys.get_secret_value()  # type: ignore[union-attr]
    # The new key first (it seals from now on), the old one still listed (it opens).
    rotated = decoder_settings.model_copy(
        update={"source_keys": SecretStr(f"k2:{new_key()}\n{old}")}
    )
    host, channel = await start_decoder(rotated, postgres_dsn)
    try:
        connection = await asyncpg.connect(postgres_dsn)
        try:
            row = await connection.fetchrow(
                "SELECT source_key_id, source_sealed FROM decoder_cameras"
            )
        finally:
            await connection.close()
        assert row["source_key_id"] == "k2"
        keys = KeyRing.parse(rotated.source_keys.get_secret_value(), origin="test")  # type: ignore[union-attr]
        assert keys.open(Sealed("k2", bytes(row["source_sealed"])), context="rotated") == SECRET_URI
    finally:
        await channel.close()
        await host.stop()


async def test_a_source_sealed_under_a_missing_key_parks_its_camera(
    postgres_dsn: str, decoder_settings: DecoderSettings
) -> None:
    host, channel = await start_decoder(decoder_settings, postgres_dsn)
    try:
        decoder = Decoder(
            host, camera_service_pb2_grpc.CameraServiceStub(channel), decoder_settings, postgres_dsn
        )
        await decoder.create("orphan", "sim://road?width=64&height=48", enabled=True)
    finally:
        await channel.close()
        await host.stop()

    # Restarted with only a new key: the old one was dropped before the rows were re-sealed.
    lost = decoder_settings.model_copy(update={"source_keys": SecretStr(f"k9:{new_key()}")})
    host, channel = await start_decoder(lost, postgres_dsn)
    try:
        decoder = Decoder(
            host, camera_service_pb2_grpc.CameraServiceStub(channel), lost, postgres_dsn
        )
        status = await decoder.wait_for(
            "orphan", lambda s: s.state == status_pb2.CAMERA_STATE_FAILED
        )
        assert "'k1' is not loaded" in status.last_error
        got = await decoder.stub.GetCamera(
            camera_service_pb2.GetCameraRequest(name="cameras/orphan")
        )
        assert got.camera.source_uri == "sim://road?width=64&height=48"
    finally:
        await channel.close()
        await host.stop()


async def test_huge_masks_filters_and_orders_are_invalid_argument_not_exhausted(
    decoder: Decoder,
) -> None:
    """Echoed request strings are cut: status details travel in trailing metadata, which a
    client refuses past 16 KiB (RESOURCE_EXHAUSTED instead of the error it was)."""
    await decoder.create("huge", "sim://road", enabled=False)
    long = "x" * 100_000
    calls = [
        decoder.stub.UpdateCamera(
            camera_service_pb2.UpdateCameraRequest(
                camera=camera_pb2.Camera(name="cameras/huge"),
                update_mask=field_mask_pb2.FieldMask(paths=[long]),
            )
        ),
        decoder.stub.UpdateCamera(
            camera_service_pb2.UpdateCameraRequest(
                camera=camera_pb2.Camera(name="cameras/huge"),
                update_mask=field_mask_pb2.FieldMask(paths=[f"p{i}" * 400 for i in range(1000)]),
            )
        ),
        decoder.stub.ListCameras(camera_service_pb2.ListCamerasRequest(order_by=long)),
        decoder.stub.ListCameras(camera_service_pb2.ListCamerasRequest(filter=f"{long} = 1")),
        decoder.stub.ListCameras(
            camera_service_pb2.ListCamerasRequest(filter=f"enabled = true {long}")
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
        assert status is not None
        assert status.ByteSize() < 4096
