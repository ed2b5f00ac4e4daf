"""ghz configuration files (``loadtest/ghz/*.json``): checked against ghz's documented
options and replayed through this package's generator, since no ghz binary runs here.

``${NAME}`` in a config (the token, the camera) is filled in before use: by ``envsubst`` for
ghz (loadtest/README.md), by ``variables`` here. Everything else is ghz's own format.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from its_camera_ai.loadtest._generator import LoadPlan
from its_camera_ai.loadtest._rpcs import PlannedCall
from its_camera_ai_client import TlsOptions

__all__ = ["GHZ_CONFIG_KEYS", "GhzConfig", "load_ghz_config"]

# The keys of ghz's configuration file: the JSON tags of ``runner.Config`` in ghz's source
# (github.com/bojand/ghz, runner/config.go, v0.120) and its option reference
# (https://ghz.sh/docs/options, https://ghz.sh/docs/config). A key outside this set is a
# typo ghz would silently ignore, so the check refuses it.
GHZ_CONFIG_KEYS = frozenset({
    "proto", "protoset", "call", "cacert", "cert", "key", "skipTLS", "skipFirst", "cname",
    "authority", "insecure", "total", "async", "concurrency", "concurrency-schedule",
    "concurrency-start", "concurrency-end", "concurrency-step", "concurrency-step-duration",
    "concurrency-max-duration", "connections", "rps", "duration", "duration-stop",
    "max-duration", "timeout", "data", "data-file", "binary-file", "metadata",
    "metadata-file", "stream-interval", "stream-call-duration", "stream-call-count",
    "stream-dynamic-messages", "output", "format", "connect-timeout", "keepalive", "cpus",
    "import-paths", "name", "tags", "reflect-metadata", "debug", "host",
    "enable-compression", "load-schedule", "load-start", "load-end", "load-step",
    "load-step-duration", "load-max-duration", "count-errors",
})  # fmt: skip
# ghz's types for the keys these configs use (Go durations are strings such as "10s").
_TYPES: dict[str, type | tuple[type, ...]] = {
    "proto": str, "call": str, "host": str, "insecure": bool, "cacert": str, "cert": str,
    "key": str, "cname": str, "skipTLS": bool, "total": int, "concurrency": int,
    "connections": int, "rps": int, "duration": str, "timeout": str, "max-duration": str,
    "data": (dict, list), "metadata": dict, "import-paths": list, "name": str,
}  # fmt: skip
_GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PLACEHOLDER = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


def _go_seconds(text: str, key: str) -> float:
    if not _GO_DURATION.match(text):
        raise ValueError(f"{key}: {text!r} is not a Go duration such as 10s, 500ms or 1m30s")
    return sum(
        float(n) * _GO_UNITS[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    )


def _fill(value: Any, variables: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        missing = [n for n in _PLACEHOLDER.findall(value) if n not in variables]
        if missing:
            raise ValueError(f"{where}: no value for ${{{missing[0]}}}")
        return _PLACEHOLDER.sub(lambda m: variables[m.group(1)], value)
    if isinstance(value, dict):
        return {k: _fill(v, variables, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, variables, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


class GhzConfig:
    """A checked ghz config: its keys are ghz's, its call names a method of the API, its
    data parses as that method's request and its proto files exist."""

    def __init__(self, path: Path, raw: Mapping[str, Any], root: Path) -> None:
        self.path = path
        self.raw = dict(raw)
        unknown = sorted(set(raw) - GHZ_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"{path.name}: {unknown[0]}: not a ghz config option")
        for key, expected in _TYPES.items():
            if key in raw and not isinstance(raw[key], expected):
                raise ValueError(f"{path.name}: {key}: {raw[key]!r} has the wrong type")
        for key in ("duration", "timeout", "max-duration"):
            if key in raw:
                _go_seconds(raw[key], f"{path.name}: {key}")
        if "call" not in raw:
            raise ValueError(f"{path.name}: call: is required")
        self.service, _, self.method_name = raw["call"].replace("/", ".").rpartition(".")
        pool = descriptor_pool.Default()
        try:
            service = pool.FindServiceByName(self.service)
            self.method = service.methods_by_name[self.method_name]
        except KeyError:
            raise ValueError(f"{path.name}: call: {raw['call']} is no method of the API") from None
        for key in ("proto",):
            if key in raw and not any(
                (root / base / raw[key]).is_file() for base in ["", *raw.get("import-paths", [])]
            ):
                raise ValueError(f"{path.name}: {key}: {raw[key]} not found from {root}")
        self.requests(dict.fromkeys(self.placeholders(), "x"))  # the data parses

    def placeholders(self) -> set[str]:
        return set(_PLACEHOLDER.findall(json.dumps(self.raw)))

    def requests(self, variables: Mapping[str, str]) -> list[Message]:
        """The request(s) of ``data`` (ghz: an object, or a list sent in turn)."""
        data = _fill(self.raw.get("data", {}), variables, f"{self.path.name}: data")
        items = data if isinstance(data, list) else [data]
        request_type = message_factory.GetMessageClass(self.method.input_type)
        try:
            return [json_format.ParseDict(item, request_type()) for item in items]
        except json_format.ParseError as exc:
            raise ValueError(f"{self.path.name}: data: {exc}") from None

    def plan(
        self,
        variables: Mapping[str, str],
        *,
        target: str | None = None,
        duration_s: float | None = None,
        tls: TlsOptions | None = None,
    ) -> LoadPlan:
        """The generator's run of this config (``target``, ``duration_s`` and ``tls``
        override the config's, as ghz's command-line flags do)."""
        raw = self.raw
        host = target or raw.get("host")
        if not host:
            raise ValueError(f"{self.path.name}: host: none in the config; pass a target")
        metadata = _fill(raw.get("metadata", {}), variables, f"{self.path.name}: metadata")
        if tls is None and not raw.get("insecure", False):
            tls = TlsOptions(ca=raw.get("cacert"), cert=raw.get("cert"), key=raw.get("key"),
                             server_name=raw.get("cname"))  # fmt: skip
        requests = tuple(r.SerializeToString() for r in self.requests(variables))
        seconds = duration_s or _go_seconds(raw.get("duration", "10s"), "duration")
        return LoadPlan(
            target=host,
            calls=[PlannedCall(self.method_name, self.method_path, requests)],
            concurrency=int(raw.get("concurrency", 50)),  # ghz's defaults
            rate=float(raw["rps"]) if raw.get("rps") else None,
            duration_s=seconds,
            total=None if "duration" in raw or duration_s else int(raw.get("total", 200)),
            timeout_s=_go_seconds(raw.get("timeout", "20s"), "timeout"),
            connections=int(raw.get("connections", 1)),
            tls=tls,
            metadata=tuple((k.lower(), str(v)) for k, v in metadata.items()),
            label=self.path.stem,
        )

    @property
    def method_path(self) -> str:
        return f"/{self.service}/{self.method_name}"


def load_ghz_config(path: Path, root: Path | None = None) -> GhzConfig:
    """Read and check a ghz config (JSON, or TOML by its suffix); proto paths resolve from
    ``root`` (default: the working directory, where ghz resolves them). ``ValueError``
    names the file and the key at fault."""
    text = path.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path.name}: not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path.name}: a ghz config is an object of options")
    return GhzConfig(path, raw, root or Path.cwd())
