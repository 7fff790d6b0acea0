"""Give the heap memory a phase has freed back to the kernel, so that the next phase starts low.

A backup streams hundreds of 32 KiB messages per second through the allocator, from several threads;
when the stream ends, glibc keeps most of what they occupied mapped in its arenas, counted in the
process's resident size, and the verification that follows (a walk of the file, the manifest's models)
adds to that. ``malloc_trim`` returns the free pages of every arena. Where the C library has no such
call (musl, macOS) this does nothing: it is an economy, not a correctness matter.
"""

from __future__ import annotations

import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        fn: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return fn


def trim() -> None:
    """Return the freed heap pages of this process to the kernel (glibc; elsewhere nothing)."""
    fn = _malloc_trim()
    if fn is not None:
        fn(0)
