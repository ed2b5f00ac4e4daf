"""A JWT issuer: a signing key, its JWKS file, and tokens.

``TokenIssuer.create(directory)`` generates a key (RS256, ES256 or EdDSA), writes the public
half to ``jwks.json`` as an identity provider publishes it, and mints tokens the services'
``JwtVerifier`` accepts; ``rotate()`` replaces the key as a provider's rotation does.

The development identity provider of ``its-camera-ai up`` (the local instance's admin
token) and of the tests and benchmarks (``its_camera_ai.testing`` re-exports it). A real
deployment's tokens come from its own provider; no service mints any.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from its_camera_ai.common._security_settings import JwtSettings

__all__ = ["TokenIssuer"]

_PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _generate(algorithm: str) -> tuple[_PrivateKey, dict[str, Any]]:
    """A private key and its public JWK (without kid)."""
    if algorithm == "RS256":
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return rsa_key, dict(RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True))
    if algorithm == "ES256":
        ec_key = ec.generate_private_key(ec.SECP256R1())
        return ec_key, dict(ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True))
    if algorithm == "EdDSA":
        ed_key = ed25519.Ed25519PrivateKey.generate()
        return ed_key, dict(OKPAlgorithm.to_jwk(ed_key.public_key(), as_dict=True))
    raise ValueError(f"unsupported algorithm {algorithm!r} (RS256, ES256 or EdDSA)")


class TokenIssuer:
    """An identity provider in a directory: ``jwks_file`` holds the current public key,
    ``mint()`` signs tokens with the private one. Build with ``create()``."""

    def __init__(self, directory: Path, issuer: str, audience: str, algorithm: str) -> None:
        self.jwks_file = directory / "jwks.json"
        self.issuer = issuer
        self.audience = audience
        self.algorithm = algorithm
        self.kid = ""
        self._key: _PrivateKey | None = None
        self._generation = 0

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        issuer: str = "https://issuer.test",
        audience: str = "its-camera-ai",
        algorithm: str = "ES256",
    ) -> TokenIssuer:
        """An issuer with a fresh key, its JWKS written to ``directory / "jwks.json"``
        (``directory`` is created if missing)."""
        directory.mkdir(parents=True, exist_ok=True)
        token_issuer = cls(directory, issuer, audience, algorithm)
        token_issuer.rotate()
        return token_issuer

    @property
    def public_pem(self) -> bytes:
        """The current public key as PEM (what an HS/RS confusion attack uses as secret)."""
        return self._private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def _private_key(self) -> _PrivateKey:
        assert self._key is not None
        return self._key

    def rotate(self) -> None:
        """A new key under a new kid; the JWKS file then holds only the new public key."""
        self._key, jwk = _generate(self.algorithm)
        self._generation += 1
        self.kid = f"key-{self._generation}-{secrets.token_hex(4)}"
        jwk.update(kid=self.kid, use="sig", alg=self.algorithm)
        # Written whole then renamed: a verifier re-reading the file never sees half of it.
        partial = self.jwks_file.with_suffix(".json.partial")
        partial.write_text(json.dumps({"keys": [jwk]}, indent=2))
        os.replace(partial, self.jwks_file)

    def mint(
        self,
        subject: str,
        role: str,
        *,
        cameras: Sequence[str] | None = None,
        lifetime_s: float = 300,
        not_before_s: float = 0,
        extra_claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """A signed token for ``subject`` with ``role``, valid from now + ``not_before_s``
        until now + ``lifetime_s`` (negative: already expired).

        ``extra_claims`` and ``headers`` are merged over the defaults; a None value there
        removes that claim or header (a token without ``sub``, without ``kid``...).
        """
        now = time.time()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "role": role,
            "iat": int(now),
            "nbf": int(now + not_before_s),
            "exp": int(now + lifetime_s),
        }
        if cameras is not None:
            claims["cameras"] = list(cameras)
        claims.update(extra_claims or {})
        header: dict[str, Any] = {"kid": self.kid, **(headers or {})}
        return jwt.encode(
            {name: value for name, value in claims.items() if value is not None},
            self._private_key,
            algorithm=self.algorithm,
            headers={name: value for name, value in header.items() if value is not None},
        )

    def jwt_settings(self, **overrides: Any) -> JwtSettings:
        """Settings accepting this issuer's tokens from ``jwks_file``; ``overrides`` replace
        fields (``jwks_url=...`` replaces the file)."""
        fields: dict[str, Any] = {
            "jwks_file": self.jwks_file,
            "issuer": self.issuer,
            "audience": self.audience,
        }
        if "jwks_url" in overrides:
            del fields["jwks_file"]
        return JwtSettings.model_validate({**fields, **overrides})
