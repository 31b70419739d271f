"""Build throughput: ddcache build (1 vs all workers, each encoding) vs the in-memory way, side by side.

Usage: python benchmarks/build_throughput.py [--pages 150] [--scale-pages 600]

Makes a synthetic FinTabNet sample, then in ONE run measures
  * the in-memory baseline (full page render + crop + float32 list, single process),
  * `ddcache build` with 1 worker and with all cores (auto resolution, png),
  * bytes per table for png / jpeg / raw,
  * peak RSS of a build of N and of ~4N tables (RSS must not grow with the data).
Writes results/build_throughput.{json,md,png}. The machine is shared and noisy:
read the ratios, not the absolute numbers.
"""
import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from measure import RESULTS, markdown_table, python_cmd, run_measured, save

HERE = Path(__file__).resolve().parent


def build(source, out, workers, encoding="png", split="train"):
    cmd = python_cmd("-m", "ddcache.cli_main", "build", "fintabnet", "--source", source, "--split", split, "--out", out,
                     "--workers", workers, "--encoding", encoding, "--quiet", "--overwrite")
    seconds, rss, _ = run_measured(cmd)
    info = json.loads(run_measured(python_cmd("-m", "ddcache.cli_main", "info", out, "--json"))[2])
    return {"workers": workers, "encoding": encoding, "seconds": seconds, "tables": info["num_samples"],
            "tables_per_s": info["num_samples"] / seconds, "peak_rss_mb": rss,
            "bytes_per_table": info["bytes"] / max(1, info["num_samples"])}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=150)
    ap.add_argument("--scale-pages", type=int, default=600, help="larger sample for the RSS-vs-size check")
    ap.add_argument("--baseline-dpi", type=float, default=200.0)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="ddcache-bench-"))
    try:
        from ddcache.synth import write_sample

        small = write_sample("fintabnet", tmp / "raw", pages=args.pages, seed=0)
        big = write_sample("fintabnet", tmp / "raw_big", pages=args.scale_pages, seed=1)
        runs = []
        # in-memory baseline, same tables
        sec, rss, out = run_measured(python_cmd(HERE / "inmemory_baseline.py", tmp / "raw", "train", 10**9, args.baseline_dpi))
        base = json.loads(out)
        runs.append({"name": f"in-memory (full page @ {args.baseline_dpi:.0f} dpi, float32 list)", "tables": base["tables"],
                     "tables_per_s": base["tables_per_s"], "peak_rss_mb": rss, "bytes_per_table": base["held_mb"] * 1e6 / base["tables"]})
        for workers in sorted({1, cores}):
            r = build(tmp / "raw", tmp / f"cache_w{workers}", workers)
            runs.append({"name": f"ddcache build, {workers} worker(s), png", **r})
        for enc in ("jpeg", "raw"):
            r = build(tmp / "raw", tmp / f"cache_{enc}", cores, enc)
            runs.append({"name": f"ddcache build, {cores} worker(s), {enc}", **r})
        r_big = build(tmp / "raw_big", tmp / "cache_big", cores)
        runs.append({"name": f"ddcache build, {cores} worker(s), png, larger sample", **r_big})
        baseline = runs[0]["tables_per_s"]
        for r in runs:
            r["speedup_vs_inmemory"] = r["tables_per_s"] / baseline
        small_rss = next(r["peak_rss_mb"] for r in runs if r.get("workers") == cores and r.get("encoding") == "png")
        payload = {
            "cores": cores,
            "sample_tables": small["tables"],
            "large_sample_tables": big["tables"],
            "runs": runs,
            "rss_ratio_large_vs_small_build": r_big["peak_rss_mb"] / small_rss,
        }
        rows = [[r["name"], r["tables"], f"{r['tables_per_s']:.1f}", f"{r['speedup_vs_inmemory']:.1f}x",
                 f"{r['peak_rss_mb']:.0f}", f"{r['bytes_per_table'] / 1e3:.0f}"] for r in runs]
        md = markdown_table(["run", "tables", "tables/s", "vs in-memory", "peak RSS MB", "KB per table"], rows)
        md += (f"\n\nPeak RSS of the build, {big['tables']} vs {small['tables']} tables: "
               f"x{payload['rss_ratio_large_vs_small_build']:.2f}")
        save("build_throughput", payload, md)
        plot(runs)
        print(md)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def plot(runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    names = [r["name"].replace("ddcache build, ", "").replace(" (", "\n(") for r in runs]
    axes[0].barh(names, [r["tables_per_s"] for r in runs], color=["#999999"] + ["#2ca02c"] * (len(runs) - 1))
    axes[0].set_xlabel("tables / s (higher is better)")
    axes[1].barh(names, [r["peak_rss_mb"] for r in runs], color=["#999999"] + ["#1f77b4"] * (len(runs) - 1))
    axes[1].set_xlabel("peak RSS MB (lower is better)")
    axes[1].set_yticklabels([])
    fig.suptitle("ddcache build vs the in-memory way (same tables, same run)")
    fig.tight_layout()
    fig.savefig(RESULTS / "build_throughput.png", dpi=110)


if __name__ == "__main__":
    main()
