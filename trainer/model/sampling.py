"""Proposal <-> ground-truth matching and foreground/background sampling, in the graph.

Boxes xyxy pixels. Ground truth: ``gt_boxes [G, 4]``, ``gt_labels`` int64
``[G]`` in 1..K; G may be 0 (a page without objects: everything is
background). A match result is ``(labels [N] int64, gt_index [N] int64)``:
label 0 = background; for foreground boxes ``gt_index`` is the row of their
gt box (for background rows it is meaningless but in range of
:func:`padded_gt`). The rules are the reference's (tensorpack's
``sample_fast_rcnn_targets`` / cascade ``match_box_with_gt``).
"""
import tensorflow as tf

from trainer.model.box_ops import pairwise_iou

tf1 = tf.compat.v1


def padded_gt(gt_boxes, gt_labels):
    """gt with one zero-area background box appended (IoU 0 with everything): argmax is defined even when G = 0."""
    boxes = tf.concat([gt_boxes, tf.zeros([1, 4], gt_boxes.dtype)], axis=0)
    labels = tf.concat([gt_labels, tf.zeros([1], gt_labels.dtype)], axis=0)
    return boxes, labels


def labels_from_iou(iou, gt_labels, iou_thresh):
    """``iou [N, G + 1]`` against :func:`padded_gt` -> (labels [N] int64, gt_index [N] int64).

    A box takes the label of its best gt (lowest index among ties) if that IoU
    reaches ``iou_thresh``, else 0.
    """
    gt_index = tf.argmax(iou, axis=1)
    fg = tf.reduce_max(iou, axis=1) >= float(iou_thresh)
    labels = tf.where(fg, tf.gather(gt_labels, gt_index), tf.zeros_like(gt_index))
    return tf.stop_gradient(labels), tf.stop_gradient(gt_index)


def match(boxes, gt_boxes, gt_labels, iou_thresh):
    """Each box takes the label of its best-overlapping gt box if that IoU >= ``iou_thresh``, else 0.

    Returns ``(labels [N] int64, gt_index [N] int64)``.
    """
    gt_boxes, gt_labels = padded_gt(gt_boxes, tf.cast(gt_labels, tf.int64))
    return labels_from_iou(pairwise_iou(boxes, gt_boxes), gt_labels, iou_thresh)


def sample_proposals(proposals, gt_boxes, gt_labels, batch_per_im, fg_ratio, fg_thresh, seed=None):
    """Training boxes for the first box-head stage.

    The gt boxes are appended to the proposals, each matching exactly its own
    gt (IoU 1 by definition, as the reference: a gt is a foreground example of
    itself even if degenerate or duplicated), boxes are matched at
    ``fg_thresh``, then at most ``batch_per_im * fg_ratio`` foreground and the
    rest up to ``batch_per_im`` background boxes are drawn at random.

    Returns ``(boxes [S, 4], labels [S] int64, gt_index [S] int64)``, foreground first, S <= batch_per_im.
    """
    gt_labels = tf.cast(gt_labels, tf.int64)
    padded_boxes, padded_labels = padded_gt(gt_boxes, gt_labels)
    num_gt = tf.shape(gt_boxes)[0]
    iou = tf.concat([pairwise_iou(proposals, padded_boxes),
                     tf.eye(num_gt, num_gt + 1)], axis=0)  # gt rows: themselves, not the padding column
    boxes = tf.concat([proposals, gt_boxes], axis=0)
    labels, gt_index = labels_from_iou(iou, padded_labels, fg_thresh)
    fg_inds = tf.reshape(tf.where(labels > 0), [-1])
    bg_inds = tf.reshape(tf.where(tf.equal(labels, 0)), [-1])
    num_fg = tf.minimum(int(batch_per_im * fg_ratio), tf.size(fg_inds))
    fg_inds = tf.random.shuffle(fg_inds, seed=seed)[:num_fg]
    num_bg = tf.minimum(int(batch_per_im) - num_fg, tf.size(bg_inds))
    bg_inds = tf.random.shuffle(bg_inds, seed=seed)[:num_bg]
    keep = tf.concat([fg_inds, bg_inds], axis=0)
    return (tf.stop_gradient(tf.gather(boxes, keep)), tf.gather(labels, keep), tf.gather(gt_index, keep))
