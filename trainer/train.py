"""``ddtrain train``: Cascade R-CNN training that streams from ddcache caches, resumable, with periodic COCO eval.

What one call does, in order:

1. Pre-flight, before anything is written (``trainer.preflight``): the config
   with overrides (types and ranges), the log dir's folder, the caches (finished,
   not empty, holding every ``DATA.CATEGORIES`` category, a usable box in the
   train caches), a warning for a cache stored smaller than ``PREPROC`` asks
   for, and when resuming, the checkpoint's variable shapes against the
   config's model. A run with nothing left to train stops here too.
2. Choose the trainer (``trainer.devices``): CPU / 1 GPU -> SimpleTrainer,
   ``--gpus N`` -> SyncMultiGPUTrainerReplicated, ``--horovod`` ->
   HorovodTrainer with this rank's disjoint part of the data.
3. Starting point: the latest checkpoint in LOGDIR if there is one (global
   step, LR schedule and epoch position continue; ``--weights`` is then
   ignored), else ``--weights`` loaded tolerantly (``trainer.weights``), else
   random initialisation seeded by ``TRAIN.SEED``.
4. Data: ``ddcache.source.CacheSource`` (lazy LMDB reads, nothing
   loaded up front, so the first step does not wait for a pass over the
   cache) -> ``trainer.train_data.build_train_dataflow`` -> ``QueueInput``.
5. Callbacks (``trainer.callbacks``, ``trainer.guards``): a failure guard
   (non-finite loss, input errors, dead map workers, an input that yields
   nothing: the run stops with one line and no checkpoint of that state),
   LR warm-up + schedule by global step, checkpoint every
   ``TRAIN.CHECKPOINT_PERIOD`` epochs and at the end, COCO evaluation every
   ``TRAIN.EVAL_PERIOD`` epochs and at the end (``eval/AP50`` ... in
   TensorBoard and ``stats.json``), one console line every ``log_every``
   steps, ``--steps`` stop.

Reproducible: ``TRAIN.SEED`` seeds Python, numpy, TensorFlow's graph seed,
the data order and the map workers' augmentation (by worker index); on CPU
TensorFlow's op determinism is on, so two identical runs with in-process
mapping (``--workers 0``) give identical losses and weights.

The log dir is never wiped (``logger.set_logger_dir(dir, action='k')``).
``TRAIN.STARTING_EPOCH`` is not used: the starting epoch follows from the
restored global step.
Ctrl-C (or SIGTERM) saves a checkpoint, then exits 130 (143) with one line.
"""
import contextlib
import math
import os
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from ddcache.errors import UserError
from ddcache.outputs import check_disjoint, check_output
from trainer import ctrl_c
from trainer.config import MAX_WORKERS, load_user_config

CONFIG_NAME = "config.yaml"


INTERRUPT_EXIT_GRACE_S = 30  # after Ctrl-C or a failure, the outcome is saved and reported; teardown is bounded


