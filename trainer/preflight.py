"""Checks ``ddtrain train`` runs before it writes anything: caches, categories, resolution, resume shapes.

A mistake found after the log dir was written costs a rewritten
``config.yaml`` at best and a hang or a bogus checkpoint at worst (a config
whose categories a cache does not hold trains on nothing and waits forever;
a resume with other shapes fails inside TensorFlow after the log dir was
set up). So every check a run can make from the manifests, a few records and
the checkpoint's variable list is made first; each failure is one
``UserError`` line. Config values themselves are range-checked when the
config is loaded (``trainer.config``).

The pure parts (:func:`missing_categories`, :func:`resolution_shortfall`,
:func:`first_shape_mismatch`) take manifests / shape maps; the rest reads them.
"""
from pathlib import Path

import numpy as np

from ddcache.errors import CorruptRecordError, UserError

# records per train cache checked for a usable box (spread over the cache; the manifest cannot say)
USABLE_PROBES = 16


def missing_categories(manifest, categories):
    """Names of ``categories`` without a single box in the cache of ``manifest``; None if it does not count boxes."""
    counts = (manifest.get("counts") or {}).get("boxes_per_category")
    if not isinstance(counts, dict):
        return None
    have = {str(k).upper(): v for k, v in counts.items()}
    return [c for c in categories if not have.get(str(c).upper())]


def _counts_text(manifest):
    counts = (manifest.get("counts") or {}).get("boxes_per_category") or {}
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "no boxes"


def check_caches(paths, what, categories):
    """The caches as a list of str, or UserError: not a directory, not a finished cache, empty, or without
    a box of one of ``categories`` (``DATA.CATEGORIES``) in any one of them."""
    from ddcache.store import CacheReader

    if not paths:
        raise UserError(f"no {what} cache given")
    for p in paths:
        if not Path(p).is_dir():
            raise UserError(f"{what} cache {p}: no such directory")
    paths = [str(p) for p in paths]
    reader = CacheReader(paths)  # manifests only: UserError if one is not a cache
    if len(reader) == 0:
        raise UserError(f"{what} caches {', '.join(paths)}: no samples")
    for path, manifest in zip(paths, reader.manifests):
        missing = missing_categories(manifest, categories)
        if missing:
            raise UserError(f"{what} cache {path} has no {', '.join(missing)} boxes (it holds {_counts_text(manifest)})"
                            f"; DATA.CATEGORIES is {', '.join(categories)}")
    return paths


def check_val_matches_train(train_paths, val_paths, warn):
    """UserError if the val caches are of another mode than the train caches (page vs table); ``warn`` (one line)
    for a val cache that is also a train cache.

    A table detector scored on whole pages (or the reverse) gives an AP of
    another task with no sign of it; evaluating on the training data is
    sometimes meant (a smoke test), so that is only said.
    """
    import os

    from ddcache.store import CacheReader

    train, val = CacheReader(train_paths), CacheReader(val_paths)
    t_mode, v_mode = train.manifests[0]["mode"], val.manifests[0]["mode"]
    if t_mode != v_mode:
        raise UserError(f"val cache {val.paths[0]} is {v_mode}-mode but train cache {train.paths[0]} is {t_mode}-mode: "
                        "the evaluation would score another task; build the val cache with the train cache's --mode")
    trained = {os.path.realpath(p) for p in train.paths}
    for path in val.paths:
        if os.path.realpath(path) in trained:
            warn(f"val cache {path} is also a train cache: eval/* measure the data the model is trained on")


def _probe_indices(n, probes):
    return sorted({int(i) for i in np.linspace(0, n - 1, num=min(n, probes))})


def check_usable_boxes(paths, categories, probes=USABLE_PROBES):
    """UserError unless a record spread over each cache holds a box training can use.

    Usable as the training mapper sees it: finite, of a trained category,
    with a positive area after clipping to the image. Reads ``probes``
    records per cache without decoding their images; a corrupt one is a
    one-line error too.
    """
    from ddcache.categories import ids_for
    from ddcache.store import CacheReader
    from trainer.preprocessing import clean_boxes

    wanted = np.asarray(ids_for(categories))
    for path in paths:
        reader = CacheReader(path)
        for index in _probe_indices(len(reader), probes):
            try:
                sample = reader.get(index, with_image=False)
            except CorruptRecordError as exc:
                raise UserError(f"train cache {path}: {exc}") from None
            h, w = [int(v) for v in sample["image_encoded"]["shape"][:2]]
            _, keep = clean_boxes(sample["boxes"], h, w)
            if (keep & np.isin(sample["category_ids"], wanted)).any():
                break
        else:
            raise UserError(f"train cache {path}: no usable {', '.join(categories)} box in {min(len(reader), probes)} "
                            "records spread over it (boxes NaN, outside the image or empty)")


