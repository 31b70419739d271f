"""``ddtrain train``: Cascade R-CNN training that streams from ddcache caches, resumable, with periodic COCO eval.

What one call does, in order:

1. Load the config with overrides (``ConfigError`` -> one-line error), check
   the caches exist, print the config and save it as ``LOGDIR/config.yaml``.
2. Choose the trainer (``trainer.devices``): CPU / 1 GPU -> SimpleTrainer,
   ``--gpus N`` -> SyncMultiGPUTrainerReplicated, ``--horovod`` ->
   HorovodTrainer with this rank's disjoint part of the data.
3. Starting point: the latest checkpoint in LOGDIR if there is one (global
   step, LR schedule and epoch position continue; ``--weights`` is then
   ignored), else ``--weights`` loaded tolerantly (``trainer.weights``), else
   random initialisation.
4. Data: ``ddcache.source.CacheSource`` (lazy LMDB reads, nothing
   loaded up front, so the first step does not wait for a pass over the
   cache) -> ``trainer.train_data.build_train_dataflow`` -> ``QueueInput``.
5. Callbacks (``trainer.callbacks``): LR warm-up + schedule by global step,
   checkpoint every ``TRAIN.CHECKPOINT_PERIOD`` epochs and at the end, COCO
   evaluation every ``TRAIN.EVAL_PERIOD`` epochs and at the end (``eval/AP50``
   ... in TensorBoard and ``stats.json``), ``--steps`` stop.

The log dir is never wiped (``logger.set_logger_dir(dir, action='k')``).
``TRAIN.STARTING_EPOCH`` is not used: the starting epoch follows from the
restored global step.
Ctrl-C saves a checkpoint, then exits 130 with one line.
"""
import math
import os
import sys
import threading
import time
from pathlib import Path

import click

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from ddcache.errors import UserError
from trainer.config import load_user_config

CONFIG_NAME = "config.yaml"


INTERRUPT_EXIT_GRACE_S = 30


def exit_within(seconds, code):
    """Leave after at most ``seconds`` more, even if the interpreter's shutdown blocks.

    After Ctrl-C the checkpoint is saved and reported; what remains is
    teardown (tensorpack's input thread and ZMQ sockets, map workers), which
    was interrupted mid-operation and once hung a CI run. A daemon timer
    bounds it; map workers die with this process (``PR_SET_PDEATHSIG``).
    Armed by the ``ddtrain`` entry point only (never inside a host process
    such as a test runner).
    """
    def force():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


def watch_interrupts(code=130, prog="ddtrain"):
    """Say at once that Ctrl-C was seen, and let a second Ctrl-C end the process immediately.

    Python acts on SIGINT only when the main thread runs Python code; a
    training step blocked inside TensorFlow (e.g. waiting for data) defers
    the KeyboardInterrupt, and the checkpoint with it, until the step
    returns. The signal is also written to a wakeup pipe that a daemon
    thread watches, so the user is told at once, and a second Ctrl-C leaves
    at once (no new checkpoint; the latest one stays usable). Main thread
    only; armed by the ``ddtrain`` entry point.
    """
    import signal

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd)
    # Forked map workers inherit the pipe: their SIGINTs (a terminal's Ctrl-C reaches the whole
    # process group) must not count as this process's second Ctrl-C.
    os.register_at_fork(after_in_child=lambda: signal.set_wakeup_fd(-1))

    def watch():
        seen = 0
        while True:
            seen += os.read(read_fd, 64).count(int(signal.SIGINT))
            if seen == 1:  # on a line of its own: a progress bar may be mid-line
                sys.stderr.write(f"\n{prog}: Ctrl-C: stopping after the current step and saving a checkpoint "
                                 "(Ctrl-C again to leave at once)\n")
                sys.stderr.flush()
            elif seen >= 2:
                sys.stderr.write(f"\n{prog}: second Ctrl-C: leaving now without a new checkpoint\n")
                sys.stderr.flush()
                os._exit(code)

    threading.Thread(target=watch, name="ctrl-c-watch", daemon=True).start()


