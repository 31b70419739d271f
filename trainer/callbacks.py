"""Everything around the training loop, as tensorpack callbacks (STYLE.md: extras are callbacks, not loop code).

* :func:`lr_function` / :class:`WarmupStepLR`: the reference's learning-rate
  schedule (``trainer.lr_schedule``: linear warm-up from ``TRAIN.WARMUP_INIT_LR``
  to ``TRAIN.BASE_LR`` over ``TRAIN.WARMUP`` steps, x0.1 decays at the
  ``TRAIN.LR_SCHEDULE`` points stretched to the number of devices). A function
  of the global step only, so a restarted run continues the schedule where it stopped.
* :class:`StopAtStep`: ``--steps N`` ends training after global step N
  (counted across restarts).
* :class:`CheckpointSaver`: tensorpack's ``ModelSaver`` plus one more save
  when training ends for any reason (end, ``--steps``, Ctrl-C), so a stopped
  run never loses the steps since the last periodic checkpoint.
* :class:`PeriodicCocoEval`: COCO AP/AR on the validation caches through an
  ``OnlinePredictor`` on the training graph's weights, logged as scalars
  ``eval/AP50`` etc. (TensorBoard + ``stats.json``).
* :class:`ResumableLoop`: after a restart in the middle of an epoch, the first
  epoch runs only the steps left of it, so epoch boundaries (checkpoint and
  evaluation periods) stay at multiples of ``TRAIN.STEPS_PER_EPOCH`` steps.
"""
import math
import sys
import time

from tensorpack.callbacks import Callback, ModelSaver
from tensorpack.callbacks.param import GraphVarParam, HyperParamSetter
from tensorpack.train.base import TrainLoop
from tensorpack.utils import logger

from trainer import ctrl_c, lr_schedule

EVAL_PREFIX = "eval/"


def lr_function(cfg, num_devices=1):
    """``step -> learning_rate`` of the config's ``TRAIN`` section on ``num_devices`` devices: the reference's
    schedule (``trainer.lr_schedule``), a function of the global step only."""
    schedule = lr_schedule.resolve(cfg.TRAIN, num_devices)
    return lambda step: lr_schedule.learning_rate_at(step, schedule)


class WarmupStepLR(HyperParamSetter):
    """Sets the graph variable ``learning_rate`` from the global step before training and after every step.

    Runs in every process (Horovod ranks each own a ``learning_rate``).
    """

    _chief_only = False

    def __init__(self, lr_fn, var_name="learning_rate"):
        super().__init__(GraphVarParam(var_name))
        self._lr_fn = lr_fn

    def _get_value_to_set(self):
        return float(self._lr_fn(self.global_step))

    def _trigger_step(self):
        # The rate changes only during warm-up and at LR_SCHEDULE steps; loading the
        # variable costs a session call, so skip the steps where it stays the same.
        if float(self._lr_fn(self.global_step)) != self._last_value:
            self.trigger()

    def _trigger_epoch(self):
        pass  # step-based only


class StopAtStep(Callback):
    """Requests the end of training once the global step reaches ``last_step``.

    Uses the session hook's ``request_stop``: the step's other callbacks (the
    JSON writer, a final evaluation) still see that last step, then the loop
    returns and every ``after_train`` runs (the final checkpoint is saved).
    """

    _chief_only = False

    def __init__(self, last_step):
        self.last_step = int(last_step)

    def _after_run(self, run_context, run_values):
        # tensorpack's step counter (registered first) has already counted this step
        if self.global_step >= self.last_step:
            run_context.request_stop()

    def _before_train(self):
        if self.global_step >= self.last_step:
            logger.info(f"global step {self.global_step} >= {self.last_step}: nothing to train")


class StopOnCtrlC(Callback):
    """Ends training after the step in which Ctrl-C came, through the session hook's ``request_stop``.

    While the loop runs, ddtrain's SIGINT handler only sets
    ``trainer.ctrl_c.REQUESTED`` (see that module for why); the loop then
    returns normally and every ``after_train`` runs (the checkpoint is saved).
    """

    _chief_only = False

    def _before_train(self):
        ctrl_c.LOOP_RUNNING.set()

    def _after_run(self, run_context, run_values):
        if ctrl_c.REQUESTED.is_set():
            run_context.request_stop()

    def _after_train(self):
        ctrl_c.LOOP_RUNNING.clear()


