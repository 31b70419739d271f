"""Normalisation layers with tensorpack's variable names: GroupNorm ``gn/*`` and frozen BatchNorm ``bn/*``.

Inputs are 4-D tensors in ``data_format`` (``"NHWC"`` / ``"NCHW"``); outputs
have the same shape. Statistics of GroupNorm are per image and group (so
batch size 1 is fine); frozen BatchNorm applies stored ImageNet statistics.
"""
import tensorflow as tf

from trainer.model.layers import num_channels

tf1 = tf.compat.v1

EPSILON = 1e-5


def _gamma_init(zero_init):
    return tf1.zeros_initializer() if zero_init else tf1.ones_initializer()


def group_norm(name, x, data_format, groups=32, zero_init=False):
    """GroupNorm: normalise each group of ``C / groups`` channels over (channels, H, W) per image.

    Variables ``name/gamma``, ``name/beta`` of shape ``[C]``; ``zero_init``
    starts gamma at 0 (last norm of a residual block: the block starts as identity).
    """
    c = num_channels(x, data_format)
    assert c % groups == 0, f"{name}: {c} channels not divisible into {groups} groups"
    shape = tf.shape(x)
    if data_format == "NCHW":
        grouped = tf.reshape(x, [shape[0], groups, c // groups, shape[2], shape[3]])
        axes, param_shape = [2, 3, 4], [1, groups, c // groups, 1, 1]
    else:
        grouped = tf.reshape(x, [shape[0], shape[1], shape[2], groups, c // groups])
        axes, param_shape = [1, 2, 4], [1, 1, 1, groups, c // groups]
    mean, var = tf.nn.moments(grouped, axes, keepdims=True)
    normed = (grouped - mean) * tf.math.rsqrt(var + EPSILON)
    with tf1.variable_scope(name):
        gamma = tf1.get_variable("gamma", [c], initializer=_gamma_init(zero_init))
        beta = tf1.get_variable("beta", [c], initializer=tf1.zeros_initializer())
    out = normed * tf.reshape(gamma, param_shape) + tf.reshape(beta, param_shape)
    return tf.reshape(out, shape, name=name + "_output")


def frozen_batch_norm(name, x, data_format, zero_init=False):
    """BatchNorm with fixed statistics: ``gamma * (x - mean) / sqrt(variance + eps) + beta``.

    Variables ``name/gamma``, ``name/beta`` (trainable unless frozen by the
    caller's scope) and ``name/mean/EMA``, ``name/variance/EMA`` (never
    trained, never updated: batch statistics of one table image are useless).
    """
    c = num_channels(x, data_format)
    with tf1.variable_scope(name):
        gamma = tf1.get_variable("gamma", [c], initializer=_gamma_init(zero_init))
        beta = tf1.get_variable("beta", [c], initializer=tf1.zeros_initializer())
        mean = tf1.get_variable("mean/EMA", [c], initializer=tf1.zeros_initializer(), trainable=False)
        variance = tf1.get_variable("variance/EMA", [c], initializer=tf1.ones_initializer(), trainable=False)
    scale = gamma * tf.math.rsqrt(variance + EPSILON)
    shift = beta - mean * scale
    shape = [1, c, 1, 1] if data_format == "NCHW" else [1, 1, 1, c]
    return tf.add(x * tf.reshape(scale, shape), tf.reshape(shift, shape), name=name + "_output")


def normalize(kind, x, data_format, zero_init=False):
    """The norm chosen by a config value: ``"GN"`` -> ``gn/*``, ``"FreezeBN"`` -> ``bn/*``, ``"None"`` -> x."""
    if kind == "GN":
        return group_norm("gn", x, data_format, zero_init=zero_init)
    if kind == "FreezeBN":
        return frozen_batch_norm("bn", x, data_format, zero_init=zero_init)
    if kind == "None":
        return x
    raise ValueError(f"unknown norm {kind!r}")

