"""JwtVerifier against real keys, a real JWKS file and a real JWKS server on loopback.

Each refusal must be UNAUTHENTICATED with a message that says what was wrong and never
echoes the token; each accepted token must yield the principal its claims describe.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from its.common.v1 import error_reason_pb2
from its_camera_ai.common import ConfigError, UnauthenticatedError
from its_camera_ai.security import JwtVerifier, Principal, Role
from its_camera_ai.testing import TokenIssuer, until
from tests.conftest import free_port

pytestmark = pytest.mark.security


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def running(verifier: JwtVerifier) -> AsyncIterator[JwtVerifier]:
    await verifier.start()
    try:
        yield verifier
    finally:
        await verifier.close()


@pytest.fixture
def issuer(tmp_path: Path) -> TokenIssuer:
    return TokenIssuer.create(tmp_path)


@pytest.fixture
async def verifier(issuer: TokenIssuer) -> AsyncIterator[JwtVerifier]:
    async with running(JwtVerifier(issuer.jwt_settings(jwks_min_refresh_seconds=0))) as v:
        yield v


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    """A compact JWS built by hand: what an attacker sends, not what PyJWT would sign."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = b"" if sign is None else sign(signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


def claims_of(token: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(unb64(token.split(".")[1]))
    return payload


async def refused(verifier: JwtVerifier, token: str, match: str) -> UnauthenticatedError:
    with pytest.raises(UnauthenticatedError, match=match) as caught:
        await verifier.verify(token)
    error = caught.value
    assert error.code is grpc.StatusCode.UNAUTHENTICATED
    for part in token.split("."):
        assert len(part) < 8 or part not in error.message, "the message echoes the token"
    return error


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
async def test_each_algorithm_yields_the_principal_its_claims_name(
    tmp_path: Path, algorithm: str
) -> None:
    issuer = TokenIssuer.create(tmp_path, algorithm=algorithm)
    async with running(JwtVerifier(issuer.jwt_settings())) as verifier:
        token = issuer.mint("alice", "operator", cameras=["cameras/cam-1", "cam-2"])
        assert await verifier.verify(token) == Principal(
            "user:alice", Role.OPERATOR, frozenset({"cam-1", "cam-2"})
        )
        unscoped = await verifier.verify(issuer.mint("bob", "ROLE_VIEWER"))
        assert unscoped == Principal("user:bob", Role.VIEWER, None)
        peer = await verifier.verify(issuer.mint("inference-1", "service"))
        assert peer == Principal("service:inference-1", Role.SERVICE, None)


async def test_the_audience_may_be_one_of_several(
    issuer: TokenIssuer, verifier: JwtVerifier
) -> None:
    token = issuer.mint("alice", "admin", extra_claims={"aud": ["other", issuer.audience]})
    assert (await verifier.verify(token)).role is Role.ADMIN


async def test_unsigned_and_symmetric_tokens_are_refused(tmp_path: Path) -> None:
    issuer = TokenIssuer.create(tmp_path, algorithm="RS256")
    async with running(JwtVerifier(issuer.jwt_settings())) as verifier:
        claims = claims_of(issuer.mint("mallory", "admin"))
        unsigned = forge({"alg": "none", "kid": issuer.kid}, claims)
        await refused(verifier, unsigned, r"algorithm 'none' is not accepted")

        # HS/RS confusion: the RSA public key, which anyone may fetch, as the HMAC secret.
        def with_public_pem(data: bytes) -> bytes:
            return hmac.new(issuer.public_pem, data, hashlib.sha256).digest()

        confused = forge({"alg": "HS256", "kid": issuer.kid}, claims, with_public_pem)
        await refused(verifier, confused, r"algorithm 'HS256' is not accepted")


async def test_an_algorithm_other_than_its_keys_type_is_refused(tmp_path: Path) -> None:
    rsa_issuer = TokenIssuer.create(tmp_path / "rsa", algorithm="RS256")
    ec_issuer = TokenIssuer.create(tmp_path / "ec", algorithm="ES256")
    async with running(JwtVerifier(rsa_issuer.jwt_settings())) as verifier:
        # Validly signed by an EC key, but naming the RSA key's kid.
        token = ec_issuer.mint("mallory", "admin", headers={"kid": rsa_issuer.kid})
        await refused(verifier, token, r"algorithm ES256 does not match its key .* RS256 key")


async def test_unknown_kid_is_refused_without_echoing_a_long_one(
    issuer: TokenIssuer, verifier: JwtVerifier
) -> None:
    await refused(
        verifier, issuer.mint("a", "viewer", headers={"kid": "nope"}), r"'nope' is not a known"
    )
    long_kid = "k" * 65
    error = await refused(
        verifier, issuer.mint("a", "viewer", headers={"kid": long_kid}), "is not a known key"
    )
    assert long_kid not in error.message
    assert "(not shown)" in error.message
    await refused(verifier, issuer.mint("a", "viewer", headers={"kid": None}), r"no key id")


async def test_tampering_breaks_the_signature(issuer: TokenIssuer, verifier: JwtVerifier) -> None:
    header, payload, signature = issuer.mint("alice", "viewer").split(".")
    claims = claims_of(f"{header}.{payload}.{signature}")
    claims["role"] = "admin"
    promoted = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    await refused(verifier, promoted, r"signature does not verify")

    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    resigned = f"{header}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"
    await refused(verifier, resigned, r"signature does not verify")
    await refused(verifier, "not-a-jwt", r"not a well-formed JWT")


async def test_an_expired_token_says_so(issuer: TokenIssuer, verifier: JwtVerifier) -> None:
    error = await refused(verifier, issuer.mint("alice", "viewer", lifetime_s=-120), "expired")
    assert error.reason == error_reason_pb2.ERROR_REASON_CREDENTIALS_EXPIRED
    no_exp = issuer.mint("alice", "viewer", extra_claims={"exp": None})
    await refused(verifier, no_exp, r"no 'exp' claim")


async def test_a_token_not_valid_yet_is_refused(issuer: TokenIssuer, verifier: JwtVerifier) -> None:
    await refused(verifier, issuer.mint("a", "viewer", not_before_s=120), r"not valid yet")
    future = issuer.mint("a", "viewer", extra_claims={"iat": int(time.time()) + 120})
    await refused(verifier, future, r"issued in the future")


@pytest.mark.parametrize(
    ("claims", "match"),
    [
        ({"iss": "https://elsewhere.test"}, r"issuer \(iss\) is not 'https://issuer.test'"),
        ({"aud": "another-service"}, r"audience \(aud\) does not include 'its-camera-ai'"),
        ({"sub": None}, r"no 'sub' claim"),
        ({"sub": ""}, r"subject \(sub\) is empty"),
        ({"role": None}, r"no 'role' claim"),
        ({"role": "superuser"}, r"'role' names an unknown role 'superuser'"),
        ({"cameras": "cam-1"}, r"'cameras' must be a list"),
        ({"exp": "tomorrow"}, r"'exp' must be a number"),
    ],
)
async def test_wrong_claims_are_refused_naming_the_claim(
    issuer: TokenIssuer, verifier: JwtVerifier, claims: dict[str, Any], match: str
) -> None:
    await refused(verifier, issuer.mint("alice", "viewer", extra_claims=claims), match)


async def test_leeway_absorbs_clock_skew(issuer: TokenIssuer) -> None:
    token = issuer.mint("alice", "viewer", lifetime_s=-10, not_before_s=-20)
    early = issuer.mint("alice", "viewer", not_before_s=10)
    async with running(JwtVerifier(issuer.jwt_settings(leeway_seconds=30))) as lenient:
        assert (await lenient.verify(token)).actor == "user:alice"
        assert (await lenient.verify(early)).actor == "user:alice"
    async with running(JwtVerifier(issuer.jwt_settings(leeway_seconds=0))) as strict:
        await refused(strict, token, "expired")
        await refused(strict, early, "not valid yet")


async def test_a_cached_token_expires_with_the_clock(issuer: TokenIssuer) -> None:
    clock = FakeClock()
    settings = issuer.jwt_settings(leeway_seconds=5)
    async with running(JwtVerifier(settings, clock=clock)) as verifier:
        token = issuer.mint("alice", "viewer", lifetime_s=60)
        first = await verifier.verify(token)
        assert await verifier.verify(token) is first  # served from the cache
        clock.now += 60 + 4
        assert await verifier.verify(token) is first  # within the leeway
        clock.now += 2
        error = await refused(verifier, token, "expired")
        assert error.reason == error_reason_pb2.ERROR_REASON_CREDENTIALS_EXPIRED
        await refused(verifier, token, "expired")  # and again once evicted


async def test_rotation_through_the_file(issuer: TokenIssuer, verifier: JwtVerifier) -> None:
    old = issuer.mint("alice", "viewer")
    assert (await verifier.verify(old)).actor == "user:alice"
    issuer.rotate()
    new = issuer.mint("bob", "viewer")
    # The unknown kid makes the verifier re-read the file, which retires the old key.
    assert (await verifier.verify(new)).actor == "user:bob"
    assert verifier.key_ids == {issuer.kid}
    await refused(verifier, old, r"is not a known key")


async def test_unknown_kids_reread_the_keys_at_most_once_per_interval(
    issuer: TokenIssuer,
) -> None:
    clock = FakeClock()
    settings = issuer.jwt_settings(jwks_min_refresh_seconds=10)
    async with running(JwtVerifier(settings, clock=clock)) as verifier:
        issuer.rotate()
        new = issuer.mint("bob", "viewer")
        clock.now += 5
        await refused(verifier, new, r"is not a known key")
        clock.now += 6
        assert (await verifier.verify(new)).actor == "user:bob"


async def test_the_keys_are_reread_periodically(issuer: TokenIssuer) -> None:
    settings = issuer.jwt_settings(jwks_refresh_seconds=0.05, jwks_min_refresh_seconds=3600)
    async with running(JwtVerifier(settings)) as verifier:
        old = issuer.mint("alice", "viewer")
        await verifier.verify(old)
        issuer.rotate()
        await until(lambda: verifier.key_ids == {issuer.kid}, "the periodic re-read", 5)
        await refused(verifier, old, r"is not a known key")  # no longer cached either
        assert (await verifier.verify(issuer.mint("bob", "viewer"))).actor == "user:bob"


class JwksServer:
    """The issuer's directory over HTTP on loopback, counting the key set's fetches."""

    def __init__(self, directory: Path) -> None:
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(directory), **kwargs)

            def do_GET(self) -> None:
                server.fetches += 1
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.fetches = 0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )


