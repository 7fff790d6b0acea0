"""CRC-32C (Castagnoli), hardware-accelerated, from the ``crc32c`` package's C extension.

The package's ``__init__`` looks its own version up in the installed distributions' metadata
(``importlib.metadata``): ~15 ms, 3 % of ``snapshot status`` on a 0.7 GB snapshot, for a string we never
read. So the extension module is loaded directly from the package's directory, registered under its own
name (a later ``import crc32c`` reuses it); should that ever fail (another layout, a zip install), the
package is imported the ordinary way.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable

Crc = Callable[..., int]  # crc32c(data: Buffer, value: int = 0) -> int


def _load() -> Crc:
    name = "crc32c._crc32c"
    mod = sys.modules.get(name)
    if mod is None:
        try:
            spec = importlib.util.find_spec("crc32c")
            where = spec.submodule_search_locations if spec is not None else None
            ext = importlib.machinery.PathFinder.find_spec("_crc32c", list(where or []))
            if ext is None or ext.loader is None:
                raise ImportError(name)
            ext.name = name
            mod = importlib.util.module_from_spec(ext)
            ext.loader.exec_module(mod)
            sys.modules[name] = mod
        except Exception:
            import crc32c

            return crc32c.crc32c
    return mod.crc32c  # type: ignore[no-any-return]


crc32c: Crc = _load()



# -- combining CRCs ---------------------------------------------------------------------------------------------
# CRC-32C is linear over GF(2): crc(a ‖ b) = crc(a)·x^(8·|b|) mod P ⊕ crc(b), for the conditioned CRC too (the
# initial and final inversions cancel). Polynomials are held bit-reflected, as the CRC itself: bit 31 is x^0.
_POLY = 0x82F63B78  # the Castagnoli polynomial, reflected
_X0 = 1 << 31  # the polynomial 1


def _multiply(a: int, b: int) -> int:
    """``a(x)·b(x) mod P`` (reflected)."""
    product = 0
    bit = _X0
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


def _powers() -> list[int]:
    """``x^(2^k) mod P`` for k = 0..63."""
    out = [_X0 >> 1]  # x^1
    for _ in range(63):
        out.append(_multiply(out[-1], out[-1]))
    return out


_X_POW2 = _powers()


def combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """``crc32c(a + b)`` from ``crc_a = crc32c(a)``, ``crc_b = crc32c(b)`` and ``len_b = len(b)``, in time
    logarithmic in ``len_b`` (equally: ``crc32c(b, value=h)`` from ``h`` and ``crc32c(b)``)."""
    shift = _X0
    bits = 8 * len_b
    k = 0
    while bits:
        if bits & 1:
            shift = _multiply(_X_POW2[k], shift)
        bits >>= 1
        k += 1
    return _multiply(shift, crc_a) ^ crc_b
