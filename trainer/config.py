"""Detector configuration: one default schema, YAML files and ``KEY.SUB=VALUE`` overrides on top of it.

:data:`DEFAULTS` holds every key the trainer knows, with its default value;
the default's type is the key's type. A YAML file (``configs/cell.yaml``)
and then command-line overrides replace values; an unknown key or a value
of the wrong type raises :class:`ConfigError` with a one-line message naming
the key. Lists may change length (e.g. another number of anchor sizes);
their elements must keep the element type.

Inheritance: a file whose top level has ``_BASE_: other.yaml`` (a path
relative to that file) starts from ``other.yaml`` (which may have its own
base) and states only its differences, so a variant cannot drift from the
config it varies (``configs/item.yaml`` is ``cell.yaml`` plus the row/column
anchors and NMS settings). Sections merge key by key; a list replaces the
base's list.

Keys the model does not read (:data:`UNREAD`) are accepted so that seed
configs load unchanged, but a value other than the default makes
:func:`load_config` warn (one line on stderr): it would change nothing.

Key names follow the tensorpack / deepdoctection configs (FACTS.md §3) so a
seed config reads the same here. Units: image sizes and anchor sizes/strides
in pixels of the resized image; thresholds are IoUs; steps are global steps.
Keys added beyond the seed: ``BACKBONE.WIDTH_MULT`` (channel multiplier for
small test models), ``TRAIN.NUM_WORKERS``, ``TRAIN.SEED``,
``TRAIN.MAX_CHECKPOINTS``. The number of classes (with background) is
``len(DATA.CATEGORIES) + 1`` (:func:`num_classes`).
"""
import ast
import copy
import math
import sys
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config file or override names an unknown key or carries a value of the wrong type."""


DEFAULTS = {
    "MODE_FPN": True,
    "TRAINER": "replicated",
    "DATA": {
        # category names (ddcache.categories); label k = k-th name, 0 = background
        "CATEGORIES": ["CELL"],
    },
    "BACKBONE": {
        "BOTTLENECK": "resnet",  # "resnet" or "resnext_32xd4"
        "NORM": "FreezeBN",  # "GN", "FreezeBN" or "None"
        "RESNET_NUM_BLOCKS": [3, 4, 6, 3],
        "FREEZE_AT": 2,  # 0: train all; 1: freeze conv0; 2: conv0 + group0
        "FREEZE_AFFINE": False,  # also freeze gamma/beta of the trainable backbone norms
        "TF_PAD_MODE": False,  # False: pad like Caffe/detectron before strided convs
        "WIDTH_MULT": 1.0,  # scales every backbone width (1.0 = the published models)
    },
    "FPN": {
        "CASCADE": True,
        "NORM": "None",  # "GN" or "None"
        "NUM_CHANNEL": 256,
        "ANCHOR_STRIDES": [4, 8, 16, 32, 64],
        "PROPOSAL_MODE": "Level",  # "Level" (top-k per level) or "Joint"
        "FRCNN_HEAD_FUNC": "fastrcnn_2fc_head",
        "FC_HEAD_DIM": 1024,
        "CONV_HEAD_DIM": 256,  # only for conv heads; the 2fc head does not use it
        "RESOLUTION_REQUIREMENT": 32,
    },
    "CASCADE": {
        "IOUS": [0.5, 0.6, 0.7],
        "BBOX_REG_WEIGHTS": [[10.0, 10.0, 5.0, 5.0], [20.0, 20.0, 10.0, 10.0], [30.0, 30.0, 15.0, 15.0]],
    },
    "FRCNN": {
        "BATCH_PER_IM": 512,
        "FG_RATIO": 0.25,
        "FG_THRESH": 0.5,
        "BBOX_REG_WEIGHTS": [10.0, 10.0, 5.0, 5.0],
    },
    "RPN": {
        "ANCHOR_SIZES": [32, 64, 128, 256, 512],
        "ANCHOR_RATIOS": [0.5, 1.0, 2.0],
        "ANCHOR_STRIDE": 16,  # single-level (non-FPN) models only
        "BATCH_PER_IM": 256,
        "FG_RATIO": 0.5,
        "POSITIVE_ANCHOR_THRESH": 0.7,
        "NEGATIVE_ANCHOR_THRESH": 0.3,
        "CROWD_OVERLAP_THRESH": 9.99,
        # "reference": tensorpack's labelling order (a gt's best anchor below NEGATIVE_ANCHOR_THRESH is bg);
        # "always_positive": a gt's best anchors are fg whatever their IoU (detectron2); trainer/matcher.py
        "BEST_ANCHOR_RULE": "reference",
        "PROPOSAL_NMS_THRESH": 0.7,
        "MIN_SIZE": 0.0,
        "HEAD_DIM": 1024,  # non-FPN only: with FPN the head has FPN.NUM_CHANNEL channels
        "TRAIN_PRE_NMS_TOPK": 12000,
        "TRAIN_POST_NMS_TOPK": 2000,
        "TEST_PRE_NMS_TOPK": 6000,
        "TEST_POST_NMS_TOPK": 1000,
        "TRAIN_PER_LEVEL_NMS_TOPK": 2000,
        "TEST_PER_LEVEL_NMS_TOPK": 1000,
    },
    "PREPROC": {
        "SHORT_EDGE_SIZE": 800,
        "TRAIN_SHORT_EDGE_SIZE": [800, 800],
        "MAX_SIZE": 1333,
        "PIXEL_MEAN": [103.53, 116.28, 123.675],  # BGR
        "PIXEL_STD": [57.375, 57.12, 58.395],  # BGR
    },
    "OUTPUT": {
        "RESULT_SCORE_THRESH": 0.05,
        "RESULTS_PER_IM": 100,
        "FRCNN_NMS_THRESH": 0.5,  # per-class NMS
        "NMS_THRESH_CLASS_AGNOSTIC": 1.0,  # NMS across classes after the per-class NMS (1.0 = off)
    },
    "TRAIN": {
        "STEPS_PER_EPOCH": 500,
        "EVAL_PERIOD": 20,  # epochs
        "CHECKPOINT_PERIOD": 20,  # epochs
        "STARTING_EPOCH": 1,
        "BASE_LR": 1e-2,
        "WARMUP": 1000,  # steps of linear warm-up
        "WARMUP_INIT_LR": 1e-5,
        "LR_SCHEDULE": [240000, 320000, 360000],  # steps of x0.1 decay; the last one ends training
        "WEIGHT_DECAY": 1e-4,
        # total batch (images per update) BASE_LR, LR_SCHEDULE and WARMUP_INIT_LR are set for: the reference's 8
        # (8 GPUs x 1 image); fewer devices accumulate gradients to it (trainer/lr_schedule.py)
        "REFERENCE_BATCH": 8,
        "NUM_WORKERS": 2,  # data-loading processes
        "SEED": 0,
        "MAX_CHECKPOINTS": 10,
    },
}

# Known to the schema (seed configs carry them) but read by no part of this model; why, per key.
UNREAD = {
    "FPN.CONV_HEAD_DIM": "only convolutional box heads use it, and FPN.FRCNN_HEAD_FUNC is the 2fc head",
    "RPN.ANCHOR_STRIDE": "single-level (non-FPN) models only; the FPN levels use FPN.ANCHOR_STRIDES",
    "RPN.HEAD_DIM": "single-level (non-FPN) models only; the FPN RPN head has FPN.NUM_CHANNEL channels",
    "RPN.CROWD_OVERLAP_THRESH": "caches hold no crowd boxes",
}
BASE_KEY = "_BASE_"

CHOICES = {
    "TRAINER": ("replicated", "horovod"),
    "BACKBONE.BOTTLENECK": ("resnet", "resnext_32xd4"),
    "BACKBONE.NORM": ("GN", "FreezeBN", "None"),
    "FPN.NORM": ("GN", "None"),
    "FPN.PROPOSAL_MODE": ("Level", "Joint"),
    "FPN.FRCNN_HEAD_FUNC": ("fastrcnn_2fc_head",),
    "RPN.BEST_ANCHOR_RULE": ("reference", "always_positive"),
}


# Allowed values of numeric keys (for a list key: of every element), checked after the types. A value
# out of range would not fail at once: a negative BASE_LR trains towards NaN, a zero size divides by zero
# deep inside the graph, a threshold above 1 silently makes every anchor negative.
_POSITIVE = ("> 0", lambda v: v > 0)
_NON_NEGATIVE = (">= 0", lambda v: v >= 0)
_AT_LEAST_ONE = (">= 1", lambda v: v >= 1)
_FRACTION = ("in [0, 1]", lambda v: 0 <= v <= 1)
_SHARE = ("in (0, 1]", lambda v: 0 < v <= 1)
# Image sides after resizing. The anchor field of the finest level alone is (MAX_SIZE / 4)^2 cells x ratios x 4
# floats in every process (PREPROC.MAX_SIZE 100000 asked for 9.3 GiB and died in numpy); 8192 takes ~270 MB.
MAX_IMAGE_SIDE = 8192
_IMAGE_SIDE = (f"in 1..{MAX_IMAGE_SIDE}", lambda v: 1 <= v <= MAX_IMAGE_SIDE)
# Layer widths: a typo (FPN.NUM_CHANNEL=25600) would allocate gigabytes of weights before any check could run.
# The published models use 256 / 1024 channels and WIDTH_MULT 1; these bounds are 8x / 4x those.
MAX_CHANNELS = 2048
MAX_FC_DIM = 4096
MAX_WIDTH_MULT = 4.0
_CHANNELS = (f"in 1..{MAX_CHANNELS}", lambda v: 1 <= v <= MAX_CHANNELS)
_FC_DIM = (f"in 1..{MAX_FC_DIM}", lambda v: 1 <= v <= MAX_FC_DIM)
# Each map worker is a forked copy of the training process; more than this only loads the machine.
MAX_WORKERS = 64
# The backbone + FPN fix the pyramid: P2..P6 at these strides (ANCHOR_STRIDES is a fact of the model, not a knob).
PYRAMID_STRIDES = [4, 8, 16, 32, 64]
RANGES = {
    "BACKBONE.RESNET_NUM_BLOCKS": _AT_LEAST_ONE,
    "BACKBONE.FREEZE_AT": ("in 0..5 (conv0 and the 4 groups)", lambda v: 0 <= v <= 5),
    "BACKBONE.WIDTH_MULT": (f"in (0, {MAX_WIDTH_MULT:g}]", lambda v: 0 < v <= MAX_WIDTH_MULT),
    "FPN.NUM_CHANNEL": _CHANNELS,
    "FPN.ANCHOR_STRIDES": _AT_LEAST_ONE,
    "FPN.FC_HEAD_DIM": _FC_DIM,
    "FPN.CONV_HEAD_DIM": _CHANNELS,
    "FPN.RESOLUTION_REQUIREMENT": _AT_LEAST_ONE,
    "CASCADE.IOUS": _FRACTION,
    "CASCADE.BBOX_REG_WEIGHTS": _POSITIVE,
    "FRCNN.BATCH_PER_IM": _AT_LEAST_ONE,
    "FRCNN.FG_RATIO": _SHARE,
    "FRCNN.FG_THRESH": _FRACTION,
    "FRCNN.BBOX_REG_WEIGHTS": _POSITIVE,
    "RPN.ANCHOR_SIZES": (f"in (0, {MAX_IMAGE_SIDE}]", lambda v: 0 < v <= MAX_IMAGE_SIDE),
    # height / width; beyond these the float32 anchors overflow (a ratio of 1e-300 crashed the anchor matcher)
    "RPN.ANCHOR_RATIOS": ("in [0.001, 1000]", lambda v: 1e-3 <= v <= 1e3),
    "RPN.ANCHOR_STRIDE": _AT_LEAST_ONE,
    "RPN.BATCH_PER_IM": _AT_LEAST_ONE,
    "RPN.FG_RATIO": _SHARE,
    "RPN.POSITIVE_ANCHOR_THRESH": _FRACTION,
    "RPN.NEGATIVE_ANCHOR_THRESH": _FRACTION,
    "RPN.PROPOSAL_NMS_THRESH": _FRACTION,
    "RPN.MIN_SIZE": _NON_NEGATIVE,
    "RPN.HEAD_DIM": _FC_DIM,
    "RPN.TRAIN_PRE_NMS_TOPK": _AT_LEAST_ONE,
    "RPN.TEST_PRE_NMS_TOPK": _AT_LEAST_ONE,
    "RPN.TRAIN_POST_NMS_TOPK": _AT_LEAST_ONE,
    "RPN.TEST_POST_NMS_TOPK": _AT_LEAST_ONE,
    "RPN.TRAIN_PER_LEVEL_NMS_TOPK": _AT_LEAST_ONE,
    "RPN.TEST_PER_LEVEL_NMS_TOPK": _AT_LEAST_ONE,
    "PREPROC.SHORT_EDGE_SIZE": _IMAGE_SIDE,
    "PREPROC.TRAIN_SHORT_EDGE_SIZE": _IMAGE_SIDE,
    "PREPROC.MAX_SIZE": _IMAGE_SIDE,
    "PREPROC.PIXEL_MEAN": ("in [0, 255]", lambda v: 0 <= v <= 255),
    "PREPROC.PIXEL_STD": _POSITIVE,
    "OUTPUT.RESULT_SCORE_THRESH": _FRACTION,
    "OUTPUT.RESULTS_PER_IM": _AT_LEAST_ONE,
    "OUTPUT.FRCNN_NMS_THRESH": _FRACTION,
    "OUTPUT.NMS_THRESH_CLASS_AGNOSTIC": _FRACTION,
    "TRAIN.STEPS_PER_EPOCH": _AT_LEAST_ONE,
    "TRAIN.CHECKPOINT_PERIOD": _AT_LEAST_ONE,
    "TRAIN.STARTING_EPOCH": _AT_LEAST_ONE,
    "TRAIN.BASE_LR": _POSITIVE,
    "TRAIN.WARMUP": _NON_NEGATIVE,
    "TRAIN.WARMUP_INIT_LR": _NON_NEGATIVE,
    "TRAIN.LR_SCHEDULE": _AT_LEAST_ONE,
    "TRAIN.WEIGHT_DECAY": _NON_NEGATIVE,
    "TRAIN.NUM_WORKERS": (f"in 0..{MAX_WORKERS}", lambda v: 0 <= v <= MAX_WORKERS),
    "TRAIN.SEED": ("in [0, 2**32)", lambda v: 0 <= v < 2 ** 32),
    "TRAIN.MAX_CHECKPOINTS": _AT_LEAST_ONE,
    "TRAIN.REFERENCE_BATCH": _AT_LEAST_ONE,
}


class Config:
    """Nested attribute-access config: ``cfg.RPN.ANCHOR_SIZES``.

    Sections are ``Config`` objects, leaves are plain Python values (lists,
    not tuples). A missing attribute raises ``AttributeError`` (so
    ``getattr(cfg.TRAIN, "X", default)`` works). After :meth:`freeze`, any
    assignment raises ``ConfigError``.
    """

    def __init__(self, mapping=None):
        object.__setattr__(self, "_frozen", False)
        for key, value in (mapping or {}).items():
            setattr(self, key, Config(value) if isinstance(value, dict) else copy.deepcopy(value))

    def __setattr__(self, key, value):
        if self._frozen:
            raise ConfigError(f"config is frozen: cannot set {key}")
        object.__setattr__(self, key, value)

    def keys(self):
        return [k for k in self.__dict__ if not k.startswith("_")]

    def items(self):
        return [(k, getattr(self, k)) for k in self.keys()]

    def __contains__(self, key):
        return key in self.keys()

    def __eq__(self, other):
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"Config({self.to_dict()!r})"

    def to_dict(self):
        """Plain nested dict of the values (a deep copy)."""
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}

    def dump_yaml(self, path):
        """Write the whole config (every key) as YAML; :func:`load_config` reads it back identically."""
        with open(path, "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False, default_flow_style=None)

    def freeze(self):
        """Make this config and all its sections read-only; returns self."""
        for _, value in self.items():
            if isinstance(value, Config):
                value.freeze()
        object.__setattr__(self, "_frozen", True)
        return self

    @property
    def frozen(self):
        return self._frozen


def num_classes(cfg):
    """Classes of the detector including background: ``len(DATA.CATEGORIES) + 1``."""
    return len(cfg.DATA.CATEGORIES) + 1


def max_image_side(cfg):
    """``PREPROC.MAX_SIZE`` rounded up to a multiple of ``FPN.RESOLUTION_REQUIREMENT``: the long-edge cap the
    resizes, the anchor fields and the box-decode clamp use (the reference rounds it when it finalizes its config)."""
    from trainer.anchors import rounded_max_size

    return rounded_max_size(cfg.PREPROC.MAX_SIZE, int(cfg.FPN.RESOLUTION_REQUIREMENT))


def _type_name(value):
    return type(value).__name__


def _coerce(key, default, value):
    """``value`` checked (and normalised) against the type of ``default``; ConfigError names ``key``."""
    if isinstance(value, str) and not isinstance(default, str):
        # YAML 1.1 reads "1e-3" and "(4, 8)" as strings: give them one literal parse
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ConfigError(f"{key}: expected {_type_name(default)}, got string {value!r}") from None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected bool, got {_type_name(value)} {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected int, got {_type_name(value)} {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {_type_name(value)} {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected str, got {_type_name(value)} {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_type_name(value)} {value!r}")
        if not default:
            return list(value)
        # int lists accept floats only if integral; float lists accept ints
        proto = 0.0 if any(isinstance(d, float) for d in default) else default[0]
        return [_coerce(f"{key}[{i}]", proto, v) for i, v in enumerate(value)]
    raise ConfigError(f"{key}: unsupported default type {_type_name(default)}")


def _merge(target, updates, defaults, prefix=""):
    """Merge the nested dict ``updates`` into ``target`` (a nested dict) with checks against ``defaults``."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {_type_name(updates)}")
    for key, value in updates.items():
        full = prefix + str(key)
        if key not in defaults:
            raise ConfigError(f"{full}: unknown config key")
        if isinstance(defaults[key], dict):
            _merge(target[key], value, defaults[key], full + ".")
        else:
            target[key] = _coerce(full, defaults[key], value)


