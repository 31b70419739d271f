"""The golden model test's shared pieces: seeded weights, the fixture's configs, and tensor comparison.

Used by ``tests/test_golden_model.py`` (which needs only ddcache) and by
``tools/reference/make_golden.py`` (which also builds the reference from a
deepdoctection checkout and writes the fixture). Both must generate the same
weights, so the generator lives here, once.
"""
import zlib

import numpy as np

FIXTURE = "golden_model.npz"
IMAGE = "golden_table.png"

# Small configs the reference can build too (its backbone widths are fixed, so few blocks instead of few
# channels). "resnext_cell": the cell model's layers (ResNeXt stride-2 blocks, GN everywhere, one class);
# "resnet_item": a plain-ResNet, two-class model (row/column), so per-class output ordering is exercised.
CASES = {
    "resnext_cell": ("configs/cell.yaml", [
        "BACKBONE.RESNET_NUM_BLOCKS=[1,1,1,1]", "FPN.NUM_CHANNEL=32", "FPN.FC_HEAD_DIM=32",
        "PREPROC.SHORT_EDGE_SIZE=192", "PREPROC.MAX_SIZE=256", "OUTPUT.RESULTS_PER_IM=100",
        "RPN.TEST_PER_LEVEL_NMS_TOPK=300", "RPN.TRAIN_PER_LEVEL_NMS_TOPK=300",
        "FRCNN.BATCH_PER_IM=100000", "RPN.BATCH_PER_IM=100000"]),
    "resnet_item": ("configs/item.yaml", [
        "BACKBONE.BOTTLENECK=resnet", "BACKBONE.RESNET_NUM_BLOCKS=[1,1,1,1]", "BACKBONE.FREEZE_AT=0",
        "FPN.NUM_CHANNEL=32", "FPN.FC_HEAD_DIM=32",
        "PREPROC.SHORT_EDGE_SIZE=160", "PREPROC.MAX_SIZE=224", "OUTPUT.RESULTS_PER_IM=100",
        "OUTPUT.RESULT_SCORE_THRESH=0.2",
        "RPN.TEST_PER_LEVEL_NMS_TOPK=300", "RPN.TRAIN_PER_LEVEL_NMS_TOPK=300",
        "FRCNN.BATCH_PER_IM=100000", "RPN.BATCH_PER_IM=100000"]),
}

# Elements a fixture keeps of a large tensor (plus its sum, sum of squares and largest magnitude).
SAMPLE = 2048


