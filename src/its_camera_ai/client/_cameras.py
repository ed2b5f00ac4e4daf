"""``its-camera-ai cameras add|list|show|rm``: the operator's cameras, through CameraService.

    its-camera-ai cameras add gate-1 --source "rtsp://user:pw@10.0.0.5/stream1" --scene gate-1.yaml
    its-camera-ai cameras list
    its-camera-ai cameras show gate-1
    its-camera-ai cameras rm gate-1

The scene file (YAML or JSON) holds the camera's ``lines``, ``zones``, ``lanes`` and
``calibration`` in the shape of the API's Camera message (protobuf JSON: field names in
snake_case or lowerCamelCase, enums by name). Where the services are: ``--target`` (one
address), ``--up-dir`` (an ``its-camera-ai up`` data directory: the decoder's port and its
token), else ``var/up`` when ``up`` runs here, else ``127.0.0.1:50051``. A file the command
cannot read exits 2 naming the field; a refusal of the server prints its message and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import json_format

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_status_pb2
from its_camera_ai.client._channel import add_connection_arguments, channel_from_arguments
from its_camera_ai.client._endpoints import (
    DEFAULT_TARGET,
    add_up_dir_argument,
    resolve_arguments,
)
from its_camera_ai.client._reports import _table
from its_camera_ai_client import ApiError, AsyncClient, paginate_async

__all__ = ["SCENE_FIELDS", "cameras_main", "load_scene"]

SCENE_FIELDS = ("lines", "zones", "lanes", "calibration")
_NESTED_FIELD = re.compile(r"Failed to parse (\w+) field: ")


def _parse_error(error: json_format.ParseError) -> str:
    """json_format's nested "Failed to parse lines field: Failed to parse segment field: ..."
    as ``lines.segment...: what was wrong``."""
    text = str(error)
    fields = _NESTED_FIELD.findall(text)
    reason = _NESTED_FIELD.sub("", text).splitlines()[0].rstrip(".")
    return f"{'.'.join(fields)}: {reason}" if fields else reason


def load_scene(path: Path) -> camera_pb2.Camera:
    """A Camera holding only the scene in ``path``; ``ValueError`` naming the file and the
    field at fault."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(
            f"{path}: not {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping with {', '.join(SCENE_FIELDS)}")
    for name in document:
        if name not in SCENE_FIELDS:
            raise ValueError(f"{path}: {name}: not a scene field ({', '.join(SCENE_FIELDS)})")
    scene = camera_pb2.Camera()
    try:
        json_format.ParseDict(document, scene)
    except json_format.ParseError as exc:
        raise ValueError(f"{path}: {_parse_error(exc)}") from None
    return scene


def _camera_name(text: str) -> str:
    return text if text.startswith("cameras/") else f"cameras/{text}"


def _as_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


async def _add(client: AsyncClient, args: argparse.Namespace) -> str:
    camera = load_scene(args.scene) if args.scene else camera_pb2.Camera()
    camera.source_uri = args.source
    camera.enabled = not args.disabled
    camera.loop = args.loop
    camera.display_name = args.display_name or ""
    camera.target_fps = args.target_fps or 0.0
    request = camera_service_pb2.CreateCameraRequest(camera=camera, camera_id=args.camera)
    created = (await client.cameras.CreateCamera(request)).camera
    return (
        f"created {created.name} ({'enabled' if created.enabled else 'disabled'}): "
        f"{len(created.lines)} lines, {len(created.zones)} zones, {len(created.lanes)} lanes, "
        f"{'calibrated' if created.HasField('calibration') else 'not calibrated'}"
    )


async def _list(client: AsyncClient, args: argparse.Namespace) -> str:
    request = camera_service_pb2.ListCamerasRequest(page_size=200)
    cameras = [c async for c in paginate_async(client.cameras.ListCameras, request)]
    if args.json:
        return "\n".join(json.dumps(_as_dict(c)) for c in cameras)
    rows = [
        (c.name.removeprefix("cameras/"), "yes" if c.enabled else "no", len(c.lines),
         len(c.zones), len(c.lanes), "yes" if c.HasField("calibration") else "no", c.source_uri)
        for c in cameras
    ]  # fmt: skip
    header = ("camera", "enabled", "lines", "zones", "lanes", "calibrated", "source")
    return _table(header, rows) + f"\n{len(rows)} camera(s)"


async def _show(client: AsyncClient, args: argparse.Namespace) -> str:
    name = _camera_name(args.camera)
    camera = (await client.cameras.GetCamera(camera_service_pb2.GetCameraRequest(name=name))).camera
    status = (
        await client.cameras.GetCameraStatus(
            camera_service_pb2.GetCameraStatusRequest(name=f"{name}/status")
        )
    ).status
    state = camera_status_pb2.CameraState.Name(status.state)
    shown = {"camera": _as_dict(camera), "status": {**_as_dict(status), "state": state}}
    return json.dumps(shown, indent=2)


async def _remove(client: AsyncClient, args: argparse.Namespace) -> str:
    name = _camera_name(args.camera)
    request = camera_service_pb2.DeleteCameraRequest(name=name, allow_missing=args.allow_missing)
    await client.cameras.DeleteCamera(request)
    return f"deleted {name}"


_COMMANDS = {"add": _add, "list": _list, "show": _show, "rm": _remove}


def _parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    add_connection_arguments(connection, default_target=DEFAULT_TARGET)
    add_up_dir_argument(connection)  # unset --target: var/up's up.json if `up` runs here
    parser = argparse.ArgumentParser(
        prog="its-camera-ai cameras",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", parents=[connection], help="create a camera")
    add.add_argument("camera", help="camera id: lower-case letters, digits, hyphens")
    add.add_argument("--source", required=True, help="rtsp://, http(s)://, file://, sim://...")
    add.add_argument("--scene", type=Path, help="YAML/JSON: lines, zones, lanes, calibration")
    add.add_argument("--disabled", action="store_true", help="create it without decoding")
    add.add_argument("--loop", action="store_true", help="file sources: restart at the end")
    add.add_argument("--display-name", help="human-readable name")
    add.add_argument("--target-fps", type=float, help="deliver at most this many frames/s")
    listing = commands.add_parser("list", parents=[connection], help="list cameras")
    listing.add_argument("--json", action="store_true", help="one Camera JSON per line")
    show = commands.add_parser("show", parents=[connection], help="a camera and its status")
    show.add_argument("camera", help="camera id (or cameras/ID)")
    remove = commands.add_parser("rm", parents=[connection], help="delete a camera")
    remove.add_argument("camera", help="camera id (or cameras/ID)")
    remove.add_argument("--allow-missing", action="store_true", help="no error if absent")
    return parser


async def _command(args: argparse.Namespace) -> str:
    async with AsyncClient(channel_from_arguments(resolve_arguments(args, "cameras"))) as client:
        return await _COMMANDS[args.command](client, args)


def cameras_main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        print(asyncio.run(_command(args)))
    except ValueError as exc:  # a scene file, up.json or options that cannot work
        print(f"its-camera-ai cameras: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"its-camera-ai cameras {args.command}: {exc}", file=sys.stderr)
        for violation in exc.field_violations:
            print(f"  {violation.field}: {violation.description}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as exc:
        print(f"its-camera-ai cameras {args.command}: {exc.code().name}: {exc.details()}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0
