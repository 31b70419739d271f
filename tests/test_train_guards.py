"""ddtrain train guards: pre-flight errors write nothing; a run that cannot go on stops with one line and no
checkpoint (non-finite loss, corrupt record, dead map worker, an input without a usable sample); seeded runs
repeat exactly on CPU; the console line and the log filters."""
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from cache_factory import corrupt_record, make_cache, make_sample, write_records
from ddcache import categories as C
from ddcache.codec import encode_record
from ddcache.errors import UserError
from test_train_smoke import caches  # noqa: F401  (the module fixture: a small train and val cache)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
FAST = ["TRAIN.STEPS_PER_EPOCH=50", "TRAIN.EVAL_PERIOD=100"]  # no periodic checkpoint or evaluation in a short run


def _listing(path):
    return sorted((str(p.relative_to(path)), p.read_bytes()) for p in Path(path).rglob("*") if p.is_file())


def _ddtrain(*args, timeout=300):
    code = "from trainer.cli import run; run()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def _one_line_error(r, code=2):
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == code, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("ddtrain: error:"), r.stderr[-3000:]
    return lines[0]


def _checkpoints(logdir):
    return sorted(p.name for p in Path(logdir).glob("model-*"))


# ---- pre-flight: one line, exit 2, nothing written into the log dir (not even config.yaml) ----

@pytest.mark.parametrize("override, message", [
    ("TRAIN.BASE_LR=-1", "TRAIN.BASE_LR: -1.0 must be > 0"),
    ("DATA.CATEGORIES=[TABLE]", "has no TABLE boxes (it holds CELL"),  # a table-mode cache holds no TABLE box
    ("DATA.CATEGORIES=[CELL, ROWS]", "unknown category 'ROWS'"),
])
def test_preflight_failure_is_one_line_and_leaves_the_log_dir_untouched(caches, tmp_path, override, message):
    logdir = tmp_path / "run"
    logdir.mkdir()
    (logdir / "config.yaml").write_text("the previous run's config\n")
    before = _listing(logdir)
    r = _ddtrain("train", "--config", TINY, "--train", caches["train"], "--val", caches["val"], "--logdir", logdir,
                 "--override", override)
    assert message in _one_line_error(r)
    assert _listing(logdir) == before


def test_missing_log_dir_folder_is_one_line_error(caches, tmp_path):
    r = _ddtrain("train", "--config", TINY, "--train", caches["train"], "--val", caches["val"], "--logdir",
                 tmp_path / "no" / "run")
    assert f"folder {tmp_path / 'no'} does not exist" in _one_line_error(r)
    assert not (tmp_path / "no").exists()


def _cache_of(path, boxes):
    """A 4-record cache whose every record has ``boxes`` (xyxy) as its CELL boxes (counted in the manifest).

    The box bytes are put into the packed record afterwards: ``encode_record`` itself refuses NaN boxes, so
    a cache holding them comes from someone else's writer.
    """
    import msgpack

    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    raws = []
    for i in range(4):
        s = make_sample(i, 2, 2)
        s["boxes"] = np.zeros_like(boxes)
        s["category_ids"] = np.full(len(s["boxes"]), C.CELL, np.int32)
        s["attributes"] = {k: np.full(len(s["boxes"]), -1, np.int32) for k in s["attributes"]}
        payload = msgpack.unpackb(encode_record(s), raw=False)
        payload["boxes"]["data"] = boxes.tobytes()
        raws.append(msgpack.packb(payload, use_bin_type=True))
    return write_records(path, raws, [(2, 2, len(boxes))] * 4, boxes_per_category={"CELL": 4 * len(boxes)})


@pytest.mark.parametrize("boxes", [[[1e4, 1e4, 2e4, 2e4]], [[np.nan, 1.0, 5.0, 5.0], [1.0, 1.0, np.nan, 5.0]]],
                         ids=["outside-the-image", "nan"])
