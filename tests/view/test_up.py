"""Finding the services from a command line: up.json's fields, its credential, the order
of --up-dir, --target, var/up and the default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from its_camera_ai.client import DEFAULT_TARGET, Endpoints, read_up_dir, resolve_endpoints


def _write(directory: Path, credential: str | None = "a.jwt.token", **changes: object) -> None:
    document: dict[str, object] = {
        "grpc": {"decoder": "127.0.0.1:50052", "query": "127.0.0.1:50054"},
        "http": {"decoder": "127.0.0.1:50062", "query": "127.0.0.1:50064"},
        **changes,
    }
    if credential is not None:
        (directory / "token").write_text(credential + "\n")
        document["token_file"] = str(directory / "token")
    (directory / "up.json").write_text(json.dumps(document))


def test_up_json_names_each_service_and_the_credential(tmp_path: Path) -> None:
    _write(tmp_path)
    assert read_up_dir(tmp_path) == Endpoints(
        cameras="127.0.0.1:50052",
        query="127.0.0.1:50054",
        http={"decoder": "127.0.0.1:50062", "query": "127.0.0.1:50064"},
        token="a.jwt.token",
    )
    _write(tmp_path, credential="itsk_secret")
    endpoints = read_up_dir(tmp_path / "up.json")
    assert (endpoints.token, endpoints.api_key) == (None, "itsk_secret")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"grpc": {"decoder": "127.0.0.1:1"}}, "grpc.query: expected HOST:PORT, got None"),
        ({"http": {"query": "no port"}}, "http.query: expected HOST:PORT, got 'no port'"),
        ({"http": ["127.0.0.1:1"]}, "http: expected an object of HOST:PORT"),
        ({"token_file": 7}, "token_file: expected a path, got 7"),
    ],
)
def test_a_bad_up_json_names_the_field(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    _write(tmp_path, credential=None, **changes)
    with pytest.raises(ValueError, match=f"^{tmp_path / 'up.json'}: ") as raised:
        read_up_dir(tmp_path)
    assert str(raised.value).endswith(message)


def test_the_command_line_chooses_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_endpoints(None, None) == Endpoints.single(DEFAULT_TARGET)
    (tmp_path / "var" / "up").mkdir(parents=True)
    _write(tmp_path / "var" / "up")  # `up` runs from here
    assert resolve_endpoints(None, None).cameras == "127.0.0.1:50052"
    assert resolve_endpoints("10.0.0.1:443", None) == Endpoints.single("10.0.0.1:443")
    other = tmp_path / "other"
    other.mkdir()
    _write(other, grpc={"decoder": "127.0.0.1:7", "query": "127.0.0.1:8"})
    assert resolve_endpoints("10.0.0.1:443", other).query == "127.0.0.1:8"