def _rng(seed, name):
    # RandomState: numpy freezes its streams, so the weights stay the same under any numpy version
    return np.random.RandomState((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % 2**32)


def seeded_weights(shapes, seed=0):
    """``{name: float32 array}`` for ``{name: shape}``: a deterministic function of (seed, name, shape).

    Scales keep activations in a normal range through the whole detector (so
    comparisons exercise every layer, and random heads still produce
    detections): He-normal kernels, gamma around 1, small biases, small box
    regression outputs.
    """
    out = {}
    for name in sorted(shapes):
        shape = tuple(int(d) for d in shapes[name])
        r = _rng(seed, name)
        leaf = name.rsplit("/", 1)[-1]
        if leaf == "W":
            fan_in = int(np.prod(shape[:-1]))
            scale = np.sqrt(2.0 / fan_in)
            if "/outputs/box/" in name or name.startswith("rpn/box/"):
                scale *= 0.1
            value = r.standard_normal(shape) * scale
        elif leaf == "gamma":
            value = 1.0 + 0.2 * r.standard_normal(shape)
        elif leaf in ("beta", "b"):
            value = 0.1 * r.standard_normal(shape)
        elif name.endswith("mean/EMA"):
            value = 0.1 * r.standard_normal(shape)
        elif name.endswith("variance/EMA"):
            value = 1.0 + 0.2 * np.abs(r.standard_normal(shape))
        else:
            raise ValueError(f"no rule for variable {name}")
        out[name] = value.astype(np.float32)
    return out


def sample_indices(size, seed=0):
    """Sorted flat indices of the elements a fixture stores for a tensor of ``size`` elements."""
    if size <= SAMPLE:
        return np.arange(size)
    return np.sort(np.random.RandomState((int(seed) + size) % 2**32).choice(size, SAMPLE, replace=False))


def summarize(array):
    """What a fixture stores of a tensor: its shape, float64 sum / sum of squares, and a seeded sample."""
    a = np.asarray(array)
    flat = a.reshape(-1)
    f64 = flat.astype(np.float64)
    return {"shape": np.asarray(a.shape, np.int64), "sum": np.float64(f64.sum()), "sumsq": np.float64((f64 ** 2).sum()),
            "absmax": np.float64(np.abs(f64).max() if f64.size else 0.0), "sample": flat[sample_indices(flat.size)]}


def relative_difference(a, b):
    """max |a - b| / max(max |b|, 1e-6): the per-layer agreement measure (1e-4 is the bar)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-6))


def match_detections(ours, theirs, box_tol=0.5, score_tol=1e-4):
    """Greedy one-to-one matching of detections ``(boxes [N, 4], scores [N], labels [N])``.

    A detection of ``theirs`` is matched by one of ``ours`` with the same label,
    every coordinate within ``box_tol`` pixels and the score within ``score_tol``.
    Returns the number of ``theirs`` matched.
    """
    ob, os_, ol = (np.asarray(x) for x in ours)
    tb, ts, tl = (np.asarray(x) for x in theirs)
    used = np.zeros(len(ob), bool)
    matched = 0
    for i in range(len(tb)):
        ok = (~used) & (ol == tl[i]) & (np.abs(ob - tb[i]).max(axis=1) <= box_tol) & (np.abs(os_ - ts[i]) <= score_tol)
        hit = np.flatnonzero(ok)
        if len(hit):
            used[hit[0]] = True
            matched += 1
    return matched


SPATIAL = tuple(f"C{i}" for i in range(2, 6)) + tuple(f"P{i}" for i in range(2, 7))


def endpoint_order(num_levels=5, stages=3):
    """Endpoint names in the order the data flows through the detector."""
    names = list(SPATIAL)
    for lvl in range(2, 2 + num_levels):
        names += [f"rpn_label_logits_lvl{lvl}", f"rpn_box_logits_lvl{lvl}", f"anchors_lvl{lvl}", f"rpn_boxes_lvl{lvl}"]
    names += ["proposal_boxes", "proposal_scores"]
    for k in range(1, stages + 1):
        names += [f"stage{k}_boxes_in", f"stage{k}_label_logits", f"stage{k}_box_logits", f"stage{k}_boxes_out"]
    return names + ["cascade_scores"]


def to_reference_layout(name, value, data_format):
    """An endpoint of ddcache's graph in the reference's layout (feature maps NCHW)."""
    value = np.asarray(value)
    if data_format == "NHWC" and name in SPATIAL:
        return np.transpose(value, [0, 3, 1, 2])
    return value


def gt_for_config(image_path, raw_shape, resized_shape, categories):
    """gt of a golden image (``NAME.boxes.json``: ``boxes`` xyxy original pixels, ``category_ids`` ddcache ids,
    ``categories`` id -> name) for a model of ``categories``: (boxes float32 [N, 4] in the resized image's pixels,
    labels int64 [N] = 1 + index in ``categories``)."""
    import json
    import os

    with open(os.path.splitext(image_path)[0] + ".boxes.json") as f:
        data = json.load(f)
    names = {int(k): v for k, v in data["categories"].items()}
    keep = [i for i, c in enumerate(data["category_ids"]) if names[int(c)] in categories]
    boxes = np.asarray([data["boxes"][i] for i in keep], np.float32).reshape(-1, 4)
    labels = np.asarray([categories.index(names[int(data["category_ids"][i])]) + 1 for i in keep], np.int64)
    sy, sx = resized_shape[0] / raw_shape[0], resized_shape[1] / raw_shape[1]
    return (boxes * np.array([sx, sy, sx, sy], np.float32)).astype(np.float32), labels


# Endpoints whose rows follow the proposals' order (an unsorted top-k: the same set can come in another order when
# scores differ in the last bits, as between NHWC and NCHW); they are compared after aligning the proposals.
PROPOSAL_ORDERED = ("proposal_boxes", "proposal_scores", "stage1_boxes_in", "stage1_label_logits", "stage1_box_logits",
                    "stage1_boxes_out", "stage2_boxes_in", "stage2_label_logits", "stage2_box_logits",
                    "stage2_boxes_out", "stage3_boxes_in", "stage3_label_logits", "stage3_box_logits",
                    "stage3_boxes_out", "cascade_scores")


def proposal_permutation(ours_boxes, ref_boxes):
    """Row order ``p`` with ``ours_boxes[p] ~ ref_boxes`` (greedy, each of ours used once), or None if the
    sets differ in size. Identity when the orders already agree."""
    a, b = np.asarray(ours_boxes, np.float64), np.asarray(ref_boxes, np.float64)
    if a.shape != b.shape:
        return None
    if a.size == 0 or np.array_equal(a, b):
        return np.arange(len(a))
    cost = np.abs(a[None, :, :] - b[:, None, :]).max(axis=2)  # [ref, ours]
    perm = np.full(len(b), -1, np.int64)
    used = np.zeros(len(a), bool)
    for i in np.argsort(cost.min(axis=1), kind="stable"):
        row = np.where(used, np.inf, cost[i])
        j = int(np.argmin(row))
        perm[i], used[j] = j, True
    return perm


class GraphRunner:
    """One detector graph in its own session: its variables, the gradients of its total cost, weight loading.

    Shared by :class:`DdcacheRunner` and ``tools/reference/reference_graph.py:ReferenceRunner``
    so both sides of a comparison collect variables and gradients the same way.
    """

    def _collect(self, total_cost, training):
        """Record the graph's variables and (when training) the non-None gradients of ``total_cost``; open a session."""
        import tensorflow as tf

        tf1 = tf.compat.v1
        self.total_cost = total_cost
        self.variables = {v.op.name: v for v in tf1.global_variables()}
        self.grads = {}
        if training:
            trainable = tf1.trainable_variables()
            grads = tf.gradients(total_cost, trainable)
            self.grads = {v.op.name: g for v, g in zip(trainable, grads) if g is not None}
        self.session = tf1.Session(graph=self.graph)

    image_dtype = None  # what the graph's image placeholder is fed as (None: as given)

    def image_feed(self, image):
        return {self.inputs["image"]: image if self.image_dtype is None else image.astype(self.image_dtype)}

    def train_feed(self, image, gt_boxes, gt_labels, level_inputs):
        """The feed of one training step; ``level_inputs``: [(labels, boxes)] per FPN level, from P2 up."""
        feed = {**self.image_feed(image), self.inputs["gt_boxes"]: gt_boxes, self.inputs["gt_labels"]: gt_labels}
        for lvl, (labels, boxes) in enumerate(level_inputs, start=2):
            feed[self.inputs[f"anchor_labels_lvl{lvl}"]] = labels
            feed[self.inputs[f"anchor_boxes_lvl{lvl}"]] = boxes
        return feed

    def outputs(self):
        """The final detections (``output/boxes``, ``output/scores``, ``output/labels``)."""
        return {f"output/{n}": self.graph.get_tensor_by_name(f"output/{n}:0") for n in ("boxes", "scores", "labels")}

    def shapes(self):
        return {n: tuple(v.shape.as_list()) for n, v in self.variables.items()}

    def load(self, weights):
        with self.graph.as_default():
            for name, var in self.variables.items():
                var.load(weights[name], self.session)

    def close(self):
        self.session.close()


class DdcacheRunner(GraphRunner):
    """ddcache's detector for one config and data format, in its own graph and session, filled with given weights.

    :meth:`infer` returns every endpoint of ``CascadeRCNN.endpoints`` plus the
    outputs (``output/boxes`` ...) for one resized uint8 image; :meth:`train`
    the losses and the gradients of the trainable variables for one image, gt
    and RPN anchor inputs.
    """

    def __init__(self, cfg, data_format, training):
        import tensorflow as tf
        from tensorpack.tfutils.tower import TowerContext

        from trainer.model.detector import CascadeRCNN

        tf1 = tf.compat.v1
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf1.set_random_seed(0)  # the graph's random ops (proposal sampling) repeat from run to run
            self.model = CascadeRCNN(cfg, data_format)
            specs = self.model.inputs()
            self.inputs = {s.name: tf1.placeholder(s.dtype, s.shape, name=s.name) for s in specs}
            with TowerContext("", is_training=training):
                self.model.build_graph(*[self.inputs[s.name] for s in specs])
            self._collect(self.model.endpoints.get("total_cost"), training)

    def infer(self, image):
        names = sorted(k for k in self.model.endpoints if not k.endswith("_loss") and k not in ("wd_cost", "total_cost"))
        fetch = {**{n: self.model.endpoints[n] for n in names}, **self.outputs()}
        return self.session.run(fetch, self.image_feed(image))

    def train(self, image, gt_boxes, gt_labels, level_inputs):
        """``level_inputs``: [(labels [fh, fw, A], boxes [fh, fw, A, 4])] for this image's feature maps."""
        losses = {k: v for k, v in self.model.endpoints.items() if k.endswith("_loss") or k in ("wd_cost", "total_cost")}
        feed = self.train_feed(image, gt_boxes, gt_labels, level_inputs)
        return self.session.run({"losses": losses, "grads": self.grads}, feed)
