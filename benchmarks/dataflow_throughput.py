"""Feeding training: the in-memory way vs rendering on the fly vs streaming the cache, side by side.

Usage: python benchmarks/dataflow_throughput.py [--pages 60] [--small 1000] [--large 20000]
                                                [--workers N] [--seconds 20] [--quick]

One run, the same tables everywhere (a synthetic FinTabNet sample, train split):

  (a) in-memory: render + crop every table into a list of float32 arrays
      first (what the seed trainer does), then iterate the list;
  (b) on the fly: render + crop each table when it is asked for
      (``ddcache.build.render_samples``), no cache;
  (c) streaming the cache (``ddcache bench``: the one read path of
      ``ddcache.dataflows`` -- read and check here, decode in 1, 2 and N map
      worker processes), for each encoding (png / jpeg / raw), one exact
      epoch each;
  (d) the full training input of configs/cell.yaml as ``ddtrain train``
      feeds the model (``ddcache bench --config``: decode, random resize,
      flip and RPN anchor targets in 1, 2 and N map workers), for
      ``--seconds``.

Also: peak RSS when streaming a small vs a large cache (records of the png
cache replicated through the cache writer into caches of ``--small`` and
``--large`` samples -- the same bytes a build of that many tables would
hold per record), and, in one process with 5 interleaved pairs of passes
each, the cost of streaming read + check + decode relative to decoding the
same encoded records from a list in memory, and of the full training input
relative to read + decode.

Every measurement runs in its own child process, so RSS is not shared
between them. RSS is summed over a process tree: forked workers count the
TensorFlow/tensorpack pages they share with their parent once each, and
LMDB's mapped file pages count as resident while they are cached; the
``anon`` column (RSS minus file-backed/shared pages) is the private memory
that would grow if data were held. The machine is shared and noisy: read
ratios, not absolute numbers.

Writes results/dataflow_throughput.{json,md,png}.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from measure import RESULTS, markdown_table, save  # noqa: E402

ENCODINGS = ("png", "jpeg", "raw")


# ---------------------------------------------------------------- child measurements (run in their own process)


def _opts(source, **kw):
    from ddcache.build import BuildOptions

    return BuildOptions(dataset="fintabnet", source=str(source), split="train", workers=1, **kw)


def child_inmemory(source):
    """(a): everything rendered into float32 arrays before the first sample; then one pass over the list."""
    from ddcache.bench import _PeakRss
    from ddcache.build import render_samples

    with _PeakRss() as rss:
        t0 = time.perf_counter()
        data = [(s["image"].astype("float32"), s["boxes"]) for s in render_samples(_opts(source))]
        n = 0
        t_first = None
        for image, boxes in data:
            if t_first is None:
                t_first = time.perf_counter()
            n += int(image.shape[0] > 0)
        t_end = time.perf_counter()
    return {"samples": n, "first_sample_s": t_first - t0, "samples_per_s": n / (t_end - t0),
            "peak_rss_mb": rss.peak_mb, "peak_anon_mb": rss.peak_anon_mb, "start_rss_mb": rss.start_mb,
            "held_mb": sum(d[0].nbytes for d in data) / 1e6}


def child_onthefly(source):
    """(b): render + crop per sample as the consumer asks, single process."""
    from ddcache.bench import _PeakRss
    from ddcache.build import render_samples

    with _PeakRss() as rss:
        t0 = time.perf_counter()
        n, t_first = 0, None
        for s in render_samples(_opts(source)):
            if t_first is None:
                t_first = time.perf_counter()
            n += 1
        t_end = time.perf_counter()
    return {"samples": n, "first_sample_s": t_first - t0, "samples_per_s": n / (t_end - t0),
            "peak_rss_mb": rss.peak_mb, "peak_anon_mb": rss.peak_anon_mb, "start_rss_mb": rss.start_mb}


def child_stream(cache, workers, seconds, config=None):
    """(c), (d): ``ddcache bench`` on ``cache``: one exact epoch, or ``seconds`` of streaming if given;
    with ``config``, that config's full training input."""
    from ddcache.bench import run_bench

    return run_bench(cache, workers=workers, seconds=seconds, epoch=seconds is None, seed=0, config=config)


