"""Horovod data-parallel training for real: ``horovodrun -np 2 --gloo ... train --horovod`` on CPU.

Two ranks train ``configs/tiny.yaml`` on a small synthetic cache, then a
second ``horovodrun`` on the same log dir resumes. Checked: both ranks
stepped to ``--steps``; in each data epoch the ranks read disjoint samples
that together cover the cache (``DDTRAIN_SAMPLE_LOG``); only rank 0 wrote
checkpoints (rank 0's ``log.log`` names each save, rank 1 reports the saver
skipped); the re-run resumed on both ranks from rank 0's checkpoint.

Needs Horovod built with TensorFlow and Gloo (``bash tools/install_horovod.sh
cpu``); skipped otherwise (CI does not compile Horovod). Two ranks on two
cores take ~25 s per run. The shim and the sample log are also tested without Horovod.
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cache_factory import make_cache
from trainer.sample_log import ENV, log_path, read_log

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
TRAIN_SAMPLES = 12

needs_horovod = pytest.mark.skipif(
    shutil.which("horovodrun") is None or importlib.util.find_spec("horovod") is None,
    reason="Horovod is not installed (bash tools/install_horovod.sh cpu builds it, ~3-9 min)")


def test_shim_gives_tensorpacks_trainer_module_the_tf1_names(monkeypatch):
    import tensorflow as tf
    from tensorpack.train import trainers

    from trainer.horovod_compat import patch_horovod_trainer

    monkeypatch.setattr(trainers, "tf", trainers.tf)  # restored after the test
    assert not hasattr(trainers.tf, "global_variables")  # what HorovodTrainer.initialize trips on
    patch_horovod_trainer()
    assert trainers.tf.global_variables is tf.compat.v1.global_variables
    assert not hasattr(tf, "global_variables")  # the tensorflow module itself is untouched
    patch_horovod_trainer()  # idempotent
    assert trainers.tf is tf.compat.v1


def test_sample_log_records_what_the_source_reads(tmp_path):
    from ddcache.source import CacheSource
    from trainer.sample_log import record_reads

    make_cache(tmp_path / "c", 4)
    source = CacheSource([tmp_path / "c"], rank=1, world=2, shuffle=False)
    assert record_reads(source, 1, environ={}) is source  # off unless asked for
    df = record_reads(source, 1, environ={ENV: str(tmp_path / "log")})
    df.reset_state()
    for _ in range(2):  # two epochs
        keys = [item.key for item in df]
    assert keys == ["00000001", "00000003"]
    assert read_log(log_path(tmp_path / "log", 1)) == [(0, 1, "00000001"), (0, 3, "00000003"),
                                                       (1, 1, "00000001"), (1, 3, "00000003")]


def horovod_train(caches, logdir, outdir, samples, steps):
    """Run 2 ranks on localhost with Gloo; each rank's stdout/stderr go to ``outdir/rank.R/``."""
    cmd = ["horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", "--output-filename", str(outdir),
           sys.executable, "-m", "trainer.cli_main", "train", "--horovod", "--config", str(TINY),
           "--train", str(caches["train"]), "--val", str(caches["val"]), "--logdir", str(logdir),
           "--steps", str(steps), "--workers", "0", "--eval-max-datapoints", "1",
           "--override", "TRAIN.STEPS_PER_EPOCH=2", "--override", "TRAIN.CHECKPOINT_PERIOD=1"]
    env = {**os.environ, ENV: str(samples)}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return [(Path(outdir) / f"rank.{rank}" / "stdout").read_text() for rank in (0, 1)]


def saved_in_log(logdir):
    """Checkpoint names rank 0's ``LOGDIR/log.log`` reports as saved (tensorpack: "Model saved to .../model-N.")."""
    return re.findall(r"Model saved to \S*/(model-\d+)\.", (Path(logdir) / "log.log").read_text())


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("hvd")
    grid = dict(rows=lambda i: 3 + i % 3, cols=lambda i: 2 + i % 3, cell_px=40)
    return {"train": make_cache(root / "train", TRAIN_SAMPLES, **grid),
            "val": make_cache(root / "val", 2, start=100, **grid)}


@needs_horovod
def test_two_ranks_train_on_disjoint_data_only_rank0_saves_and_both_resume(caches, tmp_path):
    from trainer.train import checkpoint_step, latest_checkpoint

    logdir, samples = tmp_path / "run", tmp_path / "samples"
    out = horovod_train(caches, logdir, tmp_path / "out1", samples, steps=3)
    for rank, text in enumerate(out):
        assert f"data part {rank + 1}/2" in text, text[-3000:]
        assert "done at global step 3" in text, text[-3000:]
    # rank 0 logs to LOGDIR/log.log; rank 1 (console only) skips the saver
    assert saved_in_log(logdir) == ["model-2", "model-3"]  # end of epoch 1, then the --steps stop
    assert "CheckpointSaver is chief-only, skipped" in out[1] and "rank 1 writes no checkpoints" in out[1]
    assert checkpoint_step(latest_checkpoint(logdir)) == 3

    reads = [read_log(log_path(samples, rank)) for rank in (0, 1)]
    assert reads[0] and reads[1]
    for epoch in {e for e, _, _ in reads[0]} & {e for e, _, _ in reads[1]}:
        mine = [{i for e, i, _ in rows if e == epoch} for rows in reads]
        assert not mine[0] & mine[1], f"epoch {epoch}: both ranks read {sorted(mine[0] & mine[1])}"
    # The input queue reads ahead of the 3 steps, so epoch 0 (6 samples per rank) was read in full.
    epoch0 = [{i for e, i, _ in rows if e == 0} for rows in reads]
    assert [len(s) for s in epoch0] == [TRAIN_SAMPLES // 2] * 2
    assert epoch0[0] | epoch0[1] == set(range(TRAIN_SAMPLES))

    out = horovod_train(caches, logdir, tmp_path / "out2", samples, steps=5)
    for text in out:
        assert f"resuming from {logdir}/model-3 (global step 3)" in text, text[-3000:]
        assert "done at global step 5" in text, text[-3000:]
    assert "CheckpointSaver is chief-only, skipped" in out[1]
    assert saved_in_log(logdir) == ["model-4", "model-5"]  # this run's log.log
    assert checkpoint_step(latest_checkpoint(logdir)) == 5
