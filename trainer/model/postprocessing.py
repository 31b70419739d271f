"""Detections of one image from the final boxes and class probabilities.

Config read (``OUTPUT.*``): ``RESULT_SCORE_THRESH`` (keep scores strictly
above), ``FRCNN_NMS_THRESH`` (NMS within a class), ``NMS_THRESH_CLASS_AGNOSTIC``
(NMS across classes afterwards; 1.0 disables it), ``RESULTS_PER_IM`` (at most
this many). Candidates are enumerated class by class, as the reference does,
so ties inside NMS resolve the same way.
"""
import tensorflow as tf


def detections(boxes, probs, output_cfg):
    """``boxes [N, 4]`` (shared by all classes), ``probs [N, K+1]`` -> (boxes [D, 4], scores [D], labels [D]).

    Labels are int32 in 1..K. A box may yield several detections (one per
    class above the threshold) before NMS. Results come in NMS order
    (decreasing score).
    """
    o = output_cfg
    scores = tf.transpose(probs[:, 1:], [1, 0])  # [K, N]
    ids = tf.where(scores > float(o.RESULT_SCORE_THRESH))  # [F, 2]: (class - 1, box), class-major
    cand_boxes = tf.gather(boxes, ids[:, 1])
    cand_scores = tf.gather_nd(scores, ids)
    cand_classes = ids[:, 0]
    # shift each class into its own region of the plane: one NMS call does per-class NMS
    offset = tf.cast(cand_classes, tf.float32) * (tf.reduce_max(boxes) + 1.0)
    keep = tf.image.non_max_suppression(cand_boxes + offset[:, None], cand_scores, int(o.RESULTS_PER_IM),
                                        iou_threshold=float(o.FRCNN_NMS_THRESH))
    cand_boxes, cand_scores, cand_classes = [tf.gather(t, keep) for t in (cand_boxes, cand_scores, cand_classes)]
    keep = tf.image.non_max_suppression(cand_boxes, cand_scores, int(o.RESULTS_PER_IM),
                                        iou_threshold=float(o.NMS_THRESH_CLASS_AGNOSTIC))
    return (tf.gather(cand_boxes, keep), tf.gather(cand_scores, keep),
            tf.cast(tf.gather(cand_classes, keep), tf.int32) + 1)
