"""The decoder service: cameras (RTSP, files, HTTP/UDP streams, the simulator) decoded into
shared-memory frame rings, managed through ``CameraService``.

``UNIT`` is what ``its-camera-ai serve decoder`` runs; ``decoder_unit(settings)`` builds one
with explicit settings. The parts below it, public for tests, benchmarks and embedding:
``CameraWorker`` (one camera's ingest thread: open, decode, pace, write the ring, reconnect
with backoff), its sources and clock, the status board behind ``WatchCameraStatus``, the
source-URI rules, the egress policy that keeps sources off internal and metadata
addresses, and the key ring that seals camera URLs at rest.
"""

from __future__ import annotations

from its_camera_ai.common import page_token_after
from its_camera_ai.decoder._crypto import KeyRing, Sealed, SealedUnreadable, load_key_ring
from its_camera_ai.decoder._egress import (
    METADATA_HOSTS,
    EgressPolicy,
    EgressRefused,
    EgressUnresolved,
    Resolver,
    resolve_host,
)
from its_camera_ai.decoder._metrics import CameraMetrics, DecoderMetrics
from its_camera_ai.decoder._servicer import compile_list_query
from its_camera_ai.decoder._sources import (
    SIM_SCENES,
    Picture,
    Source,
    SourceError,
    SourceOpener,
)
from its_camera_ai.decoder._status import CameraState, StatusBoard, StatusTracker
from its_camera_ai.decoder._timing import FrameClock, Verdict
from its_camera_ai.decoder._uri import SourceKind, UriError, mask_uri, parse_source_uri, scrub
from its_camera_ai.decoder._worker import CameraWorker, DecodeSpec
from its_camera_ai.decoder.server import UNIT, decoder_unit

__all__ = [
    "METADATA_HOSTS",
    "SIM_SCENES",
    "UNIT",
    "CameraMetrics",
    "CameraState",
    "CameraWorker",
    "DecodeSpec",
    "DecoderMetrics",
    "EgressPolicy",
    "EgressRefused",
    "EgressUnresolved",
    "FrameClock",
    "KeyRing",
    "Picture",
    "Resolver",
    "Sealed",
    "SealedUnreadable",
    "Source",
    "SourceError",
    "SourceKind",
    "SourceOpener",
    "StatusBoard",
    "StatusTracker",
    "UriError",
    "Verdict",
    "compile_list_query",
    "decoder_unit",
    "load_key_ring",
    "mask_uri",
    "page_token_after",
    "parse_source_uri",
    "resolve_host",
    "scrub",
]