def test_a_cache_without_a_usable_box_is_a_preflight_error(caches, tmp_path, boxes):
    """The manifest counts these boxes, but training would drop every one of them and wait forever."""
    from trainer.train import train_main

    bad = _cache_of(tmp_path / "bad", boxes)
    with pytest.raises(UserError, match=f"train cache {bad}"):
        train_main(TINY, [bad], [caches["val"]], tmp_path / "run", steps=2, gpus=0, workers=0)
    assert not (tmp_path / "run").exists()


def _fake_checkpoint(logdir, variables):
    """A TF checkpoint ``logdir/model-N`` (and its ``checkpoint`` file) holding ``variables`` {name: array}."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    with tf.Graph().as_default():
        for name, value in variables.items():
            tf1.get_variable(name, initializer=value)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            step = int(variables.get("global_step", 0))
            return tf1.train.Saver().save(sess, str(Path(logdir) / f"model-{step}"))


def test_nothing_to_train_writes_nothing(caches, tmp_path):
    from trainer.train import train_main

    logdir = tmp_path / "run"
    logdir.mkdir()
    _fake_checkpoint(logdir, {"global_step": np.int64(7)})
    (logdir / "config.yaml").write_text("the previous run's config\n")
    before = _listing(logdir)
    lines = []
    result = train_main(TINY, [caches["train"]], [caches["val"]], logdir, steps=5, overrides=["TRAIN.BASE_LR=0.5"],
                        gpus=0, echo=lines.append)
    assert result["global_step"] == 7 and "nothing to train" in lines[-1]
    assert _listing(logdir) == before


def test_resume_with_other_shapes_names_the_variable_and_writes_nothing(caches, tmp_path, tmp_path_factory):
    """Was: 459 lines, 8 tracebacks, exit 1, and a new model-61 from which the next run resumed."""
    from test_predictor import save_random_checkpoint, tiny_cfg
    from trainer.train import train_main

    logdir = tmp_path / "run"
    logdir.mkdir()
    save_random_checkpoint(tiny_cfg(), logdir / "model-0", seed=0)
    (logdir / "config.yaml").write_text("the previous run's config\n")
    before = _listing(logdir)
    with pytest.raises(UserError) as err:
        train_main(TINY, [caches["train"]], [caches["val"]], logdir, steps=5, overrides=["FPN.NUM_CHANNEL=32"],
                   gpus=0, workers=0)
    message = str(err.value)
    assert message.startswith(f"cannot resume from {logdir}/model-0: ") and "\n" not in message
    assert "in the checkpoint but" in message and "in this config" in message  # names the first variable
    assert _listing(logdir) == before


@pytest.mark.parametrize("case", ["other_model", "damaged", "nan", "foreign_list"])
def test_hostile_start_weights_or_checkpoint_list_are_preflight_errors(caches, tmp_path, case):
    """Was: another model's .npz trained from random weights ('loaded 0' in the report); a damaged one was a
    BadZipFile traceback after config.yaml was written; a NaN one failed at step 1; a binary LOGDIR/checkpoint
    was a UnicodeDecodeError traceback."""
    from test_predictor import save_random_checkpoint, tiny_cfg
    from trainer.train import train_main

    logdir = tmp_path / "run"
    logdir.mkdir()
    weights = None
    if case == "foreign_list":
        (logdir / "checkpoint").write_bytes(b"\xff\x82 not a checkpoint list")
    elif case == "other_model":
        weights = tmp_path / "other.npz"
        np.savez(weights, foo=np.zeros(3, np.float32))
    else:
        prefix = save_random_checkpoint(tiny_cfg(), tmp_path / "src" / "model-0", seed=0)
        from trainer.weights import read_weights

        values = read_weights(prefix)
        values["conv0/W"] = np.full_like(values["conv0/W"], np.nan)
        weights = tmp_path / "w.npz"
        np.savez(weights, **values)
        if case == "damaged":
            weights.write_bytes(weights.read_bytes()[:-5000])
    before = _listing(logdir)
    with pytest.raises(UserError) as err:
        train_main(TINY, [caches["train"]], [caches["val"]], logdir, weights=weights, steps=2, gpus=0, workers=0)
    message = str(err.value)
    assert "\n" not in message
    assert {"other_model": "none of its 1 tensors", "damaged": "unreadable .npz", "nan": "conv0/W holds NaN",
            "foreign_list": "not a TensorFlow checkpoint list"}[case] in message
    assert _listing(logdir) == before


def test_log_dir_in_a_cache_and_val_of_another_mode_are_preflight_errors(caches, tmp_path):
    """Was: checkpoints, config.yaml and events written into the cache (which build --overwrite then refused
    to replace), and a table detector scored on a page-mode val cache without a word."""
    from ddcache.build import BuildOptions, build_cache
    from ddcache.resolution import Resolution
    from trainer.train import train_main

    train = caches["train"]
    before = _listing(train)
    for logdir, message in ((train, "is the same directory as cache"), (train / "run", "lies inside cache")):
        with pytest.raises(UserError, match=message):
            train_main(TINY, [train], [caches["val"]], logdir, steps=2, gpus=0, workers=0)
    from trainer.evaluate import evaluate_checkpoints

    np.savez(tmp_path / "w.npz", x=np.zeros(1, np.float32))
    with pytest.raises(UserError, match="lies inside --cache"):
        evaluate_checkpoints(TINY, [train], [tmp_path / "w.npz"], out_dir=train / "eval")
    assert _listing(train) == before
    page = tmp_path / "page"
    build_cache(BuildOptions(dataset="fintabnet", source=str(train.parent / "src"), split="val", out=str(page),
                             workers=1, mode="page", resolution=Resolution(72)), progress=False)
    with pytest.raises(UserError, match="is page-mode but train cache .* is table-mode"):
        train_main(TINY, [train], [page], tmp_path / "run", steps=2, gpus=0, workers=0)
    assert not (tmp_path / "run").exists()


def test_a_val_cache_that_is_also_a_train_cache_is_a_warning(caches):
    from trainer.preflight import check_val_matches_train

    warnings = []
    check_val_matches_train([str(caches["train"])], [str(caches["val"]), str(caches["train"])], warnings.append)
    assert len(warnings) == 1 and "is also a train cache" in warnings[0]
    check_val_matches_train([str(caches["train"])], [str(caches["val"])], warnings.append)
    assert len(warnings) == 1


def test_a_second_training_run_into_the_same_log_dir_is_refused(caches, tmp_path):
    """Was: both trained, interleaving their checkpoints and overwriting each other's checkpoint list."""
    from ddcache.cache_dir import BuildLock
    from trainer.train import train_main

    logdir = tmp_path / "run"
    with BuildLock(logdir, activity="training run", option="--logdir"):  # the first run, still training
        with pytest.raises(UserError, match=f"another training run is writing {logdir} "):
            train_main(TINY, [caches["train"]], [caches["val"]], logdir, steps=2, gpus=0, workers=0)
    assert not logdir.exists()


