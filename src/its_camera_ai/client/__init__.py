"""The CLI's client helpers, on the client distribution (``its_camera_ai_client``).

That distribution owns the channel: the service config (a deadline on unary calls, retries
of reads and idempotent writes on ``UNAVAILABLE``, of reads on ``CANCELLED`` too), keepalive,
message sizes, the credential sent with every call, TLS and typed errors; ``SERVICES``,
``aio_channel``, ``metadata_interceptors`` and ``service_config`` are its, re-exported.

``add_connection_arguments``/``channel_from_arguments`` give a command line ``--target``, a
credential (a JWT or an API key) and TLS.

``reports_main`` is ``its-camera-ai counts|summary|events``: QueryService answers as tables.
``cameras_main`` is ``its-camera-ai cameras add|list|show|rm`` (scene files: ``load_scene``).
"""

from __future__ import annotations

from its_camera_ai.client._cameras import SCENE_FIELDS, cameras_main, load_scene
from its_camera_ai.client._channel import (
    SERVICES,
    add_connection_arguments,
    aio_channel,
    channel_from_arguments,
    metadata_interceptors,
    service_config,
)
from its_camera_ai.client._endpoints import (
    DEFAULT_TARGET,
    DEFAULT_UP_DIR,
    Endpoints,
    read_up_dir,
    resolve_endpoints,
)
from its_camera_ai.client._reports import (
    REPORTS,
    counts_main,
    events_main,
    reports_main,
    summary_main,
)

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_UP_DIR",
    "REPORTS",
    "SCENE_FIELDS",
    "SERVICES",
    "Endpoints",
    "add_connection_arguments",
    "aio_channel",
    "cameras_main",
    "channel_from_arguments",
    "counts_main",
    "events_main",
    "load_scene",
    "metadata_interceptors",
    "read_up_dir",
    "reports_main",
    "resolve_endpoints",
    "service_config",
    "summary_main",
]
