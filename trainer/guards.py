"""What stops a training run that cannot go on, with one line and no checkpoint of the broken state.

A run must not continue (or be saved) after:

* a non-finite loss (a too-high learning rate, a bad box): the update that
  follows writes NaN into the weights;
* a failure in the input pipeline (a corrupt record, any error while reading
  or mapping): tensorpack's feeding thread would log a traceback, close the
  queue, and the loop would end as if training had finished normally (exit 0
  and a checkpoint);
* a map worker that died (killed, out of memory): its requests are never
  answered and the step would wait forever (``ddcache.map_workers`` checks
  its workers while it waits and raises ``WorkerDiedError``, which
  :class:`FailureReport` records like any input error);
* an input that yields no datapoint at all (every box NaN, outside its image
  or of a category that is not trained): the map drops every sample and the
  first step waits forever.

Each of these records its reason in one :class:`RunFailure` shared by the
callbacks; :class:`FailureGuard` then stops the loop at the end of the
current step, ``trainer.callbacks.CheckpointSaver`` refuses to save, and
``trainer.train.train_main`` raises ``TrainingFailed`` with the reason.
"""
import math
import threading

from tensorpack.callbacks import Callback
from tensorpack.dataflow import ProxyDataFlow
from tensorpack.dataflow.base import DataFlowTerminated
from tensorpack.train.base import StopTraining


class RunFailure:
    """The first reason this run must stop; thread-safe (the feeding thread and the training loop write it)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reason = None
        self.step = None

    def record(self, reason, step=None):
        """Keep ``reason`` (one line) unless a failure is already recorded; returns True if it was kept."""
        with self._lock:
            if self.reason is not None:
                return False
            self.reason, self.step = str(reason), step
            return True

    def __bool__(self):
        return self.reason is not None


def describe_input_error(exc):
    """One line for an exception raised while reading or mapping training data."""
    from ddcache.errors import CorruptRecordError, UserError

    if isinstance(exc, (CorruptRecordError, UserError)):
        return str(exc)
    return f"input pipeline failed: {type(exc).__name__}: {exc}"


def describe_out_of_memory(exc):
    """One line for TensorFlow's ``ResourceExhaustedError`` in a step: on a GPU, images too large for its memory."""
    text = str(getattr(exc, "message", "") or exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if len(first) > 200:
        first = first[:200] + "..."
    return (f"out of memory in a training step ({first}); lower PREPROC.MAX_SIZE and PREPROC.TRAIN_SHORT_EDGE_SIZE "
            "(--override), or train on a device with more memory")


class FailureReport(ProxyDataFlow):
    """Passes ``ds`` through; an exception while iterating it is recorded in ``failure`` instead of logged.

    Raises tensorpack's ``DataFlowTerminated`` in its place, which the
    feeding thread takes as a quiet end of input (it closes the queue, so a
    step waiting for data returns) rather than printing a traceback.
    """

    def __init__(self, ds, failure):
        super().__init__(ds)
        self.failure = failure

    def reset_state(self):
        try:
            super().reset_state()  # a map's reset_state already reads the first records
        except Exception as exc:
            self.failure.record(describe_input_error(exc))
            raise DataFlowTerminated() from None

    def __iter__(self):
        try:
            yield from self.ds
        except Exception as exc:
            self.failure.record(describe_input_error(exc))
            raise DataFlowTerminated() from None


class StarvationCheck:
    """Counts the records a source hands to the map since the map last produced a datapoint.

    Between two usable records of an endless, once-per-epoch stream there are
    fewer than two epochs' worth of records; ``limit`` (two epochs plus the
    map's buffer) consecutive records without a datapoint therefore means
    that none of them is usable, and waiting longer would wait forever.
    :meth:`source` wraps the records' dataflow, :meth:`output` the map's.
    """

    def __init__(self, share, buffer_size, describe):
        self.limit = 2 * int(share) + int(buffer_size) + 1
        self.describe = describe  # -> the one-line reason
        self.since_output = 0

    def source(self, ds):
        return _Counted(ds, self._taken)

    def output(self, ds):
        return _Counted(ds, self._produced)

    def _taken(self):
        self.since_output += 1
        if self.since_output > self.limit:
            from ddcache.errors import UserError

            raise UserError(self.describe(self.since_output))

    def _produced(self):
        self.since_output = 0


class _Counted(ProxyDataFlow):
    def __init__(self, ds, on_item):
        super().__init__(ds)
        self._on_item = on_item

    def __iter__(self):
        for dp in self.ds:
            self._on_item()
            yield dp


def stop_map_workers(df):
    """Kill the map workers of ``df`` now (at the end of a run) and leave its ZMQ sockets alone.

    SIGKILL, not SIGTERM: the workers hold nothing worth a clean exit, and under
    ``ddtrain train`` they ignore SIGTERM (``trainer.train.watch_interrupts``: a
    scheduler's SIGTERM to the process group must not kill them mid-run).

    tensorpack's own clean-up (at exit or garbage collection) also destroys
    the ZMQ context, which is not safe while the feeding thread may still be
    blocked on a socket (always so after a worker died), and prints a line.
    Marking the map as not reset makes that clean-up a no-op.
    """
    node = df
    while node is not None:
        procs = getattr(node, "_procs", None)
        if procs:
            for proc in procs:
                if proc.exitcode is None:
                    proc.kill()
            for proc in procs:
                proc.join(timeout=5)
            node._reset_done = False
        node = getattr(node, "ds", None)


class FailureGuard(Callback):
    """Checks the loss after every step and ends the run at the end of the step in which a failure was recorded.

    Registered first among the run's callbacks, so no later callback of that
    step (checkpoint, evaluation) sees the broken state. The run ends through
    tensorpack's ``StopTraining``: quietly, without a traceback.
    """

    _chief_only = False

    def __init__(self, failure, loss_name="total_cost"):
        self.failure = failure
        self.loss_name = loss_name

    def _setup_graph(self):
        from trainer.console import find_tensor

        self._loss = find_tensor(self.loss_name)

    def _before_run(self, _):
        import tensorflow as tf

        return tf.compat.v1.train.SessionRunArgs(fetches=self._loss) if self._loss is not None else None

    def _after_run(self, run_context, run_values):
        if self._loss is None:
            return
        value = float(run_values.results)
        if not math.isfinite(value):
            # tensorpack's step counter (registered before us) has already counted this step
            self.failure.record(f"{self.loss_name} is {value} (a too-high TRAIN.BASE_LR, or a bad box)",
                                self.global_step)

    def _trigger_step(self):
        if self.failure:
            if self.failure.step is None:
                self.failure.step = self.global_step
            raise StopTraining(self.failure.reason)
