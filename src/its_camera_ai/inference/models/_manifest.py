"""The model manifest: what a weights file is, how to feed it, and what it scored.

A manifest is a JSON file next to its weights. It names the weights file and its sha256
(checked before the file is deserialised: ``torch.load`` of an unknown file is the thing to
avoid), the classes in order with their ``its.common.v1.ObjectClass`` numbers, the input
size, the normalisation, the network widths to rebuild the module, the training config and
the evaluation figures. Validation is strict (pydantic, ``extra="forbid"``): a wrong or
missing field fails at load time with the field named.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from its_camera_ai.inference.models._errors import (
    ChecksumMismatchError,
    ManifestError,
    WeightsNotFoundError,
)

__all__ = [
    "CLASS_IDS",
    "AdapterInput",
    "AdapterManifest",
    "Decoding",
    "InputSpec",
    "Manifest",
    "Normalisation",
    "manifest_format",
    "read_adapter_manifest",
    "read_manifest",
    "sha256_file",
    "verified_weights",
    "write_manifest",
]

_M = TypeVar("_M", bound=BaseModel)

# Our class names -> its.common.v1.ObjectClass numbers (CAR=1 ... PERSON=6).
CLASS_IDS: dict[str, int] = {
    "car": 1,
    "truck": 2,
    "bus": 3,
    "motorcycle": 4,
    "bicycle": 5,
    "person": 6,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    width: int = Field(gt=0, multiple_of=32)
    height: int = Field(gt=0, multiple_of=32)
    layout: Literal["NCHW"] = "NCHW"
    colour: Literal["RGB"] = "RGB"
    letterbox_pad: float = Field(ge=0.0, le=1.0)


class Normalisation(_Strict):
    """``x = (pixel / 255 - mean) / std`` per channel."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @model_validator(mode="after")
    def _positive_std(self) -> Normalisation:
        if min(self.std) <= 0:
            raise ValueError("std must be > 0")
        return self


class Decoding(_Strict):
    stride: int = Field(gt=0)
    top_k: int = Field(gt=0, le=1000)
    score_threshold: float = Field(ge=0.0, le=1.0)


class Manifest(_Strict):
    format: Literal["its-detector-manifest"] = "its-detector-manifest"
    format_version: Literal[1] = 1
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    architecture: Literal["centernet-ttf"] = "centernet-ttf"
    weights: str = Field(min_length=1, description="file name, relative to the manifest")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(gt=0)
    classes: tuple[str, ...] = Field(min_length=1)
    class_ids: tuple[int, ...] = Field(min_length=1)
    input: InputSpec
    normalisation: Normalisation
    decoding: Decoding
    net: dict[str, Any]
    training: dict[str, Any] = Field(default_factory=dict)
    evaluation: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _classes_known(self) -> Manifest:
        if len(self.classes) != len(self.class_ids):
            raise ValueError("classes and class_ids differ in length")
        for name, cid in zip(self.classes, self.class_ids, strict=True):
            if CLASS_IDS.get(name) != cid:
                raise ValueError(f"class {name!r} has id {cid}, expected {CLASS_IDS.get(name)}")
        if self.net.get("num_classes") != len(self.classes):
            raise ValueError("net.num_classes does not match the number of classes")
        return self


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class AdapterInput(_Strict):
    """How the network wants its input: ``pixel * scale`` in ``channels`` order, letterboxed
    (centred) with ``letterbox_pad`` grey (in [0,1] of full scale)."""

    width: int = Field(gt=0, multiple_of=32)
    height: int = Field(gt=0, multiple_of=32)
    channels: Literal["rgb", "bgr"]
    scale: float = Field(gt=0.0, le=255.0)
    letterbox_pad: float = Field(ge=0.0, le=1.0)


