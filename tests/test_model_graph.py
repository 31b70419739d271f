"""The Cascade R-CNN graph: variable names / parameter count of configs/cell.yaml, NCHW build, a tiny training step.

Graphs are built with tensorpack's ``TowerContext`` as the trainer does; the
tiny config runs in a plain ``tf.compat.v1.Session`` on a small random image.
"""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorpack.tfutils.tower import TowerContext

from trainer.anchors import feature_shape, level_anchors
from trainer.config import load_config
from trainer.model import rpn
from trainer.model.cascade import scale_gradient
from trainer.model.detector import CascadeRCNN, default_data_format, input_names
from trainer.model.poolers import roi_align
from trainer.model.postprocessing import detections

tf1 = tf.compat.v1
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
OUTPUTS = ("output/boxes", "output/scores", "output/labels")


def build(cfg, data_format, training):
    """A fresh graph with the model built in it: (graph, model, input placeholders, build_graph's return)."""
    graph = tf.Graph()
    with graph.as_default():
        model = CascadeRCNN(cfg, data_format)
        inputs = [tf1.placeholder(s.dtype, s.shape, s.name) for s in model.inputs()]
        with TowerContext("", is_training=training):
            cost = model.build_graph(*inputs)
    return graph, model, inputs, cost


@pytest.fixture(scope="module")
def cell_train_graph():
    cfg = load_config(CONFIGS / "cell.yaml")
    graph, model, inputs, cost = build(cfg, "NHWC", True)
    with graph.as_default():
        model.optimizer()
        variables = {v.op.name: (v.shape.as_list(), v in tf1.trainable_variables()) for v in tf1.global_variables()}
    return cfg, graph, inputs, cost, variables


def test_inputs_follow_the_contract():
    model = CascadeRCNN(load_config(CONFIGS / "cell.yaml"), "NHWC")
    specs = model.inputs()
    assert [s.name for s in specs] == input_names(5)
    from trainer.train_data import datapoint_names

    assert input_names(5) == datapoint_names(5)  # the data pipeline produces datapoints in this order
    assert specs[0].shape.as_list() == [None, None, 3] and specs[0].dtype == tf.uint8
    assert specs[1].dtype == tf.int32 and specs[1].shape.as_list() == [None, None, 3]
    assert specs[2].shape.as_list() == [None, None, 3, 4]
    assert specs[-1].dtype == tf.int64 and specs[-2].shape.as_list() == [None, 4]
    assert default_data_format() == "NCHW"  # the reference's layout; TF 2.21 runs it on CPU too


