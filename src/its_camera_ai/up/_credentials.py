"""The local instance's development identity provider and its admin token.

A new signing key each start (the JWKS file in the data directory, read by every child),
so a token from an earlier run stops working with it; the admin token is written to
``<data>/token``, owner-only, for ``export ITS_TOKEN=$(cat <data>/token)``. In dev,
anonymous callers on loopback are admins anyway: the token is for trying the real path
(``authorization: Bearer``) as a deployment would use it.
"""

from __future__ import annotations

import os

from its_camera_ai.security import TokenIssuer
from its_camera_ai.up._plan import Plan

__all__ = ["DevCredentials", "issue_dev_credentials"]

ISSUER = "https://its-camera-ai.local/up"
AUDIENCE = "its-camera-ai"
SUBJECT = "up-admin"
# Long enough for any development session; the key itself dies with the run.
TOKEN_LIFETIME_SECONDS = 30 * 24 * 3600


class DevCredentials:
    """The issuer's settings for the children (``ITS_SECURITY__JWT__*``) and the token."""

    def __init__(self, issuer: TokenIssuer, token: str) -> None:
        self.token = token
        self.environment = {
            "ITS_SECURITY__JWT__JWKS_FILE": str(issuer.jwks_file),
            "ITS_SECURITY__JWT__ISSUER": issuer.issuer,
            "ITS_SECURITY__JWT__AUDIENCE": issuer.audience,
        }


def issue_dev_credentials(plan: Plan) -> DevCredentials:
    """A fresh key in ``plan.jwks_file`` and an admin token in ``plan.token_file`` (0600)."""
    issuer = TokenIssuer.create(plan.jwks_file.parent, issuer=ISSUER, audience=AUDIENCE)
    token = issuer.mint(SUBJECT, "admin", lifetime_s=TOKEN_LIFETIME_SECONDS)
    # Created owner-only (not chmod after writing: the token is never readable by others).
    plan.token_file.unlink(missing_ok=True)
    descriptor = os.open(plan.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as token_file:
        token_file.write(token + "\n")
    return DevCredentials(issuer, token)
