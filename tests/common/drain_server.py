"""A service with one slow RPC, run as its own process by the graceful-shutdown test.

It goes through ``serve()`` exactly like ``its-camera-ai serve``, so SIGTERM handling and
draining are the real ones. Usage: drain_server.py GRPC_PORT HTTP_PORT SLEEP_SECONDS
"""

from __future__ import annotations

import asyncio
import sys

import grpc

from its_camera_ai.common import Runtime, ServiceUnit, load_settings, serve

SERVICE = "its.test.v1.SlowService"


async def _register(server: grpc.aio.Server, runtime: Runtime) -> None:
    sleep_seconds = float(sys.argv[3])

    async def sleep(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await asyncio.sleep(sleep_seconds)
        return b"done:" + request

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Sleep": grpc.unary_unary_rpc_method_handler(sleep)}
    )
    server.add_generic_rpc_handlers((handler,))


if __name__ == "__main__":
    import os

    os.environ["ITS_GRPC__PORT"] = sys.argv[1]
    os.environ["ITS_HTTP__PORT"] = sys.argv[2]
    os.environ["ITS_GRPC__HOST"] = "127.0.0.1"
    os.environ["ITS_HTTP__HOST"] = "127.0.0.1"
    os.environ["ITS_GRPC__DRAIN_SECONDS"] = "10"
    unit = ServiceUnit(name="slow", grpc_services=(SERVICE,), register=_register)
    asyncio.run(serve(load_settings(config_dir=__import__("pathlib").Path("/nonexistent")), [unit]))
