"""Load-time errors of the inference models: one tree so callers can catch them together.

Every check a model needs (file present, checksum, manifest fields, output shape) runs when
the model is loaded, so a bad deployment fails at start-up with the reason, never at the
first frame of a live camera.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "ChecksumMismatchError",
    "ManifestError",
    "ModelLoadError",
    "OutputFormatError",
    "WeightsNotFoundError",
]


class ModelLoadError(Exception):
    """A model could not be loaded; the message says which file and why."""


class WeightsNotFoundError(ModelLoadError, FileNotFoundError):
    """The manifest or the weights file it names does not exist."""


class ChecksumMismatchError(ModelLoadError):
    """The weights file's sha256 differs from the manifest's: tampered or truncated."""


class ManifestError(ModelLoadError, ValueError):
    """The manifest is not valid JSON, misses fields, or disagrees with the weights."""


class OutputFormatError(ModelLoadError, ValueError):
    """The model's output does not have the shape its declared format requires."""


class BackendUnavailableError(ModelLoadError):
    """The configured backend, device or precision cannot run here (no CUDA, a CPU build of
    torch, fp16 on a CPU, torch_tensorrt not installed, compilation failed); the message
    names the setting."""
