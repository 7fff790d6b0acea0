"""The ``etcdwarden`` executable and ``python -m etcdwarden``: signals are answered from the start.

A signal that arrives while the command line is still being imported (a few hundred milliseconds, before
:func:`etcdwarden.cli.main.run` takes the signals over) ends the process at once, with the same line
and exit code as later on and without a traceback: nothing has been written yet, so there is nothing
to clean up. This module imports nothing heavy for that reason.
"""

from __future__ import annotations

import gc
import os
import signal
from types import FrameType

_LINES: dict[int, str] = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hangup"}


def _early(signum: int, _frame: FrameType | None) -> None:
    os.write(2, f"Error: {_LINES.get(signum, 'interrupted')}\n".encode())
    os._exit(128 + signum)


def main() -> None:
    for s in _LINES:
        signal.signal(s, _early)
    gc.disable()  # while the command line is imported; etcdwarden.cli.main.main turns it on again
    from etcdwarden.cli.main import main as run_main

    run_main()
