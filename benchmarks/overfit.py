"""Learning check: can ``ddtrain train`` overfit a handful of tables on CPU?

Trains ``configs/tiny.yaml`` from random initialisation on a few synthetic
FinTabNet tables and evaluates COCO AP50 on *the same tables* before the first
step and after the last. Overfitting a tiny set is the cheapest end-to-end
proof that data, anchor targets, losses, LR schedule, the optimizer and the
evaluation path are wired correctly: if any of them is broken, AP50 stays at
the untrained value.

    python benchmarks/overfit.py [--steps 300] [--tables 4] [--workers 1]

Writes ``benchmarks/results/overfit.json`` and ``overfit.md``.
"""
import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import trainer  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)

KEYS = ("AP50", "AP75", "AP", "AR")


def build_tables(root, tables, seed):
    """A cache with ``tables`` synthetic FinTabNet table crops (72 dpi, small images: fast on CPU)."""
    from ddcache.build import BuildOptions, build_cache
    from ddcache.resolution import Resolution
    from ddcache.store import CacheReader
    from ddcache.synth import write_sample

    write_sample("fintabnet", root / "src", pages=max(3, tables * 2), seed=seed)
    out = root / "cache"
    build_cache(BuildOptions(dataset="fintabnet", source=str(root / "src"), split="train", out=str(out), workers=1,
                             resolution=Resolution(72), max_datapoints=tables), progress=False)
    return out, len(CacheReader(out))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--tables", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    ap.add_argument("--override", action="append", default=[], help="extra KEY=VALUE config overrides")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    from trainer.config import load_user_config
    from trainer.train import train_main

    with tempfile.TemporaryDirectory(prefix="overfit-") as tmp:
        tmp = Path(tmp)
        cache, n = build_tables(tmp, args.tables, args.seed)
        # Evaluate only at the start and at the end (EVAL_PERIOD beyond the run), save only at the end.
        overrides = [f"TRAIN.EVAL_PERIOD={args.steps + 1}", f"TRAIN.CHECKPOINT_PERIOD={args.steps + 1}",
                     "TRAIN.STEPS_PER_EPOCH=50"] + list(args.override)
        start = time.perf_counter()
        result = train_main(args.config, [cache], [cache], tmp / "run", overrides=overrides, steps=args.steps,
                            gpus=0, workers=args.workers, seed=args.seed, eval_at_start=True,
                            echo=lambda m: print(m, file=sys.stderr))
        seconds = time.perf_counter() - start
    (step0, before), (step1, after) = result["eval"][0], result["eval"][-1]
    report = {
        "what": "COCO bbox on the training tables themselves (overfit check), configs/tiny.yaml, CPU",
        "config": str(Path(args.config).relative_to(ROOT)) if Path(args.config).is_relative_to(ROOT) else args.config,
        "overrides": overrides,
        "tables": n,
        "categories": list(load_user_config(args.config, overrides).DATA.CATEGORIES),
        "gt_boxes": {c: v["num_gt"] for c, v in before["per_category"].items()},
        "steps": step1,
        "train_seconds_incl_evals": round(seconds, 1),
        "machine": {"cpus": len(__import__("os").sched_getaffinity(0)), "python": platform.python_version()},
        "before": {"global_step": step0, **{k: before[k] for k in KEYS}, "num_detections": before["num_detections"]},
        "after": {"global_step": step1, **{k: after[k] for k in KEYS}, "num_detections": after["num_detections"]},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overfit.json").write_text(json.dumps(report, indent=1) + "\n")
    md = [
        "# Overfit check (`benchmarks/overfit.py`)",
        "",
        f"`{report['config']}` trained from random initialisation on {n} synthetic FinTabNet tables "
        f"({', '.join(f'{c}: {k} gt boxes' for c, k in report['gt_boxes'].items())}) "
        f"for {step1} steps on CPU ({report['machine']['cpus']} cores, {seconds / 60:.1f} min including "
        "graph build and both evaluations); evaluated on the same tables (COCO bbox, maxDets 50/200/600).",
        "",
        "| | global step | AP50 | AP75 | AP | AR | detections |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, row in (("before", report["before"]), ("after", report["after"])):
        md.append(f"| {label} | {row['global_step']} | {row['AP50']:.3f} | {row['AP75']:.3f} | {row['AP']:.3f} | "
                  f"{row['AR']:.3f} | {row['num_detections']} |")
    md += ["", f"Overrides: `{' '.join(overrides)}`", ""]
    (out / "overfit.md").write_text("\n".join(md))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
