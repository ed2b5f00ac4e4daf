"""The query service: the read side (``QueryService``) and administration (``AdminService``).

``UNIT`` is what ``its-camera-ai serve query`` runs. Both services answer UNIMPLEMENTED
until the query and security issues land; health and reflection work.
"""

from __future__ import annotations

from its_camera_ai.query.server import UNIT

__all__ = ["UNIT"]
