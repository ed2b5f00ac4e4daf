"""The detection producer's connection: its channel to analytics and the one stream on it.

One ``StreamDetectionBatches`` call at a time, with no deadline: it lives as long as the
producer. A broken stream is reopened after capped, jittered exponential backoff
(``its_camera_ai.common.Backoff``, reset whenever a stream moved a batch forward). What is
written and what an acknowledgement does is the producer's (``StreamSession``); this module
opens, watches and closes streams, and logs how they fail.

The channel is built here rather than with ``its_camera_ai.client.aio_channel``: that one
enables gRPC retries on streaming methods (the first ``grpc.enable_retries`` option wins,
so callers cannot turn it off), which would replay requests behind the producer's back, hide
breaks from its accounting and delay failure detection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from its.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc
from its_camera_ai.common import ERROR_DOMAIN, PLAINTEXT, Backoff, PeerAccess
from its_camera_ai.inference._log_throttle import LogThrottle
from its_camera_ai.inference._producer_accounting import ProducerLedger

__all__ = ["AnalyticsConnection", "DetectionStream", "StreamSession"]

_log = logging.getLogger(__name__)

_Request = analytics_service_pb2.StreamDetectionBatchesRequest
_Ack = analytics_service_pb2.StreamDetectionBatchesResponse
_Call = grpc.aio.StreamStreamCall[_Request, _Ack]


class DetectionStream:
    """One open stream as its writer sees it; counts the writes (a refusal of the head batch
    is only believed once one was written)."""

    def __init__(self, call: _Call) -> None:
        self._call = call
        self.writes = 0
        self.progressed = False  # an acknowledgement on it settled a batch

    async def write(self, request: _Request) -> None:
        await self._call.write(request)
        self.writes += 1

    async def done_writing(self) -> None:
        """Half-close: analytics acknowledges what it has, then ends with OK."""
        await self._call.done_writing()


class StreamSession(Protocol):
    """What the producer does on each stream the connection opens."""

    def finished(self) -> bool:
        """True once nothing is left to deliver and no stream is needed any more."""
        ...

    async def write(self, stream: DetectionStream) -> None:
        """Write batches until done (half-closing the stream) or cancelled."""
        ...

    def on_ack(self, ack: _Ack) -> bool:
        """Handle one acknowledgement; True if it settled a batch."""
        ...

    def ended(self, code: grpc.StatusCode, details: str, batch_refused: bool) -> bool:
        """A stream ended with ``code``: True if that was expected or dealt with (not a
        failure to log); ``batch_refused``: analytics refused the head batch as malformed."""
        ...

    def backlog(self) -> dict[str, int]:
        """``unacked_batches`` and ``pending_frames``, for log lines."""
        ...


def _invalid_field(trailing: grpc.aio.Metadata | None) -> bool:
    """Whether a status's ``google.rpc.Status`` details carry analytics' ErrorInfo
    ``INVALID_FIELD`` (what it answers for a malformed batch)."""
    for key, value in trailing or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return False
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return bool(info.domain == ERROR_DOMAIN and info.reason == "INVALID_FIELD")
    return False


class AnalyticsConnection:
    """The channel to analytics at ``target``; ``run`` keeps a stream open on it."""

    def __init__(
        self,
        target: str,
        ledger: ProducerLedger,
        *,
        backoff_initial_seconds: float,
        backoff_max_seconds: float,
        access: PeerAccess = PLAINTEXT,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._target = target
        self._ledger = ledger
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._access = access
        self._channel_options = tuple(channel_options)
        self._channel: grpc.aio.Channel | None = None
        self._ever_connected = False
        self._failure_log = LogThrottle()

    def open(self) -> None:
        """Create the channel (on the running loop); it connects with the first stream."""
        options = [
            # The caller's options first: gRPC keeps the first of duplicate options.
            *self._channel_options,
            # The producer retries itself: it must resend unacknowledged batches in order.
            ("grpc.enable_retries", 0),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            # Keep probing a silent peer while no frames flow (the default stops after 2).
            ("grpc.http2.max_pings_without_data", 0),
            # The channel's own reconnect backoff (default up to 120 s) would otherwise fail
            # our attempts fast long after analytics is back.
            ("grpc.initial_reconnect_backoff_ms", int(self._backoff_initial * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(self._backoff_max * 1000)),
        ]
        self._channel = self._access.channel(self._target, options=options)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def run(self, session: StreamSession) -> None:
        """Open streams for ``session``, one after another, until it is finished."""
        backoff = Backoff(self._backoff_initial, self._backoff_max)
        while not session.finished():
            try:
                progressed = await self._stream_once(session)
            except Exception:
                # A bug here must not end delivery for good: log it and reopen.
                _log.exception("detection stream failed unexpectedly")
                progressed = False
            if session.finished():
                return
            if progressed:
                backoff.reset()
            await asyncio.sleep(backoff.next_delay())

    async def _stream_once(self, session: StreamSession) -> bool:
        """Run one stream until it ends; True if it moved any batch forward."""
        assert self._channel is not None
        stub = analytics_service_pb2_grpc.AnalyticsServiceStub(self._channel)
        # No timeout: the stream lives as long as the producer.
        call: _Call = stub.StreamDetectionBatches()
        stream = DetectionStream(call)
        try:
            try:
                await call.wait_for_connection()
            except grpc.aio.AioRpcError as error:
                self._log_failure(session, error.code(), error.details() or "", connected=False)
                return False
            self._connected(session)
            await self._exchange(call, stream, session)
        finally:
            if not call.done():
                call.cancel()
            self._ledger.set_connected(False)
        code, details = await call.code(), await call.details()
        # Analytics' verdict on the head batch, not some proxy's complaint about the request:
        # only that may cost a batch.
        batch_refused = (
            code is grpc.StatusCode.INVALID_ARGUMENT
            and stream.writes > 0
            and _invalid_field(await call.trailing_metadata())
        )
        if session.ended(code, details or "", batch_refused):
            return True
        self._log_failure(session, code, details or "", connected=True)
        return stream.progressed

    def _connected(self, session: StreamSession) -> None:
        self._ledger.set_connected(True)
        if self._ever_connected:
            self._ledger.count_reconnect()
            _log.info(
                "detection stream to analytics re-established",
                extra={
                    "target": self._target,
                    "unacked_batches": session.backlog()["unacked_batches"],
                },
            )
        self._ever_connected = True

    async def _exchange(self, call: _Call, stream: DetectionStream, session: StreamSession) -> None:
        """Write and read concurrently until the call ends."""
        writer = asyncio.create_task(session.write(stream))
        reader = asyncio.create_task(self._read(call, stream, session))
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
            if writer.done() and not writer.cancelled():
                failure = writer.exception()
                if failure is not None and not isinstance(
                    failure, grpc.RpcError | asyncio.InvalidStateError
                ):
                    # Not the stream failing (that ends the call, and the reader with it).
                    _log.error("detection stream writer failed", exc_info=failure)
                    call.cancel()
            # The reader ends when the call does; it reads every acknowledgement sent
            # before the final status, which the handling after it relies on. (Waited for,
            # not awaited: a locally cancelled call makes read() raise CancelledError.)
            await asyncio.wait({reader})
        finally:
            for task in (writer, reader):
                if not task.done():
                    task.cancel()
            if not call.done():
                call.cancel()
            # Their own errors are settled above; a cancellation of this task still propagates.
            await asyncio.gather(writer, reader, return_exceptions=True)

    async def _read(self, call: _Call, stream: DetectionStream, session: StreamSession) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            while True:
                ack = await call.read()
                if ack is grpc.aio.EOF:
                    return
                assert isinstance(ack, _Ack)
                if session.on_ack(ack):
                    stream.progressed = True

    def _log_failure(
        self, session: StreamSession, code: grpc.StatusCode, details: str, *, connected: bool
    ) -> None:
        # Retried all the same, but a person has to act on these.
        denied = code in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        # A stream that was up and broke is always worth a line; failed attempts during an
        # outage are summarised.
        if not (connected or self._failure_log.ready()):
            return
        _log.log(
            logging.ERROR if denied else logging.WARNING,
            "detection stream to analytics broke" if connected
            else "cannot open the detection stream to analytics",
            extra={
                "target": self._target,
                "status": code.name,
                "details": details,
                **session.backlog(),
                "failed_attempts_not_logged": self._failure_log.take_held_back(),
            },
        )  # fmt: skip