def watch_interrupts(prog="ddtrain"):
    """Say at once that Ctrl-C (or SIGTERM) was seen, and let a second one end the process immediately.

    Python acts on SIGINT only when the main thread runs Python code; a
    training step blocked inside TensorFlow (e.g. waiting for data) defers
    it, and the checkpoint with it, until the step returns. Inside the
    training loop the handler only sets a flag that ``StopOnCtrlC`` reads
    after the step (an exception raised there could land inside
    TensorFlow's C++ code and abort the process); elsewhere it raises
    KeyboardInterrupt as usual. The signal is also written to a wakeup pipe
    that a daemon thread watches, so the user is told at once, and a second
    Ctrl-C leaves at once (no new checkpoint; the latest one stays usable).
    SIGTERM is treated as the first Ctrl-C (``trainer.ctrl_c``), so a
    scheduler's stop saves the run instead of killing it; a repeated SIGTERM
    changes nothing (wrappers such as ``timeout`` pass on the one their process
    group got, so one stop arrives twice); SIGKILL is the way to leave at once.
    Main thread only; armed by the ``ddtrain`` entry point.
    """
    import signal

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    for signum in ctrl_c.STOP_SIGNALS:
        signal.signal(signum, ctrl_c.on_sigint)
    signal.set_wakeup_fd(write_fd)

    def in_child():
        # Forked map workers inherit the pipe: their signals (a terminal's Ctrl-C reaches the whole process
        # group) must not count as this process's second one. A SIGTERM sent to the whole group (as schedulers
        # do) must not kill a worker either: that would end the run as a failure, without the checkpoint; the
        # workers die with the training process (PR_SET_PDEATHSIG) whatever ends it.
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    os.register_at_fork(after_in_child=in_child)

    def watch():
        seen = []
        while True:
            for signum in (b for b in os.read(read_fd, 64) if b in ctrl_c.STOP_SIGNALS):
                seen.append(signum)
                if len(seen) == 1:  # on a line of its own: a progress bar may be mid-line
                    again = " (Ctrl-C again to leave at once)" if signum == signal.SIGINT else ""
                    sys.stderr.write(f"\n{prog}: {ctrl_c.signal_name(signum)}: stopping after the current step and "
                                     f"saving a checkpoint{again}\n")
                    sys.stderr.flush()
                elif signum == signal.SIGINT:  # a repeated SIGTERM is a wrapper passing it on, not a person
                    sys.stderr.write(f"\n{prog}: second Ctrl-C: leaving now without a new checkpoint\n")
                    sys.stderr.flush()
                    os._exit(128 + seen[0])

    threading.Thread(target=watch, name="ctrl-c-watch", daemon=True).start()


class TrainingInterrupted(Exception):
    """Ctrl-C during training; ``checkpoint`` is the checkpoint saved on the way out (or None)."""

    def __init__(self, global_step, checkpoint):
        super().__init__(f"interrupted at global step {global_step}; "
                         + (f"checkpoint {checkpoint}" if checkpoint else "no checkpoint written"))
        self.global_step = global_step
        self.checkpoint = checkpoint


class TrainingFailed(Exception):
    """The run stopped on a failure (non-finite loss, corrupt record, dead map worker, an input without a
    usable sample); no checkpoint was written of the state it left. ``checkpoint``: the latest one (older)."""

    def __init__(self, global_step, reason, checkpoint):
        tail = f"; the latest checkpoint is {checkpoint}" if checkpoint else ""
        super().__init__(f"training stopped at global step {global_step}: {reason}; no checkpoint written{tail}")
        self.global_step = global_step
        self.reason = reason
        self.checkpoint = checkpoint


def latest_checkpoint(logdir):
    """Prefix of the newest checkpoint in ``logdir`` (``.../model-1234``) or None; UserError if its
    ``checkpoint`` list is not TensorFlow's (``trainer.weights.latest_checkpoint_in``)."""
    from trainer.weights import latest_checkpoint_in

    return latest_checkpoint_in(logdir)


def checkpoint_step(prefix):
    """``global_step`` stored in a checkpoint (0 if it has none); UserError if the checkpoint cannot be read."""
    import tensorflow as tf

    from trainer.weights import READ_ERRORS, open_checkpoint, read_error

    reader = open_checkpoint(prefix, "cannot resume: ")
    try:
        return int(reader.get_tensor("global_step")) if reader.has_tensor("global_step") else 0
    except (tf.errors.OpError, *READ_ERRORS) as exc:
        raise UserError(f"cannot resume: {read_error(prefix, exc)}") from None


def total_steps(cfg, num_devices=1):
    """Global step at which training ends without ``--steps``: the reference's run length on ``num_devices``
    devices (``TRAIN.LR_SCHEDULE[-1]`` updates of ``TRAIN.REFERENCE_BATCH`` images, in whole epochs; see
    ``trainer.lr_schedule``)."""
    from trainer import lr_schedule

    try:
        return lr_schedule.resolve(cfg.TRAIN, num_devices).total_steps
    except ValueError as exc:
        raise UserError(f"{exc}: pass --steps or fix the config") from None


