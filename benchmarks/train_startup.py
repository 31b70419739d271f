"""Time from `ddtrain train` to the first training step, for a small and a large cache (side by side).

Usage: python benchmarks/train_startup.py [--small 100] [--large 20000]

The large cache is made by replicating the small one's records (same bytes,
new keys; see dataflow_throughput.replicate_cache). Each run trains
configs/tiny.yaml for one step; what is timed is the whole ``ddtrain train
--steps 1`` process (imports, graph build, one step, a one-image evaluation,
the save), so compare the two runs by their difference, which is what depends
on the cache size. Writes results/train_startup.{json,md}.
"""
import argparse
import shutil
import tempfile
from pathlib import Path

from dataflow_throughput import replicate_cache
from measure import markdown_table, python_cmd, run_measured, save

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def first_step_seconds(cache, val, logdir):
    cmd = python_cmd("-m", "trainer.cli_main", "train", "--config", CONFIG, "--train", cache, "--val", val,
                     "--logdir", logdir, "--steps", 1, "--workers", 1, "--eval-max-datapoints", 1)
    seconds, rss, _ = run_measured(cmd)
    return {"total_s": seconds, "peak_rss_mb": rss}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--large", type=int, default=20000)
    args = ap.parse_args()
    from ddcache.build import BuildOptions, build_cache
    from ddcache.synth import write_sample

    tmp = Path(tempfile.mkdtemp(prefix="ddcache-startup-"))
    try:
        write_sample("fintabnet", tmp / "raw", pages=40, seed=0)
        build_cache(BuildOptions(dataset="fintabnet", source=str(tmp / "raw"), split="train", out=str(tmp / "base"), workers=0), progress=False)
        build_cache(BuildOptions(dataset="fintabnet", source=str(tmp / "raw"), split="val", out=str(tmp / "val"), workers=0), progress=False)
        rows = {}
        for label, n in (("small", args.small), ("large", args.large)):
            cache = replicate_cache(tmp / "base", tmp / label, n)
            rows[label] = {"cache_samples": n, **first_step_seconds(cache, tmp / "val", tmp / f"log_{label}")}
        payload = {"runs": rows, "ratio_large_vs_small": rows["large"]["total_s"] / rows["small"]["total_s"]}
        md = markdown_table(["cache samples", "start -> 1 step done (s)", "peak RSS MB"],
                            [[r["cache_samples"], f"{r['total_s']:.1f}", f"{r['peak_rss_mb']:.0f}"] for r in rows.values()])
        md += f"\n\nlarge / small wall time: x{payload['ratio_large_vs_small']:.2f} (includes graph build, one step, a 1-image eval and the save)"
        save("train_startup", payload, md)
        print(md)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
