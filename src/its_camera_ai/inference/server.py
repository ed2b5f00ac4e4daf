"""The inference service: frames from the camera rings in, detections out to analytics.

Registration loads and checks the model (manifest, sha256, output shapes) and builds its
backend engine before the server takes a call, so a bad deployment fails at start-up with
the reason. It then wires the pipeline::

    decoder's WatchCameraStatus ─▶ Feeds (a reader thread per ring) ─▶ DynamicBatcher
        ─▶ BatchRunner (preprocess, model, postprocess) ─▶ FrameSink ─▶ DetectionProducer
        ─▶ AnalyticsService.StreamDetectionBatches

and serves ``InferenceService`` (``Detect`` joins the same batches). The decoder and
analytics are reached at ``inference.decoder_target``/``analytics_target``, or, left unset,
in this same process when ``serve all`` runs them here. Shutdown, before the server drains,
stops reading rings, finishes the batch in progress and gives the producer a moment to
deliver what it holds (to this very server, in ``serve all``).

``UNIT`` takes the ``inference`` section of the settings (``ITS_INFERENCE__*``);
``inference_unit(settings)`` builds one with explicit settings (tests, embedding).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time

import grpc
import torch

from its.inference.v1 import inference_service_pb2, inference_service_pb2_grpc, model_pb2
from its_camera_ai.common import InferenceSettings, Runtime, ServiceUnit
from its_camera_ai.inference._batching import DynamicBatcher
from its_camera_ai.inference._discovery import watch_decoder
from its_camera_ai.inference._feeds import Feeds, FrameSink
from its_camera_ai.inference._metrics import InferenceMetrics
from its_camera_ai.inference._producer import DetectionProducer, new_producer_id
from its_camera_ai.inference._producer_accounting import ProducerMetrics
from its_camera_ai.inference._runner import BatchRunner
from its_camera_ai.inference._servicer import InferenceServicer, model_resource
from its_camera_ai.inference.models import (
    DetectionModel,
    EngineSpec,
    YoloAdapter,
    build_engine,
    load_model,
)
from its_camera_ai.shm import enable_metrics

__all__ = ["UNIT", "configured_model", "feed_score_threshold", "inference_unit"]

_log = logging.getLogger(__name__)
_DRAIN_SECONDS = 5.0
# inference.torch_threads 0: torch's default as this process started (one per core, or
# OMP_NUM_THREADS), restored for each pipeline whatever an earlier one in the process set.
_DEFAULT_TORCH_THREADS = torch.get_num_threads()


def configured_model(settings: InferenceSettings) -> DetectionModel:
    """The configured model on the CPU (a backend makes its own copy on its device)."""
    if settings.yolo_model is not None:
        return YoloAdapter.load(
            settings.yolo_model,
            sha256=settings.yolo_sha256,
            input_size=settings.yolo_input_size,
            num_classes=settings.yolo_num_classes,
        )
    return load_model(settings.model_manifest or settings.model, input_size=settings.input_size)


def feed_score_threshold(settings: InferenceSettings, model: DetectionModel) -> float:
    """The score from which the frame pipeline sends ``model``'s detections to analytics."""
    if settings.score_threshold is None:
        return model.default_score_threshold
    return settings.score_threshold


