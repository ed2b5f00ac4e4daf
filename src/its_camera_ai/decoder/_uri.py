"""Camera source URIs: the schemes the decoder reads, their checks, and credential masking.

A source URI may carry secrets in two places: the password of its userinfo and the values
of query parameters such as ``token``. Everything the service shows (API responses, camera
status, logs) goes through ``mask_uri`` or ``scrub``; only the worker that connects ever
holds the plain URI.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "MASK",
    "SourceKind",
    "SourceUri",
    "UriError",
    "mask_uri",
    "parse_source_uri",
    "scrub",
]

MASK = "***"
MAX_URI_LENGTH = 2048
# Query parameters whose values are secrets (camera.proto, Camera.source_uri).
_SECRET_PARAMETERS = frozenset(
    {"password", "passwd", "pwd", "token", "key", "secret", "signature", "auth"}
)
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


class SourceKind(enum.Enum):
    RTSP = "rtsp"
    HTTP = "http"
    UDP = "udp"
    FILE = "file"
    SYNTHETIC = "sim"

    @property
    def live(self) -> bool:
        """Live sources cannot be paused or rewound: falling behind costs frames."""
        return self is not SourceKind.FILE


_KINDS = {
    "rtsp": SourceKind.RTSP,
    "rtsps": SourceKind.RTSP,
    "http": SourceKind.HTTP,
    "https": SourceKind.HTTP,
    "udp": SourceKind.UDP,
    "rtp": SourceKind.UDP,
    "file": SourceKind.FILE,
    "sim": SourceKind.SYNTHETIC,
}


class UriError(ValueError):
    """The URI cannot be used; ``unsupported`` tells a scheme we do not read from a typo."""

    def __init__(self, description: str, *, unsupported: bool = False) -> None:
        super().__init__(description)
        self.description = description
        self.unsupported = unsupported


@dataclass(frozen=True, slots=True)
class SourceUri:
    """A checked source URI. ``uri`` is the plain text (with credentials): never show it."""

    uri: str
    scheme: str
    kind: SourceKind
    host: str
    # The local file, resolved, for file sources.
    path: Path | None = None

    @property
    def masked(self) -> str:
        return mask_uri(self.uri)


def parse_source_uri(uri: str, *, file_roots: Sequence[Path]) -> SourceUri:
    """Check ``uri`` and say what kind of source it is, or raise ``UriError``.

    ``file_roots`` are the directories file sources may read from; none disables them.
    """
    if not uri:
        raise UriError("is required")
    if len(uri) > MAX_URI_LENGTH:
        raise UriError(f"must be at most {MAX_URI_LENGTH} characters")
    if _CONTROL.search(uri):
        raise UriError("must not contain spaces or control characters")
    if MASK in uri:
        raise UriError(f"contains the credential mask {MASK!r}: send the real value")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        # Not the parser's message: it can quote part of the userinfo (a password).
        raise UriError("is not a valid URI (check the host and port)") from None
    scheme = parts.scheme.lower()
    kind = _KINDS.get(scheme)
    if kind is None:
        supported = ", ".join(sorted(_KINDS))
        raise UriError(
            f"scheme {scheme + ':' if scheme else '(none)'} is not supported (use {supported})",
            unsupported=True,
        )
    if kind is SourceKind.FILE:
        return SourceUri(uri, scheme, kind, "", _file_path(parts.netloc, parts.path, file_roots))
    host = parts.hostname or ""
    if not host:
        raise UriError("has no host")
    if port == 0:
        raise UriError("port must be 1-65535")
    return SourceUri(uri, scheme, kind, host)


def _file_path(netloc: str, path: str, roots: Sequence[Path]) -> Path:
    if netloc not in ("", "localhost"):
        raise UriError("file URIs name a path on the decoder host: file:///path/to/video")
    if not roots:
        raise UriError("file sources are disabled on this decoder", unsupported=True)
    raw = Path(unquote(path))
    if not raw.is_absolute():
        raise UriError("file path must be absolute")
    # Resolved, so neither "..", nor a symlink, leads out of the allowed directories.
    resolved = raw.resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in roots):
        raise UriError("file path is outside the directories this decoder may read")
    return resolved


def _split_authority(rest: str) -> tuple[int, int]:
    """Where the userinfo's password starts and ends in ``rest`` (after "scheme://"),
    or (-1, -1). Deliberately greedy: an unencoded "@" or "/" in a password still masks."""
    end = len(rest)
    for stop in "?#":
        index = rest.find(stop)
        if index != -1:
            end = min(end, index)
    at = rest.rfind("@", 0, end)
    if at == -1:
        return -1, -1
    colon = rest.find(":", 0, at)
    return (colon + 1, at) if colon != -1 else (-1, -1)


def mask_uri(uri: str) -> str:
    """``uri`` with the userinfo password and secret query values replaced by ``***``."""
    scheme, separator, rest = uri.partition("://")
    if not separator:
        scheme, rest = "", uri
    start, end = _split_authority(rest) if separator else (-1, -1)
    if start != -1:
        rest = rest[:start] + MASK + rest[end:]
    head, question, query = rest.partition("?")
    if question:
        query, hash_mark, fragment = query.partition("#")
        fields = []
        for field in query.split("&"):
            name, equals, _value = field.partition("=")
            secret = equals and unquote(name).strip().lower() in _SECRET_PARAMETERS
            fields.append(f"{name}={MASK}" if secret else field)
        rest = head + "?" + "&".join(fields) + hash_mark + fragment
    return f"{scheme}{separator}{rest}"


def _secrets(uri: str) -> set[str]:
    found: set[str] = set()
    _, separator, rest = uri.partition("://")
    if separator:
        start, end = _split_authority(rest)
        if start != -1:
            found.add(rest[start:end])
    _, question, query = uri.partition("?")
    if question:
        for name, value in parse_qsl(query.partition("#")[0], keep_blank_values=False):
            if name.strip().lower() in _SECRET_PARAMETERS:
                found.add(value)
    # Both spellings: libraries print the URI as given or percent-decoded.
    return {form for secret in found for form in (secret, unquote(secret)) if form}


def scrub(text: str, uri: str) -> str:
    """``text`` (an error message, say) with the plain ``uri`` and each of its secrets masked."""
    text = text.replace(uri, mask_uri(uri))
    for secret in sorted(_secrets(uri), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
