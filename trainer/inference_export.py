"""Inference-only weights: read any checkpoint, keep the model's variables, write one ``.npz``.

A training checkpoint also carries the optimizer's state (``*/Momentum``,
``*/AccumGrad``), the schedule (``global_step``, ``learning_rate``) and
tensorpack's moving-average summaries (``EMA/...``): about twice the size of
the model and useless for inference. ``ddtrain export`` drops them; eval and
predict accept the result and tensorpack checkpoints alike, because both go
through ``trainer.weights.read_weights`` (all weight-file I/O is there).

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
from trainer.weights import check_numbers, check_weights_match, is_training_only, read_weights

def inference_weights(weights, model_variables=None, source=None):
    """The subset of ``weights`` that inference needs.

    Without ``model_variables`` the training-only names are dropped by name
    (:func:`is_training_only`). With ``model_variables`` (``{name: shape}`` of
    an inference graph) exactly those are kept, and a missing variable or a
    shape that differs raises UserError: the weights were made for another
    configuration (e.g. another ``DATA.CATEGORIES``).
    """
    if model_variables is None:
        kept = {k: v for k, v in weights.items() if not is_training_only(k)}
        check_numbers(kept, sorted(kept), source)
        return kept
    check_weights_match(weights, model_variables, source)
    return {name: weights[name] for name in model_variables}


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
