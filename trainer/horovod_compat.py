"""The one fix tensorpack 0.11's ``HorovodTrainer`` needs on TensorFlow 2.21, applied before it is used.

``HorovodTrainer.initialize`` counts the variables to broadcast with
``tf.global_variables()``, a TF1 name that TensorFlow 2 only offers as
``tf.compat.v1.global_variables``: every rank fails with ``AttributeError``
before its first step. tensorpack's ``train/trainers.py`` looks ``tf`` up in
its own module namespace, so pointing that one name at ``tf.compat.v1`` fixes
the call without touching installed files or the ``tensorflow`` module seen
by everything else. The other names that module uses (``tf.name_scope`` in
the all-reduce, ``tf.train.Server`` in the distributed trainers ddtrain does
not use) exist in ``tf.compat.v1`` with the meaning tensorpack expects.

Verified with Horovod 0.28.1 on CPU/Gloo: two ranks train in sync, the
broadcast covers every global variable (model, optimizer slots,
``global_step``).
"""


def patch_horovod_trainer():
    """Point ``tensorpack.train.trainers.tf`` at ``tf.compat.v1`` (idempotent); returns that module."""
    import tensorflow as tf
    from tensorpack.train import trainers

    if not hasattr(trainers.tf, "global_variables"):
        trainers.tf = tf.compat.v1
    return trainers
