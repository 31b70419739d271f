"""Training loop pieces (LR schedule, resume position, eval scalars), CLI errors, and a real CPU smoke run.

The smoke run trains ``configs/tiny.yaml`` on a synthetic FinTabNet cache:
3 steps (stop inside epoch 2), then a restart that must continue from global
step 3 (not 0) and is stopped by Ctrl-C, which must leave a checkpoint.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from trainer.callbacks import eval_scalars, lr_function, resume_position

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


@pytest.mark.parametrize("gs,expected", [(0, (1, 4)), (3, (1, 1)), (4, (2, 4)), (9, (3, 3))])
def test_resume_position_keeps_epoch_boundaries_at_multiples(gs, expected):
    assert resume_position(gs, 4) == expected


def test_eval_scalars_drop_nan_and_flatten_categories():
    stats = {"AP": 0.5, "AP50": 0.75, "APs": float("nan"), "num_images": 3,
             "per_category": {"CELL": {"AP": 0.5, "AP50": 0.75, "AP75": float("nan"), "AR": 0.6, "num_gt": 9}}}
    assert eval_scalars(stats) == {"AP": 0.5, "AP50": 0.75, "CELL/AP": 0.5, "CELL/AP50": 0.75, "CELL/AR": 0.6}


def test_resumable_loop_shortens_only_the_first_epoch():
    from trainer.callbacks import ResumableLoop

    loop = ResumableLoop(first_epoch_steps=1)
    loop.config(steps_per_epoch=4, starting_epoch=3, max_epoch=5)
    loop._epoch_num = 3
    assert loop.steps_per_epoch == 1
    loop._epoch_num = 4
    assert loop.steps_per_epoch == 4


# ---- command line: user mistakes are one line, exit 2, before TensorFlow builds anything ----

def ddtrain(*args):
    code = "from trainer.cli import run; run()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT)


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """Synthetic FinTabNet pages -> a train cache (several tables) and a val cache, 72 dpi (small images)."""
    from ddcache.build import BuildOptions, build_cache
    from ddcache.resolution import Resolution
    from ddcache.synth import write_sample

    root = tmp_path_factory.mktemp("traincache")
    write_sample("fintabnet", root / "src", pages=6, seed=3)
    out = {}
    for split in ("train", "val"):
        out[split] = root / split
        build_cache(BuildOptions(dataset="fintabnet", source=str(root / "src"), split=split, out=str(out[split]),
                                 workers=1, resolution=Resolution(72)), progress=False)
    return out


def _one_line_error(r):
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("ddtrain: error:"), r.stderr
    return lines[0]


def test_unknown_override_key_is_one_line_error(caches, tmp_path):
    r = ddtrain("train", "--config", TINY, "--train", caches["train"], "--val", caches["val"], "--logdir",
                tmp_path / "run", "--override", "TRAIN.NO_SUCH_KEY=1")
    assert "NO_SUCH_KEY" in _one_line_error(r)
    assert not (tmp_path / "run").exists()


def test_wrong_override_type_is_one_line_error(caches, tmp_path):
    r = ddtrain("train", "--config", TINY, "--train", caches["train"], "--val", caches["val"], "--logdir",
                tmp_path / "run", "--override", "TRAIN.STEPS_PER_EPOCH=many")
    assert "TRAIN.STEPS_PER_EPOCH" in _one_line_error(r)


def test_missing_cache_is_one_line_error(caches, tmp_path):
    r = ddtrain("train", "--config", TINY, "--train", tmp_path / "nope", "--val", caches["val"], "--logdir",
                tmp_path / "run")
    assert "nope" in _one_line_error(r)


def test_missing_weights_is_one_line_error(caches, tmp_path):
    r = ddtrain("train", "--config", TINY, "--train", caches["train"], "--val", caches["val"], "--logdir",
                tmp_path / "run", "--weights", tmp_path / "w.npz", "--gpus", "0")
    assert "w.npz" in _one_line_error(r)


def test_interrupt_exits_130_with_one_line(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from trainer import train as train_mod

    def fake_train_main(*args, **kwargs):
        raise train_mod.TrainingInterrupted(7, str(tmp_path / "model-7"))

    monkeypatch.setattr(train_mod, "train_main", fake_train_main)
    result = CliRunner().invoke(train_mod.train, ["--config", "x", "--train", "a", "--val", "b", "--logdir", "d"])
    assert result.exit_code == 130
    expected = f"ddtrain: interrupted at global step 7; checkpoint {tmp_path}/model-7"
    assert result.output.strip().splitlines() == [expected]


# ---- the real thing, on CPU ----

def _stats(logdir):
    return json.loads((Path(logdir) / "stats.json").read_text())


def _train_to_500_command(caches, logdir, overrides):
    """``ddtrain train`` of the tiny config into ``logdir`` with one console line per step, for a signal to stop."""
    return [sys.executable, "-c", "from trainer.cli import run; run()", "train", "--config", str(TINY), "--train",
            str(caches["train"]), "--val", str(caches["val"]), "--logdir", str(logdir), "--steps", "500",
            "--workers", "1", "--gpus", "0", "--log-every", "1"] + [a for o in overrides for a in ("--override", o)]


def test_train_stop_then_resume_then_ctrl_c(caches, tmp_path):
    """In-process run to --steps 3 (stop inside epoch 2), then ``ddtrain train`` on the same log dir resumes
    at global step 3 with the LR schedule at step 3, and a real SIGINT after its first step leaves a
    checkpoint, exit code 130 and one line."""
    import signal

    from trainer.config import load_config
    from trainer.train import checkpoint_step, latest_checkpoint, train_main

    logdir = tmp_path / "run"
    # WARMUP 10: the LR changes at every step, so tensorpack logs the first change of each run's epoch
    overrides = ["TRAIN.STEPS_PER_EPOCH=2", "TRAIN.CHECKPOINT_PERIOD=1", "TRAIN.EVAL_PERIOD=1", "TRAIN.WARMUP=10"]
    lines = []
    result = train_main(TINY, [caches["train"]], [caches["val"]], logdir, overrides=overrides, steps=3, gpus=0,
                        workers=0, echo=lines.append)
    assert result["global_step"] == 3
    assert latest_checkpoint(logdir).endswith("model-3") and checkpoint_step(latest_checkpoint(logdir)) == 3
    assert (logdir / "model-2.index").is_file()  # the periodic save at the end of epoch 1
    assert "STEPS_PER_EPOCH: 2" in (logdir / "config.yaml").read_text()
    evals = [s for s in _stats(logdir) if "eval/AP50" in s]
    assert [s["global_step"] for s in evals] == [2, 3]  # end of epoch 1 (EVAL_PERIOD 1) and the --steps stop
    assert all(0.0 <= s["eval/AP50"] <= 1.0 for s in evals)
    assert [step for step, _ in result["eval"]] == [2, 3]

    cmd = _train_to_500_command(caches, logdir, overrides)
    # A shell's background job inherits SIGINT ignored; Python then never raises KeyboardInterrupt. Reset it.
    # stderr goes to a file: an unread pipe would block the child once TensorFlow's warnings fill it
    err_path = tmp_path / "ddtrain.stderr"
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, text=True, cwd=ROOT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        seen = []
        try:
            for line in proc.stdout:
                seen.append(line)
                if line.startswith("step   4/500"):  # the first step after the restart has run
                    break
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
    err = err_path.read_text()
    log = "".join(seen)
    assert f"resuming from {logdir}/model-3 (global step 3)" in log, log[-3000:]
    assert "from global step 3 to 500" in log, log[-3000:]
    cfg = load_config(str(TINY), overrides=tuple(overrides))
    # the 4th step runs with the rate of global step 3: the schedule continues, as the console line shows
    lr_shown = float(seen[-1].split("  lr ")[1].split()[0])
    assert lr_shown == pytest.approx(lr_function(cfg)(3), rel=1e-2), seen[-1]
    assert lr_function(cfg)(3) != pytest.approx(lr_function(cfg)(0), rel=1e-2)

    assert proc.returncode == 130, err[-3000:]
    step = checkpoint_step(latest_checkpoint(logdir))
    assert step >= 4
    assert [x for x in err.splitlines() if x.startswith("ddtrain")] == [
        "ddtrain: Ctrl-C: stopping after the current step and saving a checkpoint (Ctrl-C again to leave at once)",
        f"ddtrain: interrupted at global step {step}; checkpoint {logdir}/model-{step}"]
    steps = [s["global_step"] for s in _stats(logdir)]
    assert steps == sorted(steps) and steps[0] <= 3  # one history, appended to, never restarted


def test_exit_after_ctrl_c_is_bounded_even_if_shutdown_blocks():
    """After the interrupted checkpoint is reported, a blocked teardown cannot keep ddtrain alive."""
    code = ("import threading\n"
            "from ddcache.interrupts import exit_within\n"
            "exit_within(0.5, 7)\n"
            "threading.Thread(target=threading.Event().wait).start()  # non-daemon: blocks shutdown forever\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 7, r.stderr[-2000:]


def test_second_ctrl_c_leaves_even_if_the_main_thread_does_not_react():
    """A main thread that does not act on Ctrl-C (as one blocked in a TensorFlow step): the first Ctrl-C is
    acknowledged at once, the second one ends the process with code 130."""
    import signal

    # The main thread's handler ignores SIGINT *before* 'armed' is printed: a KeyboardInterrupt raised
    # between the print and a try block (the old race) cannot happen. The wakeup pipe still sees each signal.
    code = ("import signal, time\n"
            "from trainer.train import watch_interrupts\n"
            "watch_interrupts()\n"
            "signal.signal(signal.SIGINT, lambda *_: None)  # stuck: ignores the interrupt\n"
            "print('armed', flush=True)\n"
            "while True:\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().strip() == "armed"
        proc.send_signal(signal.SIGINT)
        assert proc.stderr.readline() == "\n"  # the notice starts on a line of its own (progress bars)
        first = proc.stderr.readline()
        assert first.startswith("ddtrain: Ctrl-C: stopping after the current step") and proc.poll() is None
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        assert proc.returncode == 130
        assert proc.stderr.read().strip() == "ddtrain: second Ctrl-C: leaving now without a new checkpoint"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_forked_childs_ctrl_c_does_not_count_as_the_second_one():
    """A terminal's Ctrl-C reaches the map workers too; their signals must not end ddtrain at once."""
    import signal

    code = ("import os, signal, time\n"
            "from trainer.train import watch_interrupts\n"
            "watch_interrupts()\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    try:\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "        time.sleep(5)\n"
            "    except KeyboardInterrupt:\n"
            "        pass\n"
            "    os._exit(0)\n"
            "os.waitpid(pid, 0)\n"
            "try:\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(5)\n"
            "except KeyboardInterrupt:\n"
            "    time.sleep(1)  # the watcher has had time to act on what it read\n"
            "print('survived', flush=True)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert r.returncode == 0 and r.stdout.strip() == "survived", r.stderr[-2000:]
    assert [x for x in r.stderr.splitlines() if x.startswith("ddtrain")] == [
        "ddtrain: Ctrl-C: stopping after the current step and saving a checkpoint (Ctrl-C again to leave at once)"]


def test_ctrl_c_inside_the_training_loop_is_a_flag_not_an_exception():
    """An exception raised by the SIGINT handler could land inside TensorFlow's C++ (SIGABRT seen in CI): inside
    the loop the handler only sets the flag StopOnCtrlC reads; outside it raises as usual."""
    from trainer import ctrl_c

    ctrl_c.REQUESTED.clear()
    ctrl_c.LOOP_RUNNING.set()
    try:
        ctrl_c.on_sigint(2, None)
        assert ctrl_c.REQUESTED.is_set()
    finally:
        ctrl_c.LOOP_RUNNING.clear()
        ctrl_c.REQUESTED.clear()
    with pytest.raises(KeyboardInterrupt):
        ctrl_c.on_sigint(2, None)
    assert not ctrl_c.REQUESTED.is_set()


def test_sigterm_to_the_process_group_saves_like_ctrl_c_and_old_checkpoints_are_pruned_after_a_resume(caches,
                                                                                                        tmp_path):
    """Was: SIGTERM (a scheduler's stop, sent to every process of the job) killed ddtrain at once: 'Terminated',
    exit 143, every step since the last periodic checkpoint lost. And a resumed run never deleted the earlier run's
    checkpoints (TRAIN.MAX_CHECKPOINTS counted only its own saves), so every restart left more behind."""
    import signal

    from trainer.train import checkpoint_step, latest_checkpoint, train_main

    logdir = tmp_path / "run"
    overrides = ["TRAIN.STEPS_PER_EPOCH=1", "TRAIN.CHECKPOINT_PERIOD=1", "TRAIN.EVAL_PERIOD=1000",
                 "TRAIN.MAX_CHECKPOINTS=1"]
    train_main(TINY, [caches["train"]], [caches["val"]], logdir, overrides=overrides, steps=2, gpus=0, workers=0,
               echo=lambda _: None)
    assert sorted(p.name for p in logdir.glob("*.index")) == ["model-2.index"]
    cmd = _train_to_500_command(caches, logdir, overrides)
    err_path = tmp_path / "ddtrain.stderr"
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, text=True, cwd=ROOT,
                                start_new_session=True)  # its own process group: the map worker gets it too
        try:
            for line in proc.stdout:
                if line.startswith("step   4/500"):
                    break
            os.killpg(proc.pid, signal.SIGTERM)
            proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    err = err_path.read_text()
    assert proc.returncode == 143, err[-3000:]
    step = checkpoint_step(latest_checkpoint(logdir))
    assert step >= 4
    assert [x for x in err.splitlines() if x.startswith("ddtrain")] == [
        "ddtrain: SIGTERM: stopping after the current step and saving a checkpoint",
        f"ddtrain: interrupted at global step {step}; checkpoint {logdir}/model-{step}"]
    assert sorted(p.name for p in logdir.glob("*.index")) == [f"model-{step}.index"]  # model-2 pruned too


def test_a_checkpoint_that_cannot_be_written_stops_the_run(tmp_path):
    """tensorpack's ModelSaver logged a failed save (a full disk) and went on: exit 0, 'checkpoint model-N', no file."""
    import errno

    from trainer.callbacks import CheckpointSaver
    from trainer.guards import RunFailure

    class FullDisk:
        def save(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

    failure = RunFailure()
    saver = CheckpointSaver(failure=failure, checkpoint_dir=str(tmp_path))
    saver.saver, saver.path = FullDisk(), str(tmp_path / "model")
    assert saver._save() is False
    assert failure.reason == f"could not write a checkpoint into {tmp_path} ([Errno 28] No space left on device)"
