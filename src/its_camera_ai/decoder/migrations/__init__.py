"""Versioned SQL migrations of the decoder schema, applied on start (read as package data)."""

from __future__ import annotations

__all__: list[str] = []