def interrupted():
    """True after Ctrl-C stopped the loop, or while a KeyboardInterrupt propagates."""
    return ctrl_c.REQUESTED.is_set() or isinstance(sys.exc_info()[1], KeyboardInterrupt)


def failing():
    """True while an exception other than a KeyboardInterrupt propagates (a failed step or callback)."""
    exc = sys.exc_info()[1]
    return exc is not None and not isinstance(exc, KeyboardInterrupt)


class CheckpointSaver(ModelSaver):
    """``ModelSaver`` that saves only a sound state, and once more in ``after_train``.

    Trigger it periodically with ``PeriodicTrigger(..., every_k_epochs=TRAIN.CHECKPOINT_PERIOD)``;
    the final save (end, ``--steps``, Ctrl-C) does not depend on the trigger.
    Never saved: a state after a recorded failure (``failure``, a
    ``trainer.guards.RunFailure``), a state with a non-finite variable (the
    update after a finite loss can still write NaN), the state left by an
    exception other than Ctrl-C, and a final state no step of this run has
    changed (a resume that fails at once must not add a checkpoint).
    A save that fails (a full disk) is a failure of the run, not a log line
    (:meth:`_save`); a restarted run keeps deleting the oldest of the
    ``max_to_keep`` checkpoints, the earlier runs' included.
    Steps are read from the graph's ``global_step`` variable, not tensorpack's
    Python counter: after a Ctrl-C inside a step the variable can be one ahead,
    and it is what the checkpoint stores and is named after.
    """

    def __init__(self, failure=None, **kwargs):
        super().__init__(**kwargs)
        self.failure = failure
        self.last_saved_step = None
        self.last_path = None
        self._start_step = None

    def _setup_graph(self):
        import tensorflow as tf

        super()._setup_graph()
        variables = tf.compat.v1.global_variables()
        variables = [v for v in variables if v.dtype.base_dtype.is_floating]
        self._variable_names = [v.op.name for v in variables]
        with tf.name_scope("checkpoint_check"):
            self._finite = tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in variables]) if variables else None

    def _before_train(self):
        import tensorflow as tf
        from tensorpack.tfutils.common import get_global_step_value

        self._start_step = get_global_step_value()
        # After a restart the saver knows only what it saves itself: without this, every resume left up to
        # MAX_CHECKPOINTS more checkpoints behind for good (a cell.yaml checkpoint with its optimizer state is ~0.8 GB)
        state = tf.train.get_checkpoint_state(self.checkpoint_dir)
        if state is not None:
            self.saver.recover_last_checkpoints(list(state.all_model_checkpoint_paths))

    def _save(self):
        """Write the checkpoint; False (and the reason recorded in ``failure``) if it could not be written.

        tensorpack's ``ModelSaver`` logs a failed save (a full disk: ``IOError``,
        ``ResourceExhaustedError``) and carries on, so a run ended with exit code 0,
        "checkpoint model-N" and no such file; here it stops the run instead.
        """
        import tensorflow as tf

        try:
            saved = self.saver.save(tf.compat.v1.get_default_session(), self.path,
                                    global_step=tf.compat.v1.train.get_global_step(), write_meta_graph=False)
            logger.info(f"Model saved to {saved}.")  # tensorpack's line (log.log readers look for it)
            return True
        except (OSError, tf.errors.OpError) as exc:
            text = (str(getattr(exc, "message", "") or exc).strip().splitlines() or [type(exc).__name__])[0]
            reason = f"could not write a checkpoint into {self.checkpoint_dir} ({text})"
            if self.failure is None:
                raise
            self.failure.record(reason)
            logger.error(reason)
            return False

    def _first_non_finite(self):
        if self._finite is None:
            return None
        flags = self.trainer.sess.run(self._finite)
        return next((name for name, ok in zip(self._variable_names, flags) if not ok), None)

    def _trigger(self):
        from tensorpack.tfutils.common import get_global_step_value

        step = get_global_step_value()
        if self.last_saved_step == step or self.failure:
            return
        bad = self._first_non_finite()
        if bad is not None:
            if self.failure is not None:
                self.failure.record(f"variable {bad} is not finite", step)
            logger.warn(f"not saving global step {step}: variable {bad} is not finite")
            return
        if not self._save():
            return
        self.last_saved_step = step
        self.last_path = f"{self.path}-{step}"

    def _after_train(self):
        from tensorpack.tfutils.common import get_global_step_value

        step = get_global_step_value()
        if self.failure or failing() or self._start_step is None or step <= self._start_step:
            return
        if self.last_saved_step != step:
            why = "interrupted" if interrupted() else "end of training"
            logger.info(f"saving the final checkpoint at global step {step} ({why})")
            self._trigger()


