"""Horovod on CPU: ``ddtrain train --horovod`` with 1 vs 2 ranks (Gloo), next to the plain single-process trainer.

Usage: python benchmarks/horovod_scaling.py [--pages 40] [--steps-per-epoch 20] [--rounds 2]

Needs Horovod (bash tools/install_horovod.sh cpu). Builds a small synthetic
cache, then trains ``configs/tiny.yaml`` for two epochs of
``--steps-per-epoch`` steps: SimpleTrainer (no Horovod), and ``horovodrun
-np 1`` / ``-np 2 -H localhost:N --gloo``, interleaved ``--rounds`` times in ONE
run (medians reported). Speed is read from
rank 0's second epoch in ``LOGDIR/log.log`` (tensorpack's "Epoch 2 ... finished, time:"), which
excludes graph building, the first steps and the final checkpoint and
evaluation. One image per rank and step, so images/s = ranks x steps/s.
On this 2-core machine two ranks share the cores one rank had (each rank's
TensorFlow gets half of them): the ratio shows Horovod's overhead on one
machine, not what a second machine would add. Writes
results/horovod_scaling.{json,md}.
"""
import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import markdown_table, save

ROOT = Path(__file__).resolve().parents[1]
EPOCH = re.compile(r"Epoch 2 \(global_step \d+\) finished, time:\s*(.+?)\.?$", re.M)
UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def train_cmd(caches, logdir, spe):
    return [sys.executable, "-m", "trainer.cli_main", "train", "--config", str(ROOT / "configs" / "tiny.yaml"),
            "--train", str(caches / "train"), "--val", str(caches / "val"), "--logdir", str(logdir),
            "--steps", str(2 * spe), "--workers", "1", "--eval-max-datapoints", "1",
            "--override", f"TRAIN.STEPS_PER_EPOCH={spe}", "--override", "TRAIN.EVAL_PERIOD=100",
            "--override", "TRAIN.CHECKPOINT_PERIOD=100"]


def second_epoch_seconds(text):
    match = EPOCH.search(text)
    if not match:
        raise RuntimeError("no 'Epoch 2 ... finished' line in:\n" + text[-3000:])
    # tensorpack's humanize_time_delta: "12.5 seconds", "1 minute 5 seconds", ...
    parts = re.findall(r"([0-9.]+) (second|minute|hour|day)s?", match.group(1))
    return sum(float(value) * UNIT_SECONDS[unit] for value, unit in parts)


def run(cmd, logdir):
    """Run ``cmd``; rank 0's ``LOGDIR/log.log`` (tensorpack's full log; the console shows a summary only)."""
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(r.stdout + r.stderr)[-3000:]}")
    return (Path(logdir) / "log.log").read_text()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=40)
    ap.add_argument("--steps-per-epoch", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if shutil.which("horovodrun") is None:
        sys.exit("horovod_scaling: horovodrun not found (bash tools/install_horovod.sh cpu)")
    tmp = Path(tempfile.mkdtemp(prefix="ddcache-hvd-bench-"))
    try:
        from ddcache.build import BuildOptions, build_cache
        from ddcache.resolution import Resolution
        from ddcache.synth import write_sample

        write_sample("fintabnet", tmp / "raw", pages=args.pages, seed=0)
        for split in ("train", "val"):
            build_cache(BuildOptions(dataset="fintabnet", source=str(tmp / "raw"), split=split,
                                     out=str(tmp / "caches" / split), workers=1, resolution=Resolution(72)),
                        progress=False)
        spe = args.steps_per_epoch
        runs = [{"name": "SimpleTrainer (no Horovod)", "ranks": 1, "horovod": False, "epoch_seconds": []}]
        runs += [{"name": f"horovodrun -np {n} --gloo", "ranks": n, "horovod": True, "epoch_seconds": []} for n in (1, 2)]
        for round_no in range(args.rounds):
            for r in runs:
                logdir = tmp / f"log-{round_no}-{r['ranks']}-{r['horovod']}"
                cmd = train_cmd(tmp / "caches", logdir, spe)
                if r["horovod"]:
                    cmd = ["horovodrun", "-np", str(r["ranks"]), "-H", f"localhost:{r['ranks']}", "--gloo", *cmd,
                           "--horovod"]
                else:
                    cmd += ["--gpus", "0"]
                r["epoch_seconds"].append(second_epoch_seconds(run(cmd, logdir)))
        for r in runs:
            r["steps_per_s"] = spe / statistics.median(r["epoch_seconds"])
            r["images_per_s"] = r["ranks"] * r["steps_per_s"]
        one, two = runs[1], runs[2]
        payload = {"steps_per_epoch": spe, "rounds": args.rounds, "runs": runs,
                   "ratio_steps_per_s_2_vs_1_ranks": two["steps_per_s"] / one["steps_per_s"],
                   "ratio_images_per_s_2_vs_1_ranks": two["images_per_s"] / one["images_per_s"],
                   "ratio_horovod_1_rank_vs_simple": one["steps_per_s"] / runs[0]["steps_per_s"]}
        rows = [[r["name"], r["ranks"], f"{r['steps_per_s']:.2f}", f"{r['images_per_s']:.2f}"] for r in runs]
        md = markdown_table(["run (tiny.yaml, CPU, 2 cores)", "ranks", "steps/s", "images/s"], rows)
        md += (f"\n\n2 vs 1 ranks: steps/s x{payload['ratio_steps_per_s_2_vs_1_ranks']:.2f}, images/s "
               f"x{payload['ratio_images_per_s_2_vs_1_ranks']:.2f}; Horovod with 1 rank vs SimpleTrainer: "
               f"x{payload['ratio_horovod_1_rank_vs_simple']:.2f}")
        save("horovod_scaling", payload, md)
        print(md)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
