"""Ctrl-C that always ends a command within seconds, with the line that says what happens next.

Python turns SIGINT into a KeyboardInterrupt in the main thread, and the
command then unwinds: a build stops its worker pool, ``ddtrain`` saves a
checkpoint. That teardown can block on things the interrupt left half done
(a pool's result pipe with a half-written message, a ZMQ socket, a queue
lock), so the process is also given a deadline: :func:`exit_within` arms a
daemon timer that prints the line and leaves with the exit code if the
normal way out has not finished by then. Armed only by the command-line
entry points, never inside a host process such as a test runner.
"""
import contextlib
import os
import signal
import sys
import threading

GRACE_S = 10.0

_said = threading.Lock()  # the line is printed once: by the normal way out or by the deadline


def say_once(message):
    """Write ``message`` as one line on stderr unless it (or another) was said already; True if written."""
    if not _said.acquire(blocking=False):
        return False
    sys.stderr.write(f"{message}\n")
    sys.stderr.flush()
    return True


def exit_within(seconds, code, message=None):
    """Leave with ``code`` after at most ``seconds`` more, even if the interpreter's shutdown blocks.

    ``message`` is printed first unless a line was already said (:func:`say_once`).
    """
    def force():
        if message:
            say_once(message)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


class CommandInterrupted(Exception):
    """Ctrl-C ended a command; ``str(exc)`` is the line to print (exit code 130)."""


@contextlib.contextmanager
def bounded_interrupt(message, grace_s=GRACE_S):
    """Within the block, Ctrl-C ends the command within ``grace_s`` seconds and says ``message``.

    The first SIGINT arms :func:`exit_within` and raises KeyboardInterrupt as
    usual; once the block has unwound it becomes :class:`CommandInterrupted`
    with ``message``. The previous SIGINT handler is restored on the way out.
    Main thread only.
    """
    def on_sigint(signum, frame):
        exit_within(grace_s, 130, message)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    except KeyboardInterrupt:
        raise CommandInterrupted(message) from None
    finally:
        signal.signal(signal.SIGINT, previous)