class _Pipeline:
    """One registration's pipeline: built before the server takes a call, the producer and
    discovery started once it serves, everything stopped before it drains."""

    def __init__(
        self,
        config: InferenceSettings,
        runtime: Runtime,
        metrics: InferenceMetrics,
        batcher: DynamicBatcher,
        runner: BatchRunner,
    ) -> None:
        self._config = config
        self._runtime = runtime
        model, engine = runner.model, runner.engine
        self._resource = model_resource(model, engine, config.max_batch_size, time.time_ns())
        _log.info(
            "model ready",
            extra={
                "model": self._resource.name,
                "version": self._resource.version,
                "device": self._resource.device,
            },
        )
        self._producer_metrics = ProducerMetrics(runtime.metrics)
        self._producers: list[DetectionProducer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._sink = FrameSink(metrics)
        self._batcher = batcher
        self._feeds = Feeds(
            self._batcher,
            self._sink,
            metrics,
            score_threshold=feed_score_threshold(config, model),
            device=engine.device,
        )
        flags = runtime.flags
        self.servicer = InferenceServicer(
            model,
            self._resource,
            self._batcher,
            self._feeds,
            flag=flags.enabled if flags is not None else lambda _name: True,
        )

    async def started(self) -> None:
        config = self._config
        analytics = self._runtime.peer_target(config.analytics_target, "analytics")
        assert analytics is not None  # checked at registration
        analytics_target = analytics()
        producer = DetectionProducer(
            analytics_target,
            producer_id=new_producer_id(f"inference-{socket.gethostname()}-{os.getpid()}"),
            model=self._resource.name,
            model_version=self._resource.version,
            metrics=self._producer_metrics,
            max_unacked_batches=config.max_unacked_batches,
            max_pending_frames=config.max_pending_frames,
            backoff_initial_seconds=config.reconnect_initial_seconds,
            backoff_max_seconds=config.reconnect_max_seconds,
            access=self._runtime.peer_access(analytics_target),
        )
        self._producers.append(producer)
        self._sink.connect(producer.submit)
        await producer.start()
        for camera, ring in config.cameras.items():
            self._feeds.set(camera, ring)
        decoder = self._runtime.peer_target(config.decoder_target, "decoder")
        if decoder is not None:
            watch = watch_decoder(
                decoder(),
                self._feeds.set,
                initial_backoff=config.reconnect_initial_seconds,
                max_backoff=config.reconnect_max_seconds,
                open_channel=self._runtime.peer_channel,
            )
            self._tasks.append(asyncio.create_task(watch))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks)
        await asyncio.to_thread(self._feeds.close)
        await asyncio.to_thread(self._batcher.close)
        self.servicer.close()
        for producer in self._producers:
            await producer.close(_DRAIN_SECONDS)

    @classmethod
    async def create(cls, config: InferenceSettings, runtime: Runtime) -> _Pipeline:
        """The model loaded and its engine built on the batcher's thread (slow, off the
        loop), then the rest of the pipeline around them."""
        # The rings this process reads: shm_* at scrape time (idempotent per registry).
        enable_metrics(runtime.metrics)
        metrics = InferenceMetrics(runtime.metrics)
        batcher = DynamicBatcher(
            functools.partial(_prepare, config, metrics),
            max_batch_size=config.max_batch_size,
            max_queue_delay=config.max_queue_delay_ms / 1000.0,
            lane_depth=config.frames_per_camera,
            max_requests=config.max_pending_requests,
            on_superseded=lambda work: work.done(work, None, None),
        )
        try:
            runner = await asyncio.wrap_future(batcher.ready)
        except BaseException:
            await asyncio.to_thread(batcher.close)
            raise
        assert isinstance(runner, BatchRunner)
        return cls(config, runtime, metrics, batcher, runner)


def _prepare(config: InferenceSettings, metrics: InferenceMetrics) -> BatchRunner:
    """The model, its engine and their runner (on the batcher's thread)."""
    torch.set_num_threads(config.torch_threads or _DEFAULT_TORCH_THREADS)
    model = configured_model(config)
    engine = build_engine(model, EngineSpec.from_settings(config))
    if engine.backend == model_pb2.BACKEND_ONNXRUNTIME_CPU:
        # ONNX Runtime has its threads (torch's count, read at build). Torch is left each
        # frame's resize and the decoding, on this thread: one thread does them nearly as
        # fast, and a second OpenMP thread spinning after each would take a core from ONNX
        # Runtime's workers (docs/benchmarks.md, "One thread for torch's work").
        torch.set_num_threads(1)
    return BatchRunner(model, engine, metrics, config.max_batch_size)


def inference_unit(settings: InferenceSettings | None = None) -> ServiceUnit:
    async def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        config = settings or runtime.settings.inference
        runtime.peer_target(
            config.analytics_target, "analytics", setting="inference.analytics_target"
        )
        pipeline = await _Pipeline.create(config, runtime)
        runtime.on_started.append(pipeline.started)
        # Before the server drains: in `serve all` the producer streams to this very server.
        runtime.on_stopping.append(pipeline.stop)
        inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(pipeline.servicer, server)

    return ServiceUnit(
        name="inference",
        grpc_services=(
            inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
        ),
        register=register,
    )


UNIT = inference_unit()
