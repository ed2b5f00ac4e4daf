"""Bearer tokens: a JWT verified against the issuer's JSON Web Key Set (JWKS).

Only asymmetric signatures are accepted, and each key verifies exactly one algorithm, the
one its type implies (RSA: RS256, EC P-256: ES256, OKP Ed25519: EdDSA): the token header
cannot pick how its own signature is checked, which closes ``alg: none`` and the HS/RS
confusion (an HS256 token "signed" with the RSA public key as its secret).

The key set is read at start (a bad one stops the service), re-read every
``jwks_refresh_seconds`` by a background task, and re-read when a token names an unknown
``kid`` (the issuer rotated), at most once per ``jwks_min_refresh_seconds`` so forged kids
cannot hammer the issuer. A failed re-read keeps the keys in use.

A verified token is cached until it expires, so a client reusing its token pays a dict
lookup and a clock read per call instead of a signature check. A re-read that retires a
key (or changes the key behind a kid) clears that cache: a rotated-out key's tokens are
refused from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from its.common.v1 import error_reason_pb2
from its_camera_ai.common._config import ConfigError
from its_camera_ai.common._errors import UnauthenticatedError
from its_camera_ai.common._security_settings import JwtSettings
from its_camera_ai.security._principal import Principal, Role

__all__ = ["JwtVerifier", "claims_expiry", "principal_of_claims"]

_log = logging.getLogger(__name__)

# The one algorithm each key type verifies, and how its JWK becomes a public key.
_ALGORITHM_OF_TYPE = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}
_CURVE_OF_TYPE = {"EC": "P-256", "OKP": "Ed25519"}
_PARSER_OF_TYPE: dict[str, Callable[[str | dict[str, Any]], Any]] = {
    "RSA": RSAAlgorithm.from_jwk,
    "EC": ECAlgorithm.from_jwk,
    "OKP": OKPAlgorithm.from_jwk,
}
_PRIVATE_PARAMS = ("d", "p", "q", "dp", "dq", "qi")
_MIN_RSA_BITS = 2048
_FETCH_TIMEOUT_S = 5.0
# A key set is a few KiB; the bound keeps a misconfigured URL from filling memory.
_MAX_JWKS_BYTES = 1024 * 1024
# gRPC metadata is limited to 8 KiB by default; anything longer is not a real token, and
# is refused before it is hashed into the cache.
_MAX_TOKEN_CHARS = 16 * 1024
_CACHE_ENTRIES = 10_000
_ECHO_CHARS = 64


def _shown(value: object, limit: int = _ECHO_CHARS) -> str:
    """``value`` quoted for an error message, unless it is too long or odd to echo safely."""
    if isinstance(value, str) and 0 < len(value) <= limit and value.isprintable():
        return repr(value)
    return "(not shown)"


def _expired() -> UnauthenticatedError:
    return UnauthenticatedError(
        "bearer token has expired", reason=error_reason_pb2.ERROR_REASON_CREDENTIALS_EXPIRED
    )


@dataclass(frozen=True, slots=True, eq=False)
class _Key:
    kid: str
    algorithm: str
    public_key: Any
    # The JWK as published, canonical: a kid whose key changed is a retired key too.
    fingerprint: str


def _parse_key(entry: object, where: str) -> _Key | None:
    """One JWK; None for a key this verifier never uses (encryption, another algorithm)."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} is not a JSON object")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ConfigError(f'{where} has no "kid": tokens select their key by kid')
    where = f"{where} (kid {_shown(kid)})"
    kty = entry.get("kty")
    if kty == "oct":
        raise ConfigError(
            f'{where} is a symmetric ("oct") key: only RSA, EC P-256 and Ed25519 public '
            "keys are accepted"
        )
    if not isinstance(kty, str) or kty not in _ALGORITHM_OF_TYPE:
        raise ConfigError(f"{where} has key type {_shown(kty, 16)}: only RSA, EC and OKP")
    algorithm = _ALGORITHM_OF_TYPE[kty]
    if any(param in entry for param in _PRIVATE_PARAMS):
        raise ConfigError(f"{where} holds private key material: publish the public key only")
    curve = _CURVE_OF_TYPE.get(kty)
    if curve is not None and entry.get("crv") != curve:
        raise ConfigError(f"{where}: a {kty} key must be on curve {curve}")
    # Issuers publish encryption keys and keys for other algorithms in the same set.
    if entry.get("use", "sig") != "sig" or entry.get("alg", algorithm) != algorithm:
        _log.info("JWKS key %s skipped: not a %s signing key", _shown(kid), algorithm)
        return None
    try:
        public_key = _PARSER_OF_TYPE[kty](entry)
    except Exception:  # whatever the JWK's flaw, the message says which key
        raise ConfigError(f"{where} is not a valid {kty} public key") from None
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < _MIN_RSA_BITS:
        raise ConfigError(f"{where}: an RSA key needs at least {_MIN_RSA_BITS} bits")
    return _Key(kid, algorithm, public_key, json.dumps(entry, sort_keys=True))


