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
    """GroupNorm: normalise each group of ``C / groups`` consecutive channels over (channels, H, W) per image.

    Variables ``name/gamma``, ``name/beta`` of shape ``[C]``; ``zero_init``
    starts gamma at 0 (last norm of a residual block: the block starts as identity).

    Computed as the reference computes it (tensorpack's ``GroupNorm``): the
    tensor viewed as ``[N, G, C/G, H, W]``, ``tf.nn.moments`` over the last
    three axes, then ``tf.nn.batch_normalization``. An NHWC input is transposed
    to that layout and back: taking the moments over the non-contiguous axes
    of ``[N, H, W, G, C/G]`` groups the same channels but sums them in another
    order, which on CPU lost ~2e-3 relative precision per layer.
    """
    c = num_channels(x, data_format)
    assert c % groups == 0, f"{name}: {c} channels not divisible into {groups} groups"
    if data_format == "NHWC":
        x = tf.transpose(x, [0, 3, 1, 2])
    shape = tf.shape(x)
    grouped = tf.reshape(x, tf.stack([-1, groups, c // groups, shape[2], shape[3]]))
    mean, var = tf.nn.moments(grouped, [2, 3, 4], keepdims=True)
    param_shape = [1, groups, c // groups, 1, 1]
    with tf1.variable_scope(name):
        gamma = tf1.get_variable("gamma", [c], initializer=_gamma_init(zero_init))
        beta = tf1.get_variable("beta", [c], initializer=tf1.zeros_initializer())
    out = tf.nn.batch_normalization(grouped, mean, var, tf.reshape(beta, param_shape), tf.reshape(gamma, param_shape),
                                    EPSILON)
    out = tf.reshape(out, shape)
    if data_format == "NHWC":
        out = tf.transpose(out, [0, 2, 3, 1])
    return tf.identity(out, name=name + "_output")


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

