"""Ctrl-C (or SIGTERM) during ddtrain's training loop is a flag, not an exception (no TensorFlow import here).

A KeyboardInterrupt raised at an arbitrary point of the main thread can land
inside TensorFlow's C++ code while it calls back into Python (e.g. hashing
the tensors of a feed dict), which then aborts the whole process (SIGABRT,
seen here) instead of saving a checkpoint. So while the loop runs
(:data:`LOOP_RUNNING`, set by ``trainer.callbacks.StopOnCtrlC``), ddtrain's
SIGINT handler only sets :data:`REQUESTED`; the callback ends training after
the current step and the normal end saves the checkpoint. Outside the loop
(pre-flight, graph building) Ctrl-C raises KeyboardInterrupt as usual.

SIGTERM, what batch schedulers and ``kill`` send before SIGKILL, is handled
the same way (it used to end the process at once, losing every step since the
last periodic checkpoint); the exit code is 128 + the signal's number
(:func:`exit_code`: 130 for Ctrl-C, 143 for SIGTERM).
"""
import signal
import threading

REQUESTED = threading.Event()
LOOP_RUNNING = threading.Event()
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received = []  # the stop signals this process got, in order


def on_sigint(signum, frame):
    """SIGINT / SIGTERM handler for ``ddtrain train`` (see the module docstring)."""
    _received.append(int(signum))
    if LOOP_RUNNING.is_set():
        REQUESTED.set()
    else:
        raise KeyboardInterrupt


def signal_name(signum):
    """``Ctrl-C`` for SIGINT, else the signal's name (``SIGTERM``)."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def exit_code():
    """128 + the first stop signal received (130 if none: a KeyboardInterrupt raised otherwise)."""
    return 128 + (_received[0] if _received else int(signal.SIGINT))
