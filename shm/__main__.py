"""`python -m shm list|clean`: see shm._tool."""

from __future__ import annotations

import sys

from shm._tool import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
