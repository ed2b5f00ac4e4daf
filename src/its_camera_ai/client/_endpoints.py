"""Where a client finds the services: one ``HOST:PORT`` serving every API (``serve all``),
or the ``up.json`` that ``its-camera-ai up`` writes into its data directory.

``up.json``: ``{"grpc": {"decoder": "127.0.0.1:P", "query": ..., ...}, "http": {"decoder":
"127.0.0.1:Q", ...}, "token_file": "<data>/token"}``. CameraService is the decoder's, so
camera calls go to ``grpc.decoder`` and QueryService calls to ``grpc.query``.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_UP_DIR",
    "Endpoints",
    "add_up_dir_argument",
    "read_up_dir",
    "resolve_arguments",
    "resolve_endpoints",
]

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_UP_DIR = Path("var/up")
UP_FILE = "up.json"
# API keys are minted with this prefix (its_camera_ai.admin); anything else is a JWT.
_API_KEY_PREFIX = "itsk_"
_ADDRESS = re.compile(r"^\S+:\d{1,5}$")


@dataclass(frozen=True)
class Endpoints:
    """The gRPC addresses of CameraService and QueryService, the HTTP side ports whose
    ``/metrics`` to read (service name -> ``HOST:PORT``) and the credential found beside
    them (``up``'s development token), if any."""

    cameras: str
    query: str
    http: Mapping[str, str] = field(default_factory=dict)
    token: str | None = None
    api_key: str | None = None

    @classmethod
    def single(cls, target: str, http: Mapping[str, str] | None = None) -> Endpoints:
        """One address serving every API (``serve all``)."""
        return cls(cameras=target, query=target, http=dict(http or {}))

    def describe(self) -> str:
        if self.cameras == self.query:
            return self.cameras
        return f"cameras {self.cameras}, query {self.query}"


def _address(document: Mapping[str, Any], section: str, name: str, source: Path) -> str:
    value = document.get(section, {}).get(name) if isinstance(document.get(section), dict) else None
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise ValueError(f"{source}: {section}.{name}: expected HOST:PORT, got {value!r}")
    return value


def read_up_dir(path: Path) -> Endpoints:
    """The endpoints in ``path``'s ``up.json`` (``path`` is the data directory or the file);
    ``ValueError`` naming the file and field when it is missing or malformed."""
    source = path if path.suffix == ".json" else path / UP_FILE
    try:
        document = json.loads(source.read_text())
    except FileNotFoundError:
        raise ValueError(f"{source}: not found (is `its-camera-ai up` running?)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{source}: expected an object")
    http = document.get("http") or {}
    if not isinstance(http, dict):
        raise ValueError(f"{source}: http: expected an object of HOST:PORT")
    credential = _credential(document, source)
    return Endpoints(
        cameras=_address(document, "grpc", "decoder", source),
        query=_address(document, "grpc", "query", source),
        http={name: _address(document, "http", name, source) for name in http},
        token=None if credential is None or credential.startswith(_API_KEY_PREFIX) else credential,
        api_key=credential if credential and credential.startswith(_API_KEY_PREFIX) else None,
    )


def _credential(document: Mapping[str, Any], source: Path) -> str | None:
    token_file = document.get("token_file")
    if token_file is None:
        return None
    if not isinstance(token_file, str):
        raise ValueError(f"{source}: token_file: expected a path, got {token_file!r}")
    try:
        return Path(token_file).read_text().strip() or None
    except OSError as exc:
        raise ValueError(f"{source}: token_file: cannot read {token_file}: {exc}") from None


def resolve_endpoints(target: str | None, up_dir: Path | None) -> Endpoints:
    """What a command line names: ``up_dir``'s up.json, else ``target`` (one address for
    every API), else ``var/up`` when ``up`` runs from here, else ``DEFAULT_TARGET``."""
    if up_dir is not None:
        return read_up_dir(up_dir)
    if target is not None:
        return Endpoints.single(target)
    if (DEFAULT_UP_DIR / UP_FILE).exists():
        return read_up_dir(DEFAULT_UP_DIR)
    return Endpoints.single(DEFAULT_TARGET)


def add_up_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--up-dir``, and ``--target`` left unset so that ``resolve_arguments`` can tell."""
    parser.set_defaults(target=None)
    parser.add_argument("--up-dir", type=Path, help="data directory of `its-camera-ai up`")


def resolve_arguments(
    args: argparse.Namespace, service: Literal["cameras", "query"]
) -> argparse.Namespace:
    """``args`` (from ``add_connection_arguments`` and ``add_up_dir_argument``) with
    ``target`` set to ``service``'s address and, unless one was given, ``up``'s credential."""
    endpoints = resolve_endpoints(args.target, args.up_dir)
    resolved = argparse.Namespace(**vars(args))
    resolved.target = getattr(endpoints, service)
    if args.token is None and args.api_key is None:
        resolved.token, resolved.api_key = endpoints.token, endpoints.api_key
    return resolved