def parse_override(text):
    """``"KEY.SUB=VALUE"`` -> (``["KEY", "SUB"]``, value); VALUE is parsed as YAML (never evaluated)."""
    if "=" not in text:
        raise ConfigError(f"{text}: override must look like KEY.SUB=VALUE")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"{text}: override has no key")
    if "" in key.split("."):
        raise ConfigError(f"{text}: override key {key!r} has an empty part (KEY.SUB=VALUE)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw.strip()
    return key.split("."), value


def _check_consistency(d):
    """Cross-key rules the model relies on; ConfigError names the key (after :func:`_check_ranges`)."""
    for key in ("MODE_FPN", "FPN.CASCADE"):
        if _leaf(d, key) is not True:
            raise ConfigError(f"{key}: must be true (only the FPN + Cascade R-CNN model is implemented)")
    if d["FPN"]["ANCHOR_STRIDES"] != PYRAMID_STRIDES:
        raise ConfigError(f"FPN.ANCHOR_STRIDES: {d['FPN']['ANCHOR_STRIDES']} must be {PYRAMID_STRIDES} "
                          "(the strides of the model's pyramid levels P2..P6)")
    if d["FPN"]["RESOLUTION_REQUIREMENT"] % PYRAMID_STRIDES[3]:
        raise ConfigError(f"FPN.RESOLUTION_REQUIREMENT: {d['FPN']['RESOLUTION_REQUIREMENT']} must be a multiple of "
                          f"{PYRAMID_STRIDES[3]} (the stride of C5: the pyramid's levels must align)")
    for dotted, allowed in CHOICES.items():
        node = d
        for part in dotted.split("."):
            node = node[part]
        if node not in allowed:
            raise ConfigError(f"{dotted}: {node!r} is not one of {', '.join(map(str, allowed))}")
    n_levels = len(d["FPN"]["ANCHOR_STRIDES"])
    if len(d["RPN"]["ANCHOR_SIZES"]) != n_levels:
        raise ConfigError(f"RPN.ANCHOR_SIZES: {len(d['RPN']['ANCHOR_SIZES'])} sizes for {n_levels} FPN.ANCHOR_STRIDES")
    if len(d["BACKBONE"]["RESNET_NUM_BLOCKS"]) != 4:
        raise ConfigError("BACKBONE.RESNET_NUM_BLOCKS: expected 4 numbers (groups conv2_x..conv5_x)")
    if len(d["CASCADE"]["BBOX_REG_WEIGHTS"]) != len(d["CASCADE"]["IOUS"]):
        raise ConfigError("CASCADE.BBOX_REG_WEIGHTS: need one [wx, wy, ww, wh] per CASCADE.IOUS stage")
    for i, w in enumerate(d["CASCADE"]["BBOX_REG_WEIGHTS"]):
        if len(w) != 4:
            raise ConfigError(f"CASCADE.BBOX_REG_WEIGHTS[{i}]: expected 4 weights")
    for key in ("PIXEL_MEAN", "PIXEL_STD"):
        if len(d["PREPROC"][key]) != 3:
            raise ConfigError(f"PREPROC.{key}: expected 3 values (B, G, R)")
    if d["BACKBONE"]["NORM"] == "GN":
        m = d["BACKBONE"]["WIDTH_MULT"]
        if any(round(w * m) % 32 for w in (64, 128, 256, 512)):
            raise ConfigError(f"BACKBONE.WIDTH_MULT: {m} gives widths not divisible by 32 (GroupNorm)")
    if d["FPN"]["NORM"] == "GN" and d["FPN"]["NUM_CHANNEL"] % 32:
        raise ConfigError(f"FPN.NUM_CHANNEL: {d['FPN']['NUM_CHANNEL']} is not divisible into 32 GroupNorm groups")
    if not d["DATA"]["CATEGORIES"]:
        raise ConfigError("DATA.CATEGORIES: at least one category is needed")


def _read_yaml(path):
    """The mapping in YAML file ``path``; ConfigError if it is not UTF-8 YAML text, empty, or not a mapping.

    An empty file is refused rather than read as "all defaults": the defaults
    are no shipped config (a truncated or wrong file would train a ResNet-50 at
    800 px with the schema's learning rate).
    """
    with open(path, encoding="utf-8") as f:
        try:
            loaded = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a YAML text file (not UTF-8)") from None
    if loaded is None:
        raise ConfigError(f"{path}: empty config file (start from configs/cell.yaml or _BASE_: it)")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {_type_name(loaded)}")
    return loaded


def config_layers(path):
    """``[(file, mapping), ...]`` for ``path`` and its ``_BASE_`` chain, the root base first.

    Each mapping is the file's content without its ``_BASE_`` key. ConfigError
    for a missing base, a base that is not a file name, or a cycle.
    """
    chain = []
    path = Path(path)
    while True:
        if path.resolve() in [p.resolve() for p, _ in chain]:
            names = " -> ".join(str(p) for p, _ in chain + [(path, None)])
            raise ConfigError(f"{BASE_KEY} cycle: {names}")
        loaded = _read_yaml(path)
        base = loaded.pop(BASE_KEY, None)
        chain.append((path, loaded))
        if base is None:
            return chain[::-1]
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{path}: {BASE_KEY} must name a YAML file, got {base!r}")
        base_path = path.parent / base
        if not base_path.is_file():
            raise ConfigError(f"{path}: {BASE_KEY} {base}: no such file")
        path = base_path


def _flat(d, prefix=""):
    """``{"SECTION.KEY": value}`` for the leaves of nested dict ``d``."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def unread_key_warnings(values):
    """One line per :data:`UNREAD` key of nested dict ``values`` set to something other than its default."""
    flat, defaults = _flat(values), _flat(DEFAULTS)
    return [f"{key} = {flat[key]!r} has no effect: the model does not read it ({why})"
            for key, why in UNREAD.items() if flat[key] != defaults[key]]


def _print_warning(message):
    print(f"warning: {message}", file=sys.stderr)


def _leaf(d, dotted):
    for part in dotted.split("."):
        d = d[part]
    return d


def _check_ranges(d):
    """Every :data:`RANGES` key holds finite numbers in its range, plus the cross-key orders; ConfigError names the key.

    Separate from the type check: a value of the right type can still be one
    the model cannot train with, and that must be said before anything runs.
    """
    for dotted, (allowed, ok) in RANGES.items():
        value = _leaf(d, dotted)
        items = [(dotted, value)] if not isinstance(value, list) else \
            [(f"{dotted}[{i}]", v) for i, v in enumerate(value)]
        while any(isinstance(v, list) for _, v in items):  # nested lists (CASCADE.BBOX_REG_WEIGHTS)
            items = [(f"{k}[{i}]", x) for k, v in items for i, x in enumerate(v if isinstance(v, list) else [v])]
        for key, v in items:
            if not math.isfinite(v) or not ok(v):
                raise ConfigError(f"{key}: {v!r} must be {allowed}")
    if not d["PREPROC"]["TRAIN_SHORT_EDGE_SIZE"]:
        raise ConfigError("PREPROC.TRAIN_SHORT_EDGE_SIZE: give [min, max] (or one size)")
    lo, hi = d["PREPROC"]["TRAIN_SHORT_EDGE_SIZE"][0], d["PREPROC"]["TRAIN_SHORT_EDGE_SIZE"][-1]
    if lo > hi:
        raise ConfigError(f"PREPROC.TRAIN_SHORT_EDGE_SIZE: min {lo} > max {hi}")
    rpn = d["RPN"]
    if rpn["NEGATIVE_ANCHOR_THRESH"] > rpn["POSITIVE_ANCHOR_THRESH"]:
        raise ConfigError(f"RPN.NEGATIVE_ANCHOR_THRESH: {rpn['NEGATIVE_ANCHOR_THRESH']} is above "
                          f"RPN.POSITIVE_ANCHOR_THRESH {rpn['POSITIVE_ANCHOR_THRESH']}")
    schedule = d["TRAIN"]["LR_SCHEDULE"]
    if any(b <= a for a, b in zip(schedule, schedule[1:])):
        raise ConfigError(f"TRAIN.LR_SCHEDULE: {schedule} must be strictly increasing steps")
    _check_categories(d["DATA"]["CATEGORIES"])


def _check_categories(names):
    """``DATA.CATEGORIES`` names known categories (``ddcache.categories``, any case), each once."""
    from ddcache.categories import ids_for

    try:
        ids = ids_for(names)
    except ValueError as exc:
        raise ConfigError(f"DATA.CATEGORIES: {exc}") from None
    repeated = sorted({str(n).upper() for n, i in zip(names, ids) if ids.count(i) > 1})
    if repeated:
        raise ConfigError(f"DATA.CATEGORIES: {', '.join(repeated)} given more than once")


def load_config(path=None, overrides=(), warn=_print_warning):
    """Defaults <- YAML file at ``path`` (optional; its ``_BASE_`` files first) <- ``overrides`` (``"KEY.SUB=VALUE"``).

    Returns a (not frozen) :class:`Config`. Raises :class:`ConfigError` (one
    line, naming the key; for a key in a base file also naming that file) on
    unknown keys, wrong types, bad choices. ``warn`` receives one line per
    key the model does not read that was given a non-default value
    (:func:`unread_key_warnings`); default: printed to stderr.
    """
    values = copy.deepcopy(DEFAULTS)
    if path is not None:
        layers = config_layers(path)
        for k, (file, loaded) in enumerate(layers):
            try:
                _merge(values, loaded, DEFAULTS)
            except ConfigError as exc:
                if k == len(layers) - 1:
                    raise
                raise ConfigError(f"{file}: {exc}") from None  # the top file is named by the caller
    for text in overrides:
        parts, value = parse_override(text)
        nested = value
        for part in reversed(parts):
            nested = {part: nested}
        _merge(values, nested, DEFAULTS)
    _check_ranges(values)  # first: the consistency rules compute with the values (a NaN WIDTH_MULT)
    _check_consistency(values)
    for message in unread_key_warnings(values):
        warn(message)
    return Config(values)


def load_user_config(config, overrides=()):
    """Config for a command line: a path (+ KEY=VALUE overrides) or an existing ``Config`` passed through.

    Every mistake (missing file, unknown key, wrong type) becomes a one-line
    ``ddcache.errors.UserError`` naming the file.
    """
    import os

    from ddcache.errors import UserError

    if not isinstance(config, (str, os.PathLike)):
        return config
    if not Path(config).is_file():
        raise UserError(f"{config}: no such config file")
    try:
        return load_config(str(config), overrides=tuple(overrides))
    except ConfigError as exc:
        message = str(exc)
        raise UserError(message if message.startswith(f"{config}: ") else f"{config}: {message}") from None
