"""Multilevel RoIAlign: boxes -> ``[N, C, S, S]`` features pooled from the FPN level that fits each box.

A box of side ``sqrt(w*h)`` goes to level ``floor(4 + log2(side / 224))``
clipped to P2..P5 (the FPN paper's rule). RoIAlign samples a 2S x 2S grid of
bilinear points at bin centres (pixel centres at +0.5) and averages each
2x2, via ``tf.image.crop_and_resize``. The output is channels-first whatever
the graph's data format, because the published fc6 weights expect the
(C, S, S) flattening order.
"""
import numpy as np
import tensorflow as tf

from trainer.model import box_ops

CANONICAL_SIZE = 224.0
CANONICAL_LEVEL = 4


def assign_levels(boxes, min_level=2, max_level=5):
    """FPN level ``[N]`` int32 of each box ``[N, 4]`` (the reference's expression, so boundary boxes agree)."""
    side = tf.sqrt(box_ops.area(boxes))
    level = tf.cast(tf.floor(CANONICAL_LEVEL + tf.math.log(side * (1.0 / CANONICAL_SIZE) + 1e-6) * (1.0 / np.log(2))),
                    tf.int32)
    return tf.clip_by_value(level, min_level, max_level)


def roi_align(feature_nhwc, boxes, stride, size):
    """RoIAlign of ``boxes [N, 4]`` (image pixels) on one map ``[1, h, w, C]`` of ``stride`` -> ``[N, S, S, C]``."""
    boxes = boxes * (1.0 / stride)
    # replicate the border so points a half pixel outside interpolate like a clamped border
    feature = tf.pad(feature_nhwc, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    boxes = boxes + 1.0
    crop = 2 * size
    x0, y0, x1, y1 = tf.unstack(boxes, 4, axis=1)
    bin_w, bin_h = (x1 - x0) / crop, (y1 - y0) / crop
    shape = tf.cast(tf.shape(feature)[1:3], tf.float32)
    h1, w1 = shape[0] - 1.0, shape[1] - 1.0
    # crop_and_resize samples at y0n*(h-1) + i*(y1n-y0n)*(h-1)/(crop-1): place sample i at the i-th bin centre
    ny0 = (y0 + 0.5 * bin_h - 0.5) / h1
    nx0 = (x0 + 0.5 * bin_w - 0.5) / w1
    ny1 = ny0 + bin_h * (crop - 1) / h1
    nx1 = nx0 + bin_w * (crop - 1) / w1
    norm_boxes = tf.stop_gradient(tf.stack([ny0, nx0, ny1, nx1], axis=1))
    sampled = tf.image.crop_and_resize(feature, norm_boxes, tf.zeros_like(x0, tf.int32), [crop, crop])
    return tf.nn.avg_pool2d(sampled, 2, 2, "VALID")


def multilevel_roi_align(features, strides, boxes, data_format, size=7):
    """Pool ``boxes [N, 4]`` from ``features`` (P2..P5, 4-D ``data_format``) -> ``[N, C, size, size]``."""
    with tf.name_scope("multilevel_roi_align"):
        levels = assign_levels(boxes, 2, 1 + len(features))
        pooled, order = [], []
        for i, (feature, stride) in enumerate(zip(features, strides)):
            idx = tf.reshape(tf.where(tf.equal(levels, i + 2)), [-1])
            if data_format == "NCHW":
                feature = tf.transpose(feature, [0, 2, 3, 1])
            pooled.append(roi_align(feature, tf.gather(boxes, idx), stride, size))
            order.append(idx)
        pooled = tf.concat(pooled, axis=0)
        # back to the order of the input boxes
        pooled = tf.gather(pooled, tf.math.invert_permutation(tf.cast(tf.concat(order, axis=0), tf.int32)))
        return tf.transpose(pooled, [0, 3, 1, 2])
