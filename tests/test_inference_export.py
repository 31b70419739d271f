"""trainer.inference_export: training checkpoints -> inference-only .npz, and ``ddtrain export``."""
import numpy as np
import pytest
import tensorflow as tf

from ddcache.errors import UserError
from trainer.inference_export import export_inference_weights
from trainer.weights import is_training_only, read_weights, resolve_weights

tf1 = tf.compat.v1


def save_training_checkpoint(prefix):
    """A real training checkpoint of a two-layer graph: Momentum + AccumGrad slots, global_step, learning_rate.

    Built with the optimizers tensorpack training uses, so the slot names are
    the real ones, not names this test guesses.
    """
    from tensorpack.tfutils.optimizer import AccumGradOptimizer

    with tf.Graph().as_default():
        x = tf1.placeholder(tf.float32, [None, 3])
        with tf1.variable_scope("conv0"):
            w = tf1.get_variable("W", [3, 4])
            gamma = tf1.get_variable("gn/gamma", [4], initializer=tf1.ones_initializer())
        with tf1.variable_scope("fc"):
            b = tf1.get_variable("b", [4], initializer=tf1.constant_initializer(0.5))
        cost = tf.reduce_sum(tf.matmul(x, w) * gamma + b)
        step = tf1.train.get_or_create_global_step()
        lr = tf1.get_variable("learning_rate", initializer=0.01, trainable=False)
        opt = AccumGradOptimizer(tf1.train.MomentumOptimizer(lr, 0.9), 2)
        train_op = opt.minimize(cost, global_step=step)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            sess.run(train_op, {x: np.ones((2, 3), np.float32)})
            names = [v.op.name for v in tf1.global_variables()]
            values = dict(zip(names, sess.run(tf1.global_variables())))
            tf1.train.Saver().save(sess, str(prefix))
    return values


def test_export_without_config_drops_training_variables(tmp_path):
    values = save_training_checkpoint(tmp_path / "model-1")
    assert any(n.endswith("/Momentum") for n in values) and any("AccumGrad" in n for n in values)
    out, kept, dropped = export_inference_weights(str(tmp_path / "model-1"), tmp_path / "inf")
    assert out.endswith("inf.npz")
    assert sorted(kept) == ["conv0/W", "conv0/gn/gamma", "fc/b"]
    assert "global_step" in dropped and "learning_rate" in dropped
    with np.load(out) as npz:
        assert sorted(npz.files) == sorted(kept)
        for name in kept:
            np.testing.assert_array_equal(npz[name], values[name])
    # the exported file reads back the same way
    again = read_weights(out)
    assert sorted(again) == sorted(kept)


@pytest.mark.parametrize("name, training", [
    ("global_step", True), ("learning_rate", True), ("conv0/W/Momentum", True), ("fc/b/AccumGrad", True),
    ("AccumGrad/counter", True), ("EMA/total_cost/EMA", True), ("conv0/W", False), ("fpn/gn_c2/gamma", False),
    ("cascade_rcnn_stage1/outputs/class/W", False)])
def test_is_training_only(name, training):
    assert is_training_only(name) is training


def test_resolve_weights_forms_and_missing(tmp_path):
    save_training_checkpoint(tmp_path / "model-7")
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model-7"\n')
    prefix = str(tmp_path / "model-7")
    assert resolve_weights(prefix) == prefix
    assert resolve_weights(prefix + ".index") == prefix
    assert resolve_weights(str(tmp_path)) == prefix
    with pytest.raises(UserError, match="no such weights file"):
        resolve_weights(str(tmp_path / "model-8"))
    with pytest.raises(UserError, match="no such weights file"):
        resolve_weights(str(tmp_path / "nope.npz"))


def test_export_cli_missing_weights_is_one_line_error(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "from trainer.cli import run; run()", "export", "--weights",
                           str(tmp_path / "missing-1"), "--out", str(tmp_path / "x.npz")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("ddtrain: error:") and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.npz").exists()


def test_export_round_trip_gives_identical_predictions(tmp_path, tmp_path_factory):
    """Tiny detector: predictions from the training checkpoint and from its exported .npz are identical."""
    from click.testing import CliRunner

    from test_predictor import TINY, random_checkpoint, shared_predictor, table_image, tiny_cfg
    from trainer.cli import main
    from trainer.predictor import Predictor

    ckpt = random_checkpoint(tmp_path_factory, 1)
    result = CliRunner().invoke(main, ["export", "--weights", ckpt, "--out", str(tmp_path / "tiny.npz"), "--config",
                                       str(TINY)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stored = read_weights(ckpt)
    with np.load(tmp_path / "tiny.npz") as npz:
        names = set(npz.files)
    assert "global_step" in stored and any(n.endswith("/Momentum") for n in stored)
    assert not any(is_training_only(n) for n in names)
    assert names == {n for n in stored if not is_training_only(n)}

    image = table_image()
    predictor = shared_predictor(tmp_path_factory)
    assert predictor.weights_path == ckpt
    from_ckpt = predictor.predict(image)
    from_npz = Predictor(tiny_cfg(), tmp_path / "tiny.npz").predict(image)
    assert len(from_ckpt["scores"]) > 0
    for key in ("boxes", "scores", "labels"):
        np.testing.assert_array_equal(from_ckpt[key], from_npz[key])