def child_decode_ratio(cache, rounds=5):
    """Seconds to read+check+decode one epoch from the cache vs to decode the same records held in memory.

    ``rounds`` interleaved pairs of passes (so both sides of each ratio see the
    same machine load); the median ratio is reported with its range.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from ddcache.codec import decode_record
    from ddcache.dataflows import map_records
    from ddcache.decoding import RecordDecoder
    from ddcache.source import CacheSource
    from ddcache.store import CacheReader

    reader = CacheReader(cache)
    records = [(f"{i:08d}", reader.get_raw(i)) for i in range(len(reader))]
    df = map_records(CacheSource(cache, shuffle=True, seed=0), [RecordDecoder()])
    df.reset_state()
    memory, stream = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for key, raw in records:
            decode_record(key, raw)
        memory.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        n = sum(1 for _ in df)
        stream.append(time.perf_counter() - t0)
    ratios = [s_ / m for s_, m in zip(stream, memory)]
    return {"samples": n, "rounds": rounds, "decode_from_memory_s": float(np.median(memory)),
            "stream_read_decode_s": float(np.median(stream)), "ratio": float(np.median(ratios)),
            "ratio_per_round": ratios}


def child_training(cache, config, rounds=5):
    """Full training input (resize + flip + RPN anchor targets, `config`) vs read + decode alone, same samples.

    One process (per-sample cost, the fair ratio): ``rounds`` pairs of
    passes, read + decode then read + decode + map, so that both sides of
    each ratio see the same machine load; the median ratio is reported with
    its range. (The multi-process pipeline is measured by the (d) rows.)
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    import trainer  # noqa: F401
    from ddcache.dataflows import map_records
    from ddcache.decoding import RecordDecoder
    from ddcache.source import CacheSource
    from trainer.config import load_config
    from trainer.train_data import TrainingMapper

    cfg = load_config(config)
    df = map_records(CacheSource(cache, shuffle=True, seed=0), [RecordDecoder()])
    df.reset_state()
    mapper, rng = TrainingMapper(cfg, seed=0), np.random.RandomState(0)
    mapper.setup()  # a worker's one-off start-up (anchor grids), not a per-sample cost
    timings, per_round = {}, []
    decode_total = full_total = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        n = sum(1 for _ in df)
        decode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        mapped = sum(1 for s in df if mapper.map(s, rng, timings=timings) is not None)
        full_s = time.perf_counter() - t0
        per_round.append((mapped / full_s) / (n / decode_s))
        decode_total += decode_s
        full_total += full_s
    timings = {k: v / rounds for k, v in timings.items()}
    return {"samples": n, "mapped": mapped, "rounds": rounds, "read_decode_per_s": rounds * n / decode_total,
            "training_input_per_s": rounds * mapped / full_total,
            "fraction_of_read_decode": float(np.median(per_round)), "fraction_per_round": per_round,
            "stage_seconds": timings}


CHILDREN = {"training": child_training, "inmemory": child_inmemory, "onthefly": child_onthefly, "stream": child_stream,
            "decode_ratio": child_decode_ratio}


def run_child(kind, *args):
    """Run one measurement in a fresh Python process; return its JSON result."""
    plain = [str(a) if isinstance(a, Path) else a for a in args]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(plain)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads([l for l in proc.stdout.splitlines() if l.startswith("{")][-1])


# ---------------------------------------------------------------- large caches by replication


