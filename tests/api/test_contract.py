"""The API contract: every generated module imports and the descriptors follow the conventions.

Conventions (docs: /work/shared/DESIGN.md "API conventions"; buf STANDARD lint; AIPs):
packages ``its.<area>.v1`` matching directories, ``XRequest``/``XResponse`` per RPC, enum
zero values ``*_UNSPECIFIED`` and values prefixed with the enum name, resource ``name``
fields, AIP-131..135 standard method shapes, AIP-158 pagination, AIP-142 time fields,
every element documented.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from google.api import field_behavior_pb2, resource_pb2  # type: ignore[import-untyped]
from google.protobuf import descriptor, descriptor_pb2

from tests.api._contract import PROTOS, generated_modules, its_protos

FieldDescriptor = descriptor.FieldDescriptor

# The RPCs of the contract. Removing or renaming one is a breaking change: update this list
# only together with a new API version.
EXPECTED_RPCS: dict[str, set[str]] = {
    "its.camera.v1.CameraService": {
        "CreateCamera",
        "GetCamera",
        "ListCameras",
        "UpdateCamera",
        "DeleteCamera",
        "GetCameraStatus",
        "WatchCameraStatus",
    },
    "its.inference.v1.InferenceService": {"Detect", "GetModel"},
    "its.analytics.v1.AnalyticsService": {"StreamDetectionBatches", "ResetCameraState"},
    "its.query.v1.QueryService": {
        "GetTrafficCounts",
        "GetTrafficSummary",
        "ListEvents",
        "GetEvent",
        "StreamEvents",
        "GetCameraStats",
    },
    "its.admin.v1.AdminService": {
        "CreateApiKey",
        "ListApiKeys",
        "DeleteApiKey",
        "GetFeatureFlag",
        "ListFeatureFlags",
        "UpdateFeatureFlag",
        "ListAuditLogEntries",
    },
}
# (service, method): (client streams, server streams); the rest are unary.
STREAMING = {
    ("its.camera.v1.CameraService", "WatchCameraStatus"): (False, True),
    ("its.analytics.v1.AnalyticsService", "StreamDetectionBatches"): (True, True),
    ("its.query.v1.QueryService", "StreamEvents"): (False, True),
}
ERROR_DOMAIN = "its-camera-ai.dev"
REQUIRED = field_behavior_pb2.REQUIRED
IDENTIFIER = field_behavior_pb2.IDENTIFIER


# ---------------------------------------------------------------------------------------
# Descriptor walking


def pb2_modules() -> list[ModuleType]:
    return generated_modules("_pb2")


def files() -> list[descriptor.FileDescriptor]:
    return [module.DESCRIPTOR for module in pb2_modules()]


def walk_messages(
    containers: list[descriptor.Descriptor],
) -> Iterator[descriptor.Descriptor]:
    for message in containers:
        yield message
        yield from walk_messages(list(message.nested_types))


def messages() -> list[descriptor.Descriptor]:
    return [m for f in files() for m in walk_messages(list(f.message_types_by_name.values()))]


def enums() -> list[descriptor.EnumDescriptor]:
    found = [e for f in files() for e in f.enum_types_by_name.values()]
    found += [e for m in messages() for e in m.enum_types]
    return found


def services() -> list[descriptor.ServiceDescriptor]:
    return [s for f in files() for s in f.services_by_name.values()]


def behaviors(field: descriptor.FieldDescriptor) -> set[int]:
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def resource_of(message: descriptor.Descriptor) -> resource_pb2.ResourceDescriptor | None:
    options = message.GetOptions()
    if not options.HasExtension(resource_pb2.resource):
        return None
    return options.Extensions[resource_pb2.resource]


def resources() -> dict[str, descriptor.Descriptor]:
    """Resource type (e.g. "its-camera-ai.dev/Camera") -> the message."""
    found = {}
    for message in messages():
        resource = resource_of(message)
        if resource is not None:
            found[resource.type] = message
    return found


def upper_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


# ---------------------------------------------------------------------------------------
# Imports and layout


def test_every_proto_has_an_importable_module() -> None:
    names = {module.DESCRIPTOR.name for module in pb2_modules()}
    assert names == set(its_protos())
    for module in pb2_modules():
        proto = module.DESCRIPTOR
        area, version = proto.name.split("/")[1:3]
        assert proto.package == f"its.{area}.{version}", proto.name
        assert version == "v1", proto.name
        as_proto = descriptor_pb2.FileDescriptorProto()
        proto.CopyToProto(as_proto)
        assert as_proto.syntax == "proto3", proto.name


def test_services_have_grpc_stubs() -> None:
    grpc_modules = {m.__name__: m for m in generated_modules("_pb2_grpc")}
    for service in services():
        module_name = service.file.name.removesuffix(".proto").replace("/", ".") + "_pb2_grpc"
        module = grpc_modules[module_name]
        for attribute in (
            f"{service.name}Stub",
            f"{service.name}Servicer",
            f"add_{service.name}Servicer_to_server",
        ):
            assert hasattr(module, attribute), f"{module_name}.{attribute}"


def test_the_rpcs_are_the_contracted_ones() -> None:
    found = {s.full_name: {m.name for m in s.methods} for s in services()}
    assert found == EXPECTED_RPCS


# ---------------------------------------------------------------------------------------
# Naming (buf STANDARD, DESIGN.md)


def test_rpcs_have_their_own_request_and_response() -> None:
    seen: set[str] = set()
    for service in services():
        assert service.name.endswith("Service"), service.full_name
        for method in service.methods:
            package = service.file.package
            assert method.input_type.full_name == f"{package}.{method.name}Request"
            assert method.output_type.full_name == f"{package}.{method.name}Response"
            for message in (method.input_type, method.output_type):
                assert message.full_name not in seen, f"{message.full_name} used twice"
                seen.add(message.full_name)


def test_streaming_shapes() -> None:
    protos = {f.name: f for f in files()}
    for service in services():
        proto = descriptor_pb2.FileDescriptorProto()
        protos[service.file.name].CopyToProto(proto)
        methods = next(s for s in proto.service if s.name == service.name).method
        for method in methods:
            expected = STREAMING.get((service.full_name, method.name), (False, False))
            assert (method.client_streaming, method.server_streaming) == expected, method.name


def test_enum_values_are_prefixed_and_start_unspecified() -> None:
    for enum in enums():
        prefix = upper_snake(enum.name) + "_"
        zero = enum.values_by_number[0]
        assert zero.name == prefix + "UNSPECIFIED", enum.full_name
        for value in enum.values:
            assert value.name.startswith(prefix), value.name
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", value.name), value.name


def test_names_are_conventional() -> None:
    for message in messages():
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", message.name), message.full_name
        for field in message.fields:
            assert re.fullmatch(r"[a-z][a-z0-9_]*", field.name), field.full_name


def test_no_unsigned_integers() -> None:
    """AIP-141: signed int32/int64 only, so every language maps them the same way."""
    unsigned = {
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
    }
    for message in messages():
        for field in message.fields:
            assert field.type not in unsigned, field.full_name


def test_time_fields() -> None:
    """AIP-142: Timestamps are named ``*_time`` (or ``time``) and vice versa; Durations are
    not named like timestamps."""
    for message in messages():
        for field in message.fields:
            type_name = field.message_type.full_name if field.message_type else ""
            is_time_name = field.name == "time" or field.name.endswith("_time")
            if type_name == "google.protobuf.Timestamp":
                assert is_time_name, field.full_name
            elif is_time_name:
                raise AssertionError(f"{field.full_name} is named like a time but is not one")


# ---------------------------------------------------------------------------------------
# Resources and standard methods (AIP-122, 131..135, 158)


def test_resources_have_identifier_names_and_patterns() -> None:
    found = resources()
    assert set(found) >= {
        "its-camera-ai.dev/Camera",
        "its-camera-ai.dev/CameraStatus",
        "its-camera-ai.dev/Event",
        "its-camera-ai.dev/Model",
        "its-camera-ai.dev/ApiKey",
        "its-camera-ai.dev/FeatureFlag",
        "its-camera-ai.dev/AuditLogEntry",
        "its-camera-ai.dev/CameraStats",
    }
    for type_name, message in found.items():
        resource = resource_of(message)
        assert resource is not None
        assert type_name == f"{ERROR_DOMAIN}/{message.name}"
        assert resource.singular, type_name
        assert resource.plural, type_name
        assert len(resource.pattern) == 1, type_name
        assert re.fullmatch(
            r"([a-z][A-Za-z]*/\{[a-z_]+\}/?)*[a-z][A-Za-z]*(/\{[a-z_]+\})?", resource.pattern[0]
        ), resource.pattern
        name = message.fields_by_name["name"]
        assert name.number == 1, type_name
        assert name.type == FieldDescriptor.TYPE_STRING, type_name
        assert IDENTIFIER in behaviors(name), type_name


def test_resource_references_resolve() -> None:
    known = set(resources())
    for message in messages():
        for field in message.fields:
            options = field.GetOptions()
            if options.HasExtension(resource_pb2.resource_reference):
                reference = options.Extensions[resource_pb2.resource_reference]
                target = reference.type or reference.child_type
                assert target in known, f"{field.full_name} -> {target}"
                assert field.type == FieldDescriptor.TYPE_STRING, field.full_name


def _resource_field(message: descriptor.Descriptor) -> descriptor.FieldDescriptor | None:
    known = set(resources().values())
    fields = [f for f in message.fields if f.message_type in known]
    return fields[0] if len(fields) == 1 else None


def test_standard_methods_have_standard_shapes() -> None:
    checked = 0
    for service in services():
        for method in service.methods:
            request, response = method.input_type, method.output_type
            verb = re.match(r"[A-Z][a-z]+", method.name)
            assert verb is not None
            fields = request.fields_by_name
            if verb.group() == "Get":
                if "name" not in fields:
                    continue  # a non-standard read (GetTrafficCounts, ...)
                assert REQUIRED in behaviors(fields["name"]), method.name
                assert _resource_field(response) is not None, method.name
            elif verb.group() == "List":
                assert fields["page_size"].type == FieldDescriptor.TYPE_INT32, method.name
                assert fields["page_token"].type == FieldDescriptor.TYPE_STRING, method.name
                token = response.fields_by_name["next_page_token"]
                assert token.type == FieldDescriptor.TYPE_STRING, method.name
                repeated = [f for f in response.fields if f.is_repeated]
                assert len(repeated) == 1, method.name
                assert repeated[0].message_type in resources().values(), method.name
            elif verb.group() == "Create":
                resource = _resource_field(request)
                assert resource is not None, method.name
                assert REQUIRED in behaviors(resource), method.name
                assert f"{resource.name}_id" in fields, method.name
            elif verb.group() == "Update":
                resource = _resource_field(request)
                assert resource is not None, method.name
                assert REQUIRED in behaviors(resource), method.name
                mask = fields["update_mask"].message_type
                assert mask is not None, method.name
                assert mask.full_name == "google.protobuf.FieldMask", method.name
            elif verb.group() == "Delete":
                assert REQUIRED in behaviors(fields["name"]), method.name
                assert not response.fields, f"{method.name} returns an empty response"
            else:
                continue
            checked += 1
    assert checked >= 15


# ---------------------------------------------------------------------------------------
# Errors (AIP-193)


def test_error_reasons() -> None:
    from its.common.v1 import error_reason_pb2

    enum = error_reason_pb2.ErrorReason.DESCRIPTOR
    wire = {v.name.removeprefix("ERROR_REASON_") for v in enum.values if v.number}
    assert {
        "INVALID_FIELD",
        "RESOURCE_NOT_FOUND",
        "ALREADY_EXISTS",
        "STALE_FRAME_REFERENCE",
        "FRAME_REFERENCE_FOREIGN",
        "UNSUPPORTED_SOURCE",
        "DEPENDENCY_UNAVAILABLE",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "RATE_LIMITED",
        "INTERNAL",
    } <= wire
    for reason in wire:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]{0,62}", reason), reason
    source = (PROTOS / "its" / "common" / "v1" / "error_reason.proto").read_text(encoding="utf-8")
    assert f'`domain` = "{ERROR_DOMAIN}"' in source


# ---------------------------------------------------------------------------------------
# Documentation and vendored files


def _descriptor_set_with_comments(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out = tmp_path / "contract.binpb"
    bundled = Path(protoc.__file__).resolve().parent / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={PROTOS}",
            f"--proto_path={bundled}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *its_protos(),
        ]
    )
    assert status == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _elements(
    proto: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[tuple[int, ...], str]]:
    """(source-info path, label) of every documentable element of a file.

    Paths use descriptor.proto field numbers: file.message_type = 4, file.enum_type = 5,
    file.service = 6; message.field = 2, nested_type = 3, enum_type = 4; enum.value = 2;
    service.method = 2.
    """

    def enum_elements(
        path: tuple[int, ...], enum: descriptor_pb2.EnumDescriptorProto
    ) -> Iterator[tuple[tuple[int, ...], str]]:
        yield path, enum.name
        for i, value in enumerate(enum.value):
            yield (*path, 2, i), value.name

    def message_elements(
        path: tuple[int, ...], message: descriptor_pb2.DescriptorProto
    ) -> Iterator[tuple[tuple[int, ...], str]]:
        yield path, message.name
        for i, field in enumerate(message.field):
            yield (*path, 2, i), f"{message.name}.{field.name}"
        for i, nested in enumerate(message.nested_type):
            yield from message_elements((*path, 3, i), nested)
        for i, enum in enumerate(message.enum_type):
            yield from enum_elements((*path, 4, i), enum)

    for i, message in enumerate(proto.message_type):
        yield from message_elements((4, i), message)
    for i, enum in enumerate(proto.enum_type):
        yield from enum_elements((5, i), enum)
    for i, service in enumerate(proto.service):
        yield (6, i), service.name
        for j, method in enumerate(service.method):
            yield (6, i, 2, j), f"{service.name}.{method.name}"


def test_every_element_is_documented(tmp_path: Path) -> None:
    """Each message, field, enum, enum value, service and RPC has a leading comment."""
    undocumented = []
    for proto in _descriptor_set_with_comments(tmp_path).file:
        documented = {
            tuple(location.path)
            for location in proto.source_code_info.location
            if location.leading_comments.strip()
        }
        undocumented += [
            f"{proto.name}: {label}" for path, label in _elements(proto) if path not in documented
        ]
    assert not undocumented, "undocumented:\n" + "\n".join(undocumented)


@pytest.mark.parametrize("name", ["field_behavior.proto", "resource.proto"])
def test_vendored_googleapis_match_the_installed_package(name: str) -> None:
    installed = Path(field_behavior_pb2.__file__).parent / name
    vendored = PROTOS / "google" / "api" / name
    assert installed.is_file(), f"googleapis-common-protos ships no {name}"
    assert vendored.read_bytes() == installed.read_bytes(), (
        f"protos/google/api/{name} differs from {installed}: copy it over "
        "(and update protos/google/api/README.md)"
    )


# ---------------------------------------------------------------------------------------
# Smoke: the messages behave as documented


def test_messages_round_trip() -> None:
    from google.protobuf import duration_pb2, timestamp_pb2

    from its.analytics.v1 import analytics_service_pb2, detection_batch_pb2
    from its.common.v1 import detection_pb2, frame_pb2, geometry_pb2
    from its.inference.v1 import inference_service_pb2

    detect = inference_service_pb2.DetectRequest(
        camera="cameras/a4-km12",
        frame=frame_pb2.FrameReference(
            ring_name="/its-ring-a4-km12",
            slot_index=3,
            frame_sequence=1234,
            width=1920,
            height=1080,
            pixel_format=frame_pb2.PIXEL_FORMAT_NV12,
        ),
    )
    assert detect.WhichOneof("input") == "frame"
    assert not detect.HasField("score_threshold")  # unset means "model default"
    assert inference_service_pb2.DetectRequest.FromString(detect.SerializeToString()) == detect

    batch = detection_batch_pb2.DetectionBatch(
        producer_id="inference-0/boot-1",
        sequence=1,
        camera="cameras/a4-km12",
        model="models/yolo11s",
        model_version="2025.06.1",
        frames=[
            detection_batch_pb2.FrameDetections(
                frame_sequence=1234,
                capture_time=timestamp_pb2.Timestamp(seconds=1_750_000_000),
                frame_size=geometry_pb2.ImageSize(width=1920, height=1080),
                detections=[
                    detection_pb2.Detection(
                        box=geometry_pb2.BoundingBox(x_min=1, y_min=2, x_max=30, y_max=40),
                        object_class=detection_pb2.OBJECT_CLASS_CAR,
                        score=0.9,
                    )
                ],
                traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
        ],
    )
    request = analytics_service_pb2.StreamDetectionBatchesRequest(batch=batch)
    parsed = analytics_service_pb2.StreamDetectionBatchesRequest.FromString(
        request.SerializeToString()
    )
    assert not parsed.batch.frames[0].detections[0].HasField("track_id")
    assert duration_pb2.Duration(seconds=60).ToSeconds() == 60


def test_stubs_import_without_the_repo_on_sys_path(tmp_path: Path) -> None:
    """``its`` is importable as installed (pip install -e .), not only from the repo root."""
    result = subprocess.run(
        [sys.executable, "-c", "import its.camera.v1.camera_service_pb2_grpc"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (
        f"{result.stderr}\nrun `.venv/bin/pip install --no-deps -e clients/python` after generating"
    )