class AdapterManifest(_Strict):
    """A detector from elsewhere (an Ultralytics or YOLOX export, TorchScript or ONNX) run
    through ``YoloAdapter``: its output format and preprocessing, and which of its classes are
    ours. ``class_map`` maps the model's class index to our class name; unmapped classes are
    dropped."""

    format: Literal["its-adapter-manifest"] = "its-adapter-manifest"
    format_version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=128, pattern=r"^[a-z0-9][a-z0-9.-]*$")
    version: str = Field(min_length=1)
    weights: str = Field(min_length=1, description="file name, relative to the manifest")
    weights_format: Literal["torchscript", "onnx"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(gt=0)
    output: Literal["ultralytics", "yolox"]
    # YOLOX: the strides of its output levels, in output order.
    strides: tuple[int, ...] = Field(default=(), max_length=8)
    input: AdapterInput
    num_classes: int = Field(ge=1, le=4096)
    class_map: dict[int, str] = Field(min_length=1)
    score_threshold: float = Field(ge=0.0, le=1.0)
    iou_threshold: float = Field(gt=0.0, le=1.0)
    # Classes that suppress each other in NMS, as one object would: a car one anchor point
    # calls a truck and another a bus is one vehicle, not three. A class in no group
    # suppresses only its own (a rider and the motorcycle under it are two objects).
    nms_groups: tuple[tuple[str, ...], ...] = Field(default=(), max_length=len(CLASS_IDS))
    source: str = ""
    licence: str = ""
    evaluation: dict[str, Any] | None = None
    # How the weights were trained further (fine-tuned), where they were: the run's config.
    training: dict[str, Any] | None = None
    # The runs before ``training`` that these weights went on from (``--init`` a fine-tune),
    # oldest first: the whole chain back to the pretrained weights stays in the one file.
    training_history: tuple[dict[str, Any], ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> AdapterManifest:
        for index, name in self.class_map.items():
            if not 0 <= index < self.num_classes:
                raise ValueError(f"class_map: index {index} outside 0..{self.num_classes - 1}")
            if name not in CLASS_IDS:
                raise ValueError(f"class_map: {name!r} is not one of {sorted(CLASS_IDS)}")
        grouped = [name for group in self.nms_groups for name in group]
        if unknown := sorted(set(grouped) - set(CLASS_IDS)):
            raise ValueError(f"nms_groups: {unknown} not among {sorted(CLASS_IDS)}")
        if len(set(grouped)) != len(grouped):
            raise ValueError("nms_groups: a class may be in one group only")
        if (self.output == "yolox") != bool(self.strides):
            raise ValueError("strides: required for the yolox output, and only for it")
        if any(s <= 0 for s in self.strides):
            raise ValueError("strides: each above 0")
        return self


def _read_json(p: Path) -> Any:
    if not p.is_file():
        raise WeightsNotFoundError(f"model manifest {p} does not exist")
    try:
        return json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"model manifest {p} is not readable JSON: {e}") from e


def manifest_format(path: str | Path) -> str:
    """The ``format`` a manifest declares ("" when it declares none)."""
    raw = _read_json(Path(path))
    value = raw.get("format", "") if isinstance(raw, dict) else ""
    return value if isinstance(value, str) else ""


def _validated(path: str | Path, kind: type[_M]) -> _M:
    p = Path(path)
    try:
        return kind.model_validate(_read_json(p))
    except ValidationError as e:
        raise ManifestError(f"model manifest {p} is invalid: {e}") from e


def read_manifest(path: str | Path) -> Manifest:
    return _validated(path, Manifest)


def read_adapter_manifest(path: str | Path) -> AdapterManifest:
    return _validated(path, AdapterManifest)


def verified_weights(manifest_path: str | Path, manifest: Manifest | AdapterManifest) -> Path:
    """The weights file the manifest names, after checking its size and sha256."""
    base = Path(manifest_path).parent
    w = (base / manifest.weights).resolve()
    if base.resolve() not in w.parents:
        # A manifest must not point the loader at arbitrary files elsewhere on the host.
        raise ManifestError(f"manifest weights {manifest.weights!r} escapes {base}")
    if not w.is_file():
        raise WeightsNotFoundError(f"weights file {w} named by {manifest_path} does not exist")
    digest = sha256_file(w)
    if digest != manifest.sha256:
        raise ChecksumMismatchError(
            f"weights file {w} has sha256 {digest}, manifest {manifest_path} says "
            f"{manifest.sha256}: the file was modified or truncated"
        )
    return w


def write_manifest(path: str | Path, manifest: Manifest | AdapterManifest) -> None:
    Path(path).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
