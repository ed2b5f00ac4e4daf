"""Request checks for CameraService: ids, update masks, the camera's fields and its scene.

Every problem becomes a field violation naming the request field (``camera.zones[2].polygon``)
and all of a request's problems are reported together in one INVALID_ARGUMENT, so a client
fixes its request in one round trip. The scene (lines, zones, lanes, calibration) is checked
by ``its_camera_ai.scene``, the rules analytics builds it with.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from its.camera.v1 import camera_pb2
from its.common.v1 import error_reason_pb2
from its_camera_ai.common import FieldViolation, InvalidArgumentError, is_resource_id, quoted
from its_camera_ai.decoder._uri import SourceUri, UriError, parse_source_uri
from its_camera_ai.scene import (
    ID_RULE,
    MAX_FRAME_HEIGHT,
    MAX_FRAME_WIDTH,
    Frame,
    scene_from_proto,
)

__all__ = [
    "MAX_FPS",
    "WRITABLE_FIELDS",
    "CheckedCamera",
    "check_camera",
    "check_camera_id",
    "check_source_uri",
    "check_update_mask",
    "invalid_source",
]

MAX_FPS = 120.0
MAX_DISPLAY_NAME = 128
# Update-mask paths (AIP-134): every field a client may write.
WRITABLE_FIELDS = frozenset(
    {
        "display_name",
        "source_uri",
        "enabled",
        "loop",
        "target_fps",
        "resolution",
        "lines",
        "zones",
        "lanes",
        "calibration",
    }
)
_OUTPUT_ONLY = frozenset({"name", "create_time", "update_time", "etag"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_camera_id(camera_id: str, field: str) -> str:
    if not is_resource_id(camera_id):
        raise InvalidArgumentError.for_field(field, ID_RULE)
    return camera_id


_MAX_VIOLATIONS_SHOWN = 10


def check_update_mask(paths: Sequence[str], field: str = "update_mask") -> frozenset[str]:
    """The fields an update replaces; "*" means every writable field."""
    if not paths:
        raise InvalidArgumentError.for_field(field, "is required (name the fields to change)")
    if "*" in paths:
        if len(paths) > 1:
            raise InvalidArgumentError.for_field(field, '"*" must be the only path')
        return WRITABLE_FIELDS
    violations = []
    for path in paths:
        head = path.split(".", 1)[0]
        if head in _OUTPUT_ONLY:
            violations.append(FieldViolation(field, f"{quoted(path)} cannot be changed"))
        elif head not in WRITABLE_FIELDS:
            violations.append(FieldViolation(field, f"{quoted(path)} is not a field of Camera"))
        elif path != head:
            violations.append(
                FieldViolation(
                    field, f"{quoted(path)}: sub-paths are not supported, use {quoted(head)}"
                )
            )
    if violations:
        # A bounded answer however many paths were sent (trailing metadata is capped).
        shown = violations[:_MAX_VIOLATIONS_SHOWN]
        if len(violations) > len(shown):
            more = len(violations) - len(shown)
            shown.append(FieldViolation(field, f"and {more} more invalid paths"))
        raise InvalidArgumentError(f"{field}: invalid paths", shown)
    return frozenset(paths)


@dataclass(frozen=True, slots=True)
class CheckedCamera:
    """What checking found out: the parsed source (when it was checked) and the fitted
    calibration's reprojection error (when the camera has one)."""

    source: SourceUri | None
    rms_reprojection_error: float | None


class _Violations:
    """A request's problems, raised together as one INVALID_ARGUMENT (with reason
    UNSUPPORTED_SOURCE when the source is what is unsupported)."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []
        self.unsupported_source = False

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def add_source(self, field: str, problem: UriError) -> None:
        self.add(field, problem.description)
        self.unsupported_source = self.unsupported_source or problem.unsupported

    def error(self) -> InvalidArgumentError | None:
        if not self.items:
            return None
        reason = (
            error_reason_pb2.ERROR_REASON_UNSUPPORTED_SOURCE if self.unsupported_source else None
        )
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.items)
        return InvalidArgumentError(summary, self.items, reason=reason)

    def raise_any(self) -> None:
        error = self.error()
        if error is not None:
            raise error


def invalid_source(field: str, problem: UriError) -> InvalidArgumentError:
    """The INVALID_ARGUMENT for one bad source (found by parsing or by probing it)."""
    problems = _Violations()
    problems.add_source(field, problem)
    error = problems.error()
    assert error is not None
    return error


def check_source_uri(uri: str, *, field: str, file_roots: Sequence[Path]) -> SourceUri:
    try:
        return parse_source_uri(uri, file_roots=file_roots)
    except UriError as exc:
        raise invalid_source(field, exc) from None


def check_camera(
    camera: camera_pb2.Camera,
    *,
    prefix: str,
    file_roots: Sequence[Path],
    check_source: bool = True,
) -> CheckedCamera:
    """Check every writable field of ``camera``; raise one INVALID_ARGUMENT listing all
    problems (reason UNSUPPORTED_SOURCE when the source is what is unsupported)."""
    problems = _Violations()
    source = None
    if check_source:
        try:
            source = parse_source_uri(camera.source_uri, file_roots=file_roots)
        except UriError as exc:
            problems.add_source(f"{prefix}.source_uri", exc)
    _check_text(problems, f"{prefix}.display_name", camera.display_name)
    if not (math.isfinite(camera.target_fps) and 0 <= camera.target_fps <= MAX_FPS):
        problems.add(f"{prefix}.target_fps", f"must be between 0 and {MAX_FPS:g} frames/s")
    frame = _check_resolution(problems, f"{prefix}.resolution", camera)
    _check_display_names(problems, f"{prefix}.lines", camera.lines)
    _check_display_names(problems, f"{prefix}.zones", camera.zones)
    _check_display_names(problems, f"{prefix}.lanes", camera.lanes)
    rms = None
    try:
        scene = scene_from_proto(camera, prefix, frame)
    except InvalidArgumentError as exc:
        problems.items.extend(exc.violations)
    else:
        if scene.homography is not None:
            rms = scene.homography.rms_reprojection_error_px
    problems.raise_any()
    return CheckedCamera(source, rms)


def _check_text(problems: _Violations, field: str, text: str) -> None:
    if len(text) > MAX_DISPLAY_NAME:
        problems.add(field, f"must be at most {MAX_DISPLAY_NAME} characters")
    elif _CONTROL.search(text):
        problems.add(field, "must not contain control characters")


def _check_display_names(
    problems: _Violations,
    field: str,
    entries: Sequence[camera_pb2.CountingLine | camera_pb2.Zone | camera_pb2.Lane],
) -> None:
    for index, entry in enumerate(entries):
        _check_text(problems, f"{field}[{index}].display_name", entry.display_name)


def _check_resolution(problems: _Violations, field: str, camera: camera_pb2.Camera) -> Frame:
    """The frame geometry must fit in: the resolution, or the largest frame."""
    width, height = camera.resolution.width, camera.resolution.height
    largest = Frame(MAX_FRAME_WIDTH, MAX_FRAME_HEIGHT)
    if (width, height) == (0, 0):
        return largest
    if not (0 < width <= MAX_FRAME_WIDTH and 0 < height <= MAX_FRAME_HEIGHT):
        problems.add(field, f"must be 0x0 (native) or within {MAX_FRAME_WIDTH}x{MAX_FRAME_HEIGHT}")
        return largest
    if width % 2 or height % 2:
        problems.add(field, "width and height must be even (4:2:0 video)")
    return Frame(width, height)
