"""What a training run prints: one compact line every N steps, and quiet libraries.

The full record of a run is in its log dir (``log.log``: tensorpack's log with
the variable table and per-epoch statistics; ``config.yaml``; TensorBoard
events; ``stats.json``). The console gets only what a person watching needs:

    step 40/400  total 3.611  rpn_label 0.692  rpn_box 0.646 ...  lr 1.88e-03  3.4 img/s  ETA 1m42s

Library noise is filtered unless ``ddtrain -v`` is given: tensorpack's
console handler is raised to WARNING (its file handler keeps everything),
and TensorFlow's C++ log lines (``I0000 00:00:... port.cc:153] ...``), which
TensorFlow 2.21 writes straight to file descriptor 2 before its own logging
is set up (so ``TF_CPP_MIN_LOG_LEVEL`` does not hide them), are dropped by a
filter on that descriptor.
"""
import math
import os
import re
import sys
import threading

# absl / TF C++ log line: severity letter, MMDD, time (TF 2.21 before its log init: 00:00:<epoch s>),
# thread id, file:line]
NATIVE_LOG_LINE = re.compile(rb"^[IWEF]\d{4} [\d:.]+\s+\d+ [^\s:\]]+:\d+\] ")
NATIVE_LOG_NOTICES = (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",)
# tensorpack's and TensorFlow's Python loggers: INFO goes to the log file only
QUIET_LOGGERS = ("tensorpack", "tensorflow")


def is_native_log_line(line):
    """True for a line (bytes) that TensorFlow's C++ runtime logs (or the absl notice that precedes them)."""
    return bool(NATIVE_LOG_LINE.match(line)) or line.rstrip(b"\r\n") in NATIVE_LOG_NOTICES


_native_filter_installed = False
_FLUSH_MARK = b"\x00ddtrain-native-log-filter-flush\x00"


def quiet_native_logs():
    """Drop TensorFlow's C++ log lines from file descriptor 2; everything else still reaches the terminal.

    fd 2 becomes a pipe read by a daemon thread that forwards every other
    line to the original stderr. Python's ``sys.stderr`` is re-pointed at the
    original descriptor directly, so what this program writes itself (errors,
    the Ctrl-C notice before ``os._exit``) never waits in the pipe. At exit,
    fd 2 is restored and a mark written behind the last line; the thread
    forwards everything before the mark, so no line is lost. Call before
    TensorFlow is imported; idempotent.
    """
    import atexit

    global _native_filter_installed
    if _native_filter_installed:
        return
    _native_filter_installed = True
    sys.stderr.flush()
    original = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    sys.stderr = os.fdopen(os.dup(original), "w", buffering=1, encoding=sys.stderr.encoding,
                           errors=sys.stderr.errors)

    def forward():
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            pending = b""
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                last = b""
                done = next((i for i, line in enumerate(lines) if line.endswith(_FLUSH_MARK)), None)
                if done is not None:  # what precedes the mark on its line is a last line without a newline
                    last, lines = lines[done][:-len(_FLUSH_MARK)], lines[:done]
                kept = [line + b"\n" for line in lines if not is_native_log_line(line)]
                if last and not is_native_log_line(last):
                    kept.append(last)
                if kept:
                    os.write(original, b"".join(kept))
                if done is not None:
                    return

    # A forked child keeps writing into the pipe; only this process reads it.
    thread = threading.Thread(target=forward, name="native-log-filter", daemon=True)
    thread.start()

    def flush_at_exit():
        os.dup2(original, 2)  # from here on fd 2 is the terminal again
        os.write(write_fd, _FLUSH_MARK + b"\n")
        thread.join(timeout=5)  # a safety net only: the thread returns at the mark

    atexit.register(flush_at_exit)


def quiet_library_loggers(verbose=False):
    """tensorpack's / TensorFlow's Python loggers: WARNING and up on the console, unless ``verbose``.

    tensorpack's file handler (``log.log`` in the log dir) is not touched and
    keeps every INFO line. Also repairs one tensorpack log call that logging
    cannot format (``logger.error("Training failed at global_step=", step)``,
    which printed a ``TypeError: not all arguments converted`` traceback).
    """
    import logging

    from tensorpack.utils import logger as tp_logger

    tp = tp_logger._logger
    for handler in tp.handlers:
        if type(handler) is logging.StreamHandler:
            handler.setLevel(logging.INFO if verbose else logging.WARNING)
            if not verbose and not any(isinstance(f, _KnownNoise) for f in handler.filters):
                handler.addFilter(_KnownNoise())
    if not any(isinstance(f, _ArgsWithoutPlaceholder) for f in tp.filters):
        tp.addFilter(_ArgsWithoutPlaceholder())
    if not verbose:
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


class _KnownNoise:
    """Console filter for tensorpack warnings that do not apply here (they stay in ``log.log``).

    * forking map workers "may cause deadlock": the workers are forked before
      they touch TensorFlow and receive records over ZMQ only;
    * ``python-prctl`` missing: ``ddcache.map_workers.LosslessMapDataZMQ`` sets
      ``PR_SET_PDEATHSIG`` itself.
    """

    FRAGMENTS = ("Starting a process with 'fork' method", '"import prctl" failed')

    def filter(self, record):
        message = str(record.msg)
        return not any(f in message for f in self.FRAGMENTS)


class _ArgsWithoutPlaceholder:
    """logging filter: a record with arguments but no ``%`` in its message gets them appended instead."""

    def filter(self, record):
        if record.args and "%" not in str(record.msg):
            record.msg = f"{record.msg}{' '.join(map(str, record.args))}"
            record.args = ()
        return True


# ---------------------------------------------------------------- the progress line


def format_duration(seconds):
    """``'45s'``, ``'12m05s'``, ``'3h07m'`` (a rough figure: no more than two units)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def display_names(op_names):
    """Short, unique names for loss tensors: ``rpn_losses/rpn_label_loss`` -> ``rpn_label``,
    ``cascade_loss_stage1/label_loss`` -> ``stage1_label``, ``wd_cost`` -> ``wd``.

    The leaf name without ``_loss`` / ``_cost``; where two leaves are equal,
    the last ``_``-separated word of their scope is put in front.
    """
    def leaf(name):
        base = name.split("/")[-1]
        for suffix in ("_loss", "_cost"):
            if base.endswith(suffix) and len(base) > len(suffix):
                return base[: -len(suffix)]
        return base

    leaves = [leaf(n) for n in op_names]
    out = []
    for name, short in zip(op_names, leaves):
        parts = name.split("/")
        if leaves.count(short) > 1 and len(parts) > 1:
            short = f"{parts[-2].split('_')[-1]}_{short}"
        out.append(short)
    return out


def _number(value):
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.3g}"


def format_progress(step, last_step, losses, lr=None, images_per_s=None, eta_s=None):
    """The console line for global ``step`` of ``last_step``.

    ``losses``: ``[(short name, value)]`` (the total first); ``lr``: the
    learning rate used by the step; ``images_per_s``; ``eta_s``: seconds
    until ``last_step``.
    """
    width = len(str(last_step))
    parts = [f"step {step:>{width}}/{last_step}"]
    parts += [f"{name} {_number(value)}" for name, value in losses]
    if lr is not None:
        parts.append(f"lr {lr:.2e}")
    if images_per_s is not None:
        parts.append(f"{images_per_s:.2f} img/s" if images_per_s < 10 else f"{images_per_s:.1f} img/s")
    if eta_s is not None:
        parts.append(f"ETA {format_duration(eta_s)}")
    return "  ".join(parts)


def find_tensor(name, graph=None):
    """The first tower's tensor or variable ``name`` (``total_cost``, ``learning_rate``), or None.

    SimpleTrainer builds its tower without a prefix, the replicated trainer
    as ``tower0/...``. A variable is returned as the variable (fetching it
    gives its value; its op's output would be a resource handle).
    """
    import tensorflow as tf

    graph = graph or tf.compat.v1.get_default_graph()
    candidates = (name, f"tower0/{name}")
    with graph.as_default():
        for var in tf.compat.v1.global_variables():
            if var.op.name in candidates:
                return var
    for candidate in candidates:
        try:
            op = graph.get_operation_by_name(candidate)
        except KeyError:
            continue
        return op.outputs[0]
    return None


def loss_terms(total):
    """The tensors summed into ``total`` (an ``AddN``), or ``[]``."""
    if total is None or total.op.type != "AddN":
        return []
    return list(total.op.inputs)


def op_name(tensor):
    name = tensor.op.name
    return name[len("tower0/"):] if name.startswith("tower0/") else name
