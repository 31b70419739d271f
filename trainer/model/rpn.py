"""Region proposal network on FPN levels: shared head, losses from the pipeline's anchor targets, proposals.

Anchors are ``trainer.anchors.level_anchors`` for the square field of the
largest image (``PREPROC.MAX_SIZE`` rounded up), embedded as a constant and
sliced to each feature map, as the reference does -- so the graph and the data
pipeline use bit-identical anchors. Per level the head gives ``label_logits
[fh, fw, A]`` (objectness logits) and ``box_logits [fh, fw, A, 4]`` (deltas
w.r.t. the anchors, weights 1). Variables ``rpn/conv0/{W,b}`` (3x3,
``channels`` wide, ReLU), ``rpn/class/{W,b}``, ``rpn/box/{W,b}``, shared by
every level.
"""
import tensorflow as tf

from trainer.anchors import field_size
from trainer.anchors import level_anchors as numpy_level_anchors
from trainer.model import box_ops
from trainer.model.layers import conv2d

tf1 = tf.compat.v1

# Huber transition of the RPN box loss (Faster R-CNN's sigma = 3): the loss is huber(delta) / delta.
HUBER_DELTA = 1.0 / 9


def level_anchors(stride, size, ratios, max_size, feature_hw):
    """Anchors ``[fh, fw, A, 4]`` xyxy pixels of one level; ``feature_hw`` is an int tensor [2].

    ``max_size`` is the rounded ``PREPROC.MAX_SIZE``: feature maps of larger
    images have no anchors (an error, as in the reference).
    """
    fs = field_size(max_size, stride)
    field = tf.constant(numpy_level_anchors(stride, size, ratios, fs, fs))
    check = tf.debugging.assert_less_equal(
        feature_hw, fs, message=f"image larger than PREPROC.MAX_SIZE {max_size}: no anchors (stride {stride})")
    with tf.control_dependencies([check]):
        return tf.slice(field, [0, 0, 0, 0], tf.concat([feature_hw, [-1, -1]], axis=0))


def rpn_head(feature, channels, num_anchors, data_format):
    """One level's feature ``[1, C, fh, fw]`` / ``[1, fh, fw, C]`` -> (label_logits ``[fh, fw, A]``, box_logits
    ``[fh, fw, A, 4]``).

    Call once per level; variables are created on the first call and reused.
    """
    init = tf1.random_normal_initializer(stddev=0.01)
    with tf1.variable_scope("rpn", reuse=tf1.AUTO_REUSE):
        hidden = conv2d("conv0", feature, channels, 3, data_format, use_bias=True, kernel_initializer=init,
                        activation=tf.nn.relu)
        labels = conv2d("class", hidden, num_anchors, 1, data_format, use_bias=True, kernel_initializer=init)
        boxes = conv2d("box", hidden, 4 * num_anchors, 1, data_format, use_bias=True, kernel_initializer=init)
    if data_format == "NCHW":
        labels = tf.transpose(labels, [0, 2, 3, 1])
        boxes = tf.transpose(boxes, [0, 2, 3, 1])
    shape = tf.shape(boxes)
    label_logits = labels[0]
    box_logits = tf.reshape(boxes[0], tf.stack([shape[1], shape[2], num_anchors, 4]))
    return label_logits, box_logits


def _level_losses(anchors, labels, gt_boxes, label_logits, box_logits, batch_per_im):
    """One level's (label_loss, box_loss): sums over its sampled anchors, times 1 / ``batch_per_im``."""
    valid = tf.stop_gradient(tf.not_equal(labels, -1))
    pos = tf.stop_gradient(tf.equal(labels, 1))
    num_valid = tf1.count_nonzero(valid, dtype=tf.int32)
    num_pos = tf1.count_nonzero(pos, dtype=tf.int32)
    label_loss = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(tf.boolean_mask(labels, valid), tf.float32), logits=tf.boolean_mask(label_logits, valid))
    label_loss = tf.reduce_sum(label_loss) * (1.0 / batch_per_im)
    label_loss = tf.where(tf.equal(num_valid, 0), 0.0, label_loss)
    # encoding only the positive anchors gives the same values as encoding all and masking (elementwise)
    targets = box_ops.encode(tf.boolean_mask(gt_boxes, pos), tf.boolean_mask(anchors, pos))
    box_loss = tf1.losses.huber_loss(targets, tf.boolean_mask(box_logits, pos), delta=HUBER_DELTA,
                                     reduction=tf1.losses.Reduction.SUM) / HUBER_DELTA
    box_loss = box_loss * (1.0 / batch_per_im)
    box_loss = tf.where(tf.equal(num_pos, 0), 0.0, box_loss)
    return label_loss, box_loss