def test_cell_graph_has_the_published_variable_names(cell_train_graph):
    *_, variables = cell_train_graph
    expected = ["conv0/W", "conv0/gn/gamma", "conv0/gn/beta", "group0/block0/conv1/W", "group0/block0/conv1/gn/gamma",
                "group0/block0/conv2/W", "group0/block0/conv3/gn/beta", "group0/block0/convshortcut/W",
                "group0/block0/convshortcut/gn/gamma", "group0/block2/conv3/W", "group1/block3/conv2/W",
                "group2/block5/conv3/gn/gamma", "group3/block0/convshortcut/W", "group3/block2/conv1/W",
                "fpn/lateral_1x1_c2/W", "fpn/lateral_1x1_c5/W", "fpn/gn_c2/gamma", "fpn/gn_c4/beta",
                "fpn/posthoc_3x3_p2/W", "fpn/posthoc_3x3_p5/W", "fpn/gn_p3/gamma", "fpn/gn_p5/beta",
                "rpn/conv0/W", "rpn/conv0/b", "rpn/class/W", "rpn/class/b", "rpn/box/W", "rpn/box/b", "learning_rate"]
    for stage in (1, 2, 3):
        expected += [f"cascade_rcnn_stage{stage}/head/fc6/W", f"cascade_rcnn_stage{stage}/head/fc7/b",
                     f"cascade_rcnn_stage{stage}/outputs/class/W", f"cascade_rcnn_stage{stage}/outputs/box/b"]
    missing = [n for n in expected if n not in variables]
    assert not missing
    # GN follows every FPN conv: no biases (the published checkpoints have none)
    assert not [n for n in variables if n.startswith("fpn/") and n.endswith("/b")]
    model_vars = [n for n in variables if n != "learning_rate" and "/Momentum" not in n and "AccumGrad" not in n]
    assert len(model_vars) == 213  # the reference's inventory (FACTS.md section 6)
    assert sum(int(np.prod(variables[n][0])) for n in model_vars) == 68_625_761
    assert "group0/block3/conv1/W" not in variables and "group3/block3/conv1/W" not in variables  # [3, 4, 6, 3]
    # kernels HWIO; ResNeXt conv2 is grouped (32 groups of 4 channels in group0)
    assert variables["conv0/W"][0] == [7, 7, 3, 64]
    assert variables["group0/block0/conv2/W"][0] == [3, 3, 4, 128]
    assert variables["group3/block0/conv3/W"][0] == [1, 1, 1024, 2048]
    assert variables["rpn/class/W"][0] == [1, 1, 256, 3] and variables["rpn/box/W"][0] == [1, 1, 256, 12]
    assert variables["cascade_rcnn_stage2/head/fc6/W"][0] == [256 * 7 * 7, 1024]
    assert variables["cascade_rcnn_stage3/outputs/class/W"][0] == [1024, 2]
    assert variables["cascade_rcnn_stage3/outputs/box/W"][0] == [1024, 4]  # class-agnostic
    # FREEZE_AT 2: stem and group0 are not trained; learning_rate is not trained
    assert not variables["conv0/W"][1] and not variables["group0/block2/conv3/gn/gamma"][1]
    assert variables["group1/block0/conv1/W"][1] and not variables["learning_rate"][1]


