"""Service configuration: defaults < YAML file < ``ITS_*`` environment variables.

The YAML file is ``config/<environment>.yaml`` unless ``--config``/``ITS_CONFIG_FILE`` names
another. Every section forbids unknown keys, so a typo stops start-up instead of being
ignored; any problem surfaces as one ``ConfigError`` whose message names the field.
Nested fields are set from the environment with ``__``: ``ITS_GRPC__PORT=50060``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "ConfigError",
    "DatabaseSettings",
    "GrpcSettings",
    "HttpSettings",
    "LoggingSettings",
    "RedisSettings",
    "Settings",
    "TracingSettings",
    "load_settings",
]

Environment = Literal["dev", "staging", "production"]
_ENV_PREFIX = "ITS_"
_MIB = 1024 * 1024


class ConfigError(Exception):
    """The configuration cannot be used; the message says which field and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GrpcSettings(_Section):
    host: str = "[::]"
    # 0 asks the OS for a free port (tests); the bound port is logged.
    port: int = Field(50051, ge=0, le=65535)
    max_receive_message_bytes: int = Field(16 * _MIB, ge=1024)
    max_send_message_bytes: int = Field(16 * _MIB, ge=1024)
    # Back-pressure: beyond this many concurrent RPCs new ones get RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int | None = Field(None, ge=1)
    keepalive_time_seconds: float = Field(30.0, gt=0)
    keepalive_timeout_seconds: float = Field(10.0, gt=0)
    # Fail fast on clients pinging more often than this (protects against ping floods).
    min_client_ping_interval_seconds: float = Field(10.0, gt=0)
    # On SIGTERM: health goes NOT_SERVING, new RPCs are refused, in-flight ones get this long.
    drain_seconds: float = Field(10.0, ge=0)


class HttpSettings(_Section):
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class TracingSettings(_Section):
    # OTLP/gRPC collector, e.g. http://otel-collector:4317. None: spans are made (so logs
    # carry trace ids) but not exported.
    otlp_endpoint: str | None = None
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)


class DatabaseSettings(_Section):
    # A libpq-style DSN; several hosts (``postgresql://a,b/db?target_session_attrs=read-write``)
    # for replicas. None: start the embedded PostgreSQL in ``embedded_data_dir``.
    dsn: SecretStr | None = None
    embedded_data_dir: Path = Path("var/postgres")
    pool_min_size: int = Field(1, ge=0)
    pool_max_size: int = Field(10, ge=1)
    connect_timeout_seconds: float = Field(5.0, gt=0)
    command_timeout_seconds: float = Field(10.0, gt=0)


class RedisSettings(_Section):
    # redis://[:password@]host:port/db, rediss:// for TLS. None: run without Redis.
    url: SecretStr | None = None
    cluster: bool = False
    socket_timeout_seconds: float = Field(2.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=_ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    environment: Environment = "dev"
    grpc: GrpcSettings = GrpcSettings()
    http: HttpSettings = HttpSettings()
    logging: LoggingSettings = LoggingSettings()
    tracing: TracingSettings = TracingSettings()
    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()

    @model_validator(mode="after")
    def _production_needs_a_database(self) -> Settings:
        # The embedded PostgreSQL is a development convenience, never production storage.
        if self.environment == "production" and self.database.dsn is None:
            raise ValueError("database.dsn is required in production (set ITS_DATABASE__DSN)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML document arrives as init kwargs; the environment must win over it.
        return env_settings, init_settings


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {path}: malformed YAML{where}: {problem}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    return document


def _describe(error: ValidationError, source: str) -> str:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            problems.append(f"{field}: unknown key")
        else:
            shown = (
                ""
                if "input" not in item or isinstance(item["input"], dict)
                else f" (got {item['input']!r})"
            )
            problems.append(f"{field}: {item['msg']}{shown}")
    return f"invalid configuration ({source}): " + "; ".join(problems)


def load_settings(
    config_file: Path | None = None,
    environment: str | None = None,
    *,
    config_dir: Path = Path("config"),
) -> Settings:
    """Build the settings, or raise ``ConfigError`` naming the first bad field.

    With no explicit file, ``ITS_CONFIG_FILE`` is used, else ``<config_dir>/<environment>.yaml``
    when it exists (environment from the argument, ``ITS_ENVIRONMENT``, or ``dev``).
    """
    environment = environment or os.environ.get(f"{_ENV_PREFIX}ENVIRONMENT") or "dev"
    explicit = config_file or (
        Path(os.environ[f"{_ENV_PREFIX}CONFIG_FILE"])
        if os.environ.get(f"{_ENV_PREFIX}CONFIG_FILE")
        else None
    )
    default_file = config_dir / f"{environment}.yaml"
    path = explicit if explicit is not None else (default_file if default_file.is_file() else None)

    document = _read_yaml(path) if path is not None else {}
    document.setdefault("environment", environment)
    source = f"{path} and {_ENV_PREFIX}* environment" if path else f"{_ENV_PREFIX}* environment"
    try:
        return Settings(**document)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
