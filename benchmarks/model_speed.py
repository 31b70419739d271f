"""CPU time per inference and per training step: ddcache's detector (NCHW and NHWC) vs the reference's graph.

    python benchmarks/model_speed.py --reference CHECKOUT [--config configs/cell.yaml] [--rounds 5]

``CHECKOUT`` holds deepdoctection v.0.46.2's ``deepdoctection/`` package (see
``tools/reference/README.md``). The graphs are the ones the equivalence
proof compares (``tests/golden.py:DdcacheRunner``,
``tools/reference/reference_graph.py:ReferenceRunner``), built in this
process with the same seeded weights, on the same table image resized as for
inference (training: the same image, gt boxes and RPN anchor inputs). Runs are
interleaved -- reference, ddcache NCHW, ddcache NHWC, then again -- for
``--rounds`` rounds after a warm-up, so load on this shared machine hits all
of them alike; the figure is the ratio of medians, ddcache / reference (<= 1 is
the target). A training step here is forward + backward + a momentum update
(no gradient accumulation, so every step does the same work); inference
fetches the final detections only. Saves ``benchmarks/results/model_speed.{json,md}``.
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
KINDS = ("reference", "NCHW", "NHWC")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="directory holding deepdoctection v.0.46.2's deepdoctection/")
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "cell.yaml"))
    p.add_argument("--image", default=os.path.join(ROOT, "tests", "data", "golden_table.png"),
                   help="table image (default: the golden test's synthetic FinTabNet crop)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=os.path.join(HERE, "results", "model_speed"))
    return p.parse_args(argv)


def cell_grid(h, w):
    """gt: a grid of 80 cell-like boxes over the image, so every cascade stage has foreground."""
    import numpy as np

    xs, ys = np.linspace(10, w - 60, 8), np.linspace(10, h - 30, 10)
    return np.array([[x, y, x + 50, y + 18] for x in xs for y in ys], np.float32)


def prepared_runner(kind, cfg, ref, rcfg, training):
    """(runner, fetches) for one graph, filled with the seeded weights; training fetches include a momentum update."""
    import tensorflow as tf
    from golden import DdcacheRunner, seeded_weights
    from reference_graph import ReferenceRunner

    tf1 = tf.compat.v1
    runner = ReferenceRunner(ref, rcfg, training) if kind == "reference" else DdcacheRunner(cfg, kind, training)
    if not training:
        fetches = runner.outputs()
    else:
        with runner.graph.as_default():
            opt = tf1.train.MomentumOptimizer(1e-3, 0.9)
            update = opt.apply_gradients([(g, runner.variables[n]) for n, g in sorted(runner.grads.items())])
            runner.session.run(tf1.variables_initializer(opt.variables()))
        fetches = [runner.total_cost, update]
    runner.load(seeded_weights(runner.shapes(), 0))
    return runner, fetches


def measure(args):
    import logging

    import cv2
    import numpy as np
    import tensorflow as tf
    from tensorpack.utils import logger

    from reference_graph import import_reference, reference_anchor_inputs, reference_config
    from trainer.config import load_config
    from trainer.preprocessing import eval_resize

    logger._logger.setLevel(logging.ERROR)  # the reference's freeze_variables warns once per frozen variable
    ref = import_reference(args.reference)
    cfg = load_config(args.config)
    rcfg = reference_config(ref, cfg)
    raw = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if raw is None:
        raise SystemExit(f"model_speed: cannot read {args.image}")
    image = eval_resize(raw, cfg.PREPROC.SHORT_EDGE_SIZE, int(rcfg.PREPROC.MAX_SIZE))[0]
    gt = cell_grid(*image.shape[:2])
    gt_labels = np.ones(len(gt), np.int64)
    levels = reference_anchor_inputs(ref, rcfg, image, gt)
    results = {}
    for mode in ("inference", "training"):
        training = mode == "training"
        runs = {}
        for kind in KINDS:
            runner, fetches = prepared_runner(kind, cfg, ref, rcfg, training)
            if not training:
                feed = runner.image_feed(image)
            elif kind == "reference":
                feed = runner.train_feed(image, gt, gt_labels, levels)
            else:  # ddcache's anchor fields are the image's feature maps, the reference's square MAX_SIZE fields
                shapes = [runner.model.feature_shape(*image.shape[:2], i) for i in range(len(levels))]
                feed = runner.train_feed(image, gt, gt_labels,
                                         [(lab[:fh, :fw], box[:fh, :fw]) for (lab, box), (fh, fw) in zip(levels, shapes)])
            for _ in range(2):  # warm-up: graph optimisation, allocations
                runner.session.run(fetches, feed)
            runs[kind] = (runner, fetches, feed, [])
        for _ in range(args.rounds):
            for kind in KINDS:
                runner, fetches, feed, times = runs[kind]
                t0 = time.process_time()
                runner.session.run(fetches, feed)
                times.append(time.process_time() - t0)
        results[mode] = {k: {"cpu_seconds": runs[k][3], "median": statistics.median(runs[k][3])} for k in KINDS}
        for runner, *_ in runs.values():
            runner.close()
        ref_median = results[mode]["reference"]["median"]
        for kind in ("NCHW", "NHWC"):
            results[mode][kind]["ratio_to_reference"] = results[mode][kind]["median"] / ref_median
        print(mode, {k: round(v["median"], 3) for k, v in results[mode].items()},
              {k: round(results[mode][k]["ratio_to_reference"], 3) for k in ("NCHW", "NHWC")}, flush=True)
    return {"config": os.path.relpath(args.config, ROOT), "image_shape": list(image.shape), "rounds": args.rounds,
            "cpu_count": os.cpu_count(), "tensorflow": tf.__version__, "results": results,
            "note": "CPU seconds (process time, all threads) per call; ratio = ddcache median / reference median"}


def save(report, out):
    h, w = report["image_shape"][:2]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    lines = [f"# Model speed on CPU ({report['config']}, image {w}x{h}, {report['rounds']} interleaved rounds)", "",
             "| | reference (NCHW) | ddcache NCHW | ddcache NHWC | ratio NCHW | ratio NHWC |", "|---|---|---|---|---|---|"]
    for mode in ("inference", "training"):
        r = report["results"][mode]
        lines.append(f"| {mode} (CPU s) | {r['reference']['median']:.2f} | {r['NCHW']['median']:.2f} | "
                     f"{r['NHWC']['median']:.2f} | {r['NCHW']['ratio_to_reference']:.2f} | "
                     f"{r['NHWC']['ratio_to_reference']:.2f} |")
    lines += ["", "Ratio = ddcache / reference (medians of CPU time per call; <= 1 means ddcache is not slower)."]
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    args = parse_args(argv)
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "tools", "reference")]
    import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

    save(measure(args), args.out)


if __name__ == "__main__":
    main()
