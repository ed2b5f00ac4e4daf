from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from its_camera_ai.inference.models import (
    CenterNet,
    Detector,
    NetConfig,
    load_detector,
    save_detector,
)
from its_camera_ai.inference.training import TrainConfig
from tests.shm.conftest import TEST_PREFIX, remove_ring_objects


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # The CI machine has two cores shared with other jobs.
    torch.set_num_threads(1)


@pytest.fixture
def tiny_manifest(tmp_path: Path) -> Path:
    """An untrained small detector saved with its manifest (shape checks, not accuracy)."""
    torch.manual_seed(0)
    net = NetConfig(stem=8, widths=(8, 8, 16, 16), depths=(0, 0, 0, 0), neck=8, head=8)
    cfg = TrainConfig(data="unused", input_size=(128, 96), net=net)
    save_detector(CenterNet(net), cfg, {"note": "test"}, tmp_path, "tiny", "test")
    return tmp_path / "tiny.json"


@pytest.fixture
def ring_name() -> Iterator[str]:
    """A ring name nothing else uses; its objects are removed afterwards."""
    name = f"{TEST_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:10]}"
    yield name
    remove_ring_objects(name)


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    # Compiled graphs hang off the forward's code object, shared by every test's model.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def detector() -> Detector:
    """The shipped detector, loaded once per module."""
    return load_detector()
