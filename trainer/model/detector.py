"""``CascadeRCNN``: the tensorpack ``ModelDesc`` of the cell / row-column detector.

Inputs (docs/CONTRACTS.md "Trainer model inputs", one image per tower):
``image`` uint8 ``[H, W, 3]`` BGR (resized, unpadded; cast in the graph, so a
quarter of the bytes of float32 cross into the graph / onto the GPU); per level
l = 2..6 ``anchor_labels_lvl{l}`` int32 ``[fh, fw, A]`` and
``anchor_boxes_lvl{l}`` float32 ``[fh, fw, A, 4]``; ``gt_boxes`` float32
``[N, 4]``; ``gt_labels`` int64 ``[N]`` (1..len(DATA.CATEGORIES)).
Inference needs only ``image`` and yields ``output/boxes`` float32 ``[K, 4]``
(xyxy, pixels of the input image), ``output/scores`` float32 ``[K]`` and
``output/labels`` int32 ``[K]`` (1..len(DATA.CATEGORIES)).

Training returns the total cost (RPN + cascade losses + weight decay);
:meth:`CascadeRCNN.optimizer` is momentum SGD on the non-trainable variable
``learning_rate`` (scheduled by the trainer's callbacks) with the reference's
semantics (``trainer.lr_schedule``): the step size is ``learning_rate /
TRAIN.REFERENCE_BATCH`` on gradients summed over devices and, on fewer
devices than ``REFERENCE_BATCH``, accumulated over steps.

After :meth:`build_graph`, :attr:`CascadeRCNN.endpoints` maps stage names
(``C2``..``C5``, ``P2``..``P6``, ``rpn_label_logits_lvl2``, ``anchors_lvl2``,
``rpn_boxes_lvl2``, ``proposal_boxes``, ``stage1_label_logits``, ...,
``cascade_scores``; losses when training) to tensors: what the golden test
compares with the reference layer by layer.
"""
import numpy as np
import tensorflow as tf
from tensorpack import ModelDesc
from tensorpack.models.regularize import regularize_cost
from tensorpack.tfutils.summary import add_moving_summary
from tensorpack.tfutils.tower import get_current_tower_context

from trainer import lr_schedule
from trainer.anchors import feature_shape
from trainer.config import max_image_side, num_classes
from trainer.model import box_ops, rpn
from trainer.model.backbone import ResNetBackbone
from trainer.model.cascade import CascadeHeads
from trainer.model.fpn import fpn
from trainer.model.poolers import multilevel_roi_align
from trainer.model.postprocessing import detections

tf1 = tf.compat.v1


def default_data_format():
    """``"NCHW"``: the reference's layout, cuDNN's fast one, and on CPU (TF 2.21 runs NCHW graphs through
    its layout optimizer) also the faster one for this model, because GroupNorm needs channels-first."""
    return "NCHW"


def input_names(num_levels=5):
    """Input names in datapoint order (levels numbered from 2)."""
    names = ["image"]
    for lvl in range(2, 2 + num_levels):
        names += [f"anchor_labels_lvl{lvl}", f"anchor_boxes_lvl{lvl}"]
    return names + ["gt_boxes", "gt_labels"]


