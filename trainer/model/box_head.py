"""Fast R-CNN box head: ``fastrcnn_2fc_head``, class / class-agnostic box outputs, and their losses.

Input: pooled features ``[N, C, 7, 7]`` (channels-first, see ``poolers``).
Variables (inside the caller's stage scope): ``head/fc6/{W,b}``,
``head/fc7/{W,b}`` (``FPN.FC_HEAD_DIM`` wide, ReLU), ``outputs/class/{W,b}``
(``num_classes`` logits, background = 0), ``outputs/box/{W,b}`` (4 deltas,
class-agnostic, in the stage's ``BBOX_REG_WEIGHTS`` units).
"""
import tensorflow as tf

from trainer.model import box_ops
from trainer.model.layers import fully_connected

tf1 = tf.compat.v1


def fastrcnn_2fc_head(pooled, dim):
    """``[N, C, S, S]`` -> ``[N, dim]`` through two ReLU fully-connected layers (scope ``head``)."""
    with tf1.variable_scope("head"):
        x = fully_connected("fc6", pooled, dim, activation=tf.nn.relu)
        return fully_connected("fc7", x, dim, activation=tf.nn.relu)


def fastrcnn_outputs(feature, num_classes):
    """``[N, D]`` -> (class logits ``[N, num_classes]``, box deltas ``[N, 4]``) (scope ``outputs``).

    Small initial weights: the first predictions are near-uniform scores and near-zero deltas.
    """
    with tf1.variable_scope("outputs"):
        normal = tf1.random_normal_initializer
        logits = fully_connected("class", feature, num_classes, kernel_initializer=normal(stddev=0.01))
        deltas = fully_connected("box", feature, 4, kernel_initializer=normal(stddev=0.001))
    return logits, deltas


def fastrcnn_losses(boxes, labels, matched_gt_boxes, label_logits, box_deltas, reg_weights):
    """Softmax classification loss (mean) and L1 box loss (sum over fg / number of boxes).

    Args:
      boxes: ``[N, 4]`` the stage's input boxes; ``labels`` int64 ``[N]`` (0 = bg).
      matched_gt_boxes: ``[N, 4]`` gt box of each box (used where ``labels > 0``).
      label_logits ``[N, K+1]``, box_deltas ``[N, 4]``: the stage's outputs.
      reg_weights: the stage's ``(wx, wy, ww, wh)``.
    Returns:
      (label_loss, box_loss, accuracy, num_fg).
    """
    label_loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=label_logits))
    fg = labels > 0
    targets = box_ops.encode(tf.boolean_mask(matched_gt_boxes, fg), tf.boolean_mask(boxes, fg), reg_weights)
    box_loss = tf.reduce_sum(tf.abs(tf.boolean_mask(box_deltas, fg) - targets))
    box_loss = box_loss / tf.cast(tf.maximum(tf.size(labels), 1), tf.float32)
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(label_logits, axis=1), labels), tf.float32))
    num_fg = tf.reduce_sum(tf.cast(fg, tf.int32))
    return (tf.identity(label_loss, name="label_loss"), tf.identity(box_loss, name="box_loss"),
            tf.identity(accuracy, name="accuracy"), tf.identity(num_fg, name="num_fg"))