def expected_trainable_parameters(blocks, fpn_ch, fc_dim, num_classes, num_anchors, freeze_at):
    """Trainable parameters of ResNeXt-32x4d-FPN-GN Cascade R-CNN (3 stages, 2fc head), from the architecture."""
    total = 0
    gn = lambda c: 2 * c  # noqa: E731
    in_ch = 64
    for g, n in enumerate(blocks):
        ch = 64 * 2 ** g
        for i in range(n):
            p = in_ch * 2 * ch + gn(2 * ch)  # conv1 1x1 -> 2ch
            p += 3 * 3 * (2 * ch // 32) * 2 * ch + gn(2 * ch)  # conv2 3x3, 32 groups
            p += 2 * ch * 4 * ch + gn(4 * ch)  # conv3 1x1 -> 4ch
            if i == 0:
                p += in_ch * 4 * ch + gn(4 * ch)  # projection shortcut
            if g + 1 >= freeze_at:
                total += p
            in_ch = 4 * ch
    for c in (256, 512, 1024, 2048):
        total += c * fpn_ch + gn(fpn_ch)  # lateral 1x1 (no bias before GN) + GN
        total += 9 * fpn_ch * fpn_ch + gn(fpn_ch)  # post-hoc 3x3 + GN
    total += 9 * fpn_ch * fpn_ch + fpn_ch + (fpn_ch + 1) * num_anchors + (fpn_ch + 1) * 4 * num_anchors
    stage = (fpn_ch * 49 + 1) * fc_dim + (fc_dim + 1) * fc_dim + (fc_dim + 1) * num_classes + (fc_dim + 1) * 4
    return total + 3 * stage


def test_cell_graph_trainable_parameter_count(cell_train_graph):
    *_, variables = cell_train_graph
    count = sum(int(np.prod(shape)) for shape, trainable in variables.values() if trainable)
    assert count == expected_trainable_parameters([3, 4, 6, 3], 256, 1024, 2, 3, freeze_at=2)


def test_cell_graph_training_outputs(cell_train_graph):
    cfg, graph, inputs, cost, variables = cell_train_graph
    assert cost.shape.ndims == 0 and cost.dtype == tf.float32
    names = {op.name for op in graph.get_operations()}
    assert "wd_cost" in names and "total_cost" in names
    assert not any(v.startswith("EMA/") and "variance" in v for v in variables)  # no BN statistics in a GN model


def test_nchw_graph_builds_with_the_same_variables(cell_train_graph):
    """Checkpoint compatibility across layouts: same names, same (HWIO) shapes."""
    cfg, *_, nhwc_vars = cell_train_graph
    graph, _, _, _ = build(cfg, "NCHW", False)
    with graph.as_default():
        nchw = {v.op.name: v.shape.as_list() for v in tf1.global_variables()}
        for name in OUTPUTS:
            graph.get_tensor_by_name(name + ":0")
    model_vars = {k: v[0] for k, v in nhwc_vars.items() if not k.startswith("EMA") and k != "learning_rate"}
    assert nchw == model_vars


def test_graph_anchors_equal_the_shared_numpy_anchors():
    with tf.Graph().as_default(), tf1.Session() as sess:
        for stride, size in ((4, 8), (16, 32), (64, 128)):
            fh, fw = feature_shape(300, 200, stride)
            got = sess.run(rpn.level_anchors(stride, float(size), [0.25, 0.5, 1.0], 448, tf.constant([fh, fw])))
            np.testing.assert_array_equal(got, level_anchors(stride, size, [0.25, 0.5, 1.0], fh, fw))


def test_anchors_sit_on_the_feature_cell_corner_as_the_reference():
    """Cell (i, j) of stride s: anchors centred at (j * s, i * s), w = sqrt(z^2 / r), h = r * w (tensorpack)."""
    a = level_anchors(8, 16, [0.25, 1.0], 3, 4)
    assert a.shape == (3, 4, 2, 4) and a.dtype == np.float32
    centre = (a[..., :2] + a[..., 2:]) / 2
    np.testing.assert_allclose(centre[2, 3, 0], [3 * 8, 2 * 8], atol=1e-5)
    w, h = np.sqrt(16 * 16 / 0.25), 0.25 * np.sqrt(16 * 16 / 0.25)
    np.testing.assert_allclose(a[2, 3, 0], np.float32([24 - w / 2, 16 - h / 2, 24 + w / 2, 16 + h / 2]))
    np.testing.assert_allclose(a[0, 0, 1], [-8, -8, 8, 8])


@pytest.mark.parametrize("stride", [1, 4])
def test_roi_align_on_a_linear_ramp(stride):
    """On f(x) = x (pixel centres at index + 0.5) each bin must equal the ramp at its centre."""
    h, w, size = 20, 30, 7
    ramp = np.tile(np.arange(w, dtype=np.float32)[None, :, None], (h, 1, 1))[None]
    box = np.array([[3.2, 4.0, 20.5, 15.0]], np.float32) * stride
    with tf.Graph().as_default(), tf1.Session() as sess:
        out = sess.run(roi_align(tf.constant(ramp), tf.constant(box), stride, size))
    x0, x1 = box[0, 0] / stride, box[0, 2] / stride
    expected = x0 + (np.arange(size) + 0.5) * (x1 - x0) / size - 0.5
    assert out.shape == (1, size, size, 1)
    np.testing.assert_allclose(out[0, :, :, 0], np.tile(expected, (size, 1)), atol=1e-4)


def test_scale_gradient():
    with tf.Graph().as_default(), tf1.Session() as sess:
        x = tf.constant([2.0, 3.0])
        y = scale_gradient(x, 1.0 / 3)
        value, grad = sess.run([y, tf.gradients(tf.reduce_sum(y * y), x)[0]])
    np.testing.assert_allclose(value, [2.0, 3.0])
    np.testing.assert_allclose(grad, [4.0 / 3, 2.0], rtol=1e-6)


def test_detections_per_class_then_class_agnostic_nms():
    cfg = load_config(CONFIGS / "item.yaml", ["OUTPUT.RESULT_SCORE_THRESH=0.3", "OUTPUT.FRCNN_NMS_THRESH=0.5",
                                              "OUTPUT.NMS_THRESH_CLASS_AGNOSTIC=0.5", "OUTPUT.RESULTS_PER_IM=10"])
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60], [100, 0, 110, 10]], np.float32)
    # columns: background, ROW, COLUMN
    probs = np.array([[0.1, 0.8, 0.1], [0.1, 0.5, 0.4], [0.2, 0.35, 0.45], [0.8, 0.1, 0.1]], np.float32)
    with tf.Graph().as_default(), tf1.Session() as sess:
        b, s, l = sess.run(detections(tf.constant(boxes), tf.constant(probs), cfg.OUTPUT))
    # box1/ROW is suppressed by box0/ROW (same class); box1/COLUMN (0.4) survives per-class NMS but not the
    # class-agnostic one (overlaps box0 ROW 0.8); box2 keeps both classes after per-class NMS, then only COLUMN
    np.testing.assert_allclose(s, [0.8, 0.45], rtol=1e-6)
    np.testing.assert_array_equal(l, [1, 2])
    np.testing.assert_array_equal(b, boxes[[0, 2]])
    assert l.dtype == np.int32