class CascadeRCNN(ModelDesc):
    """ResNe(X)t-FPN Cascade R-CNN; ``cfg`` a ``trainer.config.Config``, ``data_format`` ``"NHWC"``/``"NCHW"``."""

    def __init__(self, cfg, data_format=None, num_devices=1):
        """``num_devices``: GPUs over all training processes (towers x Horovod ranks; CPU = 1), for the optimizer."""
        if not cfg.MODE_FPN or not cfg.FPN.CASCADE:
            raise ValueError("only the FPN + Cascade R-CNN model is implemented (MODE_FPN and FPN.CASCADE true)")
        self.cfg = cfg
        self.data_format = data_format or default_data_format()
        assert self.data_format in ("NHWC", "NCHW"), self.data_format
        self.num_levels = len(cfg.FPN.ANCHOR_STRIDES)
        self.num_anchors = len(cfg.RPN.ANCHOR_RATIOS)
        self.num_devices = int(num_devices)
        self.max_size = max_image_side(cfg)
        self.endpoints = {}

    def feature_shape(self, image_h, image_w, level_index):
        """(fh, fw) of pyramid level ``level_index`` (0 = P2) for an unpadded image."""
        stride = int(self.cfg.FPN.ANCHOR_STRIDES[level_index])
        return feature_shape(image_h, image_w, stride, int(self.cfg.FPN.RESOLUTION_REQUIREMENT))

    def inputs(self):
        a = self.num_anchors
        specs = [tf.TensorSpec([None, None, 3], tf.uint8, "image")]
        for lvl in range(2, 2 + self.num_levels):
            specs += [tf.TensorSpec([None, None, a], tf.int32, f"anchor_labels_lvl{lvl}"),
                      tf.TensorSpec([None, None, a, 4], tf.float32, f"anchor_boxes_lvl{lvl}")]
        return specs + [tf.TensorSpec([None, 4], tf.float32, "gt_boxes"), tf.TensorSpec([None], tf.int64, "gt_labels")]

    def preprocess(self, image):
        """``[H, W, 3]`` BGR uint8 (or float 0..255) -> normalised ``[1, ...]`` in ``data_format``, padded to a multiple of 32."""
        p = self.cfg.PREPROC
        with tf.name_scope("preprocess"):
            inv_std = 1.0 / np.asarray(p.PIXEL_STD, np.float64)  # multiply by the inverse, as the reference
            x = (tf.cast(image, tf.float32) - tf.constant(p.PIXEL_MEAN, tf.float32)) * tf.constant(inv_std, tf.float32)
            mult = int(self.cfg.FPN.RESOLUTION_REQUIREMENT)
            hw = tf.shape(image)[:2]
            pad = (mult - hw % mult) % mult
            x = tf.pad(x, [[0, pad[0]], [0, pad[1]], [0, 0]])[None]
            return tf.transpose(x, [0, 3, 1, 2]) if self.data_format == "NCHW" else x

    def build_graph(self, image, *rest):
        cfg, df = self.cfg, self.data_format
        ctx = get_current_tower_context()
        training = bool(ctx is not None and ctx.is_training)
        anchor_labels, anchor_boxes = list(rest[0:2 * self.num_levels:2]), list(rest[1:2 * self.num_levels:2])
        gt_boxes, gt_labels = rest[2 * self.num_levels:]
        image_hw = tf.shape(image)[:2]

        ends = self.endpoints
        features = ResNetBackbone(cfg, df)(self.preprocess(image))
        pyramid = fpn(features, int(cfg.FPN.NUM_CHANNEL), cfg.FPN.NORM, df)
        ends.update({f"C{i + 2}": c for i, c in enumerate(features)})
        ends.update({f"P{i + 2}": p for i, p in enumerate(pyramid)})

        strides = [int(s) for s in cfg.FPN.ANCHOR_STRIDES]
        clamp = box_ops.scale_clamp(self.max_size)
        heads = [rpn.rpn_head(p, int(cfg.FPN.NUM_CHANNEL), self.num_anchors, df) for p in pyramid]
        label_logits, box_logits = [h[0] for h in heads], [h[1] for h in heads]
        anchors = [rpn.level_anchors(s, float(z), cfg.RPN.ANCHOR_RATIOS, self.max_size, tf.shape(lg)[:2])
                   for s, z, lg in zip(strides, cfg.RPN.ANCHOR_SIZES, label_logits)]
        level_boxes = rpn.decode_level_boxes(anchors, box_logits, clamp)
        for lvl, (lg, bl, a, b) in enumerate(zip(label_logits, box_logits, anchors, level_boxes), start=2):
            ends.update({f"rpn_label_logits_lvl{lvl}": lg, f"rpn_box_logits_lvl{lvl}": bl, f"anchors_lvl{lvl}": a,
                         f"rpn_boxes_lvl{lvl}": b})
        proposals, proposal_scores = rpn.generate_proposals(level_boxes, label_logits, image_hw, cfg, training)
        ends.update(proposal_boxes=proposals, proposal_scores=proposal_scores)

        pool = lambda boxes: multilevel_roi_align(pyramid[:4], strides[:4], boxes, df)  # noqa: E731
        cascade = CascadeHeads(cfg, pool, num_classes(cfg), image_hw, clamp, training)

        if not training:
            boxes, probs = cascade.predict(proposals)
            ends.update(cascade.endpoints, cascade_scores=probs)
            out_boxes, out_scores, out_labels = detections(boxes, probs, cfg.OUTPUT)
            with tf.name_scope("output"):
                tf.identity(out_boxes, name="boxes")
                tf.identity(out_scores, name="scores")
                tf.identity(out_labels, name="labels")
            return None

        with tf.name_scope("rpn_losses"):
            checks = [tf.debugging.assert_equal(tf.shape(lab)[:2], tf.shape(lg)[:2],
                                                message=f"anchor_labels_lvl{i + 2} does not match the feature map")
                      for i, (lab, lg) in enumerate(zip(anchor_labels, label_logits))]
            with tf.control_dependencies(checks):
                rpn_label_loss, rpn_box_loss = rpn.rpn_losses(anchors, anchor_labels, anchor_boxes, label_logits,
                                                              box_logits, cfg.RPN.BATCH_PER_IM)
        stage_losses = cascade.losses(proposals, gt_boxes, gt_labels)
        ends.update(cascade.endpoints)
        wd_cost = regularize_cost(".*/W$", lambda w: float(cfg.TRAIN.WEIGHT_DECAY) * tf.nn.l2_loss(w), name="wd_cost")
        losses = [rpn_label_loss, rpn_box_loss] + [s[k] for s in stage_losses for k in ("label_loss", "box_loss")]
        total_cost = tf.add_n(losses + [wd_cost], name="total_cost")
        ends.update(rpn_label_loss=rpn_label_loss, rpn_box_loss=rpn_box_loss, wd_cost=wd_cost, total_cost=total_cost)
        for k, s in enumerate(stage_losses, start=1):
            ends.update({f"stage{k}_label_loss": s["label_loss"], f"stage{k}_box_loss": s["box_loss"]})
        add_moving_summary(total_cost, wd_cost, *losses,
                           *[s[k] for s in stage_losses for k in ("accuracy", "num_fg")])
        return total_cost

    def optimizer(self):
        """Momentum 0.9 on ``learning_rate / REFERENCE_BATCH``; gradients accumulated over ``REFERENCE_BATCH /
        num_devices`` steps when there are fewer devices (``trainer.lr_schedule``)."""
        from trainer.gradient_accumulation import OrderedAccumGradOptimizer

        lr = tf1.get_variable("learning_rate", initializer=float(self.cfg.TRAIN.BASE_LR), trainable=False)
        tf1.summary.scalar("learning_rate-summary", lr)
        reference_batch = int(self.cfg.TRAIN.REFERENCE_BATCH)
        opt = tf1.train.MomentumOptimizer(lr / float(reference_batch), 0.9)
        steps = lr_schedule.accumulation(self.num_devices, reference_batch)
        return OrderedAccumGradOptimizer(opt, steps) if steps > 1 else opt
