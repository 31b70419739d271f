"""The reference's optimisation semantics: LR per step on 1 / 8 / 16 GPUs, accumulation, and the optimizer's update."""
import numpy as np
import pytest

import trainer  # noqa: F401  (legacy Keras before TensorFlow)
from trainer import lr_schedule as L
from trainer.config import load_config

CELL = "configs/cell.yaml"


def cfg_with(**train):
    return load_config(CELL, [f"TRAIN.{k}={v}" for k, v in train.items()])


def test_seed_recipe_on_one_gpu_is_the_eight_gpu_recipe_stretched():
    """BASE_LR 1e-3, LR_SCHEDULE [50000], WARMUP 1000 (FACTS.md section 3): on 1 GPU 8x the steps, each update
    of 8 accumulated images; warm-up in steps on both."""
    cfg = load_config(CELL)
    one, eight = L.resolve(cfg.TRAIN, 1), L.resolve(cfg.TRAIN, 8)
    assert (one.accumulate, one.lr_divisor, one.total_steps) == (8, 8.0, 400000)
    assert (eight.accumulate, eight.lr_divisor, eight.total_steps) == (1, 8.0, 50000)
    steps = [0, 1, 500, 999, 1000, 1001, 49999, 399999]
    expected = [1e-5, 1e-5 + 0.99e-6, 1e-5 + 0.5 * 0.99e-3, 1e-5 + 0.999 * 0.99e-3, 1e-3, 1e-3, 1e-3, 1e-3]
    for sched in (one, eight):
        assert [lr for _, lr in L.table(sched, steps)] == pytest.approx(expected, rel=1e-9)


def test_decays_are_stretched_by_eight_over_the_gpus_and_land_on_epoch_ends():
    """tensorpack's '1x' schedule, 8-GPU steps [120000, 160000, 180000], 500 steps per epoch."""
    cfg = cfg_with(LR_SCHEDULE="[120000,160000,180000]", BASE_LR=0.01, WARMUP_INIT_LR=0.001)
    table = {g: L.resolve(cfg.TRAIN, g) for g in (1, 2, 8, 16)}
    for g, steps in ((8, [1000, 120000, 160000]), (1, [1000, 960000, 1280000])):
        assert [e[0] for e in table[g].epoch_events] == steps
        assert [e[1] for e in table[g].epoch_events] == pytest.approx([0.01, 0.001, 1e-4])
    assert [table[g].total_steps for g in (1, 2, 8, 16)] == [1440000, 720000, 180000, 90000]
    assert [table[g].accumulate for g in (1, 2, 8, 16)] == [8, 4, 1, 1]
    lr1 = lambda s: L.learning_rate_at(s, table[1])  # noqa: E731
    assert [lr1(959999), lr1(960000), lr1(1279999), lr1(1280000)] == pytest.approx([0.01, 0.001, 0.001, 1e-4])
    # WARMUP_INIT_LR is defined for 8 images: scaled by min(8 / g, 1), so 16 GPUs start at half of it
    assert table[16].warmup_init_lr == pytest.approx(0.0005) and table[1].warmup_init_lr == pytest.approx(0.001)


def test_the_per_image_step_size_is_the_same_on_any_gpu_count():
    cfg = load_config(CELL)
    per_image = {g: L.effective_lr_per_image(5000, L.resolve(cfg.TRAIN, g), g) for g in (1, 2, 4, 8)}
    assert len(set(per_image.values())) == 1 and per_image[1] == pytest.approx(1e-3 / 8)


def test_decay_inside_the_warmup_is_overwritten_by_it_as_in_the_reference():
    cfg = cfg_with(WARMUP=1000, STEPS_PER_EPOCH=100, LR_SCHEDULE="[50,100000]", BASE_LR=1.0, WARMUP_INIT_LR=0.0)
    sched = L.resolve(cfg.TRAIN, 8)  # decay at epoch floor(50 / 100) = 0, i.e. before the first step
    assert L.learning_rate_at(0, sched) == pytest.approx(0.1)  # the epoch setter runs after the warm-up's at step 0
    assert L.learning_rate_at(1, sched) == pytest.approx(0.001)  # then the warm-up sets every step
    assert L.learning_rate_at(5000, sched) == pytest.approx(1.0)


def test_reference_batch_one_means_the_lr_as_written():
    cfg = load_config("configs/tiny.yaml")
    sched = L.resolve(cfg.TRAIN, 1)
    assert (sched.accumulate, sched.lr_divisor) == (1, 1.0)
    assert sched.total_steps == int(cfg.TRAIN.LR_SCHEDULE[-1])


@pytest.mark.parametrize("gpus", [3, 5, 12])
def test_gpu_counts_that_do_not_divide_the_reference_batch_are_refused(gpus):
    with pytest.raises(ValueError, match="divide"):
        L.accumulation(gpus, 8)


def test_optimizer_accumulates_eight_steps_then_applies_lr_over_eight_times_the_sum():
    """CascadeRCNN.optimizer on 1 device: no update for 7 steps, then one momentum step with
    lr / 8 * (sum of the 8 gradients) -- the same update 8 GPUs make from 8 images. Three cycles, so an
    update decided on a stale counter (tensorpack's AccumGradOptimizer on resource variables) shows."""
    import tensorflow as tf

    from trainer.model.detector import CascadeRCNN

    tf1 = tf.compat.v1
    cfg = load_config(CELL)
    with tf.Graph().as_default(), tf1.Session() as sess:
        w = tf1.get_variable("w", initializer=np.float32([1.0, -2.0]))
        x = tf1.placeholder(tf.float32, [2])
        loss = tf.reduce_sum(w * x)  # gradient = x
        opt = CascadeRCNN(cfg, "NCHW", num_devices=1).optimizer()
        train_op = opt.minimize(loss)
        names = sorted(v.op.name for v in tf1.global_variables())
        sess.run(tf1.global_variables_initializer())
        tf1.get_variable_scope().reuse_variables()
        sess.run(tf1.assign(tf1.get_variable("learning_rate"), 0.8))
        xs = [np.float32([i, 2 * i]) for i in range(1, 25)]
        seen = []
        for v in xs:
            sess.run(train_op, {x: v})
            seen.append(sess.run(w))
    # tensorpack's variable names: checkpoints carry the reference's training extras
    assert names == ["AccumGrad/counter", "learning_rate", "w", "w/AccumGrad", "w/Momentum"]
    expected, velocity = np.float32([1.0, -2.0]), np.zeros(2, np.float32)
    for cycle in range(3):
        block = slice(8 * cycle, 8 * cycle + 7)
        assert all(np.allclose(s, expected, rtol=1e-6) for s in seen[block])  # accumulating: no update
        velocity = 0.9 * velocity + np.sum(xs[8 * cycle:8 * cycle + 8], axis=0)  # momentum on the summed gradient
        expected = expected - 0.8 / 8 * velocity
        np.testing.assert_allclose(seen[8 * cycle + 7], expected, rtol=1e-5)
