"""Leaving the process while a job is inside torch.

The job worker is a daemon thread (a hung generation must not keep the process alive). If the interpreter tears
down while that thread is inside a torch call, the thread is killed mid-C++ and the process aborts
("terminate called without an active exception"). So at exit, however it happens (end of main, sys.exit, an
uncaught exception, SIGTERM, Ctrl+C), the running job is interrupted and we wait, bounded by --exit-wait, for the
worker to stop at its next step boundary (the interrupt is checked once a step). A second Ctrl+C while waiting
exits at once, skipping the interpreter's teardown (saved images are atomic, so nothing half-written stays).
"""
from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import weakref
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_EXIT_WAIT = 30.0  # seconds: one step of a large model on a slow CPU, with room to spare


def stop_worker(queue: Any, timeout: float) -> bool:
    """Cancel queued jobs, interrupt the running one and wait up to `timeout` s for the worker. True if it stopped."""
    running = queue.running()
    if running:
        log.info("waiting up to %.0f s for job %s to stop at its next step (Ctrl+C again to quit at once)",
                 timeout, running[0].id)
    try:
        stopped = queue.shutdown(timeout=timeout)
    except KeyboardInterrupt:
        log.warning("forced exit while a job was still running")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    if not stopped:
        log.warning("a job is still running after %.0f s (--exit-wait); exiting anyway", timeout)
    return stopped


def stop_at_exit(engine: Any) -> None:
    """Shut the engine down before the interpreter's teardown, whatever ends the process. Held weakly, so an
    engine that is gone (tests make many) costs nothing at exit."""
    atexit.register(_shutdown_if_alive, weakref.ref(engine))


def _shutdown_if_alive(ref: "weakref.ref[Any]") -> None:
    engine = ref()
    if engine is not None:
        engine.shutdown()


def exit_on_sigterm() -> None:
    """SIGTERM exits as a normal exit does (status 0), so `finally` blocks and the wait above run; by default it
    kills the process mid-job. uvicorn takes the signal while serving and raises it again once it has stopped."""
    signal.signal(signal.SIGTERM, _sigterm)


def _sigterm(signum: int, frame: Any) -> None:
    log.info("SIGTERM: stopping")
    raise SystemExit(0)
