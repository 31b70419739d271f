"""Fine-tuning start: a tensorpack ``SessionInit`` that loads a weights file tolerantly (``trainer.weights``).

The decisions (what loads, what is skipped for another shape, what is
missing) are ``trainer.weights.match_weights``; this module only applies them
to a TensorFlow session and reports them.
"""
import numpy as np

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from tensorpack.tfutils.sessinit import SessionInit  # noqa: E402
from trainer.weights import match_weights, read_weights, resolve_weights


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
      values: the file's ``{name: array}`` if already read (pre-flight reads it), else read at init.
    After the session is initialised, :attr:`report` holds the :class:`LoadReport`.
    """

    def __init__(self, path, strip_training=True, echo=None, values=None):
        self.path = resolve_weights(path)
        self.values = values
        self.strip_training = strip_training
        self.echo = echo
        self.report = None

    def _run_init(self, sess):
        from tensorpack.utils import logger

        self.report = load_weights(sess, self.path, self.strip_training, values=self.values)
        self.values = None  # loaded into the session: the arrays need not stay in memory
        echo = self.echo or logger.info
        echo(f"weights {self.path}: " + "\n".join(self.report.lines()))
        for name, (have, want) in sorted(self.report.skipped.items()):
            logger.warn(f"not loaded (shape {tuple(have)} in file, {tuple(want)} in model): {name}")


def load_weights(sess, path, strip_training=True, values=None):
    """Load ``path`` (or its already read ``values``) into ``sess``'s graph now; returns the :class:`LoadReport`."""
    values = read_weights(path) if values is None else values
    assignments, report = match_weights(values, graph_variable_shapes(sess.graph), strip_training, source=path)
    with sess.graph.as_default():
        assign_to_session(sess, assignments)
    return report