class PeriodicCocoEval(Callback):
    """COCO evaluation of the model being trained on the validation caches, logged as ``eval/<metric>`` scalars.

    When: at the end of every ``period`` epochs, at the last epoch, and at the
    step where training stops (``last_step``), at most once per global step.
    Not after Ctrl-C (the user wants the checkpoint, not a long evaluation).

    How: an ``OnlinePredictor`` built on the trainer's tower function in
    inference mode (shares the training variables, no copy, no reload),
    fed only ``image``; images go through ``eval_preprocess`` and boxes are
    scaled back by 1/scale (``trainer.evaluate.run_evaluation`` with ``cfg``),
    scored by the one ``CocoEvaluator``.

    Args:
      cfg: the training Config (``DATA.CATEGORIES``, ``PREPROC``).
      val_paths: validation cache directories (read as one dataset).
      period: epochs between evaluations (``TRAIN.EVAL_PERIOD``; <= 0 only at the end).
      last_step: the ``--steps`` target, or None.
      max_datapoints: evaluate only the first N samples (None = all).
      at_start: also evaluate before the first step (the starting point's numbers).
      device: -1 builds the predictor on the CPU, k on GPU k.
      echo: callable for a one-line summary per evaluation (the full table goes to the log).
      failure: a ``trainer.guards.RunFailure``; no evaluation once it holds a failure (a broken state).
    After each evaluation :attr:`history` gets ``(global_step, stats)``.
    """

    def __init__(self, cfg, val_paths, period, last_step=None, max_datapoints=None, at_start=False, device=-1,
                 echo=None, failure=None):
        self.echo = echo
        self.failure = failure
        self.cfg = cfg
        self.val_paths = [str(p) for p in val_paths]
        self.period = int(period)
        self.last_step = None if last_step is None else int(last_step)
        self.max_datapoints = max_datapoints
        self.device = int(device)
        self.at_start = bool(at_start)
        self.history = []
        self._last_eval_step = None

    def _setup_graph(self):
        from ddcache.store import CacheReader
        from trainer.coco_eval import CocoEvaluator
        from trainer.predictor import OUTPUT_NAMES

        self._reader = CacheReader(self.val_paths)
        self._evaluator = CocoEvaluator.for_cache_categories(list(self.cfg.DATA.CATEGORIES))
        self._predictor = self.trainer.get_predictor(["image"], list(OUTPUT_NAMES), device=self.device)

    def _before_train(self):
        if self.at_start:
            self.evaluate()

    def _stopping_now(self):
        return self.last_step is not None and self.global_step >= self.last_step

    def _trigger_step(self):
        # a stop inside an epoch: evaluate now, while this step's JSON record is still open
        if self._stopping_now() and self.local_step != self.trainer.steps_per_epoch - 1:
            self.evaluate()

    def _trigger_epoch(self):
        periodic = self.period > 0 and self.epoch_num % self.period == 0
        if periodic or self.epoch_num >= self.trainer.max_epoch or self._stopping_now():
            self.evaluate()

    def evaluate(self):
        """Run the evaluation now and log the scalars; returns the stats dict (None after a failure)."""
        from trainer.coco_eval import format_stats
        from trainer.evaluate import run_evaluation

        if self.failure:
            return None
        if self._last_eval_step == self.global_step:
            return self.history[-1][1]
        start = time.perf_counter()

        def graph_fn(image):
            boxes, scores, labels = self._predictor(image)
            return boxes, scores, labels

        stats = run_evaluation(graph_fn, self._reader, self._evaluator, self.max_datapoints, cfg=self.cfg)
        self._last_eval_step = self.global_step
        self.history.append((self.global_step, stats))
        logger.info(f"evaluation at global step {self.global_step} ({time.perf_counter() - start:.1f} s):\n"
                    + format_stats(stats))
        for name, value in eval_scalars(stats).items():
            self.trainer.monitors.put_scalar(EVAL_PREFIX + name, value)
        if self.echo is not None:
            numbers = "  ".join(f"{k} {stats[k]:.3f}" for k in ("AP50", "AP75", "AP", "AR") if k in stats)
            self.echo(f"eval at step {self.global_step}: {numbers}  ({stats.get('num_images', '?')} images, "
                      f"{time.perf_counter() - start:.1f} s)")
        return stats


