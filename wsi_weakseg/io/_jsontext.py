"""Compiled JSON text of polygon coordinates, byte-identical to ``json.dumps`` of the rounded floats.

Coordinates are given as integer hundredths ``c`` of values rounded to 2 decimals. Python writes a float
by its shortest round-tripping repr, and for ``|v| < 2**46 / 100`` the double nearest ``c / 100`` has the
repr ``c / 100`` in plain decimals with trailing zeros dropped (one kept: ``12.0``, ``12.5``, ``12.25``):
doubles there are far closer than 0.01, so no shorter decimal names the same double. The callers check
``c / 100 == v`` for every value before using this, and use ``json.dumps`` for anything else.
"""

from __future__ import annotations

import numba
import numpy as np

#: Largest |value| written here; beyond it the repr argument above needs more care (never reached: slides
#: are < 10**7 px).
MAX_ABS = 1e12


@numba.njit(cache=True, nogil=True, inline="always")
def _put_decimal(buf, pos, c, digits):
    """Write ``c / 10**digits`` (``c`` an integer) as Python's float repr of it; return the new position.

    Plain decimals with trailing zeros dropped and one kept (``12.0``, ``12.5``, ``0.0625``): the repr of
    the double nearest ``c / 10**digits`` for ``|c / 10**digits|`` below :data:`MAX_ABS` and at least
    ``10**-4`` or 0 (``repr`` writes smaller numbers in exponent form; ``digits`` <= 4 never gives one).
    """
    if c < 0:
        buf[pos] = 45  # '-'
        pos += 1
        c = -c
    p = 10**digits
    whole, frac = c // p, c % p
    n = 1
    t = whole // 10
    while t:
        n += 1
        t //= 10
    for i in range(n):
        buf[pos + n - 1 - i] = 48 + whole % 10
        whole //= 10
    pos += n
    buf[pos] = 46  # '.'
    pos += 1
    nd = digits
    while nd > 1 and frac % 10 == 0:
        frac //= 10
        nd -= 1
    for i in range(nd):
        buf[pos + nd - 1 - i] = 48 + frac % 10
        frac //= 10
    return pos + nd


@numba.njit(cache=True, nogil=True, inline="always")
def _put_number(buf, pos, c):
    """Write hundredths ``c`` as Python's float repr of ``c / 100``; return the new position."""
    return _put_decimal(buf, pos, c, 2)


@numba.njit(cache=True, nogil=True)
def members_text(c, keys, key_starts, digits, close):
    """``,<key>:<value>`` for every key of every row, then ``close``: the measurements' text of each nucleus.

    Parameters
    ----------
    c : ndarray of int64, shape (n, k)
        Values as integers ``value * 10**digits`` (see :func:`_put_decimal`).
    keys : ndarray of uint8
        The ``k`` JSON-encoded keys (UTF-8), one after another; key ``j`` is ``keys[key_starts[j]:key_starts[j + 1]]``.
    key_starts : ndarray of int64, shape (k + 1,)
    digits : int
    close : ndarray of uint8
        Text after each row's last value.

    Returns
    -------
    buf : ndarray of uint8
    offsets : ndarray of int64, shape (n + 1,)
    """
    n, k = c.shape
    if len(key_starts) != k + 1:
        raise ValueError("members_text: one key per column of c")
    per_row = (k * 2 + key_starts[k] + k * 24 + len(close))
    buf = np.empty(n * per_row + 1, np.uint8)
    offsets = np.zeros(n + 1, np.int64)
    pos = 0
    for i in range(n):
        for j in range(k):
            buf[pos] = 44  # ','
            pos += 1
            for b in range(key_starts[j], key_starts[j + 1]):
                buf[pos] = keys[b]
                pos += 1
            buf[pos] = 58  # ':'
            pos = _put_decimal(buf, pos + 1, c[i, j], digits)
        for b in range(len(close)):
            buf[pos] = close[b]
            pos += 1
        offsets[i + 1] = pos
    return buf[:pos], offsets


@numba.njit(cache=True, nogil=True)
def polygons_text(c, ring_starts, poly_starts):
    """``[[[x,y],...],[...]]`` text of each polygon, as ``json.dumps(..., separators=(",", ":"))`` writes it.

    Each ring is rounded data as :func:`~wsi_weakseg.io.geojson.nucleus_feature` makes it: consecutive
    repeated vertices dropped, a repeated closing vertex dropped, then closed again.

    Parameters
    ----------
    c : ndarray of int64, shape (m, 2)
        Hundredths of the rounded ``(x, y)`` of every ring's vertices, rings one after another.
    ring_starts : ndarray of int64, shape (r + 1,)
    poly_starts : ndarray of int64, shape (p + 1,)
        Polygon ``i`` has rings ``poly_starts[i]:poly_starts[i + 1]`` (exterior first).

    Returns
    -------
    buf : ndarray of uint8
        ASCII text of all polygons, one after another.
    offsets : ndarray of int64, shape (p + 1,)
        Polygon ``i`` is ``buf[offsets[i]:offsets[i + 1]]``.
    ok : ndarray of bool, shape (p,)
        False where a ring has fewer than 3 distinct vertices (its text is empty; the caller raises).
    """
    npoly = len(poly_starts) - 1
    buf = np.empty(64 * len(c) + 8 * len(ring_starts) + 16, np.uint8)  # <= 2 * 28 + 6 bytes per vertex
    offsets = np.zeros(npoly + 1, np.int64)
    ok = np.ones(npoly, np.bool_)
    keep = np.empty(len(c), np.int64)
    pos = 0
    for p in range(npoly):
        start = pos
        buf[pos] = 91  # '['
        pos += 1
        for r in range(poly_starts[p], poly_starts[p + 1]):
            a, b = ring_starts[r], ring_starts[r + 1]
            n = 0
            for i in range(a, b):
                if n == 0 or c[i, 0] != c[keep[n - 1], 0] or c[i, 1] != c[keep[n - 1], 1]:
                    keep[n] = i
                    n += 1
            if n > 1 and c[keep[0], 0] == c[keep[n - 1], 0] and c[keep[0], 1] == c[keep[n - 1], 1]:
                n -= 1
            if n < 3:
                ok[p] = False
                break
            if r > poly_starts[p]:
                buf[pos] = 44  # ','
                pos += 1
            buf[pos] = 91
            pos += 1
            for j in range(n + 1):
                i = keep[j] if j < n else keep[0]
                if j:
                    buf[pos] = 44
                    pos += 1
                buf[pos] = 91
                pos = _put_number(buf, pos + 1, c[i, 0])
                buf[pos] = 44
                pos = _put_number(buf, pos + 1, c[i, 1])
                buf[pos] = 93  # ']'
                pos += 1
            buf[pos] = 93
            pos += 1
        if not ok[p]:
            pos = start
        else:
            buf[pos] = 93
            pos += 1
        offsets[p + 1] = pos
    return buf[:pos], offsets, ok
