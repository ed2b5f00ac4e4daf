"""What ``up`` runs: a process per service, its ports, its settings, and ``up.json``.

Ports are a block of eight from the base port, in start order: gRPC at ``base + n`` and
HTTP at ``base + 4 + n`` (decoder 50051/50055, analytics 50052/50056, inference
50053/50057, query 50054/50058 by default), so one free range is all an instance needs and
two instances on one host differ by their base port alone. Everything else a child needs
is handed to it as ``ITS_*`` variables over the configuration it would read anyway: its
ports on loopback, its peers, the database, the development JWT issuer and where its
files go inside the data directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from its_camera_ai.cli import SERVICES

__all__ = ["UP_FILE", "Plan", "UnitPlan", "make_plan"]

UP_FILE = "up.json"
LOOPBACK = "127.0.0.1"
# gRPC ports come first in the block, then the HTTP side ports.
_HTTP_OFFSET = len(SERVICES)
_HIGHEST_PORT = 65535


@dataclass(frozen=True)
class UnitPlan:
    """One service process: its name (a key of ``SERVICES``) and its two ports."""

    name: str
    grpc_port: int
    http_port: int

    @property
    def grpc_target(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def http_target(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"


@dataclass(frozen=True)
class Plan:
    """The whole instance: its data directory, its units in start order, and the ring
    prefix that tells its shared-memory objects from any other decoder's on the host."""

    data_dir: Path
    units: tuple[UnitPlan, ...]
    ring_prefix: str

    @property
    def token_file(self) -> Path:
        return self.data_dir / "token"

    @property
    def jwks_file(self) -> Path:
        return self.data_dir / "jwt" / "jwks.json"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def up_file(self) -> Path:
        return self.data_dir / UP_FILE

    @property
    def embedded_postgres_dir(self) -> Path:
        return self.data_dir / "postgres"

    def unit(self, name: str) -> UnitPlan:
        return next(unit for unit in self.units if unit.name == name)

    def child_environment(
        self, unit: UnitPlan, shared: Mapping[str, str], base: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The environment of ``unit``'s process: ``base`` (this process's environment),
        then ``shared`` (database, JWT issuer), then what is ``unit``'s own."""
        decoder = self.unit("decoder").grpc_target
        return {
            **(os.environ if base is None else base),
            **shared,
            "ITS_GRPC__HOST": LOOPBACK,
            "ITS_GRPC__PORT": str(unit.grpc_port),
            "ITS_HTTP__ENABLED": "true",
            "ITS_HTTP__HOST": LOOPBACK,
            "ITS_HTTP__PORT": str(unit.http_port),
            # Every peer by address: no unit shares a process with another here.
            "ITS_INFERENCE__DECODER_TARGET": decoder,
            "ITS_INFERENCE__ANALYTICS_TARGET": self.unit("analytics").grpc_target,
            "ITS_ANALYTICS__DECODER_TARGET": decoder,
            "ITS_QUERY__DECODER_TARGET": decoder,
            "ITS_DECODER__RING_PREFIX": self.ring_prefix,
            "ITS_DECODER__DEV_SOURCE_KEYS_FILE": str(self.data_dir / "decoder" / "source-keys"),
            "ITS_ANALYTICS__SPOOL_DIR": str(self.data_dir / "analytics" / "spool"),
            "ITS_INFERENCE__ENGINE_CACHE_DIR": str(self.data_dir / "inference" / "engines"),
        }

    def write_up_file(self) -> None:
        """``up.json``: where clients find each service (read by ``view``, ``snapshot``,
        the load tests) and the development token; written whole, then renamed."""
        document = {
            "grpc": {unit.name: unit.grpc_target for unit in self.units},
            "http": {unit.name: unit.http_target for unit in self.units},
            "token_file": str(self.token_file),
            "ring_prefix": self.ring_prefix,
            "pid": os.getpid(),
        }
        partial = self.up_file.with_suffix(".json.partial")
        partial.write_text(json.dumps(document, indent=2) + "\n")
        os.replace(partial, self.up_file)

    def table(self) -> str:
        """The ports per service, as printed at start."""
        rows = [("service", "gRPC", "HTTP (/metrics, /health)")]
        rows += [(unit.name, unit.grpc_target, unit.http_target) for unit in self.units]
        widths = [max(len(row[column]) for row in rows) for column in range(3)]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows
        )


def make_plan(data_dir: Path, base_port: int) -> Plan:
    """The plan for an instance in ``data_dir`` on the port block from ``base_port``;
    ``ValueError`` naming ``--base-port`` when the block does not fit."""
    last = base_port + 2 * len(SERVICES) - 1
    if base_port < 1 or last > _HIGHEST_PORT:
        raise ValueError(
            f"--base-port: {base_port} leaves no room for {2 * len(SERVICES)} ports"
            f" (1..{_HIGHEST_PORT - 2 * len(SERVICES) + 1})"
        )
    units = tuple(
        UnitPlan(name, base_port + n, base_port + _HTTP_OFFSET + n)
        for n, name in enumerate(SERVICES)
    )
    # Ring prefixes are at most 16 characters of [a-z0-9_-]; the base port is unique per
    # running instance (its ports would clash otherwise).
    return Plan(data_dir=data_dir.resolve(), units=units, ring_prefix=f"up{base_port}-")
