"""Keep the heap small: one malloc arena for a streaming process, and freed memory given back between phases.

A backup streams hundreds of 32 KiB messages per second through the allocator, from several threads;
when the stream ends, glibc keeps most of what they occupied mapped in its arenas, counted in the
process's resident size, and the verification that follows (a walk of the file, the manifest's models)
adds to that. ``malloc_trim`` returns the free pages of every arena. Where the C library has no such
call (musl, macOS) this does nothing: it is an economy, not a correctness matter.

glibc also gives each new thread that allocates its own arena (up to 8 per core): a backup's threads
(event loop, gRPC's poller, the stream's worker, the encoder) each keep freed blocks of their own that the
others cannot reuse. :func:`one_arena` (``mallopt(M_ARENA_MAX, 1)``), called before any thread starts, puts
every thread on the main arena: measured on a 1 GiB zstd backup, peak RSS 60-63 MiB instead of 66-68, no
slower (threads allocate mostly under Python's GIL; small blocks come from each thread's cache anyway).
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


_M_ARENA_MAX = -8  # glibc's malloc.h


def one_arena() -> bool:
    """Every thread started from now on allocates from the main arena (glibc; elsewhere nothing: ``False``).
    A process-wide setting: for the command line to choose, before it starts any thread."""
    try:
        import ctypes

        return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1))
    except (OSError, AttributeError):
        return False


def trim() -> None:
    """Return the freed heap pages of this process to the kernel (glibc; elsewhere nothing)."""
    fn = _malloc_trim()
    if fn is not None:
        fn(0)
