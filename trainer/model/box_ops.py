"""Box arithmetic in the graph: areas, pairwise IoU, regression encoding/decoding, clipping.

Boxes are float32 ``[N, 4]`` xyxy in image pixels (origin top-left, width =
x1 - x0, no +1). Regression deltas are ``(dx, dy, dw, dh)`` of the centre and
log-size, multiplied by per-coordinate weights ``(wx, wy, ww, wh)`` (the
R-CNN convention: ``dx = wx * (gx - ax) / aw``, ``dw = ww * log(gw / aw)``).
"""
import math

import tensorflow as tf

# Largest log-scale a decoded box may grow by (detectron's 1000/16): keeps exp() finite.
SCALE_CLAMP = math.log(1000.0 / 16)


def area(boxes):
    """Areas ``[N]`` of boxes ``[N, 4]`` xyxy (pixels²); degenerate boxes may give <= 0."""
    x0, y0, x1, y1 = tf.unstack(boxes, 4, axis=1)
    return (x1 - x0) * (y1 - y0)


def pairwise_iou(a, b):
    """IoU matrix ``[N, M]`` between boxes ``a [N, 4]`` and ``b [M, 4]`` (xyxy).

    Pairs whose union is empty (two zero-area boxes) get IoU 0, not NaN.
    """
    ax0, ay0, ax1, ay1 = tf.split(a, 4, axis=1)  # [N, 1] each
    bx0, by0, bx1, by1 = tf.unstack(b, 4, axis=1)  # [M] each
    iw = tf.maximum(0.0, tf.minimum(ax1, bx1) - tf.maximum(ax0, bx0))
    ih = tf.maximum(0.0, tf.minimum(ay1, by1) - tf.maximum(ay0, by0))
    inter = iw * ih
    union = area(a)[:, None] + area(b)[None, :] - inter
    return tf.where(union > 0, inter / tf.maximum(union, 1e-12), tf.zeros_like(inter))


def _centre_size(boxes):
    x0, y0, x1, y1 = tf.unstack(boxes, 4, axis=-1)
    w, h = x1 - x0, y1 - y0
    return x0 + 0.5 * w, y0 + 0.5 * h, w, h


def encode(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Regression targets ``[..., 4]`` that move ``anchors [..., 4]`` onto ``boxes [..., 4]``.

    Both xyxy pixels; the anchors must have positive sizes. ``weights`` scales
    ``(dx, dy, dw, dh)``.
    """
    ax, ay, aw, ah = _centre_size(anchors)
    gx, gy, gw, gh = _centre_size(boxes)
    wx, wy, ww, wh = [float(w) for w in weights]
    deltas = [wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * tf.math.log(gw / aw), wh * tf.math.log(gh / ah)]
    return tf.stack(deltas, axis=-1)


def decode(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Boxes ``[..., 4]`` xyxy from regression ``deltas [..., 4]`` applied to ``anchors [..., 4]``.

    Inverse of :func:`encode` with the same ``weights``; ``dw, dh`` are clamped
    at ``SCALE_CLAMP`` so an untrained head cannot produce infinite boxes.
    """
    ax, ay, aw, ah = _centre_size(anchors)
    dx, dy, dw, dh = tf.unstack(deltas, 4, axis=-1)
    wx, wy, ww, wh = [float(w) for w in weights]
    cx = dx / wx * aw + ax
    cy = dy / wy * ah + ay
    w = tf.exp(tf.minimum(dw / ww, SCALE_CLAMP)) * aw
    h = tf.exp(tf.minimum(dh / wh, SCALE_CLAMP)) * ah
    return tf.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def clip(boxes, image_hw):
    """Boxes ``[..., 4]`` clipped to an image of (height, width) ``image_hw`` (int or float tensor [2])."""
    hw = tf.cast(image_hw, tf.float32)
    x0, y0, x1, y1 = tf.unstack(boxes, 4, axis=-1)
    x0 = tf.clip_by_value(x0, 0.0, hw[1])
    x1 = tf.clip_by_value(x1, 0.0, hw[1])
    y0 = tf.clip_by_value(y0, 0.0, hw[0])
    y1 = tf.clip_by_value(y1, 0.0, hw[0])
    return tf.stack([x0, y0, x1, y1], axis=-1)