def synthetic_datapoint(cfg, h, w, rng):
    """Image, anchor targets (built here from the shared anchor definition) and gt boxes for one image."""
    image = rng.uniform(180, 255, (h, w, 3)).astype(np.uint8)
    gt = np.array([[20, 30, 140, 60], [150, 100, 300, 140], [40, 150, 90, 230]], np.float32)
    for x0, y0, x1, y1 in gt.astype(int):
        image[y0:y1, x0:x1] = rng.uniform(0, 60, 3)  # dark boxes on a light page
    values = [image]
    for stride, size in zip(cfg.FPN.ANCHOR_STRIDES, cfg.RPN.ANCHOR_SIZES):
        fh, fw = feature_shape(h, w, stride)
        anchors = level_anchors(stride, size, cfg.RPN.ANCHOR_RATIOS, fh, fw).reshape(-1, 4)
        ix = np.maximum(0, np.minimum(anchors[:, None, 2], gt[None, :, 2]) - np.maximum(anchors[:, None, 0], gt[None, :, 0]))
        iy = np.maximum(0, np.minimum(anchors[:, None, 3], gt[None, :, 3]) - np.maximum(anchors[:, None, 1], gt[None, :, 1]))
        inter = ix * iy
        area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
        iou = inter / (area(anchors)[:, None] + area(gt)[None, :] - inter)
        labels = np.full(len(anchors), -1, np.int32)
        labels[iou.max(1) < 0.3] = 0
        labels[rng.rand(len(anchors)) < 0.9] = -1  # keep a sample of the background
        labels[iou.max(1) >= 0.5] = 1
        matched = np.where((labels == 1)[:, None], gt[iou.argmax(1)], 0).astype(np.float32)
        values += [labels.reshape(fh, fw, -1), matched.reshape(fh, fw, -1, 4)]
    return values + [gt, np.array([1, 1, 1], np.int64)]


def test_tiny_config_trains_one_step_and_predicts_inside_the_image():
    cfg = load_config(CONFIGS / "tiny.yaml", ["OUTPUT.RESULT_SCORE_THRESH=0.0"])
    rng = np.random.RandomState(0)
    h, w = 250, 330  # not multiples of 32: the graph pads
    values = synthetic_datapoint(cfg, h, w, rng)
    assert sum(int((v == 1).sum()) for v in values[1:11:2]) > 0  # the targets have foreground anchors

    graph, model, inputs, cost = build(cfg, "NHWC", True)
    with graph.as_default():
        tf1.set_random_seed(0)
        opt = model.optimizer()
        grads = opt.compute_gradients(cost)
        assert grads and all(g is not None for g, _ in grads)  # every trainable variable gets a gradient
        train_op = opt.apply_gradients(grads)
        with tf1.Session() as sess:
            sess.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
            var = {v.op.name: v for v in tf1.global_variables()}
            assert float(sess.run(var["learning_rate"])) == pytest.approx(cfg.TRAIN.BASE_LR)
            before = sess.run(var["group1/block0/conv3/gn/gamma"])
            loss, _ = sess.run([cost, train_op], dict(zip(inputs, values)))
            after = sess.run(var["group1/block0/conv3/gn/gamma"])
            saver = tf1.train.Saver()
            ckpt = saver.save(sess, str(Path(__import__("tempfile").mkdtemp()) / "model"))
    assert np.isfinite(loss) and loss > 0
    # the zero-initialised last GN gamma of a block moves on the first step: gradients reach the backbone
    assert np.all(before == 0) and np.abs(after).max() > 1e-7

    graph, _, inputs, _ = build(cfg, "NHWC", False)
    with graph.as_default(), tf1.Session() as sess:
        # the inference graph restores the training checkpoint by name (training extras are simply unused)
        tf1.train.Saver(tf1.global_variables()).restore(sess, ckpt)
        boxes, scores, labels = sess.run([graph.get_tensor_by_name(n + ":0") for n in OUTPUTS], {inputs[0]: values[0]})
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and 0 < len(boxes) <= cfg.OUTPUT.RESULTS_PER_IM
    assert len(scores) == len(labels) == len(boxes) and labels.dtype == np.int32
    assert np.all(boxes[:, [0, 2]] >= 0) and np.all(boxes[:, [0, 2]] <= w)
    assert np.all(boxes[:, [1, 3]] >= 0) and np.all(boxes[:, [1, 3]] <= h)
    assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])
    assert np.all(np.diff(scores) <= 1e-6) and np.all((scores > 0) & (scores <= 1))
    assert set(labels.tolist()) <= {1}


