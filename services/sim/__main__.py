"""``python -m services.sim``: see ``services.sim._cli``."""

from __future__ import annotations

import sys

from services.sim._cli import main

if __name__ == "__main__":
    sys.exit(main())
