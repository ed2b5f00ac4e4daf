"""The security rules the settings enforce before anything starts: only dev is open."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from its_camera_ai.common import ConfigError, ServerTlsSettings, Settings, load_settings

pytestmark = pytest.mark.security

REPO = Path(__file__).resolve().parents[2]


def _settings(environment: str, **sections: Any) -> Settings:
    return Settings(
        environment=environment, http={"host": "127.0.0.1"}, database={"dsn": "postgresql://x/y"},
        **sections,
    )  # fmt: skip


def test_anonymous_callers_are_admins_in_dev_only() -> None:
    assert _settings("dev").anonymous_role == "admin"
    assert _settings("staging").anonymous_role is None
    viewer = _settings("staging", security={"anonymous_role": "viewer"})
    assert viewer.anonymous_role == "viewer"
    with pytest.raises(ValidationError, match="anonymous_role: operator is for dev only"):
        _settings("staging", security={"anonymous_role": "operator"})


def test_production_needs_tls() -> None:
    with pytest.raises(
        ValidationError, match=r"security\.tls\.cert_file and key_file are required"
    ):
        _settings("production")


def test_metrics_beyond_loopback_need_a_token_outside_dev() -> None:
    with pytest.raises(ValidationError, match="exposes /metrics beyond loopback"):
        Settings(environment="staging", http={"host": "0.0.0.0"})
    guarded = Settings(
        environment="staging", http={"host": "0.0.0.0"}, security={"metrics_token": "t"}
    )
    assert guarded.security.metrics_token is not None
    assert Settings(environment="dev", http={"host": "0.0.0.0"}).http.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cert_file": "a.crt"}, "cert_file and key_file go together"),
        ({"cert_file": "a", "key_file": "b", "client_ca_file": "c"}, "go together"),
        ({"require_client_cert": True}, "go together"),
        ({"cert_file": "a", "key_file": "b", "client_roles": {"x": "service"}}, "client_roles"),
        (
            {"cert_file": "a", "key_file": "b", "client_ca_file": "c",
             "require_client_cert": True, "client_roles": {"x": "superuser"}},
            "client_roles",
        ),
    ],
)  # fmt: skip
def test_inconsistent_tls_settings_are_named(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ServerTlsSettings(**fields)


def test_shipped_production_config_asks_for_mtls_and_no_anonymous(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ITS_DATABASE__DSN", "postgresql://its@db/its")
    settings = load_settings(environment="production", config_dir=REPO / "config")
    security = settings.security
    assert settings.anonymous_role is None
    assert security.tls.require_client_cert
    assert security.tls.min_version == "1.3"
    assert set(security.tls.client_roles.values()) == {"service"}
    assert security.peer_tls.enabled
    assert not security.reflection
    assert security.metrics_token_file is not None


def test_jwt_settings_need_issuer_and_audience(tmp_path: Path) -> None:
    config = tmp_path / "dev.yaml"
    config.write_text("security:\n  jwt:\n    jwks_file: jwks.json\n")
    with pytest.raises(ConfigError, match=r"security\.jwt: .*issuer and audience are required"):
        load_settings(config)