def _parse_jwks(raw: bytes, field: str) -> dict[str, _Key]:
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{field}: the key set is not valid JSON ({error.msg})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{field}: the key set is not UTF-8 text") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f'{field}: not a JSON Web Key Set (no "keys" list)')
    keys: dict[str, _Key] = {}
    for index, entry in enumerate(entries):
        key = _parse_key(entry, f"{field}: key #{index}")
        if key is None:
            continue
        if key.kid in keys:
            raise ConfigError(f"{field}: kid {_shown(key.kid)} appears twice")
        keys[key.kid] = key
    if not keys:
        raise ConfigError(f"{field}: the key set holds no RS256, ES256 or EdDSA signing key")
    return keys


def _download(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (http(s) only: JwtSettings checks the scheme)
    try:
        with urllib.request.urlopen(request, timeout=_FETCH_TIMEOUT_S) as response:  # noqa: S310
            body: bytes = response.read(_MAX_JWKS_BYTES + 1)
    except urllib.error.HTTPError as error:
        error.close()
        raise ConfigError(f"security.jwt.jwks_url: the issuer answered HTTP {error.code}") from None
    except urllib.error.URLError as error:
        raise ConfigError(
            f"security.jwt.jwks_url: cannot fetch the key set ({error.reason})"
        ) from None
    except OSError as error:  # timeouts and resets while reading the body
        raise ConfigError(f"security.jwt.jwks_url: cannot fetch the key set ({error})") from None
    if len(body) > _MAX_JWKS_BYTES:
        raise ConfigError("security.jwt.jwks_url: the key set is larger than 1 MiB")
    return body


def _read_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as file:
            body: bytes = file.read(_MAX_JWKS_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"security.jwt.jwks_file: cannot read {path}: {error.strerror}") from None
    if len(body) > _MAX_JWKS_BYTES:
        raise ConfigError(f"security.jwt.jwks_file: {path} is larger than 1 MiB")
    return body


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnauthenticatedError(
            f"bearer token claim {name!r} must be a number (seconds since the epoch)"
        )
    return float(value)


def claims_expiry(claims: Mapping[str, Any], settings: JwtSettings, now: float) -> float:
    """The token's ``exp``, once exp, nbf and iat hold at ``now`` (within the leeway)."""
    leeway = settings.leeway_seconds
    expires = _number(claims, "exp")
    if expires <= now - leeway:
        raise _expired()
    if "nbf" in claims and _number(claims, "nbf") > now + leeway:
        raise UnauthenticatedError("bearer token is not valid yet (nbf is in the future)")
    if "iat" in claims and _number(claims, "iat") > now + leeway:
        raise UnauthenticatedError("bearer token was issued in the future (iat)")
    return expires


def principal_of_claims(claims: Mapping[str, Any], settings: JwtSettings) -> Principal:
    """Who verified ``claims`` name: ``sub``, the role claim and the optional camera scope."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise UnauthenticatedError("bearer token subject (sub) is empty or missing")
    role_name = claims.get(settings.role_claim)
    if not isinstance(role_name, str):
        raise UnauthenticatedError(
            f"bearer token has no {settings.role_claim!r} claim naming a role"
        )
    try:
        role = Role.parse(role_name)
    except ValueError:
        known = ", ".join(r.name.lower() for r in Role)
        raise UnauthenticatedError(
            f"bearer token claim {settings.role_claim!r} names an unknown role "
            f"{_shown(role_name, 32)} (known: {known})"
        ) from None
    cameras = claims.get(settings.cameras_claim)
    if cameras is not None and (
        not isinstance(cameras, list) or not all(isinstance(c, str) for c in cameras)
    ):
        raise UnauthenticatedError(
            f"bearer token claim {settings.cameras_claim!r} must be a list of camera ids"
        )
    kind = "service" if role is Role.SERVICE else "user"
    return Principal.scoped(f"{kind}:{subject}", role, cameras)


class JwtVerifier:
    """Verifies bearer JWTs from the issuer ``settings`` names and returns who is calling.

    ``start()`` loads the key set (``ConfigError`` when it is unusable) and starts the
    periodic re-read that ``close()`` stops. ``verify()`` raises ``UnauthenticatedError``
    for any token it refuses, saying why without echoing the token. ``clock`` (seconds
    since the epoch) is what ``exp``/``nbf``/``iat`` are checked against.
    """

    def __init__(self, settings: JwtSettings, *, clock: Callable[[], float] = time.time) -> None:
        if not settings.enabled:
            raise ConfigError("security.jwt: set jwks_file or jwks_url to accept JWTs")
        self._settings = settings
        self._clock = clock
        self._field = (
            "security.jwt.jwks_file" if settings.jwks_file is not None else "security.jwt.jwks_url"
        )
        self._keys: dict[str, _Key] = {}
        self._loaded_at = float("-inf")
        self._reload_lock = asyncio.Lock()
        self._refresher: asyncio.Task[None] | None = None
        # token -> (principal, exp); insertion-ordered, so the first entry is the oldest.
        self._cache: dict[str, tuple[Principal, float]] = {}

    @property
    def key_ids(self) -> frozenset[str]:
        """The kids of the keys in use."""
        return frozenset(self._keys)

    async def start(self) -> None:
        """Load the key set; ``ConfigError`` naming the setting when it is unusable."""
        self._install(await self._fetch())
        self._loaded_at = self._clock()
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_forever(), name="jwks-refresh")

    async def close(self) -> None:
        """Stop the periodic re-read of the key set."""
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def verify(self, token: str) -> Principal:
        """The principal ``token`` authenticates; ``UnauthenticatedError`` if it is refused."""
        if len(token) > _MAX_TOKEN_CHARS:
            raise UnauthenticatedError(f"bearer token is longer than {_MAX_TOKEN_CHARS} chars")
        cached = self._cache.get(token)
        if cached is not None:
            principal, expires = cached
            if expires > self._clock() - self._settings.leeway_seconds:
                return principal
            self._cache.pop(token, None)
            raise _expired()
        if not self._keys:
            raise RuntimeError("JwtVerifier.verify() before start()")
        key = await self._signing_key(token)
        claims = self._decode(token, key)
        expires = claims_expiry(claims, self._settings, self._clock())
        principal = principal_of_claims(claims, self._settings)
        if len(self._cache) >= _CACHE_ENTRIES:
            del self._cache[next(iter(self._cache))]
        self._cache[token] = (principal, expires)
        return principal

    async def _signing_key(self, token: str) -> _Key:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise UnauthenticatedError("bearer token is not a well-formed JWT") from None
        algorithm = header.get("alg")
        accepted = self._settings.algorithms
        if not isinstance(algorithm, str) or algorithm not in accepted:
            raise UnauthenticatedError(
                f"bearer token algorithm {_shown(algorithm, 16)} is not accepted "
                f"(accepted: {', '.join(accepted)})"
            )
        if "crit" in header:
            raise UnauthenticatedError("bearer token header has critical extensions (crit)")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise UnauthenticatedError("bearer token header has no key id (kid)")
        key = self._keys.get(kid)
        if key is None:
            await self._reload_for_unknown_kid()
            key = self._keys.get(kid)
        if key is None:
            raise UnauthenticatedError(f"bearer token key id {_shown(kid)} is not a known key")
        if key.algorithm != algorithm:
            raise UnauthenticatedError(
                f"bearer token algorithm {algorithm} does not match its key "
                f"{_shown(kid)}, a {key.algorithm} key"
            )
        return key

    def _decode(self, token: str, key: _Key) -> dict[str, Any]:
        settings = self._settings
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public_key,
                algorithms=[key.algorithm],
                audience=settings.audience,
                issuer=settings.issuer,
                # The times are checked against the injected clock (claims_expiry).
                options={
                    "require": ["exp", "iss", "aud", "sub"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise UnauthenticatedError("bearer token signature does not verify") from None
        except jwt.MissingRequiredClaimError as error:
            raise UnauthenticatedError(f"bearer token has no {error.claim!r} claim") from None
        except jwt.InvalidIssuerError:
            raise UnauthenticatedError(
                f"bearer token issuer (iss) is not {settings.issuer!r}"
            ) from None
        except jwt.InvalidAudienceError:
            raise UnauthenticatedError(
                f"bearer token audience (aud) does not include {settings.audience!r}"
            ) from None
        except jwt.exceptions.InvalidSubjectError:
            raise UnauthenticatedError("bearer token subject (sub) must be a string") from None
        except jwt.DecodeError:
            raise UnauthenticatedError("bearer token is not a well-formed JWT") from None
        except jwt.InvalidTokenError as error:
            raise UnauthenticatedError(
                f"bearer token is invalid ({type(error).__name__})"
            ) from None
        return claims

    async def _fetch(self) -> dict[str, _Key]:
        settings = self._settings
        if settings.jwks_file is not None:
            raw = await asyncio.to_thread(_read_file, settings.jwks_file)
        else:
            assert settings.jwks_url is not None
            raw = await asyncio.to_thread(_download, settings.jwks_url)
        return _parse_jwks(raw, self._field)

    def _install(self, keys: dict[str, _Key]) -> None:
        retired = [
            kid
            for kid, key in self._keys.items()
            if kid not in keys or keys[kid].fingerprint != key.fingerprint
        ]
        if retired:
            # Which cached token was signed by which key is not kept: a rotation is rare,
            # re-verifying every token once afterwards is cheap.
            self._cache.clear()
        added = keys.keys() - self._keys.keys()
        if retired or added:
            _log.info(
                "JWKS now holds %d keys (%d added, %d retired)", len(keys), len(added), len(retired)
            )
        self._keys = keys

    async def _reload(self) -> None:
        """Re-read the key set; on failure keep the keys in use (the issuer may be down)."""
        try:
            self._install(await self._fetch())
        except ConfigError as error:
            _log.warning("JWKS re-read failed, keeping %d keys: %s", len(self._keys), error)
        finally:
            self._loaded_at = self._clock()

    async def _reload_for_unknown_kid(self) -> None:
        min_interval = self._settings.jwks_min_refresh_seconds
        if self._clock() - self._loaded_at < min_interval:
            return
        async with self._reload_lock:
            # Callers queued behind a re-read find the key set it just loaded.
            if self._clock() - self._loaded_at < min_interval:
                return
            await self._reload()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.jwks_refresh_seconds)
            async with self._reload_lock:
                await self._reload()