def test_first_shape_mismatch_order():
    from trainer.weights import is_training_only
    from trainer.preflight import first_shape_mismatch

    model = {"a/W": (3, 3), "b/W": (2,), "c/W": (1,)}
    assert first_shape_mismatch({**model, "global_step": (), "a/W/Momentum": (3, 3)}, model, is_training_only) is None
    assert first_shape_mismatch({"a/W": (3, 4), "b/W": (2,), "c/W": (1,)}, model, is_training_only) == \
        "a/W has shape [3, 4] in the checkpoint but [3, 3] in this config"
    assert first_shape_mismatch({"a/W": (3, 3)}, model, is_training_only) == \
        "b/W of this config's model is not in the checkpoint (and 1 more)"
    assert first_shape_mismatch({**model, "d/W": (5,)}, model, is_training_only) == \
        "d/W in the checkpoint is not a variable of this config's model"


def test_resolution_below_preproc_warns(synth_cache, tmp_path):
    """synth_cache is stored at --max-short 400 --max-long 600 (auto dpi)."""
    from trainer.config import load_config
    from trainer.preflight import resolution_shortfall, resolution_warnings

    assert resolution_warnings([synth_cache], [synth_cache], load_config(TINY)) == []  # tiny asks for 320 / 448
    warnings = resolution_warnings([synth_cache], [], load_config(TINY, ["PREPROC.MAX_SIZE=1408"]))
    assert len(warnings) == 1 and warnings[0].startswith(f"train cache {synth_cache}: stored at most 400 px short")
    assert "--max-short 400 --max-long 1408" in warnings[0]
    assert resolution_shortfall({"dpi": 150, "max_short": 10, "max_long": 10}, 800, 1333) is None  # fixed dpi
    assert resolution_shortfall({"dpi": "auto", "max_short": 1200, "max_long": 1408}, 1200, 1408) is None


