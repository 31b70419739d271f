"""Box ops of the graph: IoU against hand-computed values, encode/decode round trip with weights, the
reference's decode clamp log(MAX_SIZE / 16), clipping."""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from trainer.model import box_ops

tf1 = tf.compat.v1


def run(fn, *arrays):
    """Evaluate ``fn(*tensors)`` in a fresh graph (the trainer runs in graph mode)."""
    with tf.Graph().as_default(), tf1.Session() as sess:
        return sess.run(fn(*[tf.constant(np.asarray(a, np.float32)) for a in arrays]))


def test_pairwise_iou_matches_hand_computed_values():
    a = [[0, 0, 10, 10], [5, 5, 15, 25]]
    b = [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [2, 3, 4, 8]]
    iou = run(box_ops.pairwise_iou, a, b)
    # a0 vs b1: overlap 5x10 = 50, union 100 + 100 - 50 = 150
    # a1 (10x20=200) vs b0: overlap [5,10]x[5,10] = 25, union 100 + 200 - 25 = 275
    # a1 vs b1: overlap [5,15]x[5,10] = 50, union 200 + 100 - 50 = 250
    # a0 vs b3: b3 (2x5=10) inside a0 -> 10 / 100
    expected = [[1.0, 50 / 150, 0.0, 10 / 100], [25 / 275, 50 / 250, 0.0, 0.0]]
    np.testing.assert_allclose(iou, expected, rtol=1e-6)


def test_iou_of_two_empty_boxes_is_zero_not_nan():
    iou = run(box_ops.pairwise_iou, [[3, 3, 3, 3]], [[0, 0, 0, 0], [0, 0, 4, 4]])
    np.testing.assert_array_equal(iou, [[0.0, 0.0]])


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (30.0, 30.0, 15.0, 15.0)])
def test_encode_decode_round_trip_with_weights(weights):
    rng = np.random.RandomState(1)
    xy = rng.uniform(0, 500, (50, 2))
    anchors = np.concatenate([xy, xy + rng.uniform(4, 200, (50, 2))], axis=1)
    xy = rng.uniform(0, 500, (50, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 300, (50, 2))], axis=1)
    deltas, back = run(lambda b, a: (box_ops.encode(b, a, weights), box_ops.decode(box_ops.encode(b, a, weights), a, 5.0, weights)),
                       boxes, anchors)
    np.testing.assert_allclose(back, boxes, rtol=1e-4, atol=1e-2)
    # the weights scale the targets: dx = wx * (gx - ax) / aw
    gx, ax, aw = (boxes[:, 0] + boxes[:, 2]) / 2, (anchors[:, 0] + anchors[:, 2]) / 2, anchors[:, 2] - anchors[:, 0]
    np.testing.assert_allclose(deltas[:, 0], weights[0] * (gx - ax) / aw, rtol=1e-4, atol=1e-4)
    gh, ah = boxes[:, 3] - boxes[:, 1], anchors[:, 3] - anchors[:, 1]
    np.testing.assert_allclose(deltas[:, 3], weights[3] * np.log(gh / ah), rtol=1e-4, atol=1e-4)


def test_decode_known_delta_and_clamp():
    anchor = [[10, 20, 30, 60]]  # centre (20, 40), size 20 x 40
    clamp = box_ops.scale_clamp(1408)
    out = run(lambda d, a: box_ops.decode(d, a, clamp, (10.0, 10.0, 5.0, 5.0)), [[10.0, -5.0, 5 * np.log(2.0), 0.0]],
              anchor)
    # dx/10 = 1 -> cx = 20 + 20 = 40; dy/10 = -0.5 -> cy = 40 - 20 = 20; w doubles to 40; h stays 40
    np.testing.assert_allclose(out, [[20, 0, 60, 40]], rtol=1e-5)
    huge = run(lambda d, a: box_ops.decode(d, a, clamp), [[0.0, 0.0, 1e4, 1e4]], anchor)
    assert np.all(np.isfinite(huge))
    # the reference clamps at log(MAX_SIZE / 16) with MAX_SIZE rounded to the resolution requirement
    np.testing.assert_allclose(huge[0, 2] - huge[0, 0], 20 * 1408 / 16, rtol=1e-5)
    np.testing.assert_allclose(huge[0, 3] - huge[0, 1], 40 * 1408 / 16, rtol=1e-5)


def test_scale_clamp_is_log_max_size_over_16():
    assert box_ops.scale_clamp(1408) == pytest.approx(np.log(88.0))
    assert box_ops.scale_clamp(1344) == pytest.approx(np.log(84.0))


def test_decode_matches_numpy_reference_formula():
    """Centre (x0 + x1) * 0.5, size exp(min(d, clamp)) * anchor size, deltas divided by the weights first."""
    rng = np.random.RandomState(3)
    xy = rng.uniform(0, 300, (40, 2))
    anchors = np.concatenate([xy, xy + rng.uniform(1, 100, (40, 2))], axis=1).astype(np.float32)
    deltas = rng.normal(0, 2, (40, 4)).astype(np.float32) * np.float32([10, 10, 5, 5])
    clamp = box_ops.scale_clamp(448)
    got = run(lambda d, a: box_ops.decode(d, a, clamp, (10.0, 10.0, 5.0, 5.0)), deltas, anchors)
    d = deltas / np.float32([10, 10, 5, 5])
    size = anchors[:, 2:] - anchors[:, :2]
    centre = (anchors[:, 2:] + anchors[:, :2]) * np.float32(0.5)
    new_size = np.exp(np.minimum(d[:, 2:], np.float32(clamp))) * size
    new_centre = d[:, :2] * size + centre
    expected = np.concatenate([new_centre - new_size * 0.5, new_centre + new_size * 0.5], axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4)


def test_clip_to_image():
    out = run(lambda b: box_ops.clip(b, tf.constant([50, 80])), [[-5, -3, 100, 40], [10, 60, 20, 70]])
    np.testing.assert_array_equal(out, [[0, 0, 80, 40], [10, 50, 20, 50]])
