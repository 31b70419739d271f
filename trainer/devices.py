"""Which tensorpack trainer runs the training, on which devices, and which part of the data each process reads.

Three set-ups (FACTS.md §4):

* one device (CPU, or one GPU) -> ``SimpleTrainer``;
* several GPUs in one process -> ``SyncMultiGPUTrainerReplicated`` (one tower
  per GPU, all fed from the same input queue, so the process reads the whole
  cache: rank 0 of 1);
* Horovod (one process per GPU, possibly on many machines) ->
  ``HorovodTrainer``; every process reads its own disjoint part of the cache
  (``rank``/``world`` of ``ddcache.source.CacheSource``), otherwise
  each step would see the same sample ``world`` times.

Layout: NCHW everywhere (the reference's layout; TF 2.21 runs NCHW graphs on
CPU through its layout optimizer, and for this GroupNorm model it is the faster
layout there too). Published checkpoints store kernels HWIO either way, so
the choice does not affect loading.

:func:`choose_trainer` is pure (device counts and Horovod rank/size are
arguments) so every branch is tested on a CPU-only machine; only
:func:`make_trainer` and :func:`horovod_rank_world` touch tensorpack/Horovod.
"""
import os
from dataclasses import dataclass

from ddcache.errors import UserError

SIMPLE = "simple"
REPLICATED = "replicated"
HOROVOD = "horovod"


@dataclass(frozen=True)
class TrainerChoice:
    """The outcome of :func:`choose_trainer`.

    Attributes:
      kind: ``"simple"``, ``"replicated"`` or ``"horovod"``.
      num_gpus: GPUs used by this process's graph (0 = CPU).
      data_format: ``"NHWC"`` or ``"NCHW"`` for ``CascadeRCNN``.
      rank, world: this process's part of the training data (``rank`` of
        ``world`` disjoint parts).
      is_chief: the process that writes checkpoints, logs and evaluates.
    """

    kind: str
    num_gpus: int
    data_format: str
    rank: int = 0
    world: int = 1
    is_chief: bool = True

    @property
    def total_devices(self):
        """Devices over all processes (towers x Horovod ranks; a CPU counts as one): what the reference's
        learning-rate semantics count as NUM_GPUS (``trainer.lr_schedule``)."""
        return max(1, self.num_gpus) * self.world

    @property
    def trainer_class_name(self):
        """Name of the tensorpack trainer class :func:`make_trainer` builds."""
        return {SIMPLE: "SimpleTrainer", REPLICATED: "SyncMultiGPUTrainerReplicated", HOROVOD: "HorovodTrainer"}[
            self.kind
        ]

    def describe(self):
        """One line for the log: trainer, devices, layout, data part."""
        where = f"{self.num_gpus} GPU(s)" if self.num_gpus else "CPU"
        return f"{self.trainer_class_name} on {where}, {self.data_format}, data part {self.rank + 1}/{self.world}"


def choose_trainer(gpus=None, horovod=False, visible_gpus=0, horovod_rank=0, horovod_size=1):
    """Pick the trainer for the command-line request and the machine.

    Args:
      gpus: ``--gpus``: None = all visible GPUs of this machine, at most one
        unless asked (1 if any, else CPU); 0 = CPU even if GPUs exist; N >= 1
        = exactly N GPUs (UserError if fewer are visible).
      horovod: ``--horovod``: one process per GPU, started by ``horovodrun``;
        each process uses one GPU (its local rank's), or the CPU if none is
        visible. Cannot be combined with ``gpus`` > 1.
      visible_gpus: GPUs this process can see (:func:`visible_gpu_count`).
      horovod_rank, horovod_size: ``hvd.rank()``, ``hvd.size()`` (only used
        with ``horovod``).
    Returns a :class:`TrainerChoice`.
    """
    visible_gpus = int(visible_gpus)
    if gpus is not None and int(gpus) < 0:
        raise UserError(f"--gpus {gpus}: must be >= 0")
    if horovod:
        if gpus is not None and int(gpus) > 1:
            raise UserError("--horovod runs one process per GPU: start it with horovodrun, not with --gpus > 1")
        size, rank = int(horovod_size), int(horovod_rank)
        if size < 1 or not 0 <= rank < size:
            raise UserError(f"Horovod reports rank {rank} of size {size}")
        use_gpu = visible_gpus > 0 and gpus != 0
        return TrainerChoice(HOROVOD, 1 if use_gpu else 0, "NCHW", rank, size, rank == 0)
    if gpus is None:
        gpus = min(1, visible_gpus)
    gpus = int(gpus)
    if gpus > visible_gpus:
        raise UserError(f"--gpus {gpus}: only {visible_gpus} GPU(s) visible to this process")
    if gpus == 0:
        return TrainerChoice(SIMPLE, 0, "NCHW")
    if gpus == 1:
        return TrainerChoice(SIMPLE, 1, "NCHW")
    return TrainerChoice(REPLICATED, gpus, "NCHW")


def visible_gpu_count():
    """GPUs TensorFlow can use in this process, without creating a CUDA context.

    ``list_physical_devices`` does not initialise CUDA, which Horovod needs
    (a context created before ``hvd.init()`` pins every rank to GPU 0).
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 0
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def horovod_rank_world():
    """``(rank, size)`` after ``hvd.init()``; UserError (one line) if Horovod is not usable here."""
    try:
        import horovod.tensorflow as hvd
    except Exception as exc:  # ImportError, or a Horovod built against another TensorFlow
        raise UserError(f"--horovod: cannot import horovod.tensorflow ({type(exc).__name__}: {exc})") from None
    try:
        hvd.init()
        return int(hvd.rank()), int(hvd.size())
    except Exception as exc:
        raise UserError(f"--horovod: hvd.init() failed ({type(exc).__name__}: {exc})") from None


def make_trainer(choice):
    """The tensorpack trainer instance for a :class:`TrainerChoice`."""
    from tensorpack.train import HorovodTrainer, SimpleTrainer, SyncMultiGPUTrainerReplicated

    if choice.kind == SIMPLE:
        return SimpleTrainer()
    if choice.kind == REPLICATED:
        # sum, not average, the towers' gradients: the optimizer divides by TRAIN.REFERENCE_BATCH (the reference)
        return SyncMultiGPUTrainerReplicated(list(range(choice.num_gpus)), average=False)
    if choice.kind == HOROVOD:
        from trainer.horovod_compat import patch_horovod_trainer

        patch_horovod_trainer()  # tensorpack 0.11 calls the TF1 name tf.global_variables
        try:
            return HorovodTrainer(average=False)
        except ImportError as exc:
            raise UserError(f"--horovod: cannot import horovod ({exc})") from None
    raise ValueError(f"unknown trainer kind {choice.kind!r}")


def resolve_choice(gpus=None, horovod=False):
    """:func:`choose_trainer` for this process: counts GPUs, asks Horovod for rank/size when asked to."""
    rank, size = horovod_rank_world() if horovod else (0, 1)
    return choose_trainer(gpus, horovod, visible_gpu_count(), rank, size)