def test_sampling_caps_foreground_and_handles_images_without_gt():
    from trainer.model.sampling import sample_proposals

    rng = np.random.RandomState(3)
    gt = np.array([[10, 10, 50, 50], [100, 100, 200, 150]], np.float32)
    near = np.repeat(gt, 20, axis=0) + rng.uniform(-2, 2, (40, 4)).astype(np.float32)  # IoU > 0.5
    far = np.array([[300, 300, 320, 330]] * 60, np.float32)
    proposals = np.concatenate([near, far])
    with tf.Graph().as_default(), tf1.Session() as sess:
        boxes, labels, gt_index = sess.run(sample_proposals(
            tf.constant(proposals), tf.constant(gt), tf.constant([1, 2], tf.int64), 32, 0.25, 0.5, seed=1))
        empty = sess.run(sample_proposals(tf.constant(proposals), tf.zeros([0, 4]), tf.zeros([0], tf.int64), 32, 0.25, 0.5))
    assert len(boxes) == 32 and (labels > 0).sum() == 8  # fg capped at 32 * 0.25, the rest background
    fg = labels > 0
    np.testing.assert_array_equal(labels[fg], np.array([1, 2])[gt_index[fg]])
    centre = (boxes[fg, :2] + boxes[fg, 2:]) / 2
    assert np.all(np.abs(centre - (gt[gt_index[fg], :2] + gt[gt_index[fg], 2:]) / 2) < 3)
    assert len(empty[0]) == 32 and np.all(empty[1] == 0)  # no gt: all background


def test_frozen_bn_resnext_variant_freezes_as_configured():
    cfg = load_config(CONFIGS / "tiny.yaml", ["BACKBONE.NORM=FreezeBN", "BACKBONE.BOTTLENECK=resnext_32xd4",
                                              "BACKBONE.FREEZE_AT=2", "BACKBONE.FREEZE_AFFINE=true"])
    graph, *_ = build(cfg, "NHWC", True)
    with graph.as_default():
        trainable = {v.op.name for v in tf1.trainable_variables()}
        shapes = {v.op.name: v.shape.as_list() for v in tf1.global_variables()}
    for name in ("conv0/bn/gamma", "conv0/bn/beta", "conv0/bn/mean/EMA", "conv0/bn/variance/EMA",
                 "group0/block0/convshortcut/bn/mean/EMA", "group3/block0/conv3/bn/variance/EMA"):
        assert name in shapes and name not in trainable, name
    assert "conv0/W" not in trainable and "group0/block0/conv2/W" not in trainable  # FREEZE_AT 2
    assert "group1/block0/conv1/W" in trainable
    assert "group1/block0/conv1/bn/gamma" not in trainable  # FREEZE_AFFINE
    assert "fpn/gn_p2/gamma" in trainable  # FPN norms are not the backbone's
    assert shapes["group0/block0/conv2/W"] == [3, 3, 2, 64]  # half-width ResNeXt: 64 channels in 32 groups
    assert not any("/gn/" in n for n in shapes if n.startswith("group"))
