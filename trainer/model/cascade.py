"""Cascade R-CNN box heads: ``len(CASCADE.IOUS)`` stages, each refining the previous stage's boxes.

Stage k (scope ``cascade_rcnn_stage{k}``) pools its input boxes, runs the
2fc head and predicts class logits and class-agnostic deltas in
``CASCADE.BBOX_REG_WEIGHTS[k-1]`` units. Training: stage 1 gets the sampled
proposals (``sampling.sample_proposals`` at ``FRCNN.FG_THRESH``); stage k+1
gets stage k's refined (clipped, gradient-stopped, non-empty) boxes, re-labelled at
``CASCADE.IOUS[k]``. Each stage's gradient into the shared features is
scaled by 1/num_stages. Inference: score = mean of the stages' softmax
probabilities (each on its own input boxes); boxes = last stage's refinement.
"""
import tensorflow as tf

from trainer.model import box_ops
from trainer.model.box_head import fastrcnn_2fc_head, fastrcnn_losses, fastrcnn_outputs
from trainer.model.sampling import match, padded_gt, sample_proposals

tf1 = tf.compat.v1


def scale_gradient(x, scale):
    """Exactly ``x`` forward (bit for bit); multiplies the gradient by ``scale`` backward."""
    @tf.custom_gradient
    def identity(y):
        return tf.identity(y), lambda dy: dy * scale

    return identity(x)


class CascadeHeads:
    """The box stages. ``pool(boxes) -> [N, C, 7, 7]`` is given (``poolers.multilevel_roi_align`` on P2-P5)."""

    def __init__(self, cfg, pool, num_classes, image_hw, clamp, training):
        self.pool = pool
        self.clamp = clamp
        self.training = training
        self.endpoints = {}  # per stage: its input boxes, logits, deltas, refined boxes (tests compare them)
        self.num_classes = int(num_classes)
        self.image_hw = image_hw
        self.ious = [float(v) for v in cfg.CASCADE.IOUS]
        self.weights = [tuple(float(w) for w in ws) for ws in cfg.CASCADE.BBOX_REG_WEIGHTS]
        self.fc_dim = int(cfg.FPN.FC_HEAD_DIM)
        self.frcnn = cfg.FRCNN

    @property
    def num_stages(self):
        return len(self.ious)

    def run_stage(self, k, boxes):
        """Stage ``k`` (0-based) on boxes ``[N, 4]``.

        Returns (class logits ``[N, K+1]``, deltas ``[N, 4]``, refined boxes ``[N, 4]``).
        """
        with tf1.variable_scope(f"cascade_rcnn_stage{k + 1}"):
            pooled = self.pool(boxes)
            if self.training:
                pooled = scale_gradient(pooled, 1.0 / self.num_stages)
            logits, deltas = fastrcnn_outputs(fastrcnn_2fc_head(pooled, self.fc_dim), self.num_classes)
            refined = tf.stop_gradient(box_ops.clip(box_ops.decode(deltas, boxes, self.clamp, self.weights[k]),
                                                    self.image_hw))
        self.endpoints.update({f"stage{k + 1}_boxes_in": boxes, f"stage{k + 1}_label_logits": logits,
                               f"stage{k + 1}_box_logits": deltas, f"stage{k + 1}_boxes_out": refined})
        return logits, deltas, refined

    def losses(self, proposals, gt_boxes, gt_labels):
        """Training: per-stage dicts of ``label_loss, box_loss, accuracy, num_fg`` (scalar tensors)."""
        f = self.frcnn
        boxes, labels, gt_index = sample_proposals(proposals, gt_boxes, gt_labels, f.BATCH_PER_IM, f.FG_RATIO,
                                                   f.FG_THRESH)
        gt_padded, _ = padded_gt(gt_boxes, tf.cast(gt_labels, tf.int64))
        out = []
        for k in range(self.num_stages):
            if k > 0:
                labels, gt_index = match(boxes, gt_boxes, gt_labels, self.ious[k])
            logits, deltas, refined = self.run_stage(k, boxes)
            with tf.name_scope(f"cascade_loss_stage{k + 1}"):
                names = ("label_loss", "box_loss", "accuracy", "num_fg")
                values = fastrcnn_losses(boxes, labels, tf.gather(gt_padded, gt_index), logits, deltas, self.weights[k])
                out.append(dict(zip(names, values)))
            # boxes the stage squeezed to nothing carry no signal for the next one
            boxes = tf.boolean_mask(refined, box_ops.area(refined) > 0)
        return out

    def predict(self, proposals):
        """Inference: (boxes ``[N, 4]`` from the last stage, class probabilities ``[N, K+1]`` averaged over stages)."""
        boxes, probs = proposals, []
        for k in range(self.num_stages):
            logits, _, boxes = self.run_stage(k, boxes)
            probs.append(tf.nn.softmax(logits))
        return boxes, tf.multiply(tf.add_n(probs), 1.0 / self.num_stages)
