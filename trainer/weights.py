"""Tolerant weight loading for fine-tuning: match by variable name, skip what does not fit, say what happened.

Starting points are published tensorpack checkpoints, our own checkpoints or
``ddtrain export`` ``.npz`` files. All of them use the same variable names
(FACTS.md §4: ``conv0/W``, ``group0/block0/conv1/gn/gamma``, ...,
``cascade_rcnn_stage1/outputs/class/W``), so a name is the key. What makes
fine-tuning different from inference (``trainer.inference_export``, which is
strict): the new model may differ on purpose -- another number of classes
changes ``cascade_rcnn_stage{1,2,3}/outputs/class/{W,b}`` -- so a tensor
whose shape differs is *skipped with a warning* and keeps its fresh
initialisation, and variables the file does not have are *reported*, not
fatal.

Training-only extras of a checkpoint (``global_step``, ``learning_rate``,
``*/Momentum``, ``*/AccumGrad``, ...) must not be carried into a new run: the
step counter would start the LR schedule at the old step and stale momentum
would kick the first updates. ``strip_training=True`` drops them before
matching.
"""
from dataclasses import dataclass, field

import numpy as np

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from tensorpack.tfutils.sessinit import SessionInit  # noqa: E402
from trainer.inference_export import is_training_only, read_weights, resolve_weights


@dataclass
class LoadReport:
    """What :func:`match_weights` decided, by variable name (without ``:0``).

    Attributes:
      loaded: names assigned from the file.
      skipped: ``{name: (file shape, graph shape)}`` present in both, shapes differ.
      missing: model variables of the graph the file does not have (they keep
        their initialisation).
      unused: names in the file no graph variable has (after stripping).
      stripped: training-only names dropped from the file before matching.
    """

    loaded: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    unused: list = field(default_factory=list)
    stripped: list = field(default_factory=list)

    def summary(self):
        """One line of counts."""
        return (f"loaded {len(self.loaded)}, skipped {len(self.skipped)} (shape mismatch), "
                f"missing {len(self.missing)}, unused {len(self.unused)}, stripped {len(self.stripped)} training-only")

    def lines(self, limit=10):
        """Human-readable report: the summary, then every skipped tensor and the first missing / unused names."""
        out = [self.summary()]
        for name, (have, want) in sorted(self.skipped.items()):
            out.append(f"  skipped {name}: file {tuple(have)} vs model {tuple(want)}")
        for label, names in (("missing", self.missing), ("unused", self.unused)):
            for name in names[:limit]:
                out.append(f"  {label} {name}")
            if len(names) > limit:
                out.append(f"  ... and {len(names) - limit} more {label}")
        return out


def _is_tower_replica(name):
    """``tower1/conv0/W``: a replica SyncMultiGPUTrainerReplicated fills from tower 0 after init."""
    head = name.split("/", 1)[0]
    return head.startswith("tower") and head[5:].isdigit() and head != "tower0"


def match_weights(values, graph_variables, strip_training=True):
    """Decide which file tensors go into which graph variables.

    Args:
      values: ``{name: np.ndarray}`` from the weights file (``:0`` suffixes allowed).
      graph_variables: ``{name: shape tuple}`` of the graph's global variables.
      strip_training: drop training-only names (:func:`is_training_only`)
        from ``values`` first (recommended for a fine-tuning start point).
    Returns ``(assignments {name: array}, LoadReport)``. A graph variable that
    is training-only or a multi-GPU replica is never reported missing: the
    optimizer creates the former and the trainer copies the latter.
    """
    report = LoadReport()
    file_values = {}
    for name, value in values.items():
        name = name[:-2] if name.endswith(":0") else name
        if strip_training and is_training_only(name):
            report.stripped.append(name)
            continue
        file_values[name] = np.asarray(value)
    graph = {(n[:-2] if n.endswith(":0") else n): tuple(int(d) for d in s) for n, s in graph_variables.items()}
    assignments = {}
    for name, shape in graph.items():
        if name not in file_values:
            if not (is_training_only(name) or _is_tower_replica(name)):
                report.missing.append(name)
            continue
        value = file_values[name]
        if tuple(value.shape) != shape:
            report.skipped[name] = (tuple(value.shape), shape)
            continue
        assignments[name] = value
        report.loaded.append(name)
    report.unused = sorted(set(file_values) - set(graph))
    report.loaded.sort()
    report.missing.sort()
    report.stripped.sort()
    return assignments, report


def graph_variable_shapes(graph=None):
    """``{name: shape}`` of the global variables of ``graph`` (default graph if None)."""
    import tensorflow as tf

    graph = graph or tf.compat.v1.get_default_graph()
    with graph.as_default():
        return {v.op.name: tuple(v.shape.as_list()) for v in tf.compat.v1.global_variables()}


def assign_to_session(sess, assignments):
    """Write ``{name: array}`` into the session's variables in one ``run``.

    Feeds each variable's initializer input instead of creating assign ops,
    so it works on a finalized graph (tensorpack finalizes before training).
    """
    import tensorflow as tf

    by_name = {v.op.name: v for v in tf.compat.v1.global_variables()}
    ops, feed = [], {}
    for name, value in assignments.items():
        var = by_name[name]
        init = var.initializer
        ops.append(init)
        feed[init.inputs[1]] = np.asarray(value).astype(var.dtype.base_dtype.as_numpy_dtype, copy=False)
    if ops:
        sess.run(ops, feed_dict=feed)


class FineTuneInit(SessionInit):
    """tensorpack ``SessionInit`` that loads a weights file tolerantly (module docstring).

    Args:
      path: ``.npz``, checkpoint prefix (``model-5000``, its ``.index``) or a
        directory with a ``checkpoint`` file.
      strip_training: drop ``global_step``, ``learning_rate``, optimizer slots
        before matching.
      echo: callable for the report lines (default: tensorpack's logger).
    After the session is initialised, :attr:`report` holds the :class:`LoadReport`.
    """

    def __init__(self, path, strip_training=True, echo=None):
        self.path = resolve_weights(path)
        self.strip_training = strip_training
        self.echo = echo
        self.report = None

    def _run_init(self, sess):
        from tensorpack.utils import logger

        self.report = load_weights(sess, self.path, self.strip_training)
        echo = self.echo or logger.info
        echo(f"weights {self.path}: " + "\n".join(self.report.lines()))
        for name, (have, want) in sorted(self.report.skipped.items()):
            logger.warn(f"not loaded (shape {tuple(have)} in file, {tuple(want)} in model): {name}")


def load_weights(sess, path, strip_training=True):
    """Load ``path`` into ``sess``'s graph now; returns the :class:`LoadReport` (for scripts and tests)."""
    values = read_weights(path)
    assignments, report = match_weights(values, graph_variable_shapes(sess.graph), strip_training)
    with sess.graph.as_default():
        assign_to_session(sess, assignments)
    return report
