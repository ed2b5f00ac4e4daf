"""``its-camera-ai up``: the whole system on this host, one process per service, under one
supervisor.

Decoder, analytics, inference and query run as ``its-camera-ai serve <unit>`` children, each
on its own gRPC and HTTP port on loopback, wired to each other by address (the frame ring
really crosses processes: the decoder writes, inference reads). ``up`` owns the embedded
PostgreSQL (unless ``database.dsn`` is set), mints a development JWT issuer and an admin
token, writes ``<data>/up.json`` for clients (the view, ``snapshot``, the load tests),
creates the sample camera, restarts a child that dies (with backoff, counted), and on
Ctrl-C/SIGTERM stops the children in reverse start order, then the database, leaving
nothing in ``/dev/shm``.

``up.json``::

    {"grpc": {"decoder": "127.0.0.1:50051", "analytics": "127.0.0.1:50052",
              "inference": "127.0.0.1:50053", "query": "127.0.0.1:50054"},
     "http": {"decoder": "127.0.0.1:50055", ...},
     "token_file": "<data>/token", "ring_prefix": "up50051-", "pid": 1234}

It exists while ``up`` runs (removed on a clean stop).
"""

from __future__ import annotations

from its_camera_ai.up._cli import main
from its_camera_ai.up._sample import SAMPLE_CAMERA, SAMPLE_SOURCE, sample_camera, sample_scene

__all__ = ["SAMPLE_CAMERA", "SAMPLE_SOURCE", "main", "sample_camera", "sample_scene"]
