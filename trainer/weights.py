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
import zipfile
import zlib
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
        latest = latest_checkpoint_in(p)
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


# A ``checkpoint`` state file is a few lines of text per kept checkpoint.
MAX_STATE_FILE_BYTES = 1 << 20
# Numbers in one weights file, checked from the declared shapes before anything is read: a few KB of deflated
# zeros can declare gigabytes. cell.yaml's model has 68.6 million; with a checkpoint's optimizer slots ~3x that.
MAX_WEIGHT_ELEMENTS = 1 << 30
# What reading a damaged file raises (zipfile.BadZipFile, zlib.error and EOFError included; TensorFlow's
# checkpoint reader raises IndexError "Read less bytes than requested" on a truncated .data file).
READ_ERRORS = (OSError, ValueError, EOFError, KeyError, IndexError, RuntimeError, NotImplementedError,
                zipfile.BadZipFile, zlib.error)


def read_error(path, exc, kind="checkpoint"):
    """The one-line UserError for ``exc``, raised while reading the ``kind`` file at ``path``."""
    return UserError(f"{path}: unreadable {kind} ({(str(exc).splitlines() or [type(exc).__name__])[0]})")


def open_checkpoint(prefix, context=""):
    """TensorFlow's reader of the checkpoint ``prefix``; a damaged or missing one is a one-line UserError
    (``context`` is put in front of the message, e.g. ``"cannot resume: "``)."""
    import tensorflow as tf

    try:
        return tf.train.load_checkpoint(str(prefix))
    except (tf.errors.OpError, *READ_ERRORS) as exc:
        raise UserError(context + str(read_error(prefix, exc))) from None


def latest_checkpoint_in(directory):
    """Prefix of the checkpoint ``DIR/checkpoint`` names as the latest, or None if the directory has no such file.

    UserError (one line) if that file is not TensorFlow's checkpoint list (binary, another program's
    ``checkpoint``), or names a checkpoint whose ``.index`` does not exist: TensorFlow's own reader raised a
    ``UnicodeDecodeError`` traceback for the first and accepted any existing file (``/etc/passwd``) for the second.
    """
    state = Path(directory) / "checkpoint"
    if not state.is_file():
        return None
    if state.stat().st_size > MAX_STATE_FILE_BYTES:
        raise UserError(f"{state}: {state.stat().st_size} bytes, not a TensorFlow checkpoint list")
    import tensorflow as tf
    from google.protobuf import text_format

    try:
        latest = tf.train.latest_checkpoint(str(directory))
    except (UnicodeDecodeError, text_format.ParseError, tf.errors.OpError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{state}: not a TensorFlow checkpoint list ({first})") from None
    if latest is not None and not os.path.isfile(latest + ".index"):
        raise UserError(f"{state}: names {latest}, which is not a checkpoint (no {Path(latest).name}.index)")
    return latest


def _check_total_size(path, shapes):
    """UserError if the arrays ``{name: shape}`` a file declares hold more than :data:`MAX_WEIGHT_ELEMENTS` numbers."""
    total = sum(int(np.prod(shape, dtype=np.float64)) for shape in shapes.values())
    if total > MAX_WEIGHT_ELEMENTS:
        raise UserError(f"{path}: declares {total} numbers, more than the limit of {MAX_WEIGHT_ELEMENTS} "
                        "(not the weights of a detector)")


def _npz_shapes(path):
    """``{member: shape}`` of an ``.npz`` from the ``.npy`` headers alone (nothing decompressed beyond them)."""
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, _ = read_header(member)
            shapes[info.filename] = shape
    return shapes


def read_weights(path):
    """All variables stored in a weights file: ``{name: np.ndarray}`` (names without ``:0``).

    ``path`` as accepted by :func:`resolve_weights`. Nothing is filtered here;
    see :func:`inference_weights`. A file that is damaged, truncated, not of
    its kind, or declares more than :data:`MAX_WEIGHT_ELEMENTS` numbers is a
    one-line UserError. Values are checked where they are used
    (:func:`check_numbers`).
    """
    resolved = resolve_weights(path)
    if resolved.endswith(".npz"):
        try:
            _check_total_size(path, _npz_shapes(resolved))
            with np.load(resolved, allow_pickle=False) as data:
                return {(k[:-2] if k.endswith(":0") else k): data[k] for k in data.files}
        except READ_ERRORS as exc:
            raise read_error(path, exc, ".npz") from None
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(resolved)
        names = reader.get_variable_to_shape_map()
        _check_total_size(path, names)
        return {name: reader.get_tensor(name) for name in sorted(names)}
    except (tf.errors.OpError, *READ_ERRORS) as exc:
        raise read_error(path, exc) from None


def check_numbers(weights, names, source=None):
    """UserError naming the first of ``names`` whose array in ``weights`` is not real numbers, or not finite.

    A string array of the right shape was cast to floats and trained on, a
    boolean or complex one loaded as 0/1 or without its imaginary part, and
    a NaN weight made every detection NaN (eval, predict and export said
    nothing): a weights file is refused before a value of it reaches a model.
    """
    prefix = f"{source}: " if source else ""
    for name in names:
        value = np.asarray(weights[name])
        if value.dtype.kind not in "fiu":
            raise UserError(prefix + f"{name} holds {value.dtype} values, not numbers (not a weights file of a model)")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise UserError(prefix + f"{name} holds NaN or infinite values (saved from a diverged run?)")


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
    if not missing and not mismatched:
        check_numbers(weights, model_variables, source)
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


def match_weights(values, graph_variables, strip_training=True, source=None):
    """Decide which file tensors go into which graph variables.

    Args:
      values: ``{name: np.ndarray}`` from the weights file (``:0`` suffixes allowed).
      graph_variables: ``{name: shape tuple}`` of the graph's global variables.
      strip_training: drop training-only names (:func:`is_training_only`)
        from ``values`` first (recommended for a fine-tuning start point).
      source: the file's name for the UserError of a value that is not a finite number (:func:`check_numbers`).
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
    check_numbers(assignments, sorted(assignments), source)
    report.unused = sorted(set(file_values) - set(graph))
    report.loaded.sort()
    report.missing.sort()
    report.stripped.sort()
    return assignments, report
