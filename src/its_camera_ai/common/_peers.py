"""How a service reaches its peers: TLS credentials and the credential it presents.

A unit calling a peer in the same process (``serve all``) presents the host's in-memory
service key; a peer elsewhere gets ``security.peer_api_key`` (or, with mTLS, the client
certificate of ``security.peer_tls`` alone). Either way the peer authenticates the call
like any other, so a service has no side door.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from its_camera_ai_client import metadata_interceptors

__all__ = ["PLAINTEXT", "PeerAccess"]


@dataclass(frozen=True)
class PeerAccess:
    credentials: grpc.ChannelCredentials | None = None
    # Sent with every call: ("x-api-key", key) or nothing.
    metadata: tuple[tuple[str, str], ...] = ()
    # Channel options TLS needs (a server name override).
    options: tuple[tuple[str, Any], ...] = ()

    def channel(self, target: str, *, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """A channel to ``target`` with the caller's ``options`` first (gRPC keeps the
        first of duplicate options) and no service config: peers retry themselves."""
        all_options = [*options, *self.options]
        interceptors = metadata_interceptors(self.metadata) if self.metadata else None
        if self.credentials is None:
            return grpc.aio.insecure_channel(target, options=all_options, interceptors=interceptors)
        return grpc.aio.secure_channel(
            target, self.credentials, options=all_options, interceptors=interceptors
        )


# A peer reached without TLS or a credential (tests, a dev laptop).
PLAINTEXT = PeerAccess()
