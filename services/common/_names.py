"""The identifier rules every service shares: one definition, so a name one service accepts
is never refused by the next one down the pipeline.

Resource ids follow AIP-122 (``cameras/{camera}``: 1-63 lower-case letters, digits and
hyphens, a letter first, no hyphen last). Tokens (producer ids, analytics' de-duplication
key; model versions) are 1-128 printable ASCII characters, no spaces. ``fullmatch``
throughout: ``$`` would accept a trailing newline.
"""

from __future__ import annotations

import re

__all__ = ["camera_id_from_name", "is_resource_id", "is_token"]

_RESOURCE_ID = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
_TOKEN = re.compile(r"[\x21-\x7e]{1,128}")
_CAMERAS = "cameras/"


def is_resource_id(ident: str) -> bool:
    return _RESOURCE_ID.fullmatch(ident) is not None


def is_token(ident: str) -> bool:
    return _TOKEN.fullmatch(ident) is not None


def camera_id_from_name(name: str) -> str | None:
    """The camera id of a ``cameras/{camera}`` resource name; None if it is not one."""
    if not name.startswith(_CAMERAS):
        return None
    ident = name[len(_CAMERAS) :]
    return ident if is_resource_id(ident) else None
