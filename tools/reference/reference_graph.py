"""The reference model, built from a checkout of deepdoctection v.0.46.2, with its intermediate tensors exposed.

The published tensorpack cell checkpoints were trained with deepdoctection's
``extern/tp/tpfrcnn`` (itself tensorpack's ``examples/FasterRCNN``). To prove
that ``trainer/model`` computes the same thing, the comparison scripts in
this folder build that code *unchanged* next to ddcache's graph and feed
both the same weights and inputs. This module is only the adapter:

* :func:`import_reference` imports the reference's modules from a checkout
  without running ``deepdoctection/__init__.py`` (which would import the
  whole library and its many optional dependencies); only ``lazy-imports``
  and ``catalogue`` are needed beyond ddcache's own requirements.
* :func:`reference_config` translates a ddcache config into the reference's
  ``AttrDict`` (key names differ in a few places) and runs the reference's
  own ``model_frcnn_config`` so derived values (``MAX_SIZE`` rounded up to a
  multiple of 32, ``NUM_CATEGORY``) are computed by the reference itself.
* :class:`Taps` wraps a few of the reference's functions (by replacing their
  module attributes, never by editing files) to record the tensors they
  return: C2-C5, P2-P6, RPN outputs, anchors, proposals, the cascade stages.

Nothing in ``ddcache`` or ``trainer`` imports this module; ddcache's code does
not derive from the reference's.
"""
import os
import sys
import types

from golden import GraphRunner  # tests/golden.py (the scripts here put tests/ on sys.path)

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

_PACKAGES = ("deepdoctection", "deepdoctection.utils", "deepdoctection.extern", "deepdoctection.extern.tp")


def import_reference(checkout):
    """Import the reference's model modules from ``checkout`` (a directory holding ``deepdoctection/``).

    Returns a namespace with the modules ``rcnn`` (generalized_rcnn), ``config``,
    ``fpn``, ``rpn``, ``frcnn``, ``cascade``, ``box``, ``preproc``, ``metacfg``.
    """
    pkg_root = os.path.join(os.path.abspath(checkout), "deepdoctection")
    if not os.path.isfile(os.path.join(pkg_root, "extern", "tp", "tpfrcnn", "modeling", "generalized_rcnn.py")):
        raise SystemExit(f"{checkout}: not a deepdoctection checkout (no deepdoctection/extern/tp/tpfrcnn)")
    for name in _PACKAGES:
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [os.path.join(os.path.dirname(pkg_root), *name.split("."))]
            sys.modules[name] = module
    import importlib

    base = "deepdoctection.extern.tp.tpfrcnn"
    names = {"rcnn": "modeling.generalized_rcnn", "config": "config.config", "fpn": "modeling.model_fpn",
             "rpn": "modeling.model_rpn", "frcnn": "modeling.model_frcnn", "cascade": "modeling.model_cascade",
             "box": "modeling.model_box", "preproc": "preproc", "common": "common"}
    ns = types.SimpleNamespace(**{k: importlib.import_module(f"{base}.{v}") for k, v in names.items()})
    ns.metacfg = importlib.import_module("deepdoctection.utils.metacfg")
    return ns


# ddcache key -> reference key, where they differ (the reference's own names are on the right)
_RENAMES = {
    ("FPN", "FC_HEAD_DIM"): ("FPN", "FRCNN_FC_HEAD_DIM"),
    ("FPN", "CONV_HEAD_DIM"): ("FPN", "FRCNN_CONV_HEAD_DIM"),
    ("RPN", "TEST_PRE_NMS_TOPK"): ("RPN", "PRE_NMS_TOPK"),
    ("RPN", "TEST_POST_NMS_TOPK"): ("RPN", "POST_NMS_TOPK"),
    ("RPN", "TEST_PER_LEVEL_NMS_TOPK"): ("RPN", "PER_LEVEL_NMS_TOPK"),
}
# ddcache-only keys the reference does not have
_DDCACHE_ONLY = {("BACKBONE", "WIDTH_MULT"), ("DATA", "CATEGORIES"), ("TRAIN", "NUM_WORKERS"), ("TRAIN", "SEED"),
                 ("TRAIN", "MAX_CHECKPOINTS"), ("TRAIN", "ACCUMULATE"), ("RPN", "BEST_ANCHOR_RULE")}


def reference_config(ref, cfg, num_gpus=1):
    """The reference's finalized ``AttrDict`` for a ddcache :class:`trainer.config.Config` ``cfg``.

    ``BACKBONE.WIDTH_MULT`` must be 1 (the reference has fixed widths).
    """
    d = cfg.to_dict()
    if float(d["BACKBONE"].get("WIDTH_MULT", 1.0)) != 1.0:
        raise SystemExit("the reference has fixed backbone widths: use BACKBONE.WIDTH_MULT 1.0")
    out = ref.metacfg.AttrDict()
    for section, values in d.items():
        if not isinstance(values, dict):
            setattr(out, section, values)
            continue
        for key, value in values.items():
            if (section, key) in _DDCACHE_ONLY:
                continue
            sec, k = _RENAMES.get((section, key), (section, key))
            setattr(getattr(out, sec), k, _tuples(value))
    out.MODE_MASK = False
    out.TRAIN.NUM_GPUS = int(num_gpus)
    categories = {str(i + 1): name.lower() for i, name in enumerate(d["DATA"]["CATEGORIES"])}
    _finalize(ref, out, categories)
    return out


