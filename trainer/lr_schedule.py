"""The reference's optimisation semantics: learning rate, schedule and gradient accumulation for any GPU count.

deepdoctection's tensorpack trainer (and tensorpack's FasterRCNN example)
define ``TRAIN.BASE_LR``, ``TRAIN.LR_SCHEDULE`` and ``TRAIN.WARMUP_INIT_LR``
for a total batch of 8 images (8 GPUs x 1 image). On ``g`` GPUs it

* sets the graph variable ``learning_rate`` from two schedules (below) and
  lets the optimizer use ``learning_rate / 8`` on the *sum* of the towers'
  gradients (``average=False``);
* with ``g < 8`` accumulates gradients over ``8 / g`` steps before applying
  them (``AccumGradOptimizer``), so every update sees 8 images and moves by
  ``learning_rate x`` their mean gradient -- as on 8 GPUs;
* stretches the step-decay schedule and the run length by ``8 / g``
  (``LR_SCHEDULE`` counts updates of the 8-image batch, tensorpack counts steps
  of ``g`` images);
* but counts ``TRAIN.WARMUP`` in steps whatever ``g`` (on 1 GPU the warm-up
  covers 1/8 of the updates it covers on 8), and scales ``WARMUP_INIT_LR`` by
  ``min(8 / g, 1)``.

ddcache keeps all of it as the default (the published checkpoints and the
seed's recipe were trained with it), with the one constant made a key:
``TRAIN.REFERENCE_BATCH`` (8). ``configs/tiny.yaml`` sets it to 1 for CPU
runs: no accumulation, the LR as written.

The learning-rate variable over global steps (what the reference's two
``ScheduledHyperParamSetter`` callbacks produce in an uninterrupted run):
linear from ``init`` at step 0 to ``BASE_LR`` at step ``WARMUP`` (set before
every step of the warm-up), and from the end of epoch ``E_i = floor(s_i *
factor / STEPS_PER_EPOCH)`` on, ``BASE_LR * 0.1 ** (i + 1)`` for every
``s_i`` of ``LR_SCHEDULE`` but the last (the last one ends training, after
``floor(LR_SCHEDULE[-1] * factor / STEPS_PER_EPOCH)`` epochs). A decay that
falls inside the warm-up is overwritten by the warm-up's next step, as in the
reference. Pure functions; the tensorpack callback and the optimizer call them.
"""
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """The resolved schedule of one run (all steps are global steps of ``num_gpus`` images each).

    Attributes:
      base_lr: ``TRAIN.BASE_LR`` (value of the ``learning_rate`` variable after warm-up).
      warmup_init_lr: the variable's value at step 0.
      warmup_steps: ``TRAIN.WARMUP``.
      epoch_events: ``((global_step, value), ...)``: what the reference's epoch-based setter sets at the
        end of an epoch (``BASE_LR`` at the warm-up's end epoch, then the decays); one value per step.
      total_steps: the step at which training ends.
      accumulate: steps whose gradients are summed before one update (>= 1).
      lr_divisor: the optimizer uses ``learning_rate / lr_divisor`` (``REFERENCE_BATCH``).
    """

    base_lr: float
    warmup_init_lr: float
    warmup_steps: int
    epoch_events: tuple
    total_steps: int
    accumulate: int
    lr_divisor: float


def accumulation(num_gpus, reference_batch=8):
    """Steps to accumulate gradients over so one update sees ``reference_batch`` images (1 if ``num_gpus`` >= it).

    ``num_gpus`` counts devices over all processes (replicated towers, or
    Horovod ranks); 0 (CPU) counts as 1. Like the reference, the two numbers
    must divide one another.
    """
    g, b = max(1, int(num_gpus)), int(reference_batch)
    if b < 1:
        raise ValueError(f"TRAIN.REFERENCE_BATCH must be >= 1, got {b}")
    if (g < b and b % g) or (g > b and g % b):
        raise ValueError(f"{g} devices and TRAIN.REFERENCE_BATCH {b}: one must divide the other "
                         "(the reference trains on 1, 2, 4 or a multiple of 8 GPUs)")
    return b // g if g < b else 1


def resolve(train_cfg, num_gpus):
    """The :class:`Schedule` of a config's ``TRAIN`` section on ``num_gpus`` devices (0 = CPU = 1)."""
    t = train_cfg
    g = max(1, int(num_gpus))
    b = int(getattr(t, "REFERENCE_BATCH", 8))
    accumulate = accumulation(g, b)
    factor = float(b) / g
    spe = int(t.STEPS_PER_EPOCH)
    schedule = [int(s) for s in t.LR_SCHEDULE]
    if not schedule:
        raise ValueError("TRAIN.LR_SCHEDULE is empty: it must end with the step at which training ends")
    base = float(t.BASE_LR)
    # (epoch, value) as the reference lists them; at an epoch listed twice the first entry is what gets set
    listed = [(int(int(t.WARMUP) / spe + 0.5), base)]
    listed += [(int(s * factor // spe), base * 0.1 ** (i + 1)) for i, s in enumerate(schedule[:-1])]
    events = {}
    for epoch, value in listed:
        events.setdefault(epoch * spe, value)
    return Schedule(
        base_lr=base,
        warmup_init_lr=float(t.WARMUP_INIT_LR) * min(factor, 1.0),
        warmup_steps=int(t.WARMUP),
        epoch_events=tuple(sorted(events.items())),
        total_steps=int(schedule[-1] * factor // spe) * spe,
        accumulate=accumulate,
        lr_divisor=float(b),
    )


def learning_rate_at(step, schedule):
    """Value of the ``learning_rate`` variable while the step after global step ``step`` runs."""
    s = schedule
    step = max(0, int(step))
    # The last event at or before `step` wins; at equal steps the epoch setter runs after the warm-up setter.
    events = []
    if s.warmup_steps > 0:
        w = min(step, s.warmup_steps)
        # tensorpack's linear interpolation, operation for operation
        events.append((w, 0, w * 1.0 / s.warmup_steps * (s.base_lr - s.warmup_init_lr) + s.warmup_init_lr))
    else:
        events.append((0, 0, s.base_lr))
    events += [(at, 1, value) for at, value in s.epoch_events if at <= step]
    return max(events)[2]


def effective_lr_per_image(step, schedule, num_gpus):
    """The step size per image's gradient of one update: ``learning_rate / REFERENCE_BATCH`` (a sum over
    ``accumulate x num_gpus`` images is applied); for the documentation and tests."""
    return learning_rate_at(step, schedule) / schedule.lr_divisor


def table(schedule, steps):
    """``[(step, learning_rate)]`` for the given steps: the LR-per-step table the README and tests show."""
    return [(int(k), learning_rate_at(k, schedule)) for k in steps]


def epochs(schedule, steps_per_epoch):
    """Number of epochs of the run (the reference's ``max_epoch``)."""
    return int(math.ceil(schedule.total_steps / int(steps_per_epoch)))
