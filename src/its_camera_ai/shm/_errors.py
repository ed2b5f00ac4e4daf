"""The exception tree of the ring library: everything it raises derives from ShmError."""

from __future__ import annotations

__all__ = [
    "FrameOverwritten",
    "FrameTooLarge",
    "IncompatibleVersion",
    "InvalidFrame",
    "InvalidRingName",
    "NoWriter",
    "ReadersFull",
    "RingClosed",
    "RingCorrupt",
    "RingExists",
    "RingNotFound",
    "ShmError",
    "WriterDead",
]


class ShmError(Exception):
    """Base of every error this library raises on purpose."""


class InvalidRingName(ShmError, ValueError):
    """The ring name is not [a-z0-9][a-z0-9_-]* within the length limit."""


class InvalidFrame(ShmError, ValueError):
    """Width, height, stride, pixel format or buffer size do not describe a valid frame."""


class FrameTooLarge(InvalidFrame):
    """The frame does not fit in a slot of this ring."""


class RingNotFound(ShmError, FileNotFoundError):
    """No ring of that name exists, or it was unlinked or replaced under a reader."""


class RingExists(ShmError, FileExistsError):
    """A live writer already owns a ring of that name."""


class RingCorrupt(ShmError):
    """The object is not a ring this library can use: foreign, truncated or damaged."""


class IncompatibleVersion(RingCorrupt):
    """A well-formed ring header of another layout version."""


class ReadersFull(ShmError):
    """Every reader registration slot of the ring is held by a live reader."""


class NoWriter(ShmError):
    """No writer is producing frames into the ring (base of WriterDead and RingClosed).

    Not terminal: a restarted writer can reclaim the ring and the same reader then
    receives frames again.
    """


class WriterDead(NoWriter):
    """The writer process died without closing the ring (pid gone, or reused)."""


class RingClosed(NoWriter):
    """The writer closed the ring on purpose. `unlinked` is True when the name is gone too
    (the default close): a new ring of that name needs a new attach."""

    def __init__(self, message: str, *, unlinked: bool = False) -> None:
        super().__init__(message)
        self.unlinked = unlinked


class FrameOverwritten(ShmError):
    """The writer overwrote the slot while the frame was held: its data may be torn."""
