"""The security interceptor: every RPC authenticated, authorised, rate-limited and audited.

One server interceptor, innermost (the error mapping outside it turns its refusals into
statuses), so each call runs as a verified ``Principal``:

1. Credentials: ``authorization: Bearer <JWT>``, or ``x-api-key: <secret>`` (an API key,
   or the host's own in-memory key its units use to call each other in one process), or a
   client certificate whose identity ``security.tls.client_roles`` maps to a role, or
   nothing (the anonymous role, if any). A credential that is present but wrong is refused,
   never downgraded to anonymous. Behind an edge proxy that verifies JWTs itself (Envoy's
   ``jwt_authn``), the verified claims arrive in ``x-jwt-payload``; they, and the client
   address in ``x-forwarded-for``, are believed only from a peer whose certificate
   identity is listed in ``security.tls.edge_proxies``.
2. The access table (``_access.py``) for the method; then the principal's rate limit.
3. The call runs with the principal in a context variable (``current_principal``); calls
   of audited methods, and every refusal of steps 1-2, are written to the audit log.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
import ipaddress
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc

from its_camera_ai.common._errors import (
    ItsError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
)
from its_camera_ai.common._interceptors import rewrap
from its_camera_ai.common._security_settings import JwtSettings
from its_camera_ai.security._access import Access, access_for, is_allowed, service_of
from its_camera_ai.security._api_keys import ApiKeyStore
from its_camera_ai.security._audit import AuditEntry, AuditLog, AuditNote, Outcome, begin_note
from its_camera_ai.security._jwt import JwtVerifier, claims_expiry, principal_of_claims
from its_camera_ai.security._principal import ANONYMOUS_ACTOR, Principal, Role, bind_principal
from its_camera_ai.security._ratelimit import RateLimiter
from its_camera_ai.security._tls import peer_identity

__all__ = ["FORWARDED_CLAIMS_HEADER", "INTERNAL_KEY_PREFIX", "Authenticator", "SecurityInterceptor"]

_log = logging.getLogger(__name__)

# The prefix of a host's in-memory key for its own units; API keys begin "itsk_".
INTERNAL_KEY_PREFIX = "itsi_"
_BEARER = re.compile(r"^Bearer +(\S+)$", re.IGNORECASE)
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
# Envoy's jwt_authn ``forward_payload_header``: the verified token's claims, base64url JSON.
FORWARDED_CLAIMS_HEADER = "x-jwt-payload"
_FORWARDED_FOR = "x-forwarded-for"
_MAX_FORWARDED_CLAIMS_CHARS = 16 * 1024
_Behaviour = Callable[..., Any]


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    pairs = context.invocation_metadata() or ()
    return {key: value for key, value in pairs if isinstance(value, str)}


class Authenticator:
    """Turns a call's credentials into a ``Principal``, or raises ``UnauthenticatedError``."""

    def __init__(
        self,
        *,
        internal_key: str,
        internal_actor: str,
        jwt: JwtVerifier | None = None,
        api_keys: ApiKeyStore | None = None,
        client_roles: Mapping[str, Role] | None = None,
        anonymous_role: Role | None = None,
        edge_proxies: Sequence[str] = (),
        claims: JwtSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._internal_key = internal_key.encode()
        self._internal = Principal(internal_actor, Role.SERVICE)
        self._jwt = jwt
        self._api_keys = api_keys
        self._client_roles = dict(client_roles or {})
        self._edge_proxies = frozenset(edge_proxies)
        # How forwarded claims name the role and camera scope, as for tokens checked here.
        self._claims = claims or JwtSettings()
        self._clock = clock
        self._anonymous = (
            None if anonymous_role is None else Principal(ANONYMOUS_ACTOR, anonymous_role)
        )

    async def authenticate(
        self, metadata: Mapping[str, str], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Principal:
        authorization = metadata.get("authorization")
        api_key = metadata.get("x-api-key")
        forwarded = metadata.get(FORWARDED_CLAIMS_HEADER)
        if (authorization, api_key, forwarded).count(None) < 2:
            raise UnauthenticatedError(
                f"send one credential: authorization, x-api-key or {FORWARDED_CLAIMS_HEADER}"
            )
        if forwarded is not None:
            if not self.is_edge(context):
                raise UnauthenticatedError(
                    f"{FORWARDED_CLAIMS_HEADER} is believed only from an edge proxy"
                    " (security.tls.edge_proxies)"
                )
            return self._forwarded(forwarded)
        if authorization is not None:
            return await self._bearer(authorization)
        if api_key is not None:
            return await self._api_key(api_key)
        if self._client_roles:
            identity = peer_identity(context)
            role = self._client_roles.get(identity) if identity else None
            if role is not None:
                return Principal(f"service:{identity}", role)
        if self._anonymous is not None:
            return self._anonymous
        raise UnauthenticatedError(
            "no credential: send 'authorization: Bearer <JWT>' or 'x-api-key: <key>'"
        )

    def is_edge(self, context: grpc.aio.ServicerContext[Any, Any]) -> bool:
        """Whether the caller is an edge proxy (its certificate names a listed identity)."""
        return bool(self._edge_proxies) and peer_identity(context) in self._edge_proxies

    def _forwarded(self, payload: str) -> Principal:
        """The principal of claims an edge proxy verified (it checked signature and issuer)."""
        if len(payload) > _MAX_FORWARDED_CLAIMS_CHARS:
            raise UnauthenticatedError(f"{FORWARDED_CLAIMS_HEADER} is too long")
        try:
            # base64url, with or without padding (Envoy's pad_forward_payload_header).
            raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            claims = json.loads(raw)
        except (binascii.Error, ValueError):
            raise UnauthenticatedError(
                f"{FORWARDED_CLAIMS_HEADER} is not base64url-encoded JSON"
            ) from None
        if not isinstance(claims, dict):
            raise UnauthenticatedError(f"{FORWARDED_CLAIMS_HEADER} is not a JSON object")
        # The edge checked the times too; checking again costs nothing and bounds replay.
        claims_expiry(claims, self._claims, self._clock())
        return principal_of_claims(claims, self._claims)

    async def _bearer(self, authorization: str) -> Principal:
        match = _BEARER.match(authorization)
        if match is None:
            raise UnauthenticatedError("authorization: expected 'Bearer <JWT>'")
        if self._jwt is None:
            raise UnauthenticatedError("bearer tokens are not accepted by this server")
        return await self._jwt.verify(match.group(1))

    async def _api_key(self, secret: str) -> Principal:
        if secret.startswith(INTERNAL_KEY_PREFIX):
            if hmac.compare_digest(secret.encode(), self._internal_key):
                return self._internal
            raise UnauthenticatedError("x-api-key: unknown key")
        if self._api_keys is None:
            raise UnauthenticatedError("API keys are not accepted by this server (no database)")
        return await self._api_keys.verify(secret)


def _client_address(
    context: grpc.aio.ServicerContext[Any, Any], metadata: Mapping[str, str], *, from_edge: bool
) -> str:
    # grpc's peer is "ipv4:1.2.3.4:5", "ipv6:[::1]:5" or "unix:/path".
    peer = context.peer() or ""
    address = peer.partition(":")[2] if peer.startswith(("ipv4:", "ipv6:")) else peer
    if not from_edge or _FORWARDED_FOR not in metadata:
        return address
    # The edge appends the address it saw to whatever the client sent: only the last
    # entry is the edge's word, the rest is the client's claim.
    forwarded = metadata[_FORWARDED_FOR].rpartition(",")[2].strip()
    try:
        ipaddress.ip_address(forwarded)
    except ValueError:
        return address
    return f"{forwarded} (via {address})"


def _outcome(exc: BaseException | None, context: grpc.aio.ServicerContext[Any, Any]) -> Outcome:
    if isinstance(exc, UnauthenticatedError | PermissionDeniedError):
        return "denied"
    if isinstance(exc, grpc.aio.AbortError):
        return "denied" if context.code() in _REFUSED else "failure"
    if exc is not None:
        return "failure"
    code = context.code()
    return "success" if code in (None, grpc.StatusCode.OK) else "failure"


class SecurityInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        authenticator: Authenticator,
        limiter: RateLimiter,
        audit: AuditLog,
        *,
        open_methods: Sequence[str],
    ) -> None:
        self._authenticator = authenticator
        self._limiter = limiter
        self._audit = audit
        self._open = frozenset(open_methods)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in self._open:
            return handler
        return rewrap(handler, method, self._guard)

    def _record(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        metadata: Mapping[str, str],
        *,
        actor: str,
        outcome: Outcome,
        note: AuditNote | None = None,
        error: ItsError | None = None,
    ) -> None:
        details: dict[str, str | int | float | bool] = dict(note.details) if note else {}
        code = error.code if error is not None else context.code()
        details["status"] = code.name if isinstance(code, grpc.StatusCode) else "OK"
        if error is not None:
            details["message"] = error.message
        if request_id := metadata.get("x-request-id"):
            details["request_id"] = request_id[:128]
        trace = _TRACEPARENT.match(metadata.get("traceparent", ""))
        self._audit.record(
            AuditEntry(
                service=service_of(method),
                actor=actor,
                action=method.lstrip("/"),
                outcome=outcome,
                resource=note.resource if note else "",
                client_address=_client_address(
                    context, metadata, from_edge=self._authenticator.is_edge(context)
                ),
                trace_id=trace.group(1) if trace else "",
                details=details,
            )
        )

    async def _admit(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], metadata: Mapping[str, str]
    ) -> tuple[Principal, Access | None]:
        try:
            principal = await self._authenticator.authenticate(metadata, context)
        except UnauthenticatedError as exc:
            self._record(
                method, context, metadata, actor=ANONYMOUS_ACTOR, outcome="denied", error=exc
            )
            raise
        access = access_for(method)
        if not is_allowed(principal, access):
            needed = (
                access.role.name.lower() if access is not None else "an entry in the access table"
            )
            error = PermissionDeniedError(
                f"{principal.actor} (role {principal.role.name.lower()}) may not call"
                f" {method.lstrip('/')}: it needs {needed}"
            )
            self._record(
                method, context, metadata, actor=principal.actor, outcome="denied", error=error
            )
            raise error
        delay = self._limiter.acquire(principal)
        if delay is not None:
            raise ResourceExhaustedError(
                f"rate limit of role {principal.role.name.lower()} reached; retry in {delay:.2f} s",
                retry_delay_seconds=delay,
            )
        return principal, access

    def _guard(self, behaviour: _Behaviour, method: str) -> _Behaviour:
        interceptor = self

        async def run(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> tuple[Principal, AuditNote | None, Mapping[str, str]]:
            # Each RPC runs in a task of its own (grpc.aio), so the principal and the note
            # bound here are the call's alone and need no reset.
            metadata = _metadata(context)
            principal, access = await interceptor._admit(method, context, metadata)
            bind_principal(principal)
            return principal, begin_note(access is None or access.audited), metadata

        def finish(
            context: grpc.aio.ServicerContext[Any, Any],
            metadata: Mapping[str, str],
            principal: Principal,
            note: AuditNote | None,
            exc: BaseException | None,
        ) -> None:
            if note is not None:
                error = exc if isinstance(exc, ItsError) else None
                outcome = _outcome(exc, context)
                interceptor._record(
                    method,
                    context,
                    metadata,
                    actor=principal.actor,
                    outcome=outcome,
                    note=note,
                    error=error,
                )

        if inspect.isasyncgenfunction(behaviour):

            async def stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                principal, note, metadata = await run(request, context)
                failure: BaseException | None = None
                try:
                    async for response in behaviour(request, context):
                        yield response
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    finish(context, metadata, principal, note, failure)

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            principal, note, metadata = await run(request, context)
            failure: BaseException | None = None
            try:
                result = behaviour(request, context)
                return await result if inspect.isawaitable(result) else result
            except BaseException as exc:
                failure = exc
                raise
            finally:
                finish(context, metadata, principal, note, failure)

        return unary
