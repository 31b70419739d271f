"""Feature pyramid: C2-C5 -> P2-P6 (strides 4..64), ``FPN.NUM_CHANNEL`` channels each.

Top-down: 1x1 lateral convs (+ GN if ``FPN.NORM == "GN"``), nearest 2x
upsampling and sums, then 3x3 post-hoc convs (+ GN); P6 is a stride-2
subsampling of P5 (1x1 max-pool, 'VALID': size ceil(P5 / 2)). Variables
``fpn/lateral_1x1_c{2-5}/W``, ``fpn/gn_c{2-5}/*``, ``fpn/posthoc_3x3_p{2-5}/W``,
``fpn/gn_p{2-5}/*``; the convolutions have a bias ``.../b`` only without GN
(a bias before a norm is cancelled by it; the published checkpoints have none). The input must come
from an image padded to a multiple of 32 so every upsampled map matches the
lateral one.
"""
import tensorflow as tf

from trainer.model.layers import conv2d
from trainer.model.norm import group_norm

tf1 = tf.compat.v1


def _upsample2x(x, data_format):
    h_axis, w_axis = (2, 3) if data_format == "NCHW" else (1, 2)
    return tf.repeat(tf.repeat(x, 2, axis=h_axis), 2, axis=w_axis)


def fpn(features, num_channel, norm, data_format):
    """``[C2, C3, C4, C5]`` -> ``[P2, P3, P4, P5, P6]`` (4-D, ``data_format``)."""
    init = tf1.variance_scaling_initializer(scale=1.0)
    use_gn = norm == "GN"
    with tf1.variable_scope("fpn"):
        laterals = []
        for lvl, c in enumerate(features, start=2):
            x = conv2d(f"lateral_1x1_c{lvl}", c, num_channel, 1, data_format, use_bias=not use_gn,
                       kernel_initializer=init)
            if use_gn:
                x = group_norm(f"gn_c{lvl}", x, data_format)
            laterals.append(x)
        merged = [laterals[-1]]
        for lat in reversed(laterals[:-1]):
            merged.append(lat + _upsample2x(merged[-1], data_format))
        outputs = []
        for lvl, x in enumerate(reversed(merged), start=2):
            x = conv2d(f"posthoc_3x3_p{lvl}", x, num_channel, 3, data_format, use_bias=not use_gn,
                       kernel_initializer=init)
            if use_gn:
                x = group_norm(f"gn_p{lvl}", x, data_format)
            outputs.append(x)
        p6 = tf.nn.max_pool2d(outputs[-1], 1, 2, "VALID", data_format=data_format, name="maxpool_p6")
        return outputs + [p6]
