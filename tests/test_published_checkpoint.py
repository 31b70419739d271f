"""Published checkpoints load as they are: the inventory equals the reference's, strict and tolerant loaders accept
a tensorpack checkpoint with exactly that inventory (plus its training extras), and ddcache 0.1's own checkpoints
(FPN biases) are refused with one line."""
import json
from pathlib import Path

import numpy as np
import pytest

import golden
import trainer  # noqa: F401  (legacy Keras before TensorFlow)
from ddcache.errors import UserError
from trainer.config import load_config

ROOT = Path(__file__).resolve().parents[1]
INVENTORY = json.loads((ROOT / "tests" / "data" / "reference_inventory.json").read_text())
CASE = "resnext_cell"


def ddcache_inventory(cfg):
    """{name: [shape, trainable]} of ddcache's training graph (no optimizer), as the reference dump lists it."""
    import tensorflow as tf
    from tensorpack.tfutils.tower import TowerContext

    from trainer.model.detector import CascadeRCNN

    tf1 = tf.compat.v1
    with tf.Graph().as_default():
        model = CascadeRCNN(cfg, "NCHW")
        inputs = [tf1.placeholder(s.dtype, s.shape, s.name) for s in model.inputs()]
        with TowerContext("", is_training=True):
            model.build_graph(*inputs)
        trainable = {v.op.name for v in tf1.trainable_variables()}
        return {v.op.name: [v.shape.as_list(), v.op.name in trainable] for v in tf1.global_variables()}


@pytest.mark.parametrize("config", sorted(INVENTORY))
def test_inventory_equals_the_references_for_the_full_models(config):
    """213 variables, same names, shapes and frozen set (FREEZE_AT 2: 33 frozen) as the published checkpoints."""
    ours = ddcache_inventory(load_config(str(ROOT / config)))
    assert ours == INVENTORY[config]
    assert len(ours) == 213 and sum(1 for _, t in ours.values() if not t) == 33


def write_checkpoint(path, values):
    """A TF checkpoint (tensorpack's format) holding exactly ``values`` ({name: array})."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    with tf.Graph().as_default(), tf1.Session() as sess:
        variables = [tf1.Variable(v, name=n) for n, v in values.items()]
        sess.run(tf1.variables_initializer(variables))
        prefix = tf1.train.Saver(variables).save(sess, str(path), write_meta_graph=False)
    return prefix


@pytest.fixture(scope="module")
def published_like(tmp_path_factory):
    """A checkpoint with the reference's inventory for the golden cell case plus what a tensorpack training run
    also saves (global_step, learning_rate, AccumGrad/counter, Momentum and AccumGrad slots of trainable vars)."""
    with np.load(ROOT / "tests" / "data" / golden.FIXTURE, allow_pickle=False) as f:
        names = [str(n) for n in f[f"{CASE}/variables"]]
        shapes = {n: tuple(int(d) for d in s.split(",")) for n, s in zip(names, f[f"{CASE}/variable_shapes"])}
        trainable = [str(n) for n in f[f"{CASE}/trainable"]]
    values = golden.seeded_weights(shapes, 0)
    extras = {"global_step": np.int64(1800000), "learning_rate": np.float32(1e-3), "AccumGrad/counter": np.int32(3)}
    for n in trainable:
        extras[f"{n}/Momentum"] = np.zeros(shapes[n], np.float32)
        extras[f"{n}/AccumGrad"] = np.zeros(shapes[n], np.float32)
    tmp = tmp_path_factory.mktemp("published")
    return write_checkpoint(tmp / "model-1800000", {**values, **extras}), values, tmp


def case_config():
    config, overrides = golden.CASES[CASE]
    return str(ROOT / config), list(overrides)


def test_strict_export_accepts_the_published_inventory(published_like, tmp_path):
    from trainer.inference_export import export_inference_weights
    from trainer.weights import read_weights

    prefix, values, _ = published_like
    config, overrides = case_config()
    out, kept, dropped = export_inference_weights(prefix, tmp_path / "inf.npz", load_config(config, overrides))
    assert sorted(kept) == sorted(values)
    assert "global_step" in dropped and "AccumGrad/counter" in dropped and len(dropped) == 3 + 2 * 90
    exported = read_weights(out)
    assert all(np.array_equal(exported[n], values[n]) for n in values)


def test_predictor_loads_the_published_inventory_strictly(published_like):
    from trainer.predictor import Predictor

    prefix, _, _ = published_like
    config, overrides = case_config()
    with Predictor(config, prefix, overrides) as predictor:
        image = np.full((120, 200, 3), 255, np.uint8)
        image[40:60, 30:170] = 0
        det = predictor.predict(image)
    assert det["boxes"].shape[1] == 4


def test_fine_tuning_from_the_published_inventory_reports_nothing_missing(published_like):
    import tensorflow as tf
    from tensorpack.tfutils.tower import TowerContext

    from trainer.model.detector import CascadeRCNN
    from trainer.fine_tune import load_weights

    prefix, values, _ = published_like
    config, overrides = case_config()
    tf1 = tf.compat.v1
    with tf.Graph().as_default() as g:
        model = CascadeRCNN(load_config(config, overrides), "NCHW")
        inputs = [tf1.placeholder(s.dtype, s.shape, s.name) for s in model.inputs()]
        with TowerContext("", is_training=True):
            model.build_graph(*inputs)
        model.optimizer()
        sess = tf1.Session(graph=g)
        sess.run(tf1.global_variables_initializer())
        report = load_weights(sess, prefix)
        sess.close()
    assert report.missing == [] and report.skipped == {} and report.unused == []
    assert sorted(report.loaded) == sorted(values)
    assert "global_step" in report.stripped and "AccumGrad/counter" in report.stripped


def test_a_ddcache_0_1_checkpoint_with_fpn_biases_is_refused_in_one_line(published_like, tmp_path):
    from trainer.inference_export import export_inference_weights

    _, values, _ = published_like
    config, overrides = case_config()
    old = dict(values)
    for lvl in range(2, 6):
        old[f"fpn/lateral_1x1_c{lvl}/b"] = np.zeros(32, np.float32)
        old[f"fpn/posthoc_3x3_p{lvl}/b"] = np.zeros(32, np.float32)
    prefix = write_checkpoint(tmp_path / "model-61", old)
    with pytest.raises(UserError, match="FPN convolution biases .* ddcache 0.1") as info:
        export_inference_weights(prefix, tmp_path / "x.npz", load_config(config, overrides))
    assert "\n" not in str(info.value)