# ---- a run that cannot go on: one line, no checkpoint of that state ----

def test_non_finite_loss_stops_the_run_without_a_checkpoint(caches, tmp_path):
    """Was: 400 steps of total_cost nan, NaN checkpoints, exit 0."""
    from trainer.train import TrainingFailed, train_main

    logdir = tmp_path / "run"
    lines = []
    with pytest.raises(TrainingFailed) as err:
        train_main(TINY, [caches["train"]], [caches["val"]], logdir, steps=8, gpus=0, workers=0, echo=lines.append,
                   overrides=["TRAIN.BASE_LR=1e5", "TRAIN.WARMUP=0", "TRAIN.STEPS_PER_EPOCH=2",
                              "TRAIN.CHECKPOINT_PERIOD=1"], log_every=1)
    message = str(err.value)
    assert message.startswith("training stopped at global step ") and "\n" not in message
    assert "is nan" in message or "is inf" in message or "not finite" in message
    step = err.value.global_step
    assert 1 <= step < 8 and _checkpoints(logdir) == []
    assert any(line.startswith(f"step {step}/8") for line in lines)  # the last line printed is that step's


def test_out_of_memory_in_a_step_is_one_line_without_a_checkpoint(caches, tmp_path):
    """On a GPU, a too large image raises ResourceExhaustedError inside a step: was a traceback of the loop."""
    import tensorflow as tf
    from tensorpack.callbacks import Callback

    from trainer.train import TrainingFailed, train_main

    class OutOfMemoryAtStep3(Callback):  # stands in for the allocator: raised where session.run raises it
        def _trigger_step(self):
            if self.global_step == 3:
                raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[1,256,352,352]")

    logdir = tmp_path / "run"
    with pytest.raises(TrainingFailed) as err:
        train_main(TINY, [caches["train"]], [caches["val"]], logdir, steps=8, gpus=0, workers=0, echo=lambda _: None,
                   overrides=["TRAIN.STEPS_PER_EPOCH=2", "TRAIN.CHECKPOINT_PERIOD=100", "TRAIN.EVAL_PERIOD=100"],
                   extra_callbacks=[OutOfMemoryAtStep3()])
    message = str(err.value)
    assert "\n" not in message and err.value.global_step == 3, message
    assert "out of memory in a training step (OOM when allocating tensor with shape[1,256,352,352])" in message
    assert "PREPROC.MAX_SIZE" in message and _checkpoints(logdir) == []


