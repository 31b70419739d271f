"""Distributed build: ``ddcache build --dask local:K`` with 1 vs 2 Dask workers, next to the serial build.

Usage: python benchmarks/dask_build.py [--pages 300] [--shards 4] [--rounds 2]

Makes a synthetic FinTabNet sample, then in ONE run, interleaved ``--rounds``
times: the serial build with 1 process, and ``--dask local:1`` / ``local:2``
with ``--shards`` shards and one build process per shard (so the number of
Dask workers is the only difference). Times are end to end as a user sees
them (cluster start-up included); on a shared machine the best round is the
least disturbed one, so both best and median are reported. Checks that every Dask result has the
serial build's checksums. Writes results/dask_build.{json,md}.
"""
import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from measure import markdown_table, python_cmd, run_measured, save


def build(source, out, extra):
    cmd = python_cmd("-m", "ddcache.cli_main", "build", "fintabnet", "--source", source, "--split", "train", "--out",
                     out, "--workers", "1", "--quiet", "--overwrite", *extra)
    seconds, rss, _ = run_measured(cmd)
    info = json.loads(run_measured(python_cmd("-m", "ddcache.cli_main", "info", out, "--json"))[2])
    return seconds, rss, info


def checksums(out):
    from ddcache.manifest import read_manifest
    from ddcache.shard_set import expand

    return sorted(c for p in expand([out]) for c in read_manifest(p)["checksums"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=300)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ddcache-dask-bench-"))
    try:
        from ddcache.synth import write_sample

        write_sample("fintabnet", tmp / "raw", pages=args.pages, seed=0)
        setups = [("serial build, 1 process", "serial", []),
                  (f"--dask local:1 --shards {args.shards}", "dask1", ["--dask", "local:1", "--shards", str(args.shards)]),
                  (f"--dask local:2 --shards {args.shards}", "dask2", ["--dask", "local:2", "--shards", str(args.shards)])]
        seconds = {key: [] for _, key, _ in setups}
        rss, tables = {}, None
        for _ in range(args.rounds):
            for _, key, extra in setups:
                sec, peak, info = build(tmp / "raw", tmp / key, extra)
                seconds[key].append(sec)
                rss[key] = max(rss.get(key, 0.0), peak)
                tables = info["num_samples"]
        reference = checksums(tmp / "serial")
        same = {key: checksums(tmp / key) == reference for key in ("dask1", "dask2")}
        runs = []
        for name, key, _ in setups:
            best, median = min(seconds[key]), statistics.median(seconds[key])
            runs.append({"name": name, "key": key, "seconds": seconds[key], "best_seconds": best,
                         "median_seconds": median, "tables_per_s_best": tables / best,
                         "tables_per_s_median": tables / median, "peak_rss_mb": rss[key]})
        by_key = {r["key"]: r for r in runs}

        def ratio(a, b, stat):
            return by_key[a][f"tables_per_s_{stat}"] / by_key[b][f"tables_per_s_{stat}"]

        payload = {"tables": tables, "shards": args.shards, "rounds": args.rounds, "runs": runs,
                   "ratio_2_vs_1_dask_workers": {s: ratio("dask2", "dask1", s) for s in ("best", "median")},
                   "ratio_dask1_vs_serial": {s: ratio("dask1", "serial", s) for s in ("best", "median")},
                   "same_checksums_as_serial": same}
        rows = [[r["name"], tables, " / ".join(f"{x:.1f}" for x in r["seconds"]), f"{r['tables_per_s_best']:.1f}",
                 f"{r['tables_per_s_median']:.1f}", f"{r['peak_rss_mb']:.0f}"] for r in runs]
        md = markdown_table(["run", "tables", "seconds per round", "tables/s (best)", "tables/s (median)",
                             "peak RSS MB (process tree)"], rows)
        r2, r1 = payload["ratio_2_vs_1_dask_workers"], payload["ratio_dask1_vs_serial"]
        md += (f"\n\n2 vs 1 Dask workers: x{r2['best']:.2f} (best rounds), x{r2['median']:.2f} (medians); "
               f"1 Dask worker vs the serial build: x{r1['best']:.2f} / x{r1['median']:.2f}. "
               f"Same checksums as the serial build: {same}")
        save("dask_build", payload, md)
        print(md)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