def save_config(cfg, logdir, echo):
    """Write ``LOGDIR/config.yaml``; a different one from an earlier run is kept as ``config.yaml.<time>``."""
    path = Path(logdir) / CONFIG_NAME
    tmp = path.with_name(CONFIG_NAME + ".tmp")
    cfg.dump_yaml(str(tmp))
    if path.is_file() and path.read_bytes() != tmp.read_bytes():
        old = path.with_name(f"{CONFIG_NAME}.{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, old)
        echo(f"config differs from the previous run's; that one is kept as {old}")
    os.replace(tmp, path)
    return path


def _resuming_json_writer():
    """tensorpack's JSONWriter that appends to an earlier run's ``stats.json`` after a restart.

    The stock writer moves ``stats.json`` aside unless the new run starts at
    the epoch after the last one recorded, which is not the case after a stop
    inside an epoch. Here records past the restored global step (written after
    the checkpoint, about to be redone) are dropped and the rest kept.
    """
    from tensorpack.callbacks import JSONWriter

    class ResumingJSONWriter(JSONWriter):
        def _before_train(self):
            stats = JSONWriter.load_existing_json()
            self._fname = os.path.join(self._logdir(), JSONWriter.FILENAME)
            if stats:
                kept = [s for s in stats if int(s.get("global_step", 0)) <= self.global_step]
                self._stats = kept
                self._write_stat()
            self._trigger()

        @staticmethod
        def _logdir():
            from tensorpack.utils import logger

            return logger.get_logger_dir()

    return ResumingJSONWriter()


def _worker_seed(seed, rank, start_step):
    """Seed of the map workers' augmentation: a function of (``TRAIN.SEED``, rank, restart step), never of a pid."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(start_step)]).generate_state(1)[0])


def build_dataflow(cfg, train_paths, choice, workers, seed, failure, start_step=0):
    """The training DataFlow: streaming reads of this process's share of the caches -> datapoints, endless.

    Reading and checking happen in the feeding thread (LMDB by key, one
    record at a time); decoding, resizing and RPN anchor targets run in
    ``workers`` processes, which receive the small encoded record. The data
    order is a function of ``(seed, data epoch)``: a restart at ``start_step``
    continues with the data epoch that step was in instead of replaying the
    first one. An error anywhere in it, or a run of records without a single
    datapoint (``trainer.guards.StarvationCheck``), is recorded in
    ``failure`` (a ``trainer.guards.RunFailure``) and ends the input.
    """
    from tensorpack.dataflow import RepeatedData

    from ddcache.source import CacheSource
    from trainer.guards import FailureReport, StarvationCheck
    from trainer.sample_log import record_reads
    from trainer.train_data import build_train_dataflow

    source = CacheSource(train_paths, rank=choice.rank, world=choice.world, seed=seed, shuffle=True)
    share = len(source)
    if share == 0:
        raise UserError(f"rank {choice.rank} of {choice.world} gets no training samples from "
                        f"{', '.join(map(str, train_paths))}")
    images_per_step = max(1, choice.num_gpus) if choice.kind == "replicated" else 1
    source.set_epoch(int(start_step) * images_per_step // share)
    source = record_reads(source, choice.rank)  # DDTRAIN_SAMPLE_LOG: which samples this rank read

    def starved(records):
        return (f"no usable training sample in {records} records in a row ({share} per epoch): every box is NaN, "
                f"outside its image or not one of DATA.CATEGORIES ({', '.join(cfg.DATA.CATEGORIES)})")

    starvation = StarvationCheck(share, max(4, 2 * workers), starved)
    df = build_train_dataflow(starvation.source(source), cfg, num_workers=workers,
                              seed=_worker_seed(seed, choice.rank, start_step))
    return FailureReport(starvation.output(RepeatedData(df, -1)), failure)


def seed_everything(seed):
    """Seed Python's and numpy's global generators (TensorFlow's graph seed is set where the graph is built)."""
    random.seed(int(seed))
    np.random.seed(int(seed))


@contextlib.contextmanager
def op_determinism(enabled):
    """TensorFlow's op determinism on within the block (if ``enabled``), as it was afterwards.

    A process-wide switch that also makes every unseeded random op an error,
    so it is switched back off for whatever runs in this process next (tests,
    a notebook). It costs little on CPU. On GPU it is left off: cuDNN's
    fastest convolution algorithms and atomic adds (e.g. the RoIAlign /
    crop_and_resize gradients) are not deterministic, and their
    deterministic versions are slower or missing.
    """
    from tensorflow.python.framework import config as tf_config

    switch = enabled and not tf_config.is_op_determinism_enabled()
    if switch:
        tf_config.enable_op_determinism()
    try:
        yield
    finally:
        if switch:
            tf_config.disable_op_determinism()


@dataclass
class RunPlan:
    """What pre-flight settled for a run (:func:`plan_run`); ``choice`` is None when there is nothing to train."""

    cfg: object
    train: list
    val: list
    logdir: Path
    weights: object
    resume: object  # the checkpoint to continue from, or None
    start_step: int
    last_step: int
    choice: object = None  # trainer.devices.TrainerChoice
    workers: int = 0
    seed: int = 0
    accumulate: int = 1  # steps whose gradients make one update (trainer.lr_schedule)
    weight_values: object = None  # --weights as read and checked by pre-flight (loaded from here, not read again)


def plan_run(config, train, val, logdir, weights=None, overrides=(), steps=None, gpus=None, horovod=False,
             workers=None, seed=None, warn=None):
    """Every check a run can make before it writes anything (module docstring, step 1); returns a :class:`RunPlan`.

    Raises UserError (one line) on the first problem; ``warn`` gets one line
    per cache stored smaller than ``PREPROC`` asks for. Cheap checks run
    first; TensorFlow is imported only for the device choice and the
    checkpoint shapes.
    """
    from trainer import preflight

    cfg = load_user_config(config, overrides)
    categories = list(cfg.DATA.CATEGORIES)
    if steps is not None and int(steps) < 1:
        raise UserError(f"--steps {steps}: must be >= 1")
    logdir = check_output(logdir, "--logdir")
    train = preflight.check_caches(list(train), "train", categories)
    val = preflight.check_caches(list(val), "val", categories)
    check_disjoint(logdir, train + val, "--logdir", "cache")  # checkpoints written into a cache: it cannot be rebuilt
    preflight.check_usable_boxes(train, categories)
    preflight.check_val_matches_train(train, val, warn)
    for message in preflight.resolution_warnings(train, val, cfg):
        warn(message)
    resume = latest_checkpoint(logdir) if logdir.is_dir() else None
    if weights is not None and not resume:
        from trainer.weights import resolve_weights

        resolve_weights(weights)  # a wrong path is a one-line error before TensorFlow is even imported
    start_step = checkpoint_step(resume) if resume else 0

    from trainer import devices, lr_schedule

    choice = devices.resolve_choice(gpus, horovod or cfg.TRAINER == "horovod")
    last_step = int(steps) if steps is not None else total_steps(cfg, choice.total_devices)
    plan = RunPlan(cfg, train, val, logdir, weights, resume, start_step, last_step)
    if start_step >= last_step:
        return plan
    try:
        plan.accumulate = lr_schedule.accumulation(choice.total_devices, int(cfg.TRAIN.REFERENCE_BATCH))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if resume:
        preflight.check_resume(resume, cfg)
    elif weights is not None:
        plan.weight_values = preflight.check_fine_tune_start(weights, cfg)
    plan.choice = choice
    plan.workers = int(cfg.TRAIN.NUM_WORKERS) if workers is None else int(workers)
    plan.seed = int(cfg.TRAIN.SEED) if seed is None else int(seed)
    return plan


def train_main(config, train, val, logdir, weights=None, overrides=(), steps=None, gpus=None, horovod=False,
               workers=None, seed=None, eval_max_datapoints=None, eval_at_start=False, extra_callbacks=(),
               echo=None, warn=None, log_every=20, verbose=False):
    """Train (or continue training) a detector; see the module docstring for the sequence.

    Args:
      config: config path (or a loaded Config); ``overrides`` ``KEY=VALUE`` strings.
      train, val: lists of cache directories.
      logdir: checkpoints, ``config.yaml``, ``stats.json``, TensorBoard events, ``log.log``.
      weights: fine-tuning start point (checkpoint prefix/dir or ``.npz``), used
        only when ``logdir`` holds no checkpoint.
      steps: stop at this global step (across restarts); default: the config's end.
      gpus, horovod: device request (``trainer.devices.choose_trainer``);
        ``TRAINER: horovod`` in the config also selects Horovod.
      workers: data mapping processes (default ``TRAIN.NUM_WORKERS``; 0 = in-process).
      seed: seed of everything random (default ``TRAIN.SEED``); a restart
        continues the data epoch of the restored step (:func:`build_dataflow`).
      eval_max_datapoints: evaluate on the first N val samples only.
      eval_at_start: also evaluate before the first step (the starting point's numbers).
      extra_callbacks: more tensorpack callbacks, run after the built-in ones.
      echo: callable for progress lines (default: print to stdout); ``warn``
        for warnings (default: ``warning: ...`` on stderr).
      log_every: a console line every N steps; ``verbose``: tensorpack's INFO log on the console too.
    Returns ``{"global_step", "checkpoint", "logdir", "eval"}`` (``eval``:
    ``[(global_step, stats)]`` of the evaluations run in this call).
    Raises :class:`TrainingInterrupted` on Ctrl-C (after saving),
    :class:`TrainingFailed` when the run had to stop (nothing saved of that
    state), UserError on user mistakes (before anything is written). The
    graph is built in a fresh ``tf.Graph``, so several calls can run in one
    process (one after the other).
    """
    echo = echo or (lambda msg: click.echo(msg))
    warn = warn or (lambda msg: click.echo(f"warning: {msg}", err=True))
    plan = plan_run(config, train, val, logdir, weights, overrides, steps, gpus, horovod, workers, seed, warn)
    if plan.choice is None:
        echo(f"{plan.resume}: global step {plan.start_step} already >= {plan.last_step}; nothing to train")
        return {"global_step": plan.start_step, "checkpoint": plan.resume, "logdir": str(plan.logdir), "eval": []}
    with _log_dir_lock(plan):
        return _run(plan, eval_max_datapoints, eval_at_start, extra_callbacks, echo, log_every, verbose)


@contextlib.contextmanager
def _log_dir_lock(plan):
    """One training run per log dir: ``LOGDIR.lock`` (``ddcache.cache_dir.BuildLock``) held by the writing rank.

    Two runs into one log dir interleaved their checkpoints, overwrote each
    other's ``checkpoint`` list and resumed from each other's steps. Taken
    after pre-flight (which writes nothing); the checkpoint pre-flight chose to
    resume from is checked again under the lock, in case a run that just ended
    wrote a newer one.
    """
    if not plan.choice.is_chief:  # Horovod's other ranks write nothing into the log dir
        yield
        return
    from ddcache.cache_dir import BuildLock

    with BuildLock(plan.logdir, activity="training run", option="--logdir"):
        if plan.logdir.is_dir() and latest_checkpoint(plan.logdir) != plan.resume:
            raise UserError(f"{plan.logdir}: a checkpoint was written while this run was being checked; re-run")
        yield


def _run(plan, eval_max_datapoints, eval_at_start, extra_callbacks, echo, log_every, verbose):
    """The run itself (module docstring, steps 2-5): from here on the log dir is written."""
    cfg, logdir, choice, resume, start_step, last_step = (plan.cfg, plan.logdir, plan.choice, plan.resume,
                                                          plan.start_step, plan.last_step)
    if resume and plan.weights is not None:
        echo(f"--weights {plan.weights} ignored: {logdir} already holds a checkpoint ({Path(resume).name})")
    if plan.accumulate > 1:
        echo(f"{choice.total_devices} device(s): gradients of {plan.accumulate} steps are summed into one update of "
             f"{cfg.TRAIN.REFERENCE_BATCH} images (TRAIN.REFERENCE_BATCH), as the reference does")
    if choice.is_chief:
        logdir.mkdir(exist_ok=True)
        save_config(cfg, logdir, echo)
        echo(f"log dir {logdir}: config.yaml, log.log (full log, variable table), stats.json; "
             f"watch it with: tensorboard --logdir {logdir}")

    from tensorpack import QueueInput, TrainConfig, launch_train_with_config
    from tensorpack.callbacks import (GPUUtilizationTracker, HostMemoryTracker, MergeAllSummaries,
                                      MovingAverageSummary, PeakMemoryTracker, PeriodicTrigger, RunUpdateOps,
                                      ScalarPrinter, TFEventWriter, ThroughputTracker)
    from tensorpack.dataflow.base import DataFlowTerminated
    from tensorpack.tfutils.sessinit import SaverRestore
    from tensorpack.utils import logger

    import tensorflow as tf

    from trainer import callbacks as cbs
    from trainer import devices
    from trainer.console import quiet_library_loggers
    from trainer.guards import FailureGuard, RunFailure, describe_out_of_memory, stop_map_workers
    from trainer.model.detector import CascadeRCNN

    quiet_library_loggers(verbose)
    if choice.is_chief:
        logger.set_logger_dir(str(logdir), action="k")
    seed_everything(plan.seed)
    cfg.freeze()

    session_init = None
    if resume:
        echo(f"resuming from {resume} (global step {start_step})")
        session_init = SaverRestore(resume)
    elif plan.weights is not None:
        from trainer.fine_tune import FineTuneInit

        session_init = FineTuneInit(plan.weights, strip_training=True, echo=echo, values=plan.weight_values)

    spe = int(cfg.TRAIN.STEPS_PER_EPOCH)
    starting_epoch, first_epoch_steps = cbs.resume_position(start_step, spe)
    max_epoch = int(math.ceil(last_step / spe))
    failure = RunFailure()
    df = build_dataflow(cfg, plan.train, choice, plan.workers, plan.seed, failure, start_step)
    queue_input = QueueInput(df)
    images_per_step = max(1, choice.num_gpus)

    saver = cbs.CheckpointSaver(failure=failure, max_to_keep=int(cfg.TRAIN.MAX_CHECKPOINTS),
                                keep_checkpoint_every_n_hours=1e6, checkpoint_dir=str(logdir))
    evaluation = cbs.PeriodicCocoEval(cfg, plan.val, int(cfg.TRAIN.EVAL_PERIOD), last_step=last_step,
                                      max_datapoints=eval_max_datapoints, at_start=eval_at_start,
                                      device=0 if choice.num_gpus else -1, echo=echo, failure=failure)
    callbacks = [
        FailureGuard(failure),  # first: no later callback of a failed step sees its state
        cbs.WarmupStepLR(cbs.lr_function(cfg, choice.total_devices)),
        PeriodicTrigger(saver, every_k_epochs=int(cfg.TRAIN.CHECKPOINT_PERIOD)),
        evaluation,
        ThroughputTracker(samples_per_step=images_per_step),  # one image per device and step
        HostMemoryTracker(),  # free RAM per epoch: flat, since the data is streamed, not loaded
        cbs.StopAtStep(last_step),
        cbs.StopOnCtrlC(),
    ]
    if choice.num_gpus:
        callbacks += [PeakMemoryTracker(list(range(choice.num_gpus))), GPUUtilizationTracker()]
    if choice.is_chief:
        callbacks.append(cbs.ConsoleProgress(log_every, last_step, images_per_step, echo))
    callbacks += list(extra_callbacks)
    monitors = [TFEventWriter(), _resuming_json_writer(), ScalarPrinter()] if choice.is_chief else []

    tp_trainer = devices.make_trainer(choice)
    tp_trainer.loop = cbs.ResumableLoop(first_epoch_steps)
    echo(f"training {choice.describe()} from global step {start_step} to {last_step} "
         f"({spe} steps per epoch, seed {plan.seed}, {plan.workers} map worker(s))")
    # a fresh graph per call: train_main can run twice in one process
    ctrl_c.REQUESTED.clear()
    with op_determinism(choice.num_gpus == 0), tf.Graph().as_default():
        tf.compat.v1.set_random_seed(plan.seed)
        train_config = TrainConfig(
            model=CascadeRCNN(cfg, choice.data_format, num_devices=choice.total_devices),
            data=queue_input,
            callbacks=callbacks,
            extra_callbacks=[MovingAverageSummary(), MergeAllSummaries(period=max(1, min(spe, 20))), RunUpdateOps()],
            monitors=monitors,
            session_init=session_init,
            steps_per_epoch=spe,
            starting_epoch=starting_epoch,
            max_epoch=max_epoch,
        )
        try:
            launch_train_with_config(train_config, tp_trainer)
            if ctrl_c.REQUESTED.is_set():
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            step = saver.last_saved_step if saver.last_saved_step is not None else tp_trainer.loop.global_step
            raise TrainingInterrupted(step, saver.last_path) from None
        except DataFlowTerminated:  # the input failed while the first datapoints were read
            if not failure:
                raise
        except tf.errors.ResourceExhaustedError as exc:  # the step did not update the weights: nothing is broken
            failure.record(describe_out_of_memory(exc), tp_trainer.loop.global_step)
        finally:
            stop_map_workers(df)
            sys.stdout.flush()
    if failure:
        step = failure.step if failure.step is not None else tp_trainer.loop.global_step
        raise TrainingFailed(step, failure.reason, latest_checkpoint(logdir))
    final_step = tp_trainer.loop.global_step
    if not choice.is_chief:  # its saver never runs; rank 0's last save may still be in progress
        echo(f"done at global step {final_step}; rank {choice.rank} writes no checkpoints (rank 0 does)")
        return {"global_step": final_step, "checkpoint": None, "logdir": str(logdir), "eval": []}
    checkpoint = saver.last_path or latest_checkpoint(logdir)
    echo(f"done at global step {final_step}; checkpoint {checkpoint}")
    return {"global_step": final_step, "checkpoint": checkpoint, "logdir": str(logdir), "eval": evaluation.history}


@click.command("train")
@click.option("--config", "config_path", required=True, type=click.Path(), help="Model config (YAML).")
@click.option("--train", "train_caches", required=True, multiple=True, type=click.Path(),
              help="Training cache directory (repeat the option for several: read as one dataset).")
@click.option("--val", "val_caches", required=True, multiple=True, type=click.Path(),
              help="Validation cache directory for the periodic COCO evaluation (repeatable).")
@click.option("--logdir", required=True, type=click.Path(file_okay=False),
              help="Checkpoints, config.yaml, log.log, stats.json, TensorBoard logs. Never wiped; rerun to continue.")
@click.option("--weights", default=None,
              help="Fine-tuning start point (checkpoint prefix/dir or .npz); only used while LOGDIR has no checkpoint.")
@click.option("--override", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Config override, e.g. TRAIN.BASE_LR=0.005 (repeatable; --set is the same).")
@click.option("--steps", type=click.IntRange(1), default=None,
              help="Stop (and save) at this global step, counted across restarts.")
@click.option("--gpus", type=click.IntRange(0), default=None,
              help="GPUs in this process: 0 = CPU, N > 1 = replicated multi-GPU [default: 1 if any, else CPU].")
@click.option("--horovod", is_flag=True, help="Horovod data-parallel training (start with horovodrun).")
@click.option("--workers", type=click.IntRange(0, MAX_WORKERS), default=None,
              help="Processes that decode, resize and label the training images (0 = in the training process) "
                   "[default: TRAIN.NUM_WORKERS].")
@click.option("--eval-max-datapoints", type=click.IntRange(1), default=None,
              help="Evaluate on the first N validation samples only.")
@click.option("--log-every", type=click.IntRange(1), default=20, show_default=True,
              help="Print one line (losses, lr, img/s, ETA) every N steps.")
@click.pass_context
def train(ctx, config_path, train_caches, val_caches, logdir, weights, overrides, steps, gpus, horovod, workers,
          eval_max_datapoints, log_every):
    """Train the Cascade R-CNN detector from ddcache caches (resumes from LOGDIR's latest checkpoint).

    Everything is checked before the log dir is written (config values,
    caches and their categories, the checkpoint when resuming). A run that
    cannot go on (non-finite loss, corrupt record, dead map worker) stops
    with one line and exit code 1, without a checkpoint of that state.
    """
    verbose = bool((ctx.obj or {}).get("verbose"))
    try:
        train_main(config_path, train_caches, val_caches, logdir, weights=weights, overrides=overrides, steps=steps,
                   gpus=gpus, horovod=horovod, workers=workers, eval_max_datapoints=eval_max_datapoints,
                   log_every=log_every, verbose=verbose)
    except TrainingInterrupted as exc:
        click.echo(f"ddtrain: {exc}", err=True)
        sys.exit(ctrl_c.exit_code())
    except TrainingFailed as exc:
        click.echo(f"ddtrain: error: {exc}", err=True)
        sys.exit(1)
