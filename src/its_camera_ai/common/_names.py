"""The identifier rules every service shares: one definition, so a name one service accepts
is never refused by the next one down the pipeline.

Resource ids follow AIP-122 (``cameras/{camera}``: 1-63 lower-case letters, digits and
hyphens, a letter first, no hyphen last). Tokens (producer ids, analytics' de-duplication
key; model versions) are 1-128 printable ASCII characters, no spaces. ``fullmatch``
throughout: ``$`` would accept a trailing newline.
"""

from __future__ import annotations

import re

from its_camera_ai.common._errors import InvalidArgumentError

__all__ = ["camera_id_from_name", "is_resource_id", "is_token", "parse_camera_name"]

_RESOURCE_ID = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
_TOKEN = re.compile(r"[\x21-\x7e]{1,128}")
_CAMERAS = "cameras/"


def is_resource_id(ident: str) -> bool:
    return _RESOURCE_ID.fullmatch(ident) is not None


def is_token(ident: str) -> bool:
    return _TOKEN.fullmatch(ident) is not None


def camera_id_from_name(name: str, suffix: str = "") -> str | None:
    """The camera id of a ``cameras/{camera}`` resource name (``cameras/{camera}{suffix}``
    for a sub-resource, e.g. ``suffix="/status"``); None if it is not one."""
    if not name.startswith(_CAMERAS) or not name.endswith(suffix):
        return None
    ident = name[len(_CAMERAS) : len(name) - len(suffix)]
    return ident if is_resource_id(ident) else None


def parse_camera_name(name: str, field: str, suffix: str = "") -> str:
    """``camera_id_from_name`` for a request field: the id, or INVALID_ARGUMENT naming
    ``field`` and the expected form."""
    camera_id = camera_id_from_name(name, suffix)
    if camera_id is None:
        raise InvalidArgumentError.for_field(field, f'must be "cameras/{{camera}}{suffix}"')
    return camera_id
