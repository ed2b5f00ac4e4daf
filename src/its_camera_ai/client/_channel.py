"""The CLI's connection: ``--target``, a credential and TLS from the command line, turned
into a channel by the client distribution (``its_camera_ai_client``), which owns the
service config, retries, keepalive, credential metadata and typed errors."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import grpc

from its_camera_ai_client import (
    SERVICES,
    TlsOptions,
    aio_channel,
    metadata_interceptors,
    service_config,
)

__all__ = [
    "SERVICES",
    "add_connection_arguments",
    "aio_channel",
    "channel_from_arguments",
    "metadata_interceptors",
    "service_config",
]


def add_connection_arguments(parser: argparse.ArgumentParser, *, default_target: str) -> None:
    """``--target``, the credential (``--token``/``$ITS_TOKEN`` or ``--api-key``/
    ``$ITS_API_KEY``) and TLS (``--tls-ca``, with ``--tls-cert``/``--tls-key`` for mTLS)."""
    parser.add_argument("--target", default=default_target, help=f"default {default_target}")
    parser.add_argument("--token", default=os.environ.get("ITS_TOKEN"), help="a JWT ($ITS_TOKEN)")
    parser.add_argument(
        "--api-key", default=os.environ.get("ITS_API_KEY"), help="an API key ($ITS_API_KEY)"
    )
    parser.add_argument("--tls-ca", type=Path, help="CA bundle of the server (turns TLS on)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (mTLS)")
    parser.add_argument("--tls-key", type=Path, help="client key (mTLS)")
    parser.add_argument("--tls-server-name", help="name to verify in the server certificate")


def channel_from_arguments(args: argparse.Namespace) -> grpc.aio.Channel:
    """The channel ``add_connection_arguments``' options describe; ``ValueError`` naming the
    option for a combination that cannot work (a certificate without its key, two
    credentials)."""
    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key:
        tls = TlsOptions(
            ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name
        )
    return aio_channel(args.target, token=args.token, api_key=args.api_key, tls=tls)
