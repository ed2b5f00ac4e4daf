"""Versioned SQL migrations of the common schema, applied on start (read as package data)."""

from __future__ import annotations

__all__: list[str] = []
