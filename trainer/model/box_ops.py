"""Box arithmetic in the graph: areas, pairwise IoU, regression encoding/decoding, clipping.

Boxes are float32 ``[N, 4]`` xyxy in image pixels (origin top-left, width =
x1 - x0, no +1). Regression deltas are ``(dx, dy, dw, dh)`` of the centre and
log-size, multiplied by per-coordinate weights ``(wx, wy, ww, wh)`` (the
R-CNN convention: ``dx = wx * (gx - ax) / aw``, ``dw = ww * log(gw / aw)``).

Every expression is written operand for operand as the reference computes it
(tensorpack's ``model_box`` / ``box_ops``: centres as ``(x0 + x1) * 0.5``,
weights applied to the deltas as a whole, IoU zero where the intersection is),
so float32 results agree bit for bit, not just to rounding.
"""
import math

import tensorflow as tf


def scale_clamp(max_size):
    """Largest log-scale a decoded box may grow by: ``log(MAX_SIZE / 16)`` (the reference's clamp).

    ``max_size`` is ``PREPROC.MAX_SIZE`` rounded up to the resolution
    requirement (``trainer.anchors.rounded_max_size``); it keeps ``exp()``
    finite for an untrained head.
    """
    return math.log(float(max_size) / 16.0)


def area(boxes):
    """Areas ``[N]`` of boxes ``[N, 4]`` xyxy (pixels²); degenerate boxes may give <= 0."""
    x0, y0, x1, y1 = tf.split(boxes, 4, axis=1)
    return tf.squeeze((y1 - y0) * (x1 - x0), [1])


def pairwise_iou(a, b):
    """IoU matrix ``[N, M]`` between boxes ``a [N, 4]`` and ``b [M, 4]`` (xyxy); 0 where they do not intersect."""
    ax0, ay0, ax1, ay1 = tf.split(a, 4, axis=1)  # [N, 1] each
    bx0, by0, bx1, by1 = tf.split(b, 4, axis=1)  # [M, 1] each
    ih = tf.maximum(0.0, tf.minimum(ay1, tf.transpose(by1)) - tf.maximum(ay0, tf.transpose(by0)))
    iw = tf.maximum(0.0, tf.minimum(ax1, tf.transpose(bx1)) - tf.maximum(ax0, tf.transpose(bx0)))
    inter = ih * iw
    union = tf.expand_dims(area(a), 1) + tf.expand_dims(area(b), 0) - inter
    return tf.where(tf.equal(inter, 0.0), tf.zeros_like(inter), tf.truediv(inter, union))


def _corners_to_centre_size(boxes):
    """``[..., 4]`` xyxy -> (centre ``[K, 1, 2]``, size ``[K, 1, 2]``) with the reference's operations."""
    pairs = tf.reshape(boxes, (-1, 2, 2))
    lo, hi = tf.split(pairs, 2, axis=1)
    return (hi + lo) * 0.5, hi - lo


def encode(boxes, anchors, weights=None):
    """Regression targets ``[..., 4]`` that move ``anchors [..., 4]`` onto ``boxes [..., 4]``.

    Both xyxy pixels; the anchors must have positive sizes. ``weights``
    (``(wx, wy, ww, wh)``, None = 1) multiplies the deltas.
    """
    a_centre, a_size = _corners_to_centre_size(anchors)
    b_centre, b_size = _corners_to_centre_size(boxes)
    deltas = tf.concat([(b_centre - a_centre) / a_size, tf.math.log(b_size / a_size)], axis=1)
    deltas = tf.reshape(deltas, tf.shape(boxes))
    if weights is not None:
        deltas = deltas * tf.constant([float(w) for w in weights], tf.float32)
    return deltas


def decode(deltas, anchors, clamp, weights=None):
    """Boxes ``[..., 4]`` xyxy from regression ``deltas [..., 4]`` applied to ``anchors [..., 4]``.

    Inverse of :func:`encode` with the same ``weights`` (the deltas are
    divided by them first); ``dw, dh`` are clamped at ``clamp``
    (:func:`scale_clamp`).
    """
    if weights is not None:
        deltas = deltas / tf.constant([float(w) for w in weights], tf.float32)
    shape = tf.shape(anchors)
    d = tf.reshape(deltas, (-1, 2, 2))
    d_centre, d_size = tf.split(d, 2, axis=1)
    a_centre, a_size = _corners_to_centre_size(anchors)
    size = tf.exp(tf.minimum(d_size, clamp)) * a_size
    centre = d_centre * a_size + a_centre
    out = tf.concat([centre - size * 0.5, centre + size * 0.5], axis=-2)
    return tf.reshape(out, shape)


def clip(boxes, image_hw):
    """Boxes ``[..., 4]`` clipped to an image of (height, width) ``image_hw`` (int tensor [2])."""
    boxes = tf.maximum(boxes, 0.0)
    limit = tf.tile(tf.reverse(image_hw, [0]), [2])  # (w, h, w, h)
    return tf.minimum(boxes, tf.cast(limit, tf.float32))