def rpn_losses(anchors, anchor_labels, anchor_gt_boxes, label_logits, box_logits, batch_per_im):
    """RPN losses summed over the levels (lists, one entry per level).

    Args:
      anchors: ``[fh, fw, A, 4]`` per level (pixels).
      anchor_labels: int32 ``[fh, fw, A]``: 1 fg, 0 bg, -1 ignore (pipeline-sampled).
      anchor_gt_boxes: ``[fh, fw, A, 4]`` matched gt box (xyxy) where fg.
      label_logits, box_logits: the head's outputs, same grids.
      batch_per_im: ``RPN.BATCH_PER_IM``: every level's sums are divided by it.
    Returns:
      (label_loss, box_loss) scalars: sigmoid cross-entropy over the sampled
      anchors and Huber(1/9) / (1/9) of the fg anchors' deltas.
    """
    per_level = [_level_losses(*args, float(batch_per_im))
                 for args in zip(anchors, anchor_labels, anchor_gt_boxes, label_logits, box_logits)]
    label_loss = tf.add_n([p[0] for p in per_level], name="rpn_label_loss")
    box_loss = tf.add_n([p[1] for p in per_level], name="rpn_box_loss")
    return label_loss, box_loss


def _topk_nms(boxes, scores, image_hw, pre_topk, post_topk, nms_thresh, min_size):
    """Best ``pre_topk`` boxes (unsorted top-k), clipped, too-small ones dropped (``min_size`` > 0 only), NMS,
    at most ``post_topk`` kept in NMS order."""
    k = tf.minimum(int(pre_topk), tf.size(scores))
    scores, idx = tf.nn.top_k(scores, k=k, sorted=False)
    boxes = box_ops.clip(tf.gather(boxes, idx), image_hw)
    if float(min_size) > 0:
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = tf.reduce_all(wh > float(min_size), axis=1)
        boxes, scores = tf.boolean_mask(boxes, keep), tf.boolean_mask(scores, keep)
    sel = tf.image.non_max_suppression(boxes, scores, int(post_topk), iou_threshold=float(nms_thresh))
    return tf.gather(boxes, sel), tf.gather(scores, sel)


def decode_level_boxes(anchors, box_logits, clamp):
    """Each level's anchors moved by its deltas: ``[fh, fw, A, 4]`` boxes (pixels, not clipped)."""
    return [box_ops.decode(b, a, clamp) for a, b in zip(anchors, box_logits)]


def generate_proposals(level_boxes, label_logits, image_hw, cfg, training):
    """Proposals from all levels: (boxes ``[K, 4]`` xyxy pixels of the unpadded image, objectness logits ``[K]``).

    ``FPN.PROPOSAL_MODE == "Level"``: top-k + NMS per level with
    ``RPN.{TRAIN,TEST}_PER_LEVEL_NMS_TOPK``, then the best as many over all
    levels (unsorted, as the reference). ``"Joint"``: one top-k
    (``*_PRE_NMS_TOPK``) + NMS (``*_POST_NMS_TOPK``) over the union of the
    levels. No gradient flows back through the proposals.
    """
    r = cfg.RPN
    mode = "TRAIN" if training else "TEST"
    boxes = [tf.reshape(b, [-1, 4]) for b in level_boxes]
    scores = [tf.reshape(s, [-1]) for s in label_logits]
    with tf.name_scope("proposals"):
        if cfg.FPN.PROPOSAL_MODE == "Level":
            k = int(getattr(r, f"{mode}_PER_LEVEL_NMS_TOPK"))
            per_level = [_topk_nms(b, s, image_hw, k, k, r.PROPOSAL_NMS_THRESH, r.MIN_SIZE)
                         for b, s in zip(boxes, scores)]
            all_boxes = tf.concat([p[0] for p in per_level], axis=0)
            all_scores = tf.concat([p[1] for p in per_level], axis=0)
            top = tf.minimum(tf.size(all_scores), k)
            all_scores, idx = tf.nn.top_k(all_scores, k=top, sorted=False)
            all_boxes = tf.gather(all_boxes, idx)
        else:
            all_boxes, all_scores = _topk_nms(tf.concat(boxes, 0), tf.concat(scores, 0), image_hw,
                                              getattr(r, f"{mode}_PRE_NMS_TOPK"), getattr(r, f"{mode}_POST_NMS_TOPK"),
                                              r.PROPOSAL_NMS_THRESH, r.MIN_SIZE)
        return tf.stop_gradient(all_boxes, name="boxes"), tf.stop_gradient(all_scores, name="scores")
