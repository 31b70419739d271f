"""Weight files: find and read them, check them strictly against a model, load them tolerantly for fine-tuning.

Reading (:func:`resolve_weights`, :func:`read_weights`) accepts ``.npz``
files, tensorpack checkpoint prefixes and directories; :func:`check_weights_match`
is the strict check of evaluation, prediction and export (every model variable,
same shapes); :func:`match_weights` decides the tolerant loading of fine-tuning
(``trainer.fine_tune`` applies it to a session): match by variable name, skip
what does not fit, say what happened. No TensorFlow import at module level:
reading ``.npz`` files and a command's ``--help`` stay fast.

Starting points are published tensorpack checkpoints, our own checkpoints or
``ddtrain export`` ``.npz`` files. All of them use the same variable names
(FACTS.md §4: ``conv0/W``, ``group0/block0/conv1/gn/gamma``, ...,
``cascade_rcnn_stage1/outputs/class/W``), so a name is the key. What makes
fine-tuning different from inference (``trainer.inference_export``, which is
strict): the new model may differ on purpose -- another number of classes
changes ``cascade_rcnn_stage{1,2,3}/outputs/class/{W,b}`` -- so a tensor
whose shape differs is *skipped with a warning* and keeps its fresh
initialisation, and variables the file does not have are *reported*, not
fatal.

Training-only extras of a checkpoint (``global_step``, ``learning_rate``,
``*/Momentum``, ``*/AccumGrad``, ...) must not be carried into a new run: the
step counter would start the LR schedule at the old step and stale momentum
would kick the first updates. ``strip_training=True`` drops them before
matching.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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




@dataclass
class LoadReport:
    """What :func:`match_weights` decided, by variable name (without ``:0``).

    Attributes:
      loaded: names assigned from the file.
      skipped: ``{name: (file shape, graph shape)}`` present in both, shapes differ.
      missing: model variables of the graph the file does not have (they keep
        their initialisation).
      unused: names in the file no graph variable has (after stripping).
      stripped: training-only names dropped from the file before matching.
    """

    loaded: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    unused: list = field(default_factory=list)
    stripped: list = field(default_factory=list)

    def summary(self):
        """One line of counts."""
        return (f"loaded {len(self.loaded)}, skipped {len(self.skipped)} (shape mismatch), "
                f"missing {len(self.missing)}, unused {len(self.unused)}, stripped {len(self.stripped)} training-only")

    def lines(self, limit=10):
        """Human-readable report: the summary, then every skipped tensor and the first missing / unused names."""
        out = [self.summary()]
        for name, (have, want) in sorted(self.skipped.items()):
            out.append(f"  skipped {name}: file {tuple(have)} vs model {tuple(want)}")
        for label, names in (("missing", self.missing), ("unused", self.unused)):
            for name in names[:limit]:
                out.append(f"  {label} {name}")
            if len(names) > limit:
                out.append(f"  ... and {len(names) - limit} more {label}")
        return out


def _is_tower_replica(name):
    """``tower1/conv0/W``: a replica SyncMultiGPUTrainerReplicated fills from tower 0 after init."""
    head = name.split("/", 1)[0]
    return head.startswith("tower") and head[5:].isdigit() and head != "tower0"


def match_weights(values, graph_variables, strip_training=True):
    """Decide which file tensors go into which graph variables.

    Args:
      values: ``{name: np.ndarray}`` from the weights file (``:0`` suffixes allowed).
      graph_variables: ``{name: shape tuple}`` of the graph's global variables.
      strip_training: drop training-only names (:func:`is_training_only`)
        from ``values`` first (recommended for a fine-tuning start point).
    Returns ``(assignments {name: array}, LoadReport)``. A graph variable that
    is training-only or a multi-GPU replica is never reported missing: the
    optimizer creates the former and the trainer copies the latter.
    """
    report = LoadReport()
    file_values = {}
    for name, value in values.items():
        name = name[:-2] if name.endswith(":0") else name
        if strip_training and is_training_only(name):
            report.stripped.append(name)
            continue
        file_values[name] = np.asarray(value)
    graph = {(n[:-2] if n.endswith(":0") else n): tuple(int(d) for d in s) for n, s in graph_variables.items()}
    assignments = {}
    for name, shape in graph.items():
        if name not in file_values:
            if not (is_training_only(name) or _is_tower_replica(name)):
                report.missing.append(name)
            continue
        value = file_values[name]
        if tuple(value.shape) != shape:
            report.skipped[name] = (tuple(value.shape), shape)
            continue
        assignments[name] = value
        report.loaded.append(name)
    report.unused = sorted(set(file_values) - set(graph))
    report.loaded.sort()
    report.missing.sort()
    report.stripped.sort()
    return assignments, report
