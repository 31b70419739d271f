"""GroupNorm and frozen BatchNorm against numpy references, in both data formats, with tensorpack's variable names."""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from trainer.model.norm import EPSILON, frozen_batch_norm, group_norm

tf1 = tf.compat.v1


def numpy_group_norm_nhwc(x, groups, gamma, beta):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + EPSILON)).reshape(n, h, w, c) * gamma + beta


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
def test_group_norm_matches_numpy(data_format):
    rng = np.random.RandomState(0)
    x = rng.normal(3.0, 2.0, (2, 5, 6, 64)).astype(np.float32)
    x[1] *= 10  # statistics are per image: the second image must not affect the first
    gamma = rng.uniform(0.5, 2, 64).astype(np.float32)
    beta = rng.normal(0, 1, 64).astype(np.float32)
    expected = numpy_group_norm_nhwc(x.astype(np.float64), 32, gamma, beta)
    with tf.Graph().as_default(), tf1.Session() as sess:
        inp = tf.constant(x if data_format == "NHWC" else x.transpose(0, 3, 1, 2))
        with tf1.variable_scope("conv1"):
            y = group_norm("gn", inp, data_format, groups=32)
        names = sorted(v.op.name for v in tf1.global_variables())
        assert names == ["conv1/gn/beta", "conv1/gn/gamma"]
        sess.run(tf1.global_variables_initializer())
        tf1.get_variable_scope().reuse_variables()
        sess.run([tf1.assign(tf1.get_variable("conv1/gn/gamma"), gamma), tf1.assign(tf1.get_variable("conv1/gn/beta"), beta)])
        out = sess.run(y)
    if data_format == "NCHW":
        out = out.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_group_norm_groups_the_same_channels_in_both_layouts_bit_for_bit():
    """Group g is channels [g * C/G, (g + 1) * C/G) in both layouts, and NHWC computes exactly what NCHW does
    (the published checkpoints were trained NCHW; a different summation order cost ~2e-3 per layer)."""
    rng = np.random.RandomState(2)
    x = rng.normal(5.0, 3.0, (1, 40, 56, 64)).astype(np.float32)
    x[..., :2] += 100.0  # group 0 only: a grouping error shows up as wrongly normalised channels
    outs = {}
    for data_format in ("NHWC", "NCHW"):
        with tf.Graph().as_default(), tf1.Session() as sess:
            inp = tf.constant(x if data_format == "NHWC" else x.transpose(0, 3, 1, 2))
            y = group_norm("gn", inp, data_format, groups=32)
            sess.run(tf1.global_variables_initializer())
            out = sess.run(y)
        outs[data_format] = out if data_format == "NHWC" else out.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(outs["NHWC"], outs["NCHW"])
    expected = numpy_group_norm_nhwc(x.astype(np.float64), 32, np.ones(64), np.zeros(64))
    assert np.abs(outs["NHWC"] - expected).max() < 1e-5


def test_group_norm_zero_init_gamma_outputs_beta():
    with tf.Graph().as_default(), tf1.Session() as sess:
        y = group_norm("gn", tf.random.normal([1, 4, 4, 32]), "NHWC", zero_init=True)
        sess.run(tf1.global_variables_initializer())
        np.testing.assert_array_equal(sess.run(y), np.zeros((1, 4, 4, 32), np.float32))


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
def test_frozen_batch_norm_uses_stored_statistics(data_format):
    rng = np.random.RandomState(1)
    x = rng.normal(0, 1, (1, 3, 4, 8)).astype(np.float32)
    stats = {n: rng.uniform(0.5, 2, 8).astype(np.float32) for n in ("gamma", "beta", "mean/EMA", "variance/EMA")}
    expected = stats["gamma"] * (x - stats["mean/EMA"]) / np.sqrt(stats["variance/EMA"] + EPSILON) + stats["beta"]
    with tf.Graph().as_default(), tf1.Session() as sess:
        y = frozen_batch_norm("bn", tf.constant(x if data_format == "NHWC" else x.transpose(0, 3, 1, 2)), data_format)
        variables = {v.op.name: v for v in tf1.global_variables()}
        assert sorted(variables) == ["bn/beta", "bn/gamma", "bn/mean/EMA", "bn/variance/EMA"]
        assert sorted(v.op.name for v in tf1.trainable_variables()) == ["bn/beta", "bn/gamma"]
        sess.run([tf1.assign(variables["bn/" + k], v) for k, v in stats.items()])
        out = sess.run(y)
    if data_format == "NCHW":
        out = out.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
