"""Inference-only weights: read any checkpoint, keep the model's variables, write one ``.npz``.

A training checkpoint also carries the optimizer's state (``*/Momentum``,
``*/AccumGrad``), the schedule (``global_step``, ``learning_rate``) and
tensorpack's moving-average summaries (``EMA/...``): about twice the size of
the model and useless for inference. ``ddtrain export`` drops them; eval and
predict accept the result and tensorpack checkpoints alike, because both go
through :func:`read_weights`.

Variable names are kept exactly (``conv0/W``, ``group0/block0/conv1/gn/gamma``,
..., FACTS.md §4), so an exported file is also a valid starting point for
fine-tuning.
"""
import os
from pathlib import Path

import click
import numpy as np

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from ddcache.errors import UserError

# Suffixes / prefixes of variables that only training needs (optimizer slots of
# the optimizers tensorpack offers, gradient accumulation, the schedule, summaries).
_TRAINING_SUFFIXES = ("/Momentum", "/AccumGrad", "/Adam", "/Adam_1", "/RMSProp", "/RMSProp_1", "/Adagrad",
                      "/Adadelta", "/Adadelta_1")
_TRAINING_NAMES = ("global_step", "learning_rate")
_TRAINING_PREFIXES = ("EMA/", "AccumGrad/", "apply_gradients")


def is_training_only(name):
    """True for a variable name that inference never reads (optimizer slot, step counter, LR, summary EMA)."""
    name = name[:-2] if name.endswith(":0") else name
    return (
        name in _TRAINING_NAMES
        or name.endswith(_TRAINING_SUFFIXES)
        or name.startswith(_TRAINING_PREFIXES)
        or "/EMA/" in name
    )


def resolve_weights(path):
    """The loadable form of a weights argument, or UserError (one line) if there is nothing to load.

    Accepted: an ``.npz`` file; a tensorpack/TF checkpoint prefix
    (``runs/x/model-5000``, the ``.index`` / ``.data-*`` file of one works too);
    a directory with a ``checkpoint`` file (its latest checkpoint). Returns the
    ``.npz`` path or the checkpoint prefix as a string.
    """
    p = Path(path)
    if p.suffix == ".npz":
        if not p.is_file():
            raise UserError(f"{path}: no such weights file")
        return str(p)
    if p.is_dir():
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(str(p))
        if latest is None:
            raise UserError(f"{path}: directory holds no checkpoint (no 'checkpoint' file)")
        return latest
    text = str(p)
    if ".data-" in p.name:
        text = text[: text.rindex(".data-")]
    elif p.suffix == ".index":
        text = text[: -len(".index")]
    if os.path.isfile(text + ".index"):
        return text
    raise UserError(f"{path}: no such weights file (expected an .npz or a checkpoint prefix with {Path(text).name}.index)")


