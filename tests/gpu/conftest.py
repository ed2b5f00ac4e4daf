"""The GPU tests share the inference tests' fixtures (fresh dynamo state, the detector)."""

from __future__ import annotations

from tests.inference.conftest import _fresh_dynamo, detector

__all__ = ["_fresh_dynamo", "detector"]
