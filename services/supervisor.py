"""`hashpivot serve` runs the server in a child process and restarts it when it dies unexpectedly.

Why: when the embedded Ray's node process dies (killed, out of memory), Ray ends the driver
process (the server) at once, from native code, before Python can log anything. A container
restart policy would bring it back, but silently and only in a container. The supervisor names
what happened in one log line, restarts the server with a back-off (jobs that were running are
re-queued by the new server, counting a crash: services/store.py caps them), and gives up after
MAX_RESTARTS within RESTART_WINDOW_S with a non-zero exit. SIGTERM and SIGINT are forwarded to the
server, which drains as usual; its exit code is then the supervisor's.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

CHILD_FLAG = "--no-supervise"
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """In the child: a SIGKILLed supervisor takes the server with it (no orphan holding the port)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the child may outlive a killed supervisor
        pass


def supervise(serve_argv: Sequence[str], command: Sequence[str] | None = None) -> int:
    """Run `python -m services.cli <serve_argv> --no-supervise` (or `command`) until it stops on purpose."""
    stopping = False
    child: subprocess.Popen | None = None

    def forward(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    restarts: list[float] = []
    while True:
        argv = list(command) if command else [sys.executable, "-m", "services.cli", *serve_argv, CHILD_FLAG]
        child = subprocess.Popen(argv, preexec_fn=die_with_parent)
        code = child.wait()
        if stopping or code in (0, 2):  # a requested stop, or a refused start (its line is printed)
            return code
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < RESTART_WINDOW_S] + [now]
        if len(restarts) > MAX_RESTARTS:
            log.error("the server died %d times in %.0f s; giving up", len(restarts), RESTART_WINDOW_S)
            return 1
        backoff_s = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (len(restarts) - 1))
        log.error(
            "the server process exited unexpectedly (code %s; a dead Ray node ends it this way); "
            "restarting in %.0f s, running jobs are re-queued",
            code,
            backoff_s,
        )
        time.sleep(backoff_s)
