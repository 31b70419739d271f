"""Layer-by-layer comparison of ddcache's detector with the reference on the same weights and inputs.

    python tools/reference/compare.py --reference CHECKOUT --config configs/cell.yaml \
        --image tests/data/golden_table.png [--override K=V ...] [--data-format NHWC --data-format NCHW] \
        [--training] [--seed 0] [--json report.json]

``CHECKOUT`` holds deepdoctection v.0.46.2's ``deepdoctection/`` package (see
``README.md`` here). Both graphs are built in this process (separate
``tf.Graph``s), filled with the same seeded weights (``tests/golden.py``), and
run on each image resized as the reference resizes for inference. The report
lists, per endpoint in pipeline order, the relative difference ``max|ours -
ref| / max|ref|`` and the first endpoint above ``--tol``; then how many of the
reference's detections ddcache reproduces (same label, boxes within 0.5 px,
scores within 1e-4). Endpoints that follow the proposals' order (an unsorted
top-k) are compared after aligning the proposals. ``--training`` compares the
losses and every trainable variable's gradient instead, on identical gt boxes
(``NAME.boxes.json`` next to the image) and RPN anchor inputs (the reference's
own data-pipeline function); use configs with ``FRCNN.BATCH_PER_IM`` large
enough that no proposal is dropped at random (the golden cases are).
"""
import argparse
import json
import logging
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), HERE]

import trainer  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)

from golden import (PROPOSAL_ORDERED, DdcacheRunner, endpoint_order, gt_for_config, match_detections,  # noqa: E402
                    proposal_permutation, relative_difference, seeded_weights, to_reference_layout)
from reference_graph import ReferenceRunner, import_reference, reference_anchor_inputs, reference_config  # noqa: E402


def compare(args):
    import cv2
    from tensorpack.utils import logger

    from trainer.config import load_config
    from trainer.preprocessing import eval_resize

    logger._logger.setLevel(logging.ERROR)  # the reference's freeze_variables warns once per frozen variable
    ref = import_reference(args.reference)
    cfg = load_config(args.config, overrides=tuple(args.override))
    rcfg = reference_config(ref, cfg)
    theirs = ReferenceRunner(ref, rcfg, args.training)
    weights = seeded_weights(theirs.shapes(), args.seed)
    theirs.load(weights)
    report = {"config": args.config, "overrides": args.override, "seed": args.seed, "runs": []}
    for data_format in args.data_format:
        ours = DdcacheRunner(cfg, data_format, args.training)
        ref_shapes, our_shapes = theirs.shapes(), ours.shapes()
        inventory = {"missing_in_ddcache": sorted(set(ref_shapes) - set(our_shapes)),
                     "extra_in_ddcache": sorted(set(our_shapes) - set(ref_shapes)),
                     "shape_mismatch": sorted(n for n in set(ref_shapes) & set(our_shapes)
                                              if ref_shapes[n] != our_shapes[n])}
        print(f"[{data_format}] variables: reference {len(ref_shapes)}, ddcache {len(our_shapes)}; {inventory}")
        if any(inventory.values()):
            report["runs"].append({"data_format": data_format, "inventory": inventory})
            continue
        ours.load(weights)
        for path in args.image:
            raw = cv2.imread(path, cv2.IMREAD_COLOR)
            image = eval_resize(raw, cfg.PREPROC.SHORT_EDGE_SIZE, int(rcfg.PREPROC.MAX_SIZE))[0]
            run = {"data_format": data_format, "image": path, "shape": list(image.shape), "layers": []}
            if args.training:
                gt_boxes, gt_labels = gt_for_config(path, raw.shape, image.shape, list(cfg.DATA.CATEGORIES))
                levels = reference_anchor_inputs(ref, rcfg, image, gt_boxes)
                ours_levels = [(lab[:fh, :fw], box[:fh, :fw]) for (lab, box), (fh, fw) in
                               zip(levels, [ours.model.feature_shape(*image.shape[:2], i) for i in range(len(levels))])]
                got_ref = theirs.train(image, gt_boxes, gt_labels, levels)
                got = ours.train(image, gt_boxes, gt_labels, ours_levels)
                for name in sorted(got_ref["losses"]):
                    a, b = got["losses"][name], got_ref["losses"][name]
                    d = relative_difference(a, b)
                    run["layers"].append({"name": name, "ours": float(a), "reference": float(b), "rel_diff": d})
                    print(f"  {name:24s} ours {float(a):.6f} ref {float(b):.6f}  rel {d:.2e}")
                worst = max((relative_difference(got["grads"][n], g), n) for n, g in got_ref["grads"].items())
                run["gradients"] = {"variables": len(got_ref["grads"]), "max_rel_diff": worst[0], "worst": worst[1]}
                print(f"  gradients of {len(got_ref['grads'])} trainable variables: max rel {worst[0]:.2e} ({worst[1]})")
            else:
                got_ref, got = theirs.infer(image), ours.infer(image)
                perm = proposal_permutation(got["proposal_boxes"], got_ref["proposal_boxes"])
                run["proposal_order"] = ("same" if perm is not None and np.array_equal(perm, np.arange(len(perm)))
                                         else "permuted" if perm is not None else "different count")
                first = None
                for name in endpoint_order(len(cfg.FPN.ANCHOR_STRIDES), len(cfg.CASCADE.IOUS)):
                    a = to_reference_layout(name, got[name], data_format)
                    if name in PROPOSAL_ORDERED and perm is not None:
                        a = a[perm]
                    d = relative_difference(a, got_ref[name])
                    run["layers"].append({"name": name, "shape": list(np.shape(got_ref[name])), "rel_diff": d})
                    flag = ""
                    if d > args.tol and first is None:
                        first, flag = name, "  <-- first divergence"
                    print(f"  {name:24s} {str(np.shape(got_ref[name])):22s} rel {d:.2e}{flag}")
                det = lambda r: [r[f"output/{n}"] for n in ("boxes", "scores", "labels")]  # noqa: E731
                matched = match_detections(det(got), det(got_ref))
                run.update(first_divergence=first, detections_reference=int(len(got_ref["output/boxes"])),
                           detections_ours=int(len(got["output/boxes"])), detections_matched=int(matched))
                print(f"  proposal order {run['proposal_order']}; detections: reference {len(got_ref['output/boxes'])}, "
                      f"ddcache {len(got['output/boxes'])}, matched {matched}")
            report["runs"].append(run)
        ours.close()
    theirs.close()
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="directory holding deepdoctection v.0.46.2's deepdoctection/")
    p.add_argument("--config", required=True)
    p.add_argument("--override", action="append", default=[])
    p.add_argument("--image", action="append", required=True)
    p.add_argument("--data-format", action="append", choices=("NHWC", "NCHW"))
    p.add_argument("--training", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--json")
    args = p.parse_args(argv)
    args.data_format = args.data_format or ["NHWC", "NCHW"]
    report = compare(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