def _tuples(value):
    """Lists as tuples: the reference memoizes functions of config values, which must be hashable."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _finalize(ref, config, categories):
    """Run the reference's ``model_frcnn_config`` with category names it can resolve."""
    try:
        ref.config.model_frcnn_config(config, categories, print_summary=False)
    except Exception:  # category names unknown to its registry: set what the function derives
        import numpy as np

        config.freeze(False)
        config.DATA.NUM_CATEGORY = len(categories)
        config.RPN.NUM_ANCHOR = len(config.RPN.ANCHOR_SIZES) * len(config.RPN.ANCHOR_RATIOS)
        config.FPN.RESOLUTION_REQUIREMENT = config.FPN.ANCHOR_STRIDES[3]
        mult = config.FPN.RESOLUTION_REQUIREMENT * 1.0
        config.PREPROC.MAX_SIZE = np.ceil(config.PREPROC.MAX_SIZE / mult) * mult
        config.freeze()


class Taps:
    """Records tensors returned by reference functions while its graph is built (see module docstring).

    Use as a context manager around ``model.build_graph``; afterwards
    :attr:`tensors` maps ddcache's endpoint names (``C2`` .. ``C5``, ``P2`` ..
    ``P6``, ``rpn_label_logits_lvl2``, ``rpn_box_logits_lvl2``,
    ``anchors_lvl2``, ``rpn_boxes_lvl2``, ``proposal_boxes``,
    ``proposal_scores``, ``stage1_boxes_in``, ``stage1_label_logits``,
    ``stage1_box_logits``, ``stage1_boxes_out``, ...) to tensors.
    """

    def __init__(self, ref):
        self.ref = ref
        self.tensors = {}
        self._saved = []

    def _patch(self, owner, attr, wrapper):
        original = getattr(owner, attr)
        self._saved.append((owner, attr, original))
        setattr(owner, attr, wrapper(original))

    def __enter__(self):
        import tensorflow as tf

        rcnn, tensors = self.ref.rcnn, self.tensors

        def backbone(fn):
            def wrapped(image, cfg):
                c = fn(image, cfg)
                tensors.update({f"C{i + 2}": t for i, t in enumerate(c)})
                return c
            return wrapped

        def fpn(fn):
            def wrapped(*args, **kwargs):
                p = fn(*args, **kwargs)
                tensors.update({f"P{i + 2}": t for i, t in enumerate(p)})
                return p
            return wrapped

        def rpn_head(fn):
            def wrapped(*args, **kwargs):
                out = fn(*args, **kwargs)
                lvl = 2 + sum(1 for k in tensors if k.startswith("rpn_label_logits_lvl"))
                tensors[f"rpn_label_logits_lvl{lvl}"], tensors[f"rpn_box_logits_lvl{lvl}"] = out
                return out
            return wrapped

        def narrow(fn):
            def wrapped(anchors, featuremap):
                out = fn(anchors, featuremap)
                lvl = 2 + sum(1 for k in tensors if k.startswith("anchors_lvl"))
                tensors[f"anchors_lvl{lvl}"] = out.boxes
                return out
            return wrapped

        def decode(fn):
            def wrapped(anchors, logits, max_size):
                out = fn(anchors, logits, max_size)
                lvl = 2 + sum(1 for k in tensors if k.startswith("rpn_boxes_lvl"))
                tensors[f"rpn_boxes_lvl{lvl}"] = out
                return out
            return wrapped

        def proposals(fn):
            def wrapped(*args, **kwargs):
                boxes, scores = fn(*args, **kwargs)
                tensors["proposal_boxes"], tensors["proposal_scores"] = boxes, scores
                return boxes, scores
            return wrapped

        def run_head(fn):
            def wrapped(head_self, props, stage):
                head, refined = fn(head_self, props, stage)
                k = stage + 1
                tensors[f"stage{k}_boxes_in"] = props.boxes
                tensors[f"stage{k}_label_logits"] = head.label_logits
                tensors[f"stage{k}_box_logits"] = tf.reshape(head.box_logits, [-1, 4])
                tensors[f"stage{k}_boxes_out"] = refined
                return head, refined
            return wrapped

        def output_scores(fn):
            def wrapped(head_self, name=None):
                out = fn(head_self, name=name)
                tensors["cascade_scores"] = out
                return out
            return wrapped

        self._patch(rcnn, "resnet_fpn_backbone", backbone)
        self._patch(rcnn, "fpn_model", fpn)
        self._patch(rcnn, "rpn_head", rpn_head)
        self._patch(rcnn.RPNAnchors, "narrow_to", narrow)
        self._patch(rcnn.RPNAnchors, "decode_logits", decode)
        self._patch(rcnn, "generate_fpn_proposals", proposals)
        self._patch(rcnn.CascadeRCNNHead, "run_head", run_head)
        self._patch(rcnn.CascadeRCNNHead, "output_scores", output_scores)
        return self

    def __exit__(self, *exc):
        for owner, attr, original in reversed(self._saved):
            setattr(owner, attr, original)
        self._saved.clear()