def replicate_cache(src, dst, n):
    """Write a cache of ``n`` records at ``dst`` by cycling the records of cache ``src`` (same bytes, same index).

    The records and their index entries are copied as they are (the cache
    writer recomputes the same checksums); only the keys are new. Returns ``dst``.
    """
    from ddcache.manifest import read_manifest
    from ddcache.store import CacheReader
    from ddcache.writer import CacheHeader, CacheWriter

    reader = CacheReader(src)
    m = read_manifest(src)
    k = len(reader)
    header = CacheHeader(m["dataset"], m["split"], m["mode"], {**m["build_options"], "replicated_from": str(src)})
    index = m["index"]
    with CacheWriter.open(dst, header, map_size=1 << 32) as writer:
        for i in range(n):
            writer.append(reader.get_raw(i % k), (index["num_rows"][i % k], index["num_cols"][i % k],
                                                  index["num_cells"][i % k]))
            if writer.uncommitted >= 256:
                writer.commit()
        counts = {key: m["counts"][key] for key in ("num_read", "num_tables_written", "boxes_per_category",
                                                     "dropped_boxes")}
        writer.finish(counts, encoding=m.get("encoding"))
    return Path(dst)


# ---------------------------------------------------------------- report


def _mb(value):
    return "-" if value is None else f"{value:.0f}"


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(16, 0.45 * len(rows) + 2), sharey=True)
    for ax, field, title in zip(axes, ("samples_per_s", "first_sample_s", "peak_rss_mb"),
                                ("samples/s (higher is better)", "time to first sample, s (log)", "peak RSS, MB")):
        ax.barh(names, [r[field] for r in rows], color=["#b55" if r["kind"] != "stream" else "#57a" for r in rows])
        ax.set_title(title)
        if field == "first_sample_s":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--pages", type=int, default=60, help="synthetic FinTabNet pages (about 1.5 tables each)")
    ap.add_argument("--small", type=int, default=1000, help="samples in the small replicated cache")
    ap.add_argument("--large", type=int, default=20000, help="samples in the large replicated cache")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="N of the 1 / 2 / N worker runs")
    ap.add_argument("--seconds", type=float, default=20.0, help="streaming time for the replicated caches")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check the script runs (shared machines)")
    ap.add_argument("--out-name", default="dataflow_throughput")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](*json.loads(args.args))))
        return
    if args.quick:
        args.pages, args.small, args.large, args.seconds = 8, 60, 240, 2.0

    from ddcache.build import BuildOptions, build_cache
    from ddcache.synth import write_sample

    tmp = Path(tempfile.mkdtemp(prefix="ddcache-dfbench-"))
    try:
        write_sample("fintabnet", tmp / "raw", pages=args.pages, seed=0)
        caches = {}
        for enc in ENCODINGS:
            caches[enc] = tmp / f"cache_{enc}"
            build_cache(BuildOptions(dataset="fintabnet", source=str(tmp / "raw"), split="train", out=str(caches[enc]),
                                     workers=0, encoding=enc), progress=False)
        rows = []
        a = run_child("inmemory", tmp / "raw")
        rows.append({"name": "(a) in-memory float32 list", "kind": "inmemory", **a})
        b = run_child("onthefly", tmp / "raw")
        rows.append({"name": "(b) render on the fly", "kind": "onthefly", **b})
        worker_counts = sorted({1, 2, max(1, args.workers)})
        for enc in ENCODINGS:
            for w in worker_counts:
                r = run_child("stream", caches[enc], w, None)
                rows.append({"name": f"(c) stream {enc}, {w} worker(s)", "kind": "stream", "encoding": enc, **r})
        config = Path(__file__).resolve().parents[1] / "configs" / "cell.yaml"
        for w in worker_counts:
            r = run_child("stream", caches["png"], w, args.seconds, str(config))
            rows.append({"name": f"(d) training input png (cell.yaml), {w} worker(s)", "kind": "stream",
                         "encoding": "png", **r})

        small = replicate_cache(caches["png"], tmp / "small", args.small)
        growth = {}
        big = replicate_cache(caches["png"], tmp / "large", args.large)
        for label, path, n in (("small", small, args.small), ("large", big, args.large)):
            growth[label] = {"cache_samples": n, **run_child("stream", path, max(1, args.workers), args.seconds)}

        ratios = {enc: run_child("decode_ratio", caches[enc]) for enc in ENCODINGS}
        training = run_child("training", caches["png"], config)

        payload = {
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "tables": a["samples"], "pages": args.pages, "workers_n": args.workers,
            "runs": rows, "rss_vs_cache_size": growth, "stream_vs_memory_decode": ratios,
            "training_pipeline": training,
        }
        md = [f"# Dataflow throughput ({a['samples']} tables, {os.cpu_count()} cores)", "",
              markdown_table(["pipeline", "samples", "first sample (s)", "samples/s", "peak RSS (MB)",
                              "RSS growth (MB)", "peak anon (MB)", "PSS at end (MB)"],
                             [[r["name"], r["samples"], f"{r['first_sample_s']:.3f}", f"{r['samples_per_s']:.1f}",
                               f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_mb'] - r['start_rss_mb']:.0f}",
                               f"{r['peak_anon_mb']:.0f}", _mb(r.get("end_pss_mb"))] for r in rows]),
              "", "## RSS vs cache size (streaming png, N workers, fixed time)", "",
              markdown_table(["cache samples", "samples streamed", "samples/s", "peak RSS (MB)", "RSS growth (MB)",
                              "peak anon (MB)", "PSS at end (MB)"],
                             [[g["cache_samples"], g["samples"], f"{g['samples_per_s']:.1f}", f"{g['peak_rss_mb']:.0f}",
                               f"{g['peak_rss_mb'] - g['start_rss_mb']:.0f}", f"{g['peak_anon_mb']:.0f}",
                               _mb(g.get("end_pss_mb"))] for g in growth.values()]),
              "", "## Streaming read + check + decode vs decoding the same records from memory (1 process)", "",
              markdown_table(["encoding", "samples", "from memory (s, median)", "streamed (s, median)",
                              "time ratio streamed / memory (median of 5, range)"],
                             [[enc, r["samples"], f"{r['decode_from_memory_s']:.3f}",
                               f"{r['stream_read_decode_s']:.3f}",
                               f"{r['ratio']:.2f} ({min(r['ratio_per_round']):.2f}-{max(r['ratio_per_round']):.2f})"]
                              for enc, r in ratios.items()]),
              "", "## Full training input (cell.yaml: resize + flip + RPN anchor targets) vs read + decode alone (1 process)", "",
              markdown_table(["samples", "read+decode /s", "+ training preprocessing /s",
                              f"fraction (median of {training['rounds']}, range)",
                              "per sample ms: resize+flip / anchor labels / sampling+dense targets"],
                             [[training["samples"], f"{training['read_decode_per_s']:.1f}",
                               f"{training['training_input_per_s']:.1f}",
                               f"{training['fraction_of_read_decode']:.2f} ({min(training['fraction_per_round']):.2f}"
                               f"-{max(training['fraction_per_round']):.2f})",
                               " / ".join(f"{1e3 * training['stage_seconds'][k] / training['mapped']:.1f}"
                                          for k in ("resize_flip", "matching", "sampling"))]]),
              "", "RSS sums the process tree (forked workers count pages shared with their parent again); "
              "PSS splits shared pages between processes (the honest total, taken once when streaming stops); "
              "growth = peak minus the RSS after imports (streaming imports TensorFlow via tensorpack, as the "
              "trainer does anyway); anon = RSS minus file-backed/shared pages."]
        j, m = save(args.out_name, payload, "\n".join(md))
        plot(rows, RESULTS / f"{args.out_name}.png")
        print("\n".join(md))
        print(f"wrote {j}, {m}, {RESULTS / (args.out_name + '.png')}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