@pytest.fixture
def jwks_server(issuer: TokenIssuer) -> Iterator[JwksServer]:
    server = JwksServer(issuer.jwks_file.parent)
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
    server.thread.join()


async def test_keys_from_a_url_follow_rotation(
    issuer: TokenIssuer, jwks_server: JwksServer
) -> None:
    settings = issuer.jwt_settings(
        jwks_url=f"{jwks_server.url}/jwks.json", jwks_min_refresh_seconds=0
    )
    async with running(JwtVerifier(settings)) as verifier:
        old = issuer.mint("alice", "viewer")
        assert (await verifier.verify(old)).actor == "user:alice"
        assert jwks_server.fetches == 1
        issuer.rotate()
        assert (await verifier.verify(issuer.mint("bob", "admin"))).role is Role.ADMIN
        assert jwks_server.fetches == 2
        await refused(verifier, old, r"is not a known key")


async def test_an_unreachable_key_set_url_stops_the_start(
    issuer: TokenIssuer, jwks_server: JwksServer
) -> None:
    missing = issuer.jwt_settings(jwks_url=f"{jwks_server.url}/missing.json")
    with pytest.raises(ConfigError, match=r"security\.jwt\.jwks_url: .*HTTP 404"):
        await JwtVerifier(missing).start()
    closed = issuer.jwt_settings(jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json")
    with pytest.raises(ConfigError, match=r"security\.jwt\.jwks_url: cannot fetch"):
        await JwtVerifier(closed).start()


def _jwk(issuer: TokenIssuer) -> dict[str, Any]:
    key: dict[str, Any] = json.loads(issuer.jwks_file.read_text())["keys"][0]
    return key


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda path, jwk: path.unlink(), r"cannot read"),
        (lambda path, jwk: path.write_text("{not json"), r"not valid JSON"),
        (lambda path, jwk: path.write_text('{"keys": []}'), r"holds no .* signing key"),
        (lambda path, jwk: path.write_text("[]"), r"no \"keys\" list"),
        (
            lambda path, jwk: path.write_text(json.dumps({"keys": [{**jwk, "kid": None}]})),
            r"key #0 has no \"kid\"",
        ),
        (
            lambda path, jwk: path.write_text(
                json.dumps({"keys": [jwk, {"kty": "oct", "kid": "shared", "k": "c2VjcmV0"}]})
            ),
            r"key #1 \(kid 'shared'\) is a symmetric",
        ),
        (
            lambda path, jwk: path.write_text(json.dumps({"keys": [{**jwk, "d": "AAAA"}]})),
            r"holds private key material",
        ),
        (
            lambda path, jwk: path.write_text(json.dumps({"keys": [{**jwk, "crv": "P-384"}]})),
            r"must be on curve P-256",
        ),
        (
            lambda path, jwk: path.write_text(json.dumps({"keys": [{**jwk, "x": "AAAA"}]})),
            r"is not a valid EC public key",
        ),
        (
            lambda path, jwk: path.write_text(json.dumps({"keys": [jwk, jwk]})),
            r"appears twice",
        ),
    ],
)
async def test_a_bad_key_set_stops_the_start_naming_the_setting(
    issuer: TokenIssuer, change: Any, match: str
) -> None:
    change(issuer.jwks_file, _jwk(issuer))
    with pytest.raises(ConfigError, match=r"security\.jwt\.jwks_file") as caught:
        await JwtVerifier(issuer.jwt_settings()).start()
    assert caught.match(match)
    assert "c2VjcmV0" not in str(caught.value)


async def test_a_failed_reread_keeps_the_keys_in_use(
    issuer: TokenIssuer, verifier: JwtVerifier
) -> None:
    issuer.jwks_file.write_text("{broken")
    token = issuer.mint("alice", "viewer", headers={"kid": "unknown"})
    await refused(verifier, token, r"is not a known key")
    assert (await verifier.verify(issuer.mint("alice", "viewer"))).actor == "user:alice"
