"""Stopping a run cleanly: SIGINT and SIGTERM become a request the training loop checks.

The harness (minigen.run) saves a checkpoint when it sees the request, then stops.
"""
from __future__ import annotations

import contextlib
import signal
import threading


class StopRequest:
    signum: int | None = None


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM set a flag that the loop checks after each step; a second one stops
    at once (the last checkpoint stays whole: checkpoints are replaced atomically)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # signal handlers can only be installed from the main thread
        return

    def handler(signum, frame):
        if request.signum is not None:
            raise KeyboardInterrupt
        request.signum = signum

    previous = {signum: signal.signal(signum, handler)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for signum, old_handler in previous.items():
            signal.signal(signum, old_handler)
