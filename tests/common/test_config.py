from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from its_camera_ai.common import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("ITS_"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "service.yaml"
    path.write_text(text)
    return path


def test_defaults_without_any_file(tmp_path: Path) -> None:
    settings = load_settings(config_dir=tmp_path)
    assert settings.environment == "dev"
    assert settings.grpc.port == 50051
    assert settings.database.dsn is None


def test_yaml_overrides_defaults_and_environment_overrides_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "grpc:\n  port: 6000\n  drain_seconds: 3\nhttp:\n  port: 9000\n")
    monkeypatch.setenv("ITS_GRPC__PORT", "7000")
    settings = load_settings(path)
    assert settings.grpc.port == 7000  # environment wins
    assert settings.grpc.drain_seconds == 3  # the rest of the section still comes from YAML
    assert settings.http.port == 9000


def test_environment_picks_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "staging.yaml").write_text("http:\n  host: 127.0.0.1\n  port: 8123\n")
    monkeypatch.setenv("ITS_ENVIRONMENT", "staging")
    settings = load_settings(config_dir=tmp_path)
    assert settings.environment == "staging"
    assert settings.http.port == 8123


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"grpc\.prot: unknown key"):
        load_settings(write(tmp_path, "grpc:\n  prot: 50051\n"))


def test_unknown_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"databse: unknown key"):
        load_settings(write(tmp_path, "databse:\n  dsn: x\n"))


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_bad_port_is_named_with_its_value(tmp_path: Path, port: str) -> None:
    with pytest.raises(ConfigError, match=r"grpc\.port: .*" + port):
        load_settings(write(tmp_path, f"grpc:\n  port: {port}\n"))


def test_bad_port_from_environment_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ITS_HTTP__PORT", "99999")
    with pytest.raises(ConfigError, match=r"\(ITS_\* environment\): http\.port: .*99999"):
        load_settings(config_dir=tmp_path)


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "grpc:\n  port: 1\n  host: [unclosed\nhttp: {}\n")
    with pytest.raises(ConfigError, match=rf"{path}: malformed YAML at line \d+"):
        load_settings(path)


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(write(tmp_path, "- grpc\n- http\n"))


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")


def test_production_requires_a_database_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"database\.dsn is required in production"):
        load_settings(environment="production", config_dir=REPO / "config")
    monkeypatch.setenv("ITS_DATABASE__DSN", "postgresql://its@db-primary,db-replica/its")
    settings = load_settings(environment="production", config_dir=REPO / "config")
    assert settings.grpc.max_concurrent_rpcs == 1000
    # The DSN may hold a password: it never appears in a dump of the settings.
    assert "db-primary" not in str(settings.model_dump())


def test_connection_strings_from_mounted_secret_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dsn").write_text("postgresql://its:s3cret@db-primary/its\n")
    (tmp_path / "redis").write_text("rediss://:s3cret@cache:6380/0")
    monkeypatch.setenv("ITS_DATABASE__DSN_FILE", str(tmp_path / "dsn"))
    monkeypatch.setenv("ITS_REDIS__URL_FILE", str(tmp_path / "redis"))
    settings = load_settings(environment="production", config_dir=REPO / "config")
    assert settings.database.dsn is not None
    assert settings.database.dsn.get_secret_value() == "postgresql://its:s3cret@db-primary/its"
    assert settings.redis.url is not None
    assert settings.redis.url.get_secret_value() == "rediss://:s3cret@cache:6380/0"
    assert "s3cret" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("yaml_text", "problem"),
    [
        ("database:\n  dsn_file: {missing}\n", r"dsn_file '.*missing' cannot be read"),
        ("database:\n  dsn_file: {empty}\n", r"dsn_file '.*empty' is empty"),
        (
            "redis:\n  url: redis://x\n  url_file: {empty}\n",
            "url and url_file are exclusive",
        ),
    ],
)
def test_bad_secret_files_are_named(tmp_path: Path, yaml_text: str, problem: str) -> None:
    (tmp_path / "empty").write_text("\n")
    text = yaml_text.format(missing=tmp_path / "missing", empty=tmp_path / "empty")
    with pytest.raises(ConfigError, match=problem):
        load_settings(write(tmp_path, text))


@pytest.mark.parametrize("environment", ["dev", "staging"])
def test_shipped_configs_are_valid(environment: str) -> None:
    assert (
        load_settings(environment=environment, config_dir=REPO / "config").environment
        == environment
    )


def test_cli_stops_with_one_clear_message(tmp_path: Path) -> None:
    path = write(tmp_path, "grpc:\n  port: 70000\n")
    result = subprocess.run(
        [sys.executable, "-m", "its_camera_ai", "serve", "decoder", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "grpc.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_analytics_engine_tunables_from_yaml_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        "analytics:\n  engine:\n    max_detections: 3\n    bin_seconds: [60, 300]\n"
        "    tracker:\n      min_hits: 5\n",
    )
    monkeypatch.setenv("ITS_ANALYTICS__ENGINE__TRACKER__LOST_TTL_S", "1.5")
    engine = load_settings(path).analytics.engine
    assert engine.max_detections == 3
    assert engine.bin_seconds == (60, 300)
    assert engine.tracker.min_hits == 5
    assert engine.tracker.lost_ttl_s == 1.5
    assert engine.tracker.high_score == 0.5  # the rest keeps its defaults


@pytest.mark.parametrize(
    ("yaml_text", "problem"),
    [
        ("analytics:\n  engine:\n    tracker:\n      high_score: 2\n",
         r"analytics\.engine\.tracker\.high_score: Input should be less than or equal to 1"),
        ("analytics:\n  engine:\n    max_detection: 3\n",
         r"analytics\.engine\.max_detection: unknown key"),
        ("analytics:\n  engine:\n    bin_seconds: [60, 90]\n",
         r"analytics\.engine: .*bin_seconds: each must divide the next"),
        ("analytics:\n  reconnect_initial_seconds: 9\n  reconnect_max_seconds: 1\n",
         r"analytics: .*reconnect_max_seconds must be >= reconnect_initial_seconds"),
    ],
)  # fmt: skip
def test_bad_analytics_settings_are_named(tmp_path: Path, yaml_text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_settings(write(tmp_path, yaml_text))