def resolution_shortfall(build_options, short_edge, max_size):
    """Why a cache built with ``build_options`` (manifest) is stored smaller than ``short_edge`` / ``max_size``
    asks for, or None (``ddcache.resolution.Resolution.below``: only ``--dpi auto`` builds say it)."""
    from ddcache.resolution import Resolution

    if not isinstance(build_options, dict):
        return None
    try:
        resolution = Resolution.from_options(build_options)
    except (TypeError, ValueError):  # not a resolution ddcache wrote
        return None
    return resolution.below(short_edge, max_size)


def resolution_warnings(train_paths, val_paths, cfg):
    """One line per cache stored smaller than ``PREPROC`` asks for (train: the largest training short edge and
    ``MAX_SIZE``; val: ``SHORT_EDGE_SIZE`` and ``MAX_SIZE``)."""
    from ddcache.manifest import read_manifest

    p = cfg.PREPROC
    wanted = (("train", train_paths, max(p.TRAIN_SHORT_EDGE_SIZE)), ("val", val_paths, p.SHORT_EDGE_SIZE))
    out = []
    for what, paths, short_edge in wanted:
        for path in paths:
            why = resolution_shortfall(read_manifest(path).get("build_options"), short_edge, p.MAX_SIZE)
            if why:
                out.append(f"{what} cache {path}: {why}")
    return out


def first_shape_mismatch(checkpoint_shapes, model_shapes, is_training_only):
    """One line naming the first variable that differs between a checkpoint and the model, or None.

    Model variables whose shape differs come first (another config of the
    same model), then model variables the checkpoint lacks, then model
    variables (not optimizer slots, step counters, ...) the model does not
    have. ``is_training_only(name)`` tells the extras apart.
    """
    model = {n: tuple(s) for n, s in model_shapes.items()}
    ckpt = {n: tuple(s) for n, s in checkpoint_shapes.items()}
    differ = [n for n in sorted(model) if n in ckpt and ckpt[n] != model[n]]
    lacking = [n for n in sorted(model) if n not in ckpt]
    extra = [n for n in sorted(ckpt) if n not in model and not is_training_only(n)]
    more = len(differ) + len(lacking) + len(extra) - 1
    tail = f" (and {more} more)" if more > 0 else ""
    if differ:
        n = differ[0]
        return f"{n} has shape {list(ckpt[n])} in the checkpoint but {list(model[n])} in this config{tail}"
    if lacking:
        return f"{lacking[0]} of this config's model is not in the checkpoint{tail}"
    if extra:
        return f"{extra[0]} in the checkpoint is not a variable of this config's model{tail}"
    return None


def check_resume(checkpoint, cfg):
    """UserError (one line naming the first mismatching variable) unless ``checkpoint`` fits ``cfg``'s model."""
    from trainer.inference_export import model_variable_shapes
    from trainer.weights import is_training_only, open_checkpoint

    shapes = open_checkpoint(checkpoint, "cannot resume: ").get_variable_to_shape_map()
    why = first_shape_mismatch(shapes, model_variable_shapes(cfg), is_training_only)
    if why:
        raise UserError(f"cannot resume from {checkpoint}: {why}; use another --logdir for another config")


def check_fine_tune_start(weights, cfg):
    """UserError (one line) unless ``--weights`` can be read and fills at least one variable of ``cfg``'s model.

    Reads the whole file now, before the log dir is written: a damaged file
    failed inside the session set-up (a traceback, with ``config.yaml``
    already written), and a file of another model loaded nothing and trained
    from random weights with only ``loaded 0`` in the report. Values are
    checked too (``trainer.weights.check_numbers``). Returns the values read,
    which the run loads (the file is read once).
    """
    from trainer.inference_export import model_variable_shapes
    from trainer.weights import match_weights, read_weights

    values = read_weights(weights)
    _, report = match_weights(values, model_variable_shapes(cfg), source=f"--weights {weights}")
    if not report.loaded:
        names = ", ".join(sorted(values)[:3]) or "none"
        raise UserError(f"--weights {weights}: none of its {len(values)} tensors ({names}, ...) fits a variable of "
                        "this config's model; not a checkpoint of this detector")
    return values
