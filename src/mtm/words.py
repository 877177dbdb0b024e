"""Counts in messages, with the right plural: "1 tenant", "2 tenants", "1,500 steps"."""

from __future__ import annotations


def plural(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` with thousands separators, and ``noun`` in the singular for 1 only."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"
