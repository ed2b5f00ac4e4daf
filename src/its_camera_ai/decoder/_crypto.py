"""Sealing camera source URIs at rest: AES-256-GCM under a ring of named keys.

A sealed value is ``nonce (12 bytes) || ciphertext || tag`` plus the id of the key that
sealed it, stored beside it. The camera id is the associated data, so a sealed URI copied
onto another camera's row does not open. Several keys can be loaded: the first seals new
values, all of them open old ones. Rotation is: put the new key first, keep the old ones
listed, restart; the service re-seals every row still under an old key on start, after
which the old key can be dropped.

Keys come from a mounted secret file or an environment variable, never from code or the
config files: one ``id:base64`` entry per line (or comma separated), 32 random bytes each,
e.g. ``echo "k2024:$(head -c32 /dev/urandom | base64)"``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from its_camera_ai.common import ConfigError, DecoderSettings

__all__ = ["KeyRing", "Sealed", "SealedUnreadable", "load_key_ring"]

_log = logging.getLogger(__name__)

_KEY_BYTES = 32
_NONCE_BYTES = 12
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class SealedUnreadable(Exception):
    """A sealed value cannot be opened: its key is not loaded, or it was tampered with."""


@dataclass(frozen=True, slots=True)
class Sealed:
    key_id: str
    blob: bytes


class KeyRing:
    def __init__(self, keys: Mapping[str, bytes], primary: str) -> None:
        if primary not in keys:
            raise ValueError("the primary key must be one of the keys")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.primary_id = primary

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._ciphers)

    @classmethod
    def parse(cls, text: str, *, origin: str) -> KeyRing:
        """Keys from ``id:base64`` entries; the first is primary. ``origin`` names the source
        in errors (never the key material)."""
        if not text.strip():
            raise ConfigError(f"{origin}: no keys")
        keys: dict[str, bytes] = {}
        for number, entry in enumerate(re.split(r"[\s,]+", text.strip()), start=1):
            key_id, colon, encoded = entry.partition(":")
            if not colon or not _KEY_ID.match(key_id):
                raise ConfigError(f"{origin}: entry {number} is not 'id:base64-key'")
            try:
                key = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(f"{origin}: key {key_id!r} is not valid base64") from None
            if len(key) != _KEY_BYTES:
                raise ConfigError(f"{origin}: key {key_id!r} must be {_KEY_BYTES} bytes")
            if key_id in keys:
                raise ConfigError(f"{origin}: key id {key_id!r} is listed twice")
            keys[key_id] = key
        return cls(keys, next(iter(keys)))

    def seal(self, plaintext: str, *, context: str) -> Sealed:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._ciphers[self.primary_id].encrypt(nonce, plaintext.encode(), context.encode())
        return Sealed(self.primary_id, nonce + sealed)

    def open(self, sealed: Sealed, *, context: str) -> str:
        cipher = self._ciphers.get(sealed.key_id)
        if cipher is None:
            raise SealedUnreadable(f"key {sealed.key_id!r} is not loaded")
        nonce, body = sealed.blob[:_NONCE_BYTES], sealed.blob[_NONCE_BYTES:]
        try:
            return cipher.decrypt(nonce, body, context.encode()).decode()
        except (InvalidTag, UnicodeDecodeError):
            raise SealedUnreadable(
                f"value sealed under key {sealed.key_id!r} fails its check"
            ) from None

    def needs_reseal(self, sealed: Sealed) -> bool:
        return sealed.key_id != self.primary_id


def _dev_key_file(path: Path) -> str:
    """The development key, made on first use: a restarted dev server still opens the
    URIs it sealed. Production never gets here (see ``load_key_ring``)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = f"dev-{secrets.token_hex(4)}:{base64.b64encode(secrets.token_bytes(32)).decode()}"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(entry + "\n")
        _log.warning(
            "generated a development key for camera credentials", extra={"path": str(path)}
        )
    return path.read_text(encoding="utf-8")


def load_key_ring(settings: DecoderSettings, environment: str) -> KeyRing:
    """The configured keys; outside ``dev`` a missing key stops start-up."""
    if settings.source_keys_file is not None:
        origin = "decoder.source_keys_file"
        try:
            text = settings.source_keys_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{origin}: cannot read: {exc.strerror}") from None
    elif settings.source_keys is not None:
        origin, text = "decoder.source_keys", settings.source_keys.get_secret_value()
    elif environment == "dev":
        origin = "decoder.dev_source_keys_file"
        text = _dev_key_file(settings.dev_source_keys_file)
    else:
        raise ConfigError(
            "decoder: camera credentials need a key outside dev: set"
            " ITS_DECODER__SOURCE_KEYS_FILE (a mounted secret) or ITS_DECODER__SOURCE_KEYS"
        )
    return KeyRing.parse(text, origin=origin)