def read_weights(path):
    """All variables stored in a weights file: ``{name: np.ndarray}`` (names without ``:0``).

    ``path`` as accepted by :func:`resolve_weights`. Nothing is filtered here;
    see :func:`inference_weights`.
    """
    resolved = resolve_weights(path)
    if resolved.endswith(".npz"):
        try:
            with np.load(resolved, allow_pickle=False) as data:
                return {(k[:-2] if k.endswith(":0") else k): data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: unreadable .npz ({exc})") from None
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(resolved)
        names = reader.get_variable_to_shape_map()
        return {name: reader.get_tensor(name) for name in sorted(names)}
    except (tf.errors.OpError, ValueError) as exc:
        raise UserError(f"{path}: unreadable checkpoint ({str(exc).splitlines()[0]})") from None


def inference_weights(weights, model_variables=None, source=None):
    """The subset of ``weights`` that inference needs.

    Without ``model_variables`` the training-only names are dropped by name
    (:func:`is_training_only`). With ``model_variables`` (``{name: shape}`` of
    an inference graph) exactly those are kept, and a missing variable or a
    shape that differs raises UserError: the weights were made for another
    configuration (e.g. another ``DATA.CATEGORIES``).
    """
    if model_variables is None:
        return {k: v for k, v in weights.items() if not is_training_only(k)}
    check_weights_match(weights, model_variables, source)
    return {name: weights[name] for name in model_variables}


def check_weights_match(weights, model_variables, source=None):
    """UserError naming the first problems if ``weights`` cannot fill every variable of ``model_variables``.

    A partial load would leave random layers in the model and produce
    confident garbage; for evaluation and inference that must be an error,
    not a warning (fine-tuning's tolerant loading is a different use).
    """
    legacy = sorted(n for n in weights if n.startswith("fpn/") and n.endswith("/b") and n not in model_variables)
    if legacy:
        prefix = f"{source}: " if source else ""
        raise UserError(prefix + f"has FPN convolution biases ({legacy[0]}, ... {len(legacy)} in all): written by "
                        "ddcache 0.1, whose FPN was not the published model's; fine-tune again from the published "
                        "weights (they load as they are)")
    missing = [n for n in model_variables if n not in weights]
    mismatched = [
        f"{n} {tuple(weights[n].shape)} vs model {tuple(s)}"
        for n, s in model_variables.items()
        if n in weights and tuple(weights[n].shape) != tuple(s)
    ]
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model variables missing (e.g. {', '.join(missing[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} with another shape (e.g. {'; '.join(mismatched[:2])})")
        prefix = f"{source}: " if source else ""
        raise UserError(prefix + "weights do not fit the model of this config: " + ", ".join(parts))


def model_variable_shapes(cfg):
    """``{name: shape}`` of every variable of the inference graph built from ``cfg`` (nothing is run)."""
    import tensorflow as tf
    from tensorpack.tfutils.tower import PredictTowerContext

    from trainer.model.detector import CascadeRCNN, default_data_format

    model = CascadeRCNN(cfg, default_data_format())
    with tf.Graph().as_default():
        inputs = [tf.compat.v1.placeholder(s.dtype, s.shape, s.name) for s in model.get_input_signature()]
        with PredictTowerContext(""):
            model.build_graph(*inputs)
        return {v.op.name: tuple(v.shape.as_list()) for v in tf.compat.v1.global_variables()}


def export_inference_weights(weights_path, out_path, cfg=None):
    """Write the inference-only ``.npz`` of ``weights_path``; returns (out path, kept names, dropped names).

    With ``cfg`` the kept set is exactly the model's variables (and the
    weights are checked against the model); without, training-only names are
    dropped by pattern. Arrays are written unchanged (dtype and values).
    """
    weights = read_weights(weights_path)
    shapes = None if cfg is None else model_variable_shapes(cfg)
    kept = inference_weights(weights, shapes, source=str(weights_path))
    if not kept:
        raise UserError(f"{weights_path}: no model variables left to export")
    out = Path(out_path)
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")  # np.savez would append it anyway; say so in the path we report
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, **kept)
    os.replace(tmp, out)  # never leave a half-written file under the final name
    dropped = sorted(set(weights) - set(kept))
    return str(out), sorted(kept), dropped


@click.command("export")
@click.option("--weights", required=True, help="Checkpoint to export: tensorpack checkpoint prefix/dir or .npz.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .npz to write.")
@click.option("--config", "config_path", default=None, type=click.Path(),
              help="Model config: keep exactly its variables and check their shapes (recommended).")
@click.option("--override", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Config override (repeatable; --set is the same).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def export(weights, out, config_path, overrides, overwrite):
    """Write an inference-only .npz (no optimizer slots, global_step, learning_rate, AccumGrad)."""
    from ddcache.outputs import check_output

    check_output(out if out.endswith(".npz") else out + ".npz", "--out", overwrite=overwrite)
    cfg = None
    if config_path is not None:
        from trainer.config import load_user_config

        cfg = load_user_config(config_path, overrides)
    path, kept, dropped = export_inference_weights(weights, out, cfg)
    size = os.path.getsize(path) / 2**20
    click.echo(f"wrote {path}: {len(kept)} variables ({size:.1f} MiB), dropped {len(dropped)} training-only")
