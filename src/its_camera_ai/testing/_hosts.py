"""In-process service hosts on loopback, on ports the OS picks, and the inference engines
a benchmark configures them with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from its_camera_ai.common import InferenceSettings, ServiceHost, ServiceUnit, Settings
from its_camera_ai.inference import inference_unit

__all__ = ["BENCHMARK_BACKENDS", "engines", "host_settings", "inference_host", "metric_value"]

# The CPU backends a benchmark may ask for: "auto" is inference.backend's default.
BENCHMARK_BACKENDS = ("auto", "torch", "onnxruntime")


def engines(backends: list[str], precisions: list[str]) -> list[tuple[str, str]]:
    """The (backend, precision) pairs a benchmark measures for its ``--backend`` and
    ``--precision`` values: "auto" resolved as the service resolves it (ONNX Runtime for
    fp32 on a CPU, torch otherwise), ONNX Runtime paired with fp32 alone, each pair once."""
    pairs: dict[tuple[str, str], None] = {}
    for backend in backends:
        for precision in precisions:
            if backend == "onnxruntime" and precision != "fp32":
                continue
            settings = InferenceSettings(backend=backend, precision=precision)
            pairs[(settings.engine_backend, precision)] = None
    return list(pairs)


def host_settings(dsn: str | None = None, **database: object) -> Settings:
    """Settings for an in-process service host on loopback, on ports the OS picks."""
    return Settings(
        grpc={"host": "127.0.0.1", "port": 0, "drain_seconds": 0.5},
        http={"host": "127.0.0.1", "port": 0},
        database={"dsn": dsn, **database},
    )


@asynccontextmanager
async def inference_host(
    *units: ServiceUnit, dsn: str | None = None, **settings: Any
) -> AsyncIterator[ServiceHost]:
    """An in-process host with an inference unit (``settings``: InferenceSettings fields)
    in front of any other ``units`` (decoder, analytics)."""
    config = InferenceSettings(**{"max_queue_delay_ms": 2.0, **settings})
    host = ServiceHost(host_settings(dsn), [*units, inference_unit(config)])
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


def metric_value(host: ServiceHost, name: str, **labels: str) -> float:
    """Sum of a host's samples called ``name`` (``..._total`` for counters) with ``labels``."""
    total = 0.0
    for metric in host.runtime.metrics.collect():
        for sample in metric.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