class TrainingInterrupted(Exception):
    """Ctrl-C during training; ``checkpoint`` is the checkpoint saved on the way out (or None)."""

    def __init__(self, global_step, checkpoint):
        super().__init__(f"interrupted at global step {global_step}; "
                         + (f"checkpoint {checkpoint}" if checkpoint else "no checkpoint written"))
        self.global_step = global_step
        self.checkpoint = checkpoint


def check_caches(paths, what):
    """UserError unless every path is a finished cache (has a manifest); returns the paths as str."""
    from ddcache.store import CacheReader

    if not paths:
        raise UserError(f"no {what} cache given")
    for p in paths:
        if not Path(p).is_dir():
            raise UserError(f"{what} cache {p}: no such directory")
    reader = CacheReader([str(p) for p in paths])  # manifests only: UserError if one is not a cache
    if len(reader) == 0:
        raise UserError(f"{what} caches {', '.join(map(str, paths))}: no samples")
    return [str(p) for p in paths]


def latest_checkpoint(logdir):
    """Prefix of the newest checkpoint in ``logdir`` (``.../model-1234``) or None."""
    if not (Path(logdir) / "checkpoint").is_file():
        return None
    import tensorflow as tf

    return tf.train.latest_checkpoint(str(logdir))


def checkpoint_step(prefix):
    """``global_step`` stored in a checkpoint (0 if it has none)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    if not reader.has_tensor("global_step"):
        return 0
    return int(reader.get_tensor("global_step"))


def total_steps(cfg):
    """Global step at which training ends without ``--steps``: the last ``TRAIN.LR_SCHEDULE`` step.

    The tensorpack convention kept by ``trainer/config.py``: every listed step
    decays the rate x0.1 and the last one ends training (so ``[50000]`` is
    50000 steps at ``BASE_LR`` after the warm-up).
    """
    schedule = list(cfg.TRAIN.LR_SCHEDULE)
    if not schedule:
        raise UserError("the config sets no end of training (TRAIN.LR_SCHEDULE is empty): pass --steps")
    return int(schedule[-1])


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


def _config_text(cfg):
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)


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


def build_dataflow(cfg, train_paths, choice, workers, seed, start_step=0):
    """The training DataFlow: streaming reads of this process's share of the caches -> datapoints, endless.

    Reading and checking happen in the feeding thread (LMDB by key, one
    record at a time); decoding, resizing and RPN anchor targets run in
    ``workers`` processes, which receive the small encoded record. The data
    order is a function of ``(seed, data epoch)``: a restart at ``start_step``
    continues with the data epoch that step was in instead of replaying the
    first one.
    """
    from tensorpack.dataflow import RepeatedData

    from ddcache.source import CacheSource
    from trainer.train_data import build_train_dataflow

    source = CacheSource(train_paths, rank=choice.rank, world=choice.world, seed=seed, shuffle=True)
    share = len(source)
    if share == 0:
        raise UserError(f"rank {choice.rank} of {choice.world} gets no training samples from "
                        f"{', '.join(map(str, train_paths))}")
    images_per_step = max(1, choice.num_gpus) if choice.kind == "replicated" else 1
    source.set_epoch(int(start_step) * images_per_step // share)
    df = build_train_dataflow(source, cfg, num_workers=workers, seed=seed + int(start_step))
    return RepeatedData(df, -1)


def train_main(config, train, val, logdir, weights=None, overrides=(), steps=None, gpus=None, horovod=False,
               workers=None, seed=None, eval_max_datapoints=None, eval_at_start=False, extra_callbacks=(),
               echo=None):
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
      seed: data order / augmentation seed (default ``TRAIN.SEED``); a restart
        continues the data epoch of the restored step (:func:`build_dataflow`).
      eval_max_datapoints: evaluate on the first N val samples only.
      eval_at_start: also evaluate before the first step (the starting point's numbers).
      extra_callbacks: more tensorpack callbacks, run after the built-in ones.
      echo: callable for progress lines (default: print to stdout).
    Returns ``{"global_step", "checkpoint", "logdir", "eval"}`` (``eval``:
    ``[(global_step, stats)]`` of the evaluations run in this call).
    Raises :class:`TrainingInterrupted` on Ctrl-C (after saving), UserError on
    user mistakes. The graph is built in a fresh ``tf.Graph``, so several
    calls can run in one process (one after the other).
    """
    echo = echo or (lambda msg: click.echo(msg))
    cfg = load_user_config(config, overrides)
    train = check_caches(list(train), "train")
    val = check_caches(list(val), "val")
    if steps is not None and int(steps) < 1:
        raise UserError(f"--steps {steps}: must be >= 1")
    logdir = Path(logdir)

    if weights is not None and not (logdir / "checkpoint").is_file():
        from trainer.inference_export import resolve_weights

        resolve_weights(weights)  # a wrong path is a one-line error before TensorFlow is even imported

    from trainer import devices

    choice = devices.resolve_choice(gpus, horovod or cfg.TRAINER == "horovod")
    echo(f"trainer: {choice.describe()}")

    resume = latest_checkpoint(logdir) if logdir.is_dir() else None
    start_step = checkpoint_step(resume) if resume else 0
    if resume and weights is not None:
        echo(f"--weights {weights} ignored: {logdir} already holds a checkpoint ({Path(resume).name})")
    spe = int(cfg.TRAIN.STEPS_PER_EPOCH)
    if spe < 1:
        raise UserError(f"TRAIN.STEPS_PER_EPOCH {spe}: must be >= 1")
    last_step = int(steps) if steps is not None else total_steps(cfg)

    if choice.is_chief:
        logdir.mkdir(parents=True, exist_ok=True)
        echo(_config_text(cfg).rstrip())
        echo(f"config saved to {save_config(cfg, logdir, echo)}")
    if start_step >= last_step:
        echo(f"{resume}: global step {start_step} already >= {last_step}; nothing to train")
        return {"global_step": start_step, "checkpoint": resume, "logdir": str(logdir), "eval": []}

    from tensorpack import QueueInput, TrainConfig, launch_train_with_config
    from tensorpack.callbacks import (EstimatedTimeLeft, GPUUtilizationTracker, HostMemoryTracker, MergeAllSummaries,
                                      MovingAverageSummary, PeakMemoryTracker, PeriodicTrigger, ProgressBar,
                                      RunUpdateOps, ScalarPrinter, TFEventWriter, ThroughputTracker)
    from tensorpack.tfutils.sessinit import SaverRestore
    from tensorpack.utils import logger

    import tensorflow as tf

    from trainer import callbacks as cbs
    from trainer.model.detector import CascadeRCNN

    if choice.is_chief:
        logger.set_logger_dir(str(logdir), action="k")
    cfg.freeze()

    session_init = None
    if resume:
        echo(f"resuming from {resume} (global step {start_step})")
        session_init = SaverRestore(resume)
    elif weights is not None:
        from trainer.weights import FineTuneInit

        session_init = FineTuneInit(weights, strip_training=True, echo=echo)

    starting_epoch, first_epoch_steps = cbs.resume_position(start_step, spe)
    max_epoch = int(math.ceil(last_step / spe))
    workers = int(cfg.TRAIN.NUM_WORKERS) if workers is None else int(workers)
    if seed is None:
        seed = int(cfg.TRAIN.SEED)
    df = build_dataflow(cfg, train, choice, workers, seed, start_step)

    saver = cbs.CheckpointSaver(max_to_keep=max(1, int(cfg.TRAIN.MAX_CHECKPOINTS)),
                                keep_checkpoint_every_n_hours=1e6, checkpoint_dir=str(logdir))
    evaluation = cbs.PeriodicCocoEval(cfg, val, int(cfg.TRAIN.EVAL_PERIOD), last_step=last_step,
                                      max_datapoints=eval_max_datapoints, at_start=eval_at_start,
                                      device=0 if choice.num_gpus else -1)
    callbacks = [
        cbs.WarmupStepLR(cbs.lr_function(cfg)),
        PeriodicTrigger(saver, every_k_epochs=max(1, int(cfg.TRAIN.CHECKPOINT_PERIOD))),
        evaluation,
        EstimatedTimeLeft(),
        ThroughputTracker(samples_per_step=max(1, choice.num_gpus)),  # one image per device and step
        HostMemoryTracker(),  # free RAM per epoch: flat, since the data is streamed, not loaded
        cbs.StopAtStep(last_step),
    ]
    if choice.num_gpus:
        callbacks += [PeakMemoryTracker(list(range(choice.num_gpus))), GPUUtilizationTracker()]
    callbacks += list(extra_callbacks)
    monitors = [TFEventWriter(), _resuming_json_writer(), ScalarPrinter()] if choice.is_chief else []

    tp_trainer = devices.make_trainer(choice)
    tp_trainer.loop = cbs.ResumableLoop(first_epoch_steps)
    echo(f"training from global step {start_step} to {last_step} (epoch {starting_epoch}, "
         f"{first_epoch_steps} step(s) left in it, {spe} per epoch)")
    with tf.Graph().as_default():  # a fresh graph per call: train_main can run twice in one process
        train_config = TrainConfig(
            model=CascadeRCNN(cfg, choice.data_format),
            data=QueueInput(df),
            callbacks=callbacks,
            extra_callbacks=[MovingAverageSummary(), ProgressBar(), MergeAllSummaries(period=max(1, min(spe, 20))),
                             RunUpdateOps()],
            monitors=monitors,
            session_init=session_init,
            steps_per_epoch=spe,
            starting_epoch=starting_epoch,
            max_epoch=max_epoch,
        )
        try:
            launch_train_with_config(train_config, tp_trainer)
        except KeyboardInterrupt:
            step = saver.last_saved_step if saver.last_saved_step is not None else tp_trainer.loop.global_step
            raise TrainingInterrupted(step, saver.last_path) from None
        finally:
            sys.stdout.flush()
    final_step = tp_trainer.loop.global_step
    checkpoint = saver.last_path or latest_checkpoint(logdir)
    echo(f"done at global step {final_step}; checkpoint {checkpoint}")
    return {"global_step": final_step, "checkpoint": checkpoint, "logdir": str(logdir), "eval": evaluation.history}


