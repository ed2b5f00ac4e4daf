"""``python -m its_camera_ai``: the ``its-camera-ai`` command."""

from __future__ import annotations

import sys

from its_camera_ai.cli import main

if __name__ == "__main__":
    sys.exit(main())