def eval_scalars(stats):
    """The numbers of an evaluator stats dict worth a curve: overall floats and per-category AP/AP50/AP75/AR.

    NaN (no gt in scope, e.g. no small boxes) is left out: TensorBoard and
    ``stats.json`` cannot hold it meaningfully.
    """
    out = {}
    for name, value in stats.items():
        if isinstance(value, float) and not math.isnan(value):
            out[name] = value
    for cat, values in stats.get("per_category", {}).items():
        for name in ("AP", "AP50", "AP75", "AR"):
            v = values.get(name)
            if isinstance(v, float) and not math.isnan(v):
                out[f"{cat}/{name}"] = v
    return out


class ResumableLoop(TrainLoop):
    """tensorpack's ``TrainLoop`` whose first epoch may be shorter.

    tensorpack runs ``steps_per_epoch`` steps in every epoch. A run restarted
    at global step ``g`` is ``g % steps_per_epoch`` steps into epoch
    ``g // steps_per_epoch + 1``; running only the rest of it keeps epoch ``e``
    ending at global step ``e * steps_per_epoch`` whatever the restarts.
    """

    def __init__(self, first_epoch_steps=None):
        super().__init__()
        self._first_epoch_steps = first_epoch_steps
        self._full_steps = 0

    @property
    def steps_per_epoch(self):
        if self._first_epoch_steps is not None and self._epoch_num == getattr(self, "starting_epoch", None):
            return int(self._first_epoch_steps)
        return self._full_steps

    @steps_per_epoch.setter
    def steps_per_epoch(self, value):
        self._full_steps = int(value)


def resume_position(global_step, steps_per_epoch):
    """``(starting_epoch, steps in that first epoch)`` for a run restarted at ``global_step``."""
    global_step, steps_per_epoch = int(global_step), int(steps_per_epoch)
    done_in_epoch = global_step % steps_per_epoch
    return global_step // steps_per_epoch + 1, steps_per_epoch - done_in_epoch


class ConsoleProgress(Callback):
    """Prints ``trainer.console.format_progress`` every ``every`` global steps, at the first step and at the last.

    Losses (the total and each term summed into it) are averaged over the
    steps since the last line and fetched with each step's own run (no extra
    session call); ``lr`` is the ``learning_rate`` variable as read by the
    printed step (what the LR callback set, not recomputed); img/s and the
    ETA to ``last_step`` come from the wall time between two lines
    (evaluations and checkpoints included).
    """

    def __init__(self, every, last_step, images_per_step=1, echo=print):
        self.every = max(1, int(every))
        self.last_step = int(last_step)
        self.images_per_step = int(images_per_step)
        self.echo = echo

    def _setup_graph(self):
        from trainer.console import display_names, find_tensor, loss_terms, op_name

        total = find_tensor("total_cost")
        terms = loss_terms(total)
        self._tensors = ([total] if total is not None else []) + terms
        self._names = (["total"] if total is not None else []) + display_names([op_name(t) for t in terms])
        self._lr = find_tensor("learning_rate")

    def _before_train(self):
        self._first_step = self.global_step + 1
        self._window_start, self._window_step = time.perf_counter(), self.global_step
        self._sums, self._count = [0.0] * len(self._tensors), 0

    def _printing(self, step):
        return step % self.every == 0 or step >= self.last_step or step == self._first_step

    def _before_run(self, _):
        import tensorflow as tf

        fetches = {"losses": self._tensors}
        if self._lr is not None and self._printing(self.global_step + 1):
            fetches["lr"] = self._lr
        return tf.compat.v1.train.SessionRunArgs(fetches=fetches)

    def _after_run(self, run_context, run_values):
        from trainer.console import format_progress

        results = run_values.results
        for k, v in enumerate(results["losses"]):
            self._sums[k] += float(v)
        self._count += 1
        step = self.global_step  # tensorpack's step counter (registered first) has counted this step
        if not self._printing(step):
            return
        now = time.perf_counter()
        seconds, steps = now - self._window_start, step - self._window_step
        rate = steps / seconds if seconds > 0 and steps > 0 else None
        losses = [(n, s / self._count) for n, s in zip(self._names, self._sums)]
        self.echo(format_progress(step, self.last_step, losses, float(results["lr"]) if "lr" in results else None,
                                  None if rate is None else rate * self.images_per_step,
                                  None if rate is None else (self.last_step - step) / rate))
        self._window_start, self._window_step = now, step
        self._sums, self._count = [0.0] * len(self._tensors), 0
