"""CPU time per inference and per training step: ddcache's detector (NCHW and NHWC) vs the reference's graph.

    python benchmarks/model_speed.py --reference CHECKOUT [--config configs/cell.yaml] [--rounds 5]

``CHECKOUT`` holds deepdoctection v.0.46.2's ``deepdoctection/`` package (see
``tools/reference/README.md``). All graphs are built in this process with the
same seeded weights, on the same table image resized as for inference
(training: the same image, gt boxes and RPN anchor inputs). Runs are
interleaved -- reference, ddcache NCHW, ddcache NHWC, then again -- for
``--rounds`` rounds after a warm-up, so load on this shared machine hits all
of them alike; the figure is the ratio of medians, ddcache / reference (<= 1 is
the target). A training step here is forward + backward + the optimizer's
update (momentum, no gradient accumulation, so every step does the same work).
Saves ``benchmarks/results/model_speed.{json,md}``.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "tools", "reference")]

import trainer  # noqa: E402,F401
import tensorflow as tf  # noqa: E402

tf1 = tf.compat.v1


def build(kind, cfg, rcfg, ref, training):
    """(graph, fetch, feed builder) for 'reference' or a ddcache data format."""
    from compare import build_ours, reference_losses  # noqa: F401
    from reference_graph import build_reference

    graph = tf.Graph()
    with graph.as_default():
        if kind == "reference":
            model, ph, taps = build_reference(ref, rcfg, training)
            cost = taps.tensors.get("total_cost")
            out = cost if training else [graph.get_tensor_by_name(f"output/{n}:0") for n in ("boxes", "scores", "labels")]
            image_dtype = np.float32
        else:
            graph, model, ph = build_ours(cfg, kind, training)
            with graph.as_default():
                cost = model.endpoints.get("total_cost")
            out = cost if training else [graph.get_tensor_by_name(f"output/{n}:0") for n in ("boxes", "scores", "labels")]
            image_dtype = np.uint8
        with graph.as_default():
            if training:
                opt = tf1.train.MomentumOptimizer(1e-3, 0.9)
                out = [cost, opt.minimize(cost)]
            init = tf1.global_variables_initializer()
    return graph, ph, out, init, image_dtype


def main(argv=None):
    from compare import anchor_inputs, reference_inference_resize
    from golden import seeded_weights
    from reference_graph import import_reference, reference_config

    from trainer.config import load_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "cell.yaml"))
    p.add_argument("--image", default=os.path.join(ROOT, "tests", "data", "golden_table.png"),
                   help="table image (default: the golden test's synthetic FinTabNet crop)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=os.path.join(HERE, "results", "model_speed"))
    args = p.parse_args(argv)

    import logging

    import cv2
    from tensorpack.utils import logger

    logger._logger.setLevel(logging.ERROR)
    ref = import_reference(args.reference)
    cfg = load_config(args.config)
    rcfg = reference_config(ref, cfg)
    raw = cv2.imread(args.image)
    image = reference_inference_resize(raw, cfg.PREPROC.SHORT_EDGE_SIZE, int(rcfg.PREPROC.MAX_SIZE))
    # gt: a grid of cell-like boxes over the image, so every stage has foreground
    h, w = image.shape[:2]
    xs, ys = np.linspace(10, w - 60, 8), np.linspace(10, h - 30, 10)
    gt = np.array([[x, y, x + 50, y + 18] for x in xs for y in ys], np.float32)
    levels = anchor_inputs(ref, rcfg, image, gt)
    kinds = ["reference", "NCHW", "NHWC"]
    results = {}
    for mode in ("inference", "training"):
        training = mode == "training"
        runs = {}
        for kind in kinds:
            graph, ph, out, init, image_dtype = build(kind, cfg, rcfg, ref, training)
            sess = tf1.Session(graph=graph)
            sess.run(init)
            with graph.as_default():
                weights = seeded_weights({v.op.name: v.shape.as_list() for v in tf1.global_variables()
                                          if "Momentum" not in v.op.name}, 0)
                for v in tf1.global_variables():
                    if v.op.name in weights:
                        v.load(weights[v.op.name], sess)
            feed = {ph["image"]: image.astype(image_dtype)}
            if training:
                feed.update({ph["gt_boxes"]: gt, ph["gt_labels"]: np.ones(len(gt), np.int64)})
                for i, (labels, boxes) in enumerate(levels):
                    lvl = i + 2
                    fh, fw = (labels.shape[:2] if kind == "reference" else
                              __import__("trainer.anchors", fromlist=["x"]).feature_shape(h, w, cfg.FPN.ANCHOR_STRIDES[i]))
                    feed[ph[f"anchor_labels_lvl{lvl}"]] = labels[:fh, :fw]
                    feed[ph[f"anchor_boxes_lvl{lvl}"]] = boxes[:fh, :fw]
            sess.run(out, feed)  # warm-up (graph optimisation, allocations)
            sess.run(out, feed)
            runs[kind] = (sess, out, feed, [])
        for _ in range(args.rounds):
            for kind in kinds:
                sess, out, feed, times = runs[kind]
                t0 = time.process_time()
                sess.run(out, feed)
                times.append(time.process_time() - t0)
        results[mode] = {k: {"cpu_seconds": runs[k][3], "median": statistics.median(runs[k][3])} for k in kinds}
        for kind in kinds:
            runs[kind][0].close()
        ref_median = results[mode]["reference"]["median"]
        for kind in ("NCHW", "NHWC"):
            results[mode][kind]["ratio_to_reference"] = results[mode][kind]["median"] / ref_median
        print(mode, {k: round(v["median"], 3) for k, v in results[mode].items()},
              {k: round(results[mode][k]["ratio_to_reference"], 3) for k in ("NCHW", "NHWC")})
    report = {"config": os.path.relpath(args.config, ROOT), "image_shape": list(image.shape), "rounds": args.rounds,
              "cpu_count": os.cpu_count(), "tensorflow": tf.__version__, "results": results,
              "note": "CPU seconds (process time, all threads) per call; ratio = ddcache median / reference median"}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    lines = [f"# Model speed on CPU ({report['config']}, image {image.shape[1]}x{image.shape[0]}, "
             f"{args.rounds} interleaved rounds)", "",
             "| | reference (NCHW) | ddcache NCHW | ddcache NHWC | ratio NCHW | ratio NHWC |", "|---|---|---|---|---|---|"]
    for mode in ("inference", "training"):
        r = results[mode]
        lines.append(f"| {mode} (CPU s) | {r['reference']['median']:.2f} | {r['NCHW']['median']:.2f} | "
                     f"{r['NHWC']['median']:.2f} | {r['NCHW']['ratio_to_reference']:.2f} | "
                     f"{r['NHWC']['ratio_to_reference']:.2f} |")
    lines += ["", "Ratio = ddcache / reference (medians of CPU time per call; <= 1 means ddcache is not slower)."]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