def test_corrupt_record_stops_the_run_non_zero_without_a_checkpoint(caches, tmp_path):
    """Was: the key was named, but the run exited 0 and wrote a checkpoint."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(caches["train"], bad)
    key = corrupt_record(bad, 1)
    logdir = tmp_path / "run"
    r = _ddtrain("train", "--config", TINY, "--train", bad, "--val", caches["val"], "--logdir", logdir, "--steps", "40",
                 "--workers", "1", "--gpus", "0", *[a for o in FAST for a in ("--override", o)])
    line = _one_line_error(r, code=1)
    assert line.startswith("ddtrain: error: training stopped at global step ") and f"corrupt record '{key}'" in line
    assert _checkpoints(logdir) == []


def test_dead_map_worker_ends_the_run_with_one_line(caches, tmp_path):
    """A map worker killed mid-run: its requests are never answered; the run must end, not wait forever."""
    import signal

    import psutil

    logdir = tmp_path / "run"
    cmd = [sys.executable, "-c", "from trainer.cli import run; run()", "train", "--config", str(TINY), "--train",
           str(caches["train"]), "--val", str(caches["val"]), "--logdir", str(logdir), "--steps", "500",
           "--workers", "1", "--gpus", "0", "--log-every", "1"] + [a for o in FAST for a in ("--override", o)]
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, text=True, cwd=ROOT)
        try:
            for line in proc.stdout:
                if line.startswith("step   1/500"):  # the map worker has delivered: it is running
                    break
            parent = psutil.Process(proc.pid)
            workers = [c for c in parent.children() if c.cmdline() == parent.cmdline()]  # forked copies
            assert len(workers) == 1
            workers[0].send_signal(signal.SIGKILL)
            proc.stdout.read()
            proc.wait(timeout=120)  # a safety net: without the guard the run waits forever
        finally:
            if proc.poll() is None:
                proc.kill()
    err = err_path.read_text()
    lines = [x for x in err.splitlines() if x.strip()]
    assert proc.returncode == 1, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("ddtrain: error: training stopped at global step "), err[-3000:]
    assert f"map worker 0 (pid {workers[0].pid}) died (killed by signal 9)" in lines[0]
    assert _checkpoints(logdir) == []


def test_failure_report_records_an_input_error_and_ends_the_input_quietly():
    from tensorpack.dataflow import DataFromGenerator
    from tensorpack.dataflow.base import DataFlowTerminated

    from ddcache.errors import CorruptRecordError
    from trainer.guards import FailureReport, RunFailure

    def records():
        yield [1]
        raise CorruptRecordError("00000004", "checksum mismatch")

    failure = RunFailure()
    df = FailureReport(DataFromGenerator(records), failure)
    df.reset_state()
    it = iter(df)
    assert next(it) == [1]
    with pytest.raises(DataFlowTerminated):  # what tensorpack's feeding thread takes as a quiet end of input
        next(it)
    assert failure.reason == "corrupt record '00000004': checksum mismatch"
    assert not failure.record("a later failure") and failure.reason.startswith("corrupt record")


def test_an_input_that_never_yields_a_datapoint_is_an_error_not_a_hang():
    """Every record maps to nothing (all boxes dropped): after two epochs' worth the stream says so."""
    from tensorpack.dataflow import DataFromList, MapData

    from trainer.guards import StarvationCheck

    check = StarvationCheck(share=5, buffer_size=4, describe=lambda n: f"no datapoint in {n} records")
    finite = DataFromList([[k] for k in range(100)], shuffle=False)  # finite: without the check, simply exhausted
    df = check.output(MapData(check.source(finite), lambda dp: None))
    df.reset_state()
    with pytest.raises(UserError, match="no datapoint in 16 records"):
        next(iter(df))
    # one usable record per epoch keeps it going
    check = StarvationCheck(share=5, buffer_size=4, describe=str)
    df = check.output(MapData(check.source(DataFromList([[k] for k in range(100)], shuffle=False)),
                              lambda dp: dp if dp[0] % 5 == 4 else None))
    df.reset_state()
    assert len(list(df)) == 20


# ---- reproducible ----