@click.command("train")
@click.option("--config", "config_path", required=True, type=click.Path(), help="Model config (YAML).")
@click.option("--train", "train_caches", required=True, multiple=True, type=click.Path(),
              help="Training cache directory (repeatable: read as one dataset).")
@click.option("--val", "val_caches", required=True, multiple=True, type=click.Path(),
              help="Validation cache directory for the periodic COCO evaluation (repeatable).")
@click.option("--logdir", required=True, type=click.Path(file_okay=False),
              help="Checkpoints, config.yaml, stats.json, TensorBoard logs. Never wiped; rerun to continue.")
@click.option("--weights", default=None,
              help="Fine-tuning start point (checkpoint prefix/dir or .npz); only used while LOGDIR has no checkpoint.")
@click.option("--override", "overrides", multiple=True, metavar="KEY=VALUE", help="Config override (repeatable).")
@click.option("--steps", type=click.IntRange(1), default=None,
              help="Stop (and save) at this global step, counted across restarts.")
@click.option("--gpus", type=click.IntRange(0), default=None,
              help="GPUs in this process: 0 = CPU, N > 1 = replicated multi-GPU [default: 1 if any, else CPU].")
@click.option("--horovod", is_flag=True, help="Horovod data-parallel training (start with horovodrun).")
@click.option("--workers", type=click.IntRange(0), default=None,
              help="Processes that decode, resize and label the training images (0 = in the training process) "
                   "[default: TRAIN.NUM_WORKERS].")
@click.option("--eval-max-datapoints", type=click.IntRange(1), default=None,
              help="Evaluate on the first N validation samples only.")
def train(config_path, train_caches, val_caches, logdir, weights, overrides, steps, gpus, horovod, workers,
          eval_max_datapoints):
    """Train the Cascade R-CNN detector from ddcache caches (resumes from LOGDIR's latest checkpoint)."""
    try:
        train_main(config_path, train_caches, val_caches, logdir, weights=weights, overrides=overrides, steps=steps,
                   gpus=gpus, horovod=horovod, workers=workers, eval_max_datapoints=eval_max_datapoints)
    except TrainingInterrupted as exc:
        click.echo(f"ddtrain: {exc}", err=True)
        sys.exit(130)
