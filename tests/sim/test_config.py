from __future__ import annotations

import pytest
from pydantic import ValidationError

from its_camera_ai.sim import IncidentConfig, RoadConfig, SceneConfig


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"camera": {"tilt_deg": 95}}, "camera.tilt_deg"),
        ({"camera": {"width": 641}}, "camera.width"),
        ({"camera": {"tilt": 10}}, "camera.tilt"),
        ({"fps": 0}, "fps"),
        ({"condition": "snow"}, "condition"),
        ({"traffic": {"class_mix": {"tank": 1.0}}}, "traffic.class_mix"),
        ({"road": {"lanes_per_direction": 9}}, "road.lanes_per_direction"),
        ({"incidents": [{"kind": "meteor"}]}, "incidents.0.kind"),
        ({"counting_lines": [{"name": "x", "a": [0, 0], "b": [0, 0]}]}, "counting_lines.0"),
    ],
)
def test_bad_config_names_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        SceneConfig.model_validate(data)
    assert field in str(err.value)


def test_cross_field_rules_name_the_field() -> None:
    with pytest.raises(ValidationError, match=r"incidents\.0\.kind: wrong_way needs"):
        SceneConfig(
            road=RoadConfig(lanes_per_direction=1), incidents=(IncidentConfig(kind="wrong_way"),)
        )
    with pytest.raises(ValidationError, match=r"intersection\.x_m"):
        SceneConfig.model_validate({"intersection": {"x_m": 5000}})


def test_defaults_are_valid_and_frozen() -> None:
    cfg = SceneConfig()
    assert cfg.camera.focal > 0
    with pytest.raises(ValidationError):
        cfg.seed = 3  # type: ignore[misc]
