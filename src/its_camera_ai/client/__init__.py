"""Thin typed client helpers for the ITS Camera AI gRPC APIs.

The generated stubs live in the ``its`` package (``its.camera.v1.camera_service_pb2_grpc``
and so on); this module gives them a channel with the project's service config: a default
deadline on unary RPCs, none on long-lived streams, and transparent retries on
``UNAVAILABLE`` (the one code that means "nothing happened, try again"), and of reads on
``CANCELLED`` too (what a draining gRPC server answers calls it never started).

``add_connection_arguments``/``channel_from_arguments`` give a command line ``--target``, a
credential (a JWT or an API key, sent with every call) and TLS.

``reports_main`` is ``its-camera-ai counts|summary|events``: QueryService answers as tables.
"""

from __future__ import annotations

from its_camera_ai.client._channel import (
    SERVICES,
    add_connection_arguments,
    aio_channel,
    channel_from_arguments,
    metadata_interceptors,
    service_config,
)
from its_camera_ai.client._reports import REPORTS, reports_main

__all__ = [
    "REPORTS",
    "SERVICES",
    "add_connection_arguments",
    "aio_channel",
    "channel_from_arguments",
    "metadata_interceptors",
    "reports_main",
    "service_config",
]
