"""Convolution and fully-connected layers with tensorpack's variable layout.

Every layer lives in its own variable scope ``name`` and owns ``name/W``
(conv kernels HWIO ``[k, k, in/groups, out]``, whatever the data format, so
checkpoints trained NCHW load into NHWC graphs; fc ``[in, out]``) and, if
``use_bias``, ``name/b`` ``[out]``. ``data_format`` is ``"NHWC"`` or ``"NCHW"``.
Variables are created with ``tf.compat.v1.get_variable`` so they follow the
enclosing variable scopes (towers, reuse, custom getters that freeze).
"""
import tensorflow as tf

tf1 = tf.compat.v1


def channel_axis(data_format):
    """Axis of the channels in a 4-D tensor."""
    return 1 if data_format == "NCHW" else 3


def num_channels(x, data_format):
    """Static channel count of a 4-D tensor."""
    return int(x.shape[channel_axis(data_format)])


def he_normal_fan_out():
    """Backbone kernel initializer (MSRA fan-out, as the ImageNet-pretrained ResNets)."""
    return tf1.variance_scaling_initializer(scale=2.0, mode="fan_out", distribution="untruncated_normal")


def conv2d(name, x, out_channels, kernel, data_format, stride=1, groups=1, padding="SAME", use_bias=False,
           kernel_initializer=None, activation=None):
    """2-D convolution of ``x`` (4-D, ``data_format``) -> ``[.., out_channels, ..]``.

    ``groups`` > 1 is a grouped convolution (ResNeXt): input and output
    channels split into ``groups`` equal parts convolved separately.
    """
    in_channels = num_channels(x, data_format)
    assert in_channels % groups == 0 and out_channels % groups == 0, (name, in_channels, out_channels, groups)
    with tf1.variable_scope(name):
        w = tf1.get_variable("W", [kernel, kernel, in_channels // groups, out_channels],
                             initializer=kernel_initializer or he_normal_fan_out())
        strides = [1, 1, stride, stride] if data_format == "NCHW" else [1, stride, stride, 1]
        y = tf.nn.conv2d(x, w, strides, padding, data_format=data_format)
        if use_bias:
            b = tf1.get_variable("b", [out_channels], initializer=tf1.zeros_initializer())
            y = tf.nn.bias_add(y, b, data_format=data_format)
        if activation is not None:
            y = activation(y)
        return tf.identity(y, name="output")


def fully_connected(name, x, out_dim, kernel_initializer=None, activation=None):
    """``x [N, ...]`` flattened to ``[N, in]`` -> ``[N, out_dim]`` with ``name/W [in, out]`` and ``name/b``."""
    in_dim = 1
    for d in x.shape[1:]:
        in_dim *= int(d)
    x = tf.reshape(x, [-1, in_dim])
    with tf1.variable_scope(name):
        init = kernel_initializer or tf1.variance_scaling_initializer()
        w = tf1.get_variable("W", [in_dim, out_dim], initializer=init)
        b = tf1.get_variable("b", [out_dim], initializer=tf1.zeros_initializer())
        y = tf.nn.bias_add(tf.matmul(x, w), b)
        if activation is not None:
            y = activation(y)
        return tf.identity(y, name="output")
