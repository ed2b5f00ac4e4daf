"""Fixtures for the ring tests: unique ring names whose objects are always removed."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

SHM_DIR = "/dev/shm"
TEST_PREFIX = "t-"


def remove_ring_objects(name: str) -> list[str]:
    """Unlink the ring `name`, its temporaries and its semaphores; returns what went."""
    gone = []
    for entry in os.listdir(SHM_DIR):
        if (
            entry == f"its-ring-{name}"
            or entry.startswith(f"its-ring-{name}.")
            or entry.startswith(f"sem.its-ring-{name}.")
        ):
            try:
                os.unlink(os.path.join(SHM_DIR, entry))
                gone.append(entry)
            except FileNotFoundError:
                pass
    return gone


def leftovers(name: str) -> list[str]:
    return [
        e
        for e in os.listdir(SHM_DIR)
        if e == f"its-ring-{name}" or e.startswith((f"its-ring-{name}.", f"sem.its-ring-{name}."))
    ]


@pytest.fixture
def ring_name() -> Iterator[str]:
    """A ring name no other test (or engineer) uses; everything under it is removed after."""
    name = f"{TEST_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:10]}"
    yield name
    remove_ring_objects(name)


@pytest.fixture
def make_name() -> Iterator[object]:
    """Factory for extra unique ring names in one test, all cleaned up after."""
    names: list[str] = []

    def make() -> str:
        name = f"{TEST_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:10]}"
        names.append(name)
        return name

    yield make
    for n in names:
        remove_ring_objects(n)
