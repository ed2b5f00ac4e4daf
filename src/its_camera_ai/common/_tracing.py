"""OpenTelemetry tracing: a tracer provider per process, OTLP export only when configured.

Spans leave the process only when ``tracing.otlp_endpoint`` is set; only then do the gRPC
servers make a span per RPC (about 80 us of CPU a call, for spans that would go nowhere). The
frame spans decoder and inference make are always made: their context travels with frames.
Analytics, the end of a frame's way, continues the frame's trace through ``FrameTracer``,
which makes nothing at all while spans stay in the process.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, TraceFlags
from opentelemetry.util.types import Attributes

from its_camera_ai.common._config import TracingSettings

__all__ = ["FrameTracer", "configure_tracing"]

_log = logging.getLogger(__name__)

# W3C Trace Context, version 00: lower-case hex, ids not all zero (checked after the match).
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# Malformed traceparents come per frame from a broken producer: one log line this often.
_MALFORMED_LOG_SECONDS = 60.0


def configure_tracing(service: str, settings: TracingSettings) -> TracerProvider:
    """Install and return the process's tracer provider; call ``shutdown()`` to flush."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"its-camera-ai-{service}"}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    if settings.otlp_endpoint:
        # Imported here: the exporter pulls in its own gRPC channel machinery.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
        )
    # The global provider can be set once per process; in-process test servers after the
    # first keep using their own provider through the interceptor it is passed to.
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    return provider


def _span_context(traceparent: str) -> SpanContext | None:
    """The remote span a W3C ``traceparent`` (version 00) names; None when it is malformed."""
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None:
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(match[3], 16)))


class FrameTracer:
    """Continues frames' traces in one stage: a span per frame, child of the span named by
    the ``traceparent`` that came with the frame, and spans for work done for several frames
    at once (a durable commit), tied to theirs.

    Disabled (spans do not leave the process), every method returns at once and no span
    object is made: no stage after this one needs the context. A frame without a traceparent
    gets no span (a trace per frame here, without its decoder and inference spans, would
    only be noise); a malformed one is ignored, never an error, and logged at most once a
    minute with the count since. Sampling is the parent's, as ``configure_tracing``'s
    ``ParentBased`` sampler has it: a frame whose trace was not sampled gets no span.
    """

    def __init__(self, instrumentation: str, *, enabled: bool) -> None:
        self._tracer = trace.get_tracer(instrumentation) if enabled else None
        self.malformed = 0
        self._malformed_logged = 0
        self._next_log = 0.0

    def frame(self, name: str, traceparent: str) -> Span | None:
        """A started span for one frame (end it), or None: tracing off, or no parent."""
        if self._tracer is None or not traceparent:
            return None
        parent = _span_context(traceparent)
        if parent is None:
            self._note_malformed(traceparent)
            return None
        if not parent.trace_flags.sampled:
            # What configure_tracing's sampler decides for it, without the SDK's ~5 us.
            return None
        context = trace.set_span_in_context(NonRecordingSpan(parent))
        return self._tracer.start_span(name, context=context, kind=trace.SpanKind.CONSUMER)

    @contextmanager
    def joined(self, name: str, frames: Sequence[Span], attributes: Attributes) -> Iterator[Span]:
        """The current span while work for ``frames`` (spans from ``frame``) runs.

        Its parent is the first frame span, and it links to every one. A span has one
        parent, yet the work belongs to every frame: the parent puts it in one frame's trace,
        where the waterfall shows it (the oldest frame, that waited longest for it); the
        links let each other frame's trace find it. Without frame spans (tracing off, no
        frame sampled) it is the no-op ``INVALID_SPAN``.
        """
        if self._tracer is None or not frames:
            yield trace.INVALID_SPAN
            return
        contexts = [span.get_span_context() for span in frames]
        with self._tracer.start_as_current_span(
            name,
            context=trace.set_span_in_context(NonRecordingSpan(contexts[0])),
            links=[Link(context) for context in contexts],
            attributes=attributes,
        ) as span:
            yield span

    def _note_malformed(self, traceparent: str) -> None:
        self.malformed += 1
        now = time.monotonic()
        if now < self._next_log:
            return
        self._next_log = now + _MALFORMED_LOG_SECONDS
        _log.warning(
            "malformed traceparent ignored",
            extra={
                "traceparent": traceparent[:64],
                "malformed_since_last_logged": self.malformed - self._malformed_logged,
            },
        )
        self._malformed_logged = self.malformed
