"""Who is calling: the principal every RPC runs as, and the roles it may hold.

The authentication interceptor sets the principal of each call in a context variable
before the servicer runs (grpc.aio runs each RPC in its own task, so the variable is the
call's own); servicers read it with ``current_principal()`` to scope what they return.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["ANONYMOUS_ACTOR", "SYSTEM", "Principal", "Role", "bind_principal", "current_principal"]

ANONYMOUS_ACTOR = "anonymous"


class Role(enum.IntEnum):
    """``its.admin.v1.Role``'s values. VIEWER < OPERATOR < ADMIN are ordered (each includes
    the lower); SERVICE is outside the order: machine peers (inference streaming to
    analytics, services reading the decoder's cameras) with exactly the methods marked
    for them."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3
    SERVICE = 4

    @classmethod
    def parse(cls, name: str) -> Role:
        """``"viewer"``, ``"ROLE_VIEWER"`` or ``"VIEWER"`` (any case) to a role."""
        key = name.strip().upper().removeprefix("ROLE_")
        try:
            return cls[key]
        except KeyError:
            known = ", ".join(role.name.lower() for role in cls)
            raise ValueError(f"unknown role {name!r} (known: {known})") from None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    ``actor`` is how the audit log names it: ``user:{JWT subject}``,
    ``apiKey:apiKeys/{id}``, ``service:{mTLS identity}``, ``anonymous`` or ``system``.
    ``cameras`` scopes it to some camera ids; None means every camera.
    """

    actor: str
    role: Role
    cameras: frozenset[str] | None = None

    @classmethod
    def scoped(cls, actor: str, role: Role, cameras: Iterable[str] | None) -> Principal:
        """A principal whose scope is ``cameras`` (ids or ``cameras/{id}`` names); an
        empty or absent list means every camera."""
        ids = frozenset(c.removeprefix("cameras/") for c in cameras or ())
        return cls(actor, role, ids or None)

    def may_see(self, camera_id: str) -> bool:
        return self.cameras is None or camera_id in self.cameras


# The principal of code that is not serving an RPC (start-up, background tasks): the
# servers never hand it to a caller, every RPC runs as what the interceptor verified.
SYSTEM = Principal("system", Role.ADMIN)

_current: ContextVar[Principal] = ContextVar("its_principal", default=SYSTEM)


def bind_principal(principal: Principal) -> None:
    """Make ``principal`` the current task's (the interceptor, once per RPC)."""
    _current.set(principal)


def current_principal() -> Principal:
    """The principal of the RPC being served (``SYSTEM`` outside one)."""
    return _current.get()
