"""Regenerate ``tests/data/golden_model.npz``: the reference's tensors for the golden test, from a reference checkout.

    python tools/reference/make_golden.py --reference CHECKOUT [--out tests/data/golden_model.npz]

For each case of ``tests/golden.py:CASES`` (small configs the reference can
build) the reference graph is filled with ``seeded_weights`` and run on
``tests/data/golden_table.png``:

* inference: the resized image, every endpoint (C2-C5, P2-P6, RPN logits /
  anchors / decoded boxes per level, proposals, each cascade stage, the
  averaged scores) and the final detections. Large tensors are stored as
  ``golden.summarize`` summaries (shape, sum, sum of squares, largest
  magnitude, a seeded sample of 2048 elements); tensors whose rows follow the
  proposals are stored whole (the test aligns their order first);
* the reference data pipeline's RPN anchor labels for the image's gt boxes,
  without subsampling (ddcache's labeller must reproduce them exactly), and
  the resized size its ``CustomResize`` picks;
* training: the losses and a summary of every trainable variable's gradient
  on those inputs.

The variable inventory (names, shapes) and a fingerprint of the weights are
stored too, so the test can tell a changed model from changed weights. The
test needs only ddcache; this script is the only thing that needs the
reference. It also writes ``tests/data/reference_inventory.json``: the
reference's variables (name, shape, trainable) for the full ``configs/cell.yaml``
and ``configs/item.yaml`` models -- the inventory of the published
checkpoints, which ddcache's graphs must equal.
"""
import argparse
import logging
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), HERE]

import trainer  # noqa: E402,F401

import golden  # noqa: E402
from reference_graph import (ReferenceRunner, import_reference, reference_anchor_inputs, reference_config,  # noqa: E402
                             reference_resized_shape)


def _put_summary(out, key, array):
    for field, value in golden.summarize(array).items():
        out[f"{key}/{field}"] = value


def make_case(ref, name, out, seed):
    import cv2

    from trainer.config import load_config
    from trainer.preprocessing import eval_resize

    config, overrides = golden.CASES[name]
    cfg = load_config(os.path.join(ROOT, config), overrides=tuple(overrides))
    rcfg = reference_config(ref, cfg)
    image_path = os.path.join(ROOT, "tests", "data", golden.IMAGE)
    raw = cv2.imread(image_path, cv2.IMREAD_COLOR)
    out[f"{name}/reference_resized_hw"] = np.asarray(
        reference_resized_shape(ref, raw.shape, int(cfg.PREPROC.SHORT_EDGE_SIZE), float(rcfg.PREPROC.MAX_SIZE)))
    image = eval_resize(raw, cfg.PREPROC.SHORT_EDGE_SIZE, int(rcfg.PREPROC.MAX_SIZE))[0]
    out[f"{name}/image"] = image

    runner = ReferenceRunner(ref, rcfg, training=False)
    shapes = runner.shapes()
    weights = golden.seeded_weights(shapes, seed)
    names = sorted(shapes)
    out[f"{name}/variables"] = np.asarray(names)
    out[f"{name}/variable_shapes"] = np.asarray([",".join(map(str, shapes[n])) for n in names])
    out[f"{name}/weight_sums"] = np.asarray([weights[n].astype(np.float64).sum() for n in names])
    runner.load(weights)
    got = runner.infer(image)
    runner.close()
    for key, value in got.items():
        if key in golden.PROPOSAL_ORDERED or key.startswith("output/"):
            out[f"{name}/full/{key}"] = np.asarray(value)
        else:
            _put_summary(out, f"{name}/endpoint/{key}", value)

    gt_boxes, gt_labels = golden.gt_for_config(image_path, raw.shape, image.shape, list(cfg.DATA.CATEGORIES))
    out[f"{name}/gt_boxes"], out[f"{name}/gt_labels"] = gt_boxes, gt_labels
    levels = reference_anchor_inputs(ref, rcfg, image, gt_boxes)
    for lvl, (labels, boxes) in enumerate(levels, start=2):
        out[f"{name}/anchor_labels_lvl{lvl}"] = labels.astype(np.int8)
        fg = np.flatnonzero(labels.reshape(-1) == 1)
        out[f"{name}/anchor_fg_lvl{lvl}"] = fg
        out[f"{name}/anchor_fg_boxes_lvl{lvl}"] = boxes.reshape(-1, 4)[fg]

    runner = ReferenceRunner(ref, rcfg, training=True)
    runner.load(weights)
    got = runner.train(image, gt_boxes, gt_labels, levels)
    runner.close()
    for key, value in got["losses"].items():
        out[f"{name}/loss/{key}"] = np.float64(value)
    grad_names = sorted(got["grads"])
    out[f"{name}/trainable"] = np.asarray(grad_names)
    for var in grad_names:
        _put_summary(out, f"{name}/grad/{var}", got["grads"][var])
    print(f"{name}: {len(names)} variables, {len(got['grads'])} trainable, "
          f"{len(out[f'{name}/full/output/boxes'])} detections, total_cost {float(got['losses']['total_cost']):.4f}")


def inventory(ref, config):
    """{name: [shape, trainable]} of the reference's training graph for a ddcache config file."""
    import tensorflow as tf

    from trainer.config import load_config

    rcfg = reference_config(ref, load_config(os.path.join(ROOT, config)))
    runner = ReferenceRunner(ref, rcfg, training=True)
    with runner.graph.as_default():
        trainable = {v.op.name for v in tf.compat.v1.trainable_variables()}
    out = {n: [list(s), n in trainable] for n, s in sorted(runner.shapes().items())}
    runner.close()
    return out


def main(argv=None):
    from tensorpack.utils import logger

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="directory holding deepdoctection v.0.46.2's deepdoctection/")
    p.add_argument("--out", default=os.path.join(ROOT, "tests", "data", golden.FIXTURE))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logger._logger.setLevel(logging.ERROR)
    ref = import_reference(args.reference)
    out = {"seed": np.int64(args.seed), "cases": np.asarray(sorted(golden.CASES))}
    for name in sorted(golden.CASES):
        make_case(ref, name, out, args.seed)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.2f} MiB)")
    import json

    path = os.path.join(os.path.dirname(args.out), "reference_inventory.json")
    with open(path, "w") as f:
        json.dump({c: inventory(ref, c) for c in ("configs/cell.yaml", "configs/item.yaml")}, f, indent=0)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
