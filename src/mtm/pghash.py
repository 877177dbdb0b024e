"""PostgreSQL's ``hashtextextended`` in Python, byte for byte (``hash_bytes_extended``).

A schema's catalog fingerprint is summed from the hashes of its lines in SQL
(``catalog.fingerprints``: no sort of every line of every schema) and the same sum is
computed here for a ``SchemaCatalog``. This is Bob Jenkins' lookup3 hash as
src/common/hashfn.c has it for little-endian and unaligned input (both give the same
value); ``tests/test_catalog.py`` checks it against the server.
"""

from __future__ import annotations

_M = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _M ^ _rot(c, 4)
    c = (c + b) & _M
    b = (b - a) & _M ^ _rot(a, 6)
    a = (a + c) & _M
    c = (c - b) & _M ^ _rot(b, 8)
    b = (b + a) & _M
    a = (a - c) & _M ^ _rot(c, 16)
    c = (c + b) & _M
    b = (b - a) & _M ^ _rot(a, 19)
    a = (a + c) & _M
    c = (c - b) & _M ^ _rot(b, 4)
    b = (b + a) & _M
    return a, b, c


def _final(a: int, b: int, c: int) -> tuple[int, int]:
    c = (c ^ b) - _rot(b, 14) & _M
    a = (a ^ c) - _rot(c, 11) & _M
    b = (b ^ a) - _rot(a, 25) & _M
    c = (c ^ b) - _rot(b, 16) & _M
    a = (a ^ c) - _rot(c, 4) & _M
    b = (b ^ a) - _rot(a, 14) & _M
    c = (c ^ b) - _rot(b, 24) & _M
    return b, c


def hash_extended(data: bytes, seed: int) -> int:
    """``hashtextextended(text COLLATE "C", seed)`` of the text whose bytes are ``data``:
    a signed 64-bit integer, as the server returns it."""
    a = b = c = (0x9E3779B9 + len(data) + 3923095) & _M
    if seed:
        a = (a + ((seed >> 32) & _M)) & _M
        b = (b + (seed & _M)) & _M
        a, b, c = _mix(a, b, c)
    i = 0
    while len(data) - i >= 12:
        a = (a + int.from_bytes(data[i : i + 4], "little")) & _M
        b = (b + int.from_bytes(data[i + 4 : i + 8], "little")) & _M
        c = (c + int.from_bytes(data[i + 8 : i + 12], "little")) & _M
        a, b, c = _mix(a, b, c)
        i += 12
    rest = data[i:]
    if len(rest) >= 9:  # the lowest byte of c is left for the length
        c = (c + (int.from_bytes(rest[8:], "little") << 8)) & _M
    if len(rest) >= 5:
        b = (b + int.from_bytes(rest[4:8], "little")) & _M
    if rest:
        a = (a + int.from_bytes(rest[:4], "little")) & _M
    high, low = _final(a, b, c)
    value = (high << 32) | low
    return value - (1 << 64) if value >= 1 << 63 else value
