"""Shared paths and helpers for the API contract tests (protos/ and clients/python/its/)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
PROTOS = REPO / "protos"
GENERATED = REPO / "clients" / "python" / "its"
GEN_SCRIPT = REPO / "scripts" / "gen_protos.py"
BUF = REPO / "tools" / "buf" / "node_modules" / ".bin" / "buf"


def its_protos() -> list[str]:
    """Every proto of the contract, relative to protos/ (e.g. "its/camera/v1/camera.proto")."""
    return sorted(p.relative_to(PROTOS).as_posix() for p in (PROTOS / "its").rglob("*.proto"))


def generated_modules(suffix: str) -> list[ModuleType]:
    """Import every generated module of the ``its`` package whose name ends with ``suffix``."""
    import its

    names = sorted(
        info.name
        for info in pkgutil.walk_packages(its.__path__, prefix="its.")
        if info.name.endswith(suffix)
    )
    return [importlib.import_module(name) for name in names]