def test_two_identical_cpu_runs_give_identical_losses_and_weights(caches, tmp_path):
    """Was: total_cost 3.788 vs 3.764 and conv0/W off by up to 0.18 (only the data order was seeded)."""
    import tensorflow as tf

    from trainer.train import train_main

    lines = {}
    for name in ("a", "b"):
        lines[name] = []
        train_main(TINY, [caches["train"]], [caches["val"]], tmp_path / name, steps=2, gpus=0, workers=0,
                   echo=lines[name].append, overrides=FAST, log_every=1, eval_max_datapoints=1)
    losses = {k: [line.split("  lr ")[0] for line in v if line.startswith("step ")] for k, v in lines.items()}
    assert len(losses["a"]) == 2 and losses["a"] == losses["b"]
    from tensorflow.python.framework import config as tf_config

    assert not tf_config.is_op_determinism_enabled()  # switched on for the run only (unseeded ops would fail)
    a, b = (tf.train.load_checkpoint(str(tmp_path / name / "model-2")) for name in ("a", "b"))
    names = [n for n in a.get_variable_to_shape_map() if n != "global_step"]
    assert "conv0/W" in names
    for n in names:
        np.testing.assert_array_equal(a.get_tensor(n), b.get_tensor(n), err_msg=n)


def test_map_workers_are_seeded_by_index_not_by_pid():
    """The in-process mapper draws as RandomState([seed, 0]); a forked map worker k as RandomState([seed, 1 + k])."""
    import multiprocessing as mp

    from trainer.config import load_config
    from trainer.train_data import TrainingMapper, map_worker_index

    mapper = TrainingMapper(load_config(TINY), seed=11)
    mapper.setup()
    assert map_worker_index() == 0
    assert mapper._rng.randint(1 << 30) == np.random.RandomState([11, 0]).randint(1 << 30)
    worker = mp.current_process()
    worker.identity = b"3"  # what tensorpack's ZMQ map worker k=3 carries
    try:
        assert map_worker_index() == 4
    finally:
        del worker.identity


# ---- the console ----

def test_progress_line_and_names():
    from trainer.console import display_names, format_duration, format_progress

    names = display_names(["rpn_losses/rpn_label_loss", "rpn_losses/rpn_box_loss", "cascade_loss_stage1/label_loss",
                           "cascade_loss_stage2/label_loss", "wd_cost"])
    assert names == ["rpn_label", "rpn_box", "stage1_label", "stage2_label", "wd"]
    line = format_progress(40, 400, [("total", 3.6112), ("rpn_label", float("nan")), ("wd", 12345.0)], lr=1.88e-3,
                           images_per_s=3.4, eta_s=102)
    assert line == "step  40/400  total 3.611  rpn_label nan  wd 1.23e+04  lr 1.88e-03  3.40 img/s  ETA 1m42s"
    assert [format_duration(s) for s in (5, 3600 * 3 + 7 * 60 + 2, float("nan"))] == ["5s", "3h07m", "?"]


def test_tensorflow_native_log_lines_are_filtered_and_nothing_else_is_lost():
    code = ("from trainer.console import quiet_native_logs\n"
            "quiet_native_logs()\n"
            "import os, sys\n"
            "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
            "os.write(2, b'I0000 00:00:1796124537.527888   23039 port.cc:153] oneDNN custom operations are on.\\n')\n"
            "os.write(2, b'E0000 00:00:1796124539.593601   23039 cuda_platform.cc:52] failed call to cuInit\\n')\n"
            "os.write(2, b'written by C to fd 2\\n')\n"
            "sys.stderr.write('written by Python\\n')\n"
            "os.write(2, b'last words without a newline')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0
    assert sorted(r.stderr.splitlines()) == ["last words without a newline", "written by C to fd 2", "written by Python"]


def test_tensorpack_log_call_without_placeholder_formats():
    """tensorpack's ``logger.error("Training failed at global_step=", step)`` printed a logging traceback."""
    from tensorpack.utils import logger

    from trainer.console import quiet_library_loggers

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())  # raises TypeError for the unrepaired record

    quiet_library_loggers(verbose=True)
    keep = Keep()
    logger._logger.addHandler(keep)
    try:
        logger.error("Training failed at global_step=", 12)
    finally:
        logger._logger.removeHandler(keep)
    assert keep.messages == ["Training failed at global_step=12"]
