"""Region proposal network on FPN levels: shared head, losses from the pipeline's anchor targets, proposals.

Anchors follow ``trainer.anchors`` (one size per level, ratios in config
order): :func:`level_anchors` builds in the graph exactly what
``trainer.anchors.level_anchors`` builds in numpy. Per level the head gives
``label_logits [fh, fw, A]`` (objectness logits) and ``box_logits [fh, fw,
A, 4]`` (deltas w.r.t. the anchors, weights 1). Variables ``rpn/conv0/{W,b}``
(3x3, ``channels`` wide, ReLU), ``rpn/class/{W,b}``, ``rpn/box/{W,b}``,
shared by every level.
"""
import tensorflow as tf

from trainer.anchors import cell_anchors
from trainer.model import box_ops
from trainer.model.layers import conv2d

tf1 = tf.compat.v1

# Smooth-L1 transition of the RPN box loss (Faster R-CNN's sigma = 3).
SMOOTH_L1_BETA = 1.0 / 9


def level_anchors(stride, size, ratios, feature_hw):
    """Anchors ``[fh, fw, A, 4]`` xyxy pixels of one level; ``feature_hw`` is an int tensor [2]."""
    base = tf.constant(cell_anchors(size, ratios))  # [A, 4]
    cy = (tf.cast(tf.range(feature_hw[0]), tf.float32) + 0.5) * float(stride)
    cx = (tf.cast(tf.range(feature_hw[1]), tf.float32) + 0.5) * float(stride)
    shift_x, shift_y = tf.meshgrid(cx, cy)  # [fh, fw]
    shifts = tf.stack([shift_x, shift_y, shift_x, shift_y], axis=-1)
    return shifts[:, :, None, :] + base[None, None, :, :]


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
    box_logits = tf.reshape(boxes[0], [shape[1], shape[2], num_anchors, 4])
    return label_logits, box_logits


def rpn_losses(anchors, anchor_labels, anchor_gt_boxes, label_logits, box_logits, batch_per_im):
    """RPN losses over all levels (lists, one entry per level).

    Args:
      anchors: ``[fh, fw, A, 4]`` per level (pixels).
      anchor_labels: int32 ``[fh, fw, A]``: 1 fg, 0 bg, -1 ignore (pipeline-sampled).
      anchor_gt_boxes: ``[fh, fw, A, 4]`` matched gt box (xyxy) where fg.
      label_logits, box_logits: the head's outputs, same grids.
      batch_per_im: ``RPN.BATCH_PER_IM``: both losses are sums divided by it.
    Returns:
      (label_loss, box_loss) scalars.
    """
    flat = lambda ts, d: tf.concat([tf.reshape(t, [-1] + d) for t in ts], axis=0)  # noqa: E731
    labels = flat(anchor_labels, [])
    logits = flat(label_logits, [])
    valid = labels >= 0
    label_loss = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(tf.boolean_mask(labels, valid) > 0, tf.float32), logits=tf.boolean_mask(logits, valid))
    label_loss = tf.reduce_sum(label_loss) / float(batch_per_im)

    fg = tf.equal(labels, 1)
    fg_anchors = tf.boolean_mask(flat(anchors, [4]), fg)
    targets = box_ops.encode(tf.boolean_mask(flat(anchor_gt_boxes, [4]), fg), fg_anchors)
    diff = tf.abs(tf.boolean_mask(flat(box_logits, [4]), fg) - targets)
    smooth_l1 = tf.where(diff < SMOOTH_L1_BETA, 0.5 * diff * diff / SMOOTH_L1_BETA, diff - 0.5 * SMOOTH_L1_BETA)
    box_loss = tf.reduce_sum(smooth_l1) / float(batch_per_im)
    return tf.identity(label_loss, name="rpn_label_loss"), tf.identity(box_loss, name="rpn_box_loss")


def _topk_nms(boxes, scores, image_hw, pre_topk, post_topk, nms_thresh, min_size):
    """Best ``pre_topk`` boxes, clipped, small ones dropped, NMS, at most ``post_topk`` kept."""
    k = tf.minimum(int(pre_topk), tf.size(scores))
    scores, idx = tf.nn.top_k(scores, k, sorted=False)
    boxes = box_ops.clip(tf.gather(boxes, idx), image_hw)
    wh = boxes[:, 2:] - boxes[:, :2]
    keep = tf.reduce_all(wh > float(min_size), axis=1)
    boxes, scores = tf.boolean_mask(boxes, keep), tf.boolean_mask(scores, keep)
    # NMS IoU does not care whether coordinates are xyxy or yxyx
    sel = tf.image.non_max_suppression(boxes, scores, int(post_topk), iou_threshold=float(nms_thresh))
    return tf.gather(boxes, sel), tf.gather(scores, sel)


def generate_proposals(anchors, label_logits, box_logits, image_hw, cfg, training):
    """Proposals from all levels: (boxes ``[K, 4]`` xyxy pixels of the unpadded image, objectness logits ``[K]``).

    ``FPN.PROPOSAL_MODE == "Level"``: top-k + NMS per level with
    ``RPN.{TRAIN,TEST}_PER_LEVEL_NMS_TOPK``, then the best as many over all
    levels. ``"Joint"``: one top-k (``*_PRE_NMS_TOPK``) + NMS
    (``*_POST_NMS_TOPK``) over the union of the levels. No gradient flows
    back through the proposals.
    """
    r = cfg.RPN
    mode = "TRAIN" if training else "TEST"
    boxes = [box_ops.decode(tf.reshape(b, [-1, 4]), tf.reshape(a, [-1, 4])) for a, b in zip(anchors, box_logits)]
    scores = [tf.reshape(s, [-1]) for s in label_logits]
    with tf.name_scope("proposals"):
        if cfg.FPN.PROPOSAL_MODE == "Level":
            k = int(getattr(r, f"{mode}_PER_LEVEL_NMS_TOPK"))
            per_level = [_topk_nms(b, s, image_hw, k, k, r.PROPOSAL_NMS_THRESH, r.MIN_SIZE)
                         for b, s in zip(boxes, scores)]
            all_boxes = tf.concat([p[0] for p in per_level], axis=0)
            all_scores = tf.concat([p[1] for p in per_level], axis=0)
            top = tf.minimum(k, tf.size(all_scores))
            all_scores, idx = tf.nn.top_k(all_scores, top, sorted=True)
            all_boxes = tf.gather(all_boxes, idx)
        else:
            all_boxes, all_scores = _topk_nms(tf.concat(boxes, 0), tf.concat(scores, 0), image_hw,
                                              getattr(r, f"{mode}_PRE_NMS_TOPK"), getattr(r, f"{mode}_POST_NMS_TOPK"),
                                              r.PROPOSAL_NMS_THRESH, r.MIN_SIZE)
        return tf.stop_gradient(all_boxes, name="boxes"), tf.stop_gradient(all_scores, name="scores")
