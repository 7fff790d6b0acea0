"""SIGINT, SIGTERM and SIGHUP end a command the same way: cleanup runs, one line, exit 128 + the signal.

While a command runs, each of these signals raises :class:`Interrupted` (a ``KeyboardInterrupt``, which
asyncio lets through and answers by cancelling the command's tasks) in the main thread, so every
``finally`` and context manager on the way out cleans up: ``.part`` files, locks, child processes.
The daemon installs its own handlers (SIGTERM: graceful stop, SIGHUP: reload) once it runs.

Where the exception is raised matters:

* outside an event loop, or inside a coroutine's own code (a task step, even one blocked in a lock
  wait), it is raised at once, as Python raises ``KeyboardInterrupt``;
* while the loop polls or runs a callback it is raised by a callback the loop runs next, so it leaves
  the loop between two callbacks: gRPC's completion callbacks are C code that cannot pass an exception
  on (it would be lost, and the call it completes never finish);
* one raised where it cannot propagate all the same (a finalizer, a weakref callback: Python reports it
  as "Exception ignored") is caught on its way to ``sys.unraisablehook`` and delivered again.

Only one exception is raised: further SIGTERM and SIGHUP while the command cleans up are recorded and
ignored, so the cleanup finishes; a second SIGINT (Ctrl-C twice) stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

# signal -> (the one line printed, exit code): 128 + the signal number, as a shell reports it
SIGNALS: dict[int, tuple[str, int]] = {
    signal.SIGINT: ("interrupted", 128 + signal.SIGINT),
    signal.SIGTERM: ("terminated", 128 + signal.SIGTERM),
    signal.SIGHUP: ("hangup", 128 + signal.SIGHUP),
}


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP, raised in the main thread."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def outcome(e: KeyboardInterrupt, received: list[int]) -> tuple[str, int]:
    """The line and exit code for a command ended by ``e``."""
    signum = e.signum if isinstance(e, Interrupted) else received[0] if received else signal.SIGINT
    if not received:
        received.append(signum)
    return SIGNALS.get(signum, SIGNALS[signal.SIGINT])


@contextlib.contextmanager
def signals_as_exceptions(received: list[int] | None = None) -> Iterator[list[int]]:
    """While the block runs, the signals of :data:`SIGNALS` raise :class:`Interrupted` (see the module
    docstring); yields ``received``, the signals received (appended to the list given, if any).

    The previous handlers are put back on the way out. Outside the main thread this does nothing
    (handlers can only be set there, and signals are delivered there anyway).
    """
    received = [] if received is None else received
    main = threading.main_thread().ident
    if threading.get_ident() != main or main is None:
        yield received
        return
    state = {"active": True, "raised": False}

    def deliver(signum: int) -> None:
        if state["active"] and not state["raised"]:
            state["raised"] = True
            raise Interrupted(signum)

    def handler(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if not state["active"]:
            return
        if state["raised"]:
            if signum == signal.SIGINT:
                raise Interrupted(signum)  # Ctrl-C again: stop now, cleanup or not
            return
        aio = sys.modules.get("asyncio")  # not imported: no loop can be running (and importing it here could block)
        loop: Any = None
        with contextlib.suppress(Exception):  # RuntimeError: no running loop
            loop = aio.get_running_loop() if aio is not None else None
        if loop is not None and aio is not None and aio.current_task(loop) is None:
            loop.call_soon_threadsafe(deliver, signum)  # between two callbacks, not inside one
            return
        deliver(signum)

    previous_hook = sys.unraisablehook

    def unraisable(u: Any) -> None:
        exc = getattr(u, "exc_value", None)
        if isinstance(exc, Interrupted) and state["active"]:
            # lost where it was raised: send the signal again, to be handled outside that place
            state["raised"] = False
            threading.Timer(0.01, signal.pthread_kill, (main, exc.signum)).start()
            return
        previous_hook(u)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    sys.unraisablehook = unraisable
    try:
        yield received
    finally:
        state["active"] = False  # the block is over: too late to interrupt it (its result stands)
        sys.unraisablehook = previous_hook
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def quiet_once_interrupted(received: list[int]) -> None:
    """For the process's remaining life: after a signal, say nothing more than the one line (an object the
    signal caught half-built, such as an event loop or a coroutine never awaited, would otherwise print its
    complaint while the process ends)."""
    import warnings

    unraisable, show = sys.unraisablehook, warnings.showwarning

    def hook(u: Any) -> None:
        if not received:
            unraisable(u)

    def showwarning(*a: Any, **kw: Any) -> None:
        if not received:
            show(*a, **kw)

    sys.unraisablehook = hook
    warnings.showwarning = showwarning
