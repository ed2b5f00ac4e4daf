"""The test suite: a package, so that test areas share helpers by import."""

import os

# As its_camera_ai/__init__.py does, and before tests/conftest.py imports grpc: these tests
# fork PostgreSQL, Redis and other servers while gRPC servers run in this process.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
