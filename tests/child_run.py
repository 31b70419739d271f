"""Run a Python snippet in a child process with a time limit, so a stall fails a test instead of hanging the suite."""
import os
import selectors
import signal
import subprocess
import sys
import time


def run_until_marker(code, marker, timeout=120):
    """Run ``code`` with ``python -c`` in its own session; return (marker printed?, combined output).

    Reads until the child prints ``marker``, not until EOF: an orphaned
    tensorpack map worker (if any) would keep the pipe open long after the
    child has finished. The child and anything it started are killed at the end.
    """
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    try:
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(marker in line for line in lines):
            if selector.select(timeout=1.0):
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    out = "".join(lines)
    return marker in out, out
