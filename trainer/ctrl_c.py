"""Ctrl-C during ddtrain's training loop is a flag, not an exception (no TensorFlow import here).

A KeyboardInterrupt raised at an arbitrary point of the main thread can land
inside TensorFlow's C++ code while it calls back into Python (e.g. hashing
the tensors of a feed dict), which then aborts the whole process (SIGABRT,
seen here) instead of saving a checkpoint. So while the loop runs
(:data:`LOOP_RUNNING`, set by ``trainer.callbacks.StopOnCtrlC``), ddtrain's
SIGINT handler only sets :data:`REQUESTED`; the callback ends training after
the current step and the normal end saves the checkpoint. Outside the loop
(pre-flight, graph building) Ctrl-C raises KeyboardInterrupt as usual.
"""
import threading

REQUESTED = threading.Event()
LOOP_RUNNING = threading.Event()


def on_sigint(signum, frame):
    """SIGINT handler for ``ddtrain train`` (see the module docstring)."""
    if LOOP_RUNNING.is_set():
        REQUESTED.set()
    else:
        raise KeyboardInterrupt