def build_reference(ref, rcfg, training):
    """Build the reference graph in the current default graph; returns ``(model, placeholders, taps)``.

    ``placeholders`` maps the reference's input names to ``tf.compat.v1.placeholder``s.
    Under ``training`` the graph computes losses (no optimizer is built).
    """
    import tensorflow as tf
    from tensorpack.models import disable_layer_logging
    from tensorpack.tfutils.tower import TowerContext

    disable_layer_logging()
    model = ref.rcnn.ResNetFPNModel(rcfg)
    # all inputs exist in both modes (as under the reference's PredictConfig); inference feeds only the image
    placeholders = {s.name: tf.compat.v1.placeholder(s.dtype, s.shape, name=s.name) for s in model.inputs()}
    with TowerContext("", is_training=training), Taps(ref) as taps:
        total = model.build_graph(*[placeholders[s.name] for s in model.inputs()])
        if training:
            taps.tensors["total_cost"] = total
    return model, placeholders, taps


class ReferenceRunner(GraphRunner):
    """The reference graph for one config in its own graph and session (NCHW, as it is written).

    Same interface as ``tests/golden.py:DdcacheRunner``: :meth:`infer` returns
    the tapped endpoints (ddcache's names) and ``output/*``; :meth:`train` the
    losses (ddcache's names) and the gradients of the trainable variables.
    """

    image_dtype = "float32"  # the reference's image placeholder is float32 (ddcache's is uint8)

    def __init__(self, ref, rcfg, training):
        import tensorflow as tf

        self.graph = tf.Graph()
        with self.graph.as_default():
            self.model, self.inputs, self.taps = build_reference(ref, rcfg, training)
            self.losses = {}
            if training:
                get = self.graph.get_tensor_by_name
                self.losses = {"rpn_label_loss": get("rpn_losses/label_loss:0"),
                               "rpn_box_loss": get("rpn_losses/box_loss:0"), "wd_cost": get("wd_cost:0"),
                               "total_cost": self.taps.tensors["total_cost"]}
                for k in (1, 2, 3):
                    self.losses[f"stage{k}_label_loss"] = get(f"cascade_loss_stage{k}/fastrcnn_losses/label_loss:0")
                    self.losses[f"stage{k}_box_loss"] = get(f"cascade_loss_stage{k}/fastrcnn_losses/box_loss:0")
            self._collect(self.losses.get("total_cost"), training)

    def infer(self, image):
        tapped = {k: v for k, v in self.taps.tensors.items() if k != "total_cost"}
        return self.session.run({**tapped, **self.outputs()}, self.image_feed(image))

    def train(self, image, gt_boxes, gt_labels, level_inputs):
        """``level_inputs``: the reference pipeline's [(labels [FS, FS, A], boxes [FS, FS, A, 4])] (square fields)."""
        feed = self.train_feed(image, gt_boxes, gt_labels, level_inputs)
        return self.session.run({"losses": self.losses, "grads": self.grads}, feed)


def reference_anchor_inputs(ref, rcfg, image, gt_boxes):
    """The reference data pipeline's RPN inputs for one image: [(labels, boxes)] per level on square fields.

    With ``RPN.BATCH_PER_IM`` at least the number of anchors nothing is subsampled at random, so these are
    the labelling rules' output (what ddcache's pipeline must reproduce).
    """
    import numpy as np

    r = rcfg.RPN
    return ref.preproc.get_multilevel_rpn_anchor_input(
        image, gt_boxes, np.zeros(len(gt_boxes), np.int8), tuple(rcfg.FPN.ANCHOR_STRIDES), tuple(r.ANCHOR_SIZES),
        tuple(r.ANCHOR_RATIOS), rcfg.PREPROC.MAX_SIZE, r.BATCH_PER_IM, r.FG_RATIO, r.POSITIVE_ANCHOR_THRESH,
        r.NEGATIVE_ANCHOR_THRESH, r.CROWD_OVERLAP_THRESH)


def reference_resized_shape(ref, shape, short_edge, max_size):
    """(h, w) the reference's own ``CustomResize`` picks for a fixed short edge."""
    import numpy as np

    resize = ref.common.CustomResize((short_edge, short_edge), max_size)
    transform = resize.get_transform(np.zeros(tuple(shape[:2]) + (3,), np.uint8))
    return int(transform.new_h), int(transform.new_w)
