"""The tensorpack worker patch: ``MultiProcessMapDataZMQ`` whose workers never drop a reply, die with their
parent, ship arrays without copying them, and whose death is an error instead of a hang.

This is the only ddcache module that imports tensorpack. tensorpack imports
TensorFlow, and TensorFlow reads ``TF_USE_LEGACY_KERAS`` once, at its first
import; tensorpack's layers need legacy Keras (FACTS.md §5), so the variable
gets its default here, before that import, for whatever the process builds
with tensorpack later (an explicit setting is kept).
"""
import ctypes
import os
import pickle
import signal

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import zmq  # noqa: E402
from tensorpack.dataflow import MultiProcessMapDataZMQ  # noqa: E402

from .errors import WorkerDiedError  # noqa: E402  (a map worker ended while results were outstanding)

_PR_SET_PDEATHSIG = 1


def pack(obj):
    """``obj`` as ZMQ frames: a protocol-5 pickle, then each contiguous array's memory as its own frame.

    tensorpack pickles a datapoint into one byte string (a 3 MB image is copied
    into it while the buffer grows, and copied out again on the other side:
    ~6 ms per datapoint measured here, more than decoding a PNG crop). Out of
    band, the array memory is handed to ZMQ as it is (~0.1 ms).
    """
    buffers = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return [head] + [b.raw() for b in buffers]


def unpack(frames):
    """Inverse of :func:`pack` for received ``zmq.Frame`` s; arrays are (writable) views of the frames' memory."""
    return pickle.loads(frames[0].buffer, buffers=[f.buffer for f in frames[1:]])


def _serve(worker):
    """A map worker's loop (replaces tensorpack's ``_Worker.run``): request frames -> ``map_func`` -> reply frames."""
    context = zmq.Context()
    socket = context.socket(zmq.REP)
    socket.setsockopt(zmq.IDENTITY, worker.identity)
    socket.set_hwm(0)  # see LosslessMapDataZMQ: a REP socket at its mark drops replies
    socket.connect(worker.pipename)
    while True:
        request = unpack(socket.recv_multipart(copy=False))
        socket.send_multipart(pack(worker.map_func(request)), copy=False)


def die_with_parent(parent_pid):
    """Ask Linux to SIGKILL this process when its parent dies (tensorpack wants python-prctl for this)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class LosslessMapDataZMQ(MultiProcessMapDataZMQ):
    """``MultiProcessMapDataZMQ`` whose workers never silently drop a result; use it for every multi-process map.

    tensorpack gives each REP worker socket a high-water mark of
    ``2 * buffer_size / num_proc`` messages. A REP socket whose outgoing pipe
    is at its mark drops the reply without an error (libzmq issue #4750), and
    the pipe counts lag by up to half the mark; with MB-sized table crops that
    happened here in about one run in three, after which the consumer waited
    forever for the missing reply. Requests in flight are already bounded by
    ``buffer_size`` on the consumer's side, so workers get no mark at all
    (0 = unlimited): no reply is ever dropped and memory stays bounded.

    Messages are :func:`pack` ed: numpy arrays travel as ZMQ frames of their
    own, not copied into and out of a pickle.

    Workers die with the process that starts them (``PR_SET_PDEATHSIG``, set
    before they wait for their first request): tensorpack relies on
    python-prctl for that, which is not a dependency here. A worker that dies
    first makes the consumer raise :class:`WorkerDiedError` at its next send
    or receive (its outstanding requests are lost, so waiting would be forever).
    The map function must not raise either (tensorpack's worker would die
    with it): ``ddcache.dataflows.RecordSteps`` turns errors into values.
    """

    def _create_worker(self, id, pipename, hwm):
        worker = super()._create_worker(id, pipename, 0)
        parent = os.getpid()

        def run():
            die_with_parent(parent)
            _serve(worker)

        worker.run = run  # called by Process._bootstrap in the forked worker
        return worker

    @property
    def worker_pids(self):
        return [p.pid for p in self._procs]

    def _check_workers(self):
        """WorkerDiedError if a worker process has ended (its outstanding requests will never be answered)."""
        for k, proc in enumerate(self._procs):
            if not proc.is_alive():
                code = proc.exitcode
                how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                raise WorkerDiedError(f"map worker {k} (pid {proc.pid}) died ({how})")

    def _send(self, dp):
        # a DEALER socket blocks on send once no worker is connected: wait in steps, checking the workers
        while not self.socket.poll(timeout=1000, flags=zmq.POLLOUT):
            self._check_workers()
        self.socket.send_multipart([b""] + pack(dp), copy=False)

    def _recv(self):
        while True:
            self._check_workers()
            if self.socket.poll(timeout=1000):  # ms; between polls: is every worker still alive?
                return unpack(self.socket.recv_multipart(copy=False)[1:])

    def close(self):
        """Stop and join the worker processes (idempotent; tensorpack does this at garbage collection).

        A no-op once someone else has taken over the clean-up by clearing
        ``_reset_done`` (as tensorpack's own clean-up expects).
        """
        if not getattr(self, "_reset_done", False):
            return
        context = getattr(self, "context", None)  # absent if reset_state() failed before creating it
        if context is not None and not context.closed:
            self.socket.close(0)
            context.destroy(0)
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
            proc.join(5)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
