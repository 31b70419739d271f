"""trainer.predictor: the Predictor API (eval resize, boxes back in original pixels) and ``ddtrain predict``."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from ddcache.errors import UserError

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
# random-init heads score near 1/num_classes: keep every detection so outputs are not empty
LOW_THRESH = ("OUTPUT.RESULT_SCORE_THRESH=0.0",)


def tiny_cfg(overrides=LOW_THRESH):
    from trainer.config import load_config

    return load_config(str(TINY), overrides)


def save_random_checkpoint(cfg, prefix, seed):
    """A tensorpack-style training checkpoint of a freshly initialised tiny detector.

    Besides the model variables it holds what training adds (``global_step``,
    ``learning_rate``, a ``*/Momentum`` slot per trainable variable, made by
    the real MomentumOptimizer), so export has something to strip. Returns
    the checkpoint prefix.
    """
    import tensorflow as tf
    from tensorpack.tfutils.tower import PredictTowerContext

    from trainer.model.detector import CascadeRCNN, default_data_format

    tf1 = tf.compat.v1
    model = CascadeRCNN(cfg, default_data_format())
    with tf.Graph().as_default():
        tf1.set_random_seed(seed)
        inputs = [tf1.placeholder(s.dtype, s.shape, s.name) for s in model.get_input_signature()]
        with PredictTowerContext(""):
            model.build_graph(*inputs)
        trainable = tf1.trainable_variables()
        step = tf1.train.get_or_create_global_step()
        lr = tf1.get_variable("learning_rate", initializer=1e-3, trainable=False)
        tf1.train.MomentumOptimizer(lr, 0.9).apply_gradients([(tf.zeros_like(v), v) for v in trainable],
                                                              global_step=step)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            tf1.train.Saver().save(sess, str(prefix))
    return str(prefix)


_SAVED = {}  # seed -> checkpoint prefix, shared by the test modules of this session (a build costs seconds)


def random_checkpoint(tmp_path_factory, seed):
    """``<session tmp>/tiny/seed<seed>/model-0``: a random tiny checkpoint, saved once per session and seed.

    Tests only read it (export writes elsewhere), so sharing it is safe.
    """
    if seed not in _SAVED:
        if "root" not in _SAVED:
            _SAVED["root"] = tmp_path_factory.mktemp("tiny")
        _SAVED[seed] = save_random_checkpoint(tiny_cfg(), _SAVED["root"] / f"seed{seed}" / "model-0", seed)
    return _SAVED[seed]


def shared_predictor(tmp_path_factory):
    """One ``Predictor`` of the seed-1 checkpoint for the session (building the graph is the slow part)."""
    from trainer.predictor import Predictor

    if "predictor" not in _SAVED:
        _SAVED["predictor"] = Predictor(tiny_cfg(), random_checkpoint(tmp_path_factory, 1))
    return _SAVED["predictor"]


@pytest.fixture
def tiny_checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory, 1)


def table_image():
    """A 150 x 260 white image with dark ruled lines (something for the convolutions to respond to)."""
    image = np.full((150, 260, 3), 255, np.uint8)
    for y in range(10, 150, 22):
        cv2.line(image, (5, y), (255, y), (30, 30, 30), 1)
    for x in range(5, 260, 64):
        cv2.putText(image, "12.3", (x + 4, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    return image


def test_predict_returns_boxes_in_original_pixels(tmp_path_factory):
    from trainer.train_data import eval_preprocess

    cfg = tiny_cfg()
    predictor = shared_predictor(tmp_path_factory)
    image = table_image()
    det = predictor.predict(image)
    k = len(det["scores"])
    assert k > 0
    assert det["boxes"].shape == (k, 4) and det["labels"].dtype == np.int32
    assert det["label_names"] == [cfg.DATA.CATEGORIES[i - 1] for i in det["labels"]]
    assert np.all(np.diff(det["scores"]) <= 0)
    h, w = image.shape[:2]
    assert det["boxes"][:, [0, 2]].max() <= w and det["boxes"][:, [1, 3]].max() <= h and det["boxes"].min() >= 0
    # the same detections straight from the graph, in resized pixels: ours are those divided by the scale
    resized, scale = eval_preprocess({"image": image}, cfg)
    assert resized.shape[:2] != image.shape[:2]  # the eval resize is really exercised
    raw_boxes, raw_scores, _ = predictor.graph_fn(resized)
    # the reference's mapping: one scale sqrt(sx * sy) for both axes
    one_scale = np.sqrt(resized.shape[0] / h * resized.shape[1] / w)
    mapped = np.clip(raw_boxes / one_scale, 0, [w, h, w, h])
    order = np.argsort(-raw_scores, kind="stable")
    np.testing.assert_allclose(det["boxes"], mapped[order], rtol=1e-5, atol=1e-3)
    # a score threshold only removes detections
    high = float(np.median(det["scores"]))
    kept = predictor.predict(image, score_thresh=high)
    assert 0 < len(kept["scores"]) <= k and kept["scores"].min() >= high


def test_predict_cli_writes_png_and_json(tiny_checkpoint, tmp_path):
    from trainer.cli import main

    image = table_image()
    cv2.imwrite(str(tmp_path / "page.png"), image)
    result = CliRunner().invoke(main, ["predict", "--config", str(TINY), "--weights", tiny_checkpoint, "--image",
                                       str(tmp_path / "page.png"), "--out", str(tmp_path / "out"),
                                       "--set", "OUTPUT.RESULT_SCORE_THRESH=0.99", "--score-thresh", "0.0"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    png = cv2.imread(str(tmp_path / "out" / "page.detections.png"))
    assert png is not None and png.shape[0] >= image.shape[0]
    record = json.loads((tmp_path / "out" / "page.detections.json").read_text())
    assert (record["width"], record["height"]) == (260, 150)
    # random-init scores are far below 0.99: detections exist only because --score-thresh lowered the graph's
    assert len(record["boxes"]) == len(record["scores"]) == len(record["labels"]) > 0
    assert record["score_thresh"] == 0.0 and max(record["scores"]) < 0.99
    boxes = np.array(record["boxes"])
    assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= 260 and boxes[:, [1, 3]].max() <= 150
    assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])
    assert set(record["labels"]) <= {"CELL"}


def test_weights_of_another_config_are_refused(tiny_checkpoint, tmp_path):
    """Strict loading: a missing model variable is an error, not a silently random layer."""
    from trainer.weights import read_weights
    from trainer.predictor import Predictor

    weights = read_weights(tiny_checkpoint)
    dropped = next(n for n in weights if n.endswith("/W") and "Momentum" not in n)
    del weights[dropped]
    np.savez(tmp_path / "partial.npz", **weights)
    with pytest.raises(UserError, match="missing"):
        Predictor(tiny_cfg(), tmp_path / "partial.npz")
    with pytest.raises(UserError, match="no such weights file"):
        Predictor(tiny_cfg(), tmp_path / "nothing.npz")
