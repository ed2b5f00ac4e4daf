"""The shared identifier rules: what every service accepts as a camera id, a resource name
and a producer id or model version."""

from __future__ import annotations

import pytest

from its_camera_ai.common import camera_id_from_name, is_resource_id, is_token


@pytest.mark.parametrize("ident", ["a", "cam-1", "a" * 63, "x9", "north-gate-2"])
def test_resource_ids_accepted(ident: str) -> None:
    assert is_resource_id(ident)
    assert camera_id_from_name(f"cameras/{ident}") == ident


@pytest.mark.parametrize(
    "ident", ["", "1cam", "Cam", "cam-", "a" * 64, "cam_1", "cam.1", "cam\n", "cam 1", "cäm"]
)
def test_resource_ids_refused(ident: str) -> None:
    assert not is_resource_id(ident)
    assert camera_id_from_name(f"cameras/{ident}") is None


@pytest.mark.parametrize("name", ["cam-1", "camera/cam-1", "cameras/", "/cameras/cam-1",
                                  "cameras/cam-1/", "models/cam-1"])  # fmt: skip
def test_names_that_are_not_camera_names(name: str) -> None:
    assert camera_id_from_name(name) is None


def test_tokens_are_printable_ascii_without_spaces() -> None:
    assert is_token("inference-0/6f1c2a")
    assert is_token("~" * 128)
    for bad in ("", "x" * 129, "a b", "a\tb", "v1\n", "é"):
        assert not is_token(bad), bad
