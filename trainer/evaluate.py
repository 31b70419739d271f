"""Evaluation of detectors on a cache, and ``ddtrain eval``: did fine-tuning help?

Two layers:

* :func:`run_evaluation` -- any detector (a callable) over a cache, scored by
  the shared :class:`trainer.coco_eval.CocoEvaluator`. The periodic
  evaluation callback of training and ``ddtrain eval`` both use it, so the
  numbers logged during training and those of the command are the same
  computation.
* :func:`evaluate_checkpoints` -- one :class:`trainer.predictor.Predictor` per
  weights file through :func:`run_evaluation`, plus the report (side-by-side
  table, differences to the first checkpoint, COCO results JSON per checkpoint).

Ground truth is the cache's boxes of ``cfg.DATA.CATEGORIES`` only (other
categories of the cache are not scored), in the cache image's pixels; the
detector's boxes are mapped back to that frame before scoring.
"""
import json
import math
import re
import time
from pathlib import Path

import click
import numpy as np

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from ddcache.errors import UserError

# Rows of the text report, in order: (key in the evaluator's stats, label).
_OVERALL_ROWS = (
    ("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"),
    ("APs", "AP small"), ("APm", "AP medium"), ("APl", "AP large"),
    ("AR", "AR"), ("AR50", "AR50"), ("AR75", "AR75"),
    ("ARs", "AR small"), ("ARm", "AR medium"), ("ARl", "AR large"),
)
_CATEGORY_KEYS = ("AP", "AP50", "AP75", "AR")


def _sample_key(reader, index, sample):
    """An image key unique over all caches of the reader (record keys restart at 0 in every shard)."""
    paths = getattr(reader, "paths", None)
    if paths is not None and len(paths) > 1 and hasattr(reader, "locate"):
        shard, key = reader.locate(index)
        return f"{Path(paths[shard]).name}/{key}"
    return sample.get("key", f"{index:08d}")


def run_evaluation(predict_fn, reader, evaluator, max_datapoints=None, cfg=None, progress=None):
    """Score a detector on the first ``max_datapoints`` samples of a cache (all if None).

    Args:
      predict_fn: callable ``image [H, W, 3] BGR -> (boxes [K, 4] xyxy,
        scores [K], labels [K] in 1..len(evaluator.category_names))``.
        Without ``cfg``, it gets the cache image as stored (uint8) and must
        answer in that image's pixels (a :class:`trainer.predictor.Predictor`
        does). With ``cfg``, it is a graph-level function (e.g. the training
        callback's online predictor fed only ``image``): it gets the uint8
        image resized as in evaluation and its boxes are mapped back
        (:func:`trainer.predictor.detect_in_original_frame`). Either way the
        resize starts from the uint8 image, as in ``ddtrain predict``.
      reader: a ``CacheReader`` (or anything with ``len()`` and
        ``get(index) -> decoded sample``).
      evaluator: a ``CocoEvaluator``; it is reset first. Build it with
        ``CocoEvaluator.for_cache_categories(cfg.DATA.CATEGORIES)`` so gt of
        other categories is dropped and ids map to the model's labels.
      max_datapoints: evaluate only the first N samples (deterministic subset).
      progress: optional callable ``(done, total)`` called after each image.
    Returns ``evaluator.evaluate()``'s stats dict (AP, AP50, ..., per_category).
    The evaluator keeps the detections (``evaluator.results``).
    """
    if cfg is not None:
        from trainer.predictor import detect_in_original_frame

        graph_fn = predict_fn

        def predict_fn(image):
            return detect_in_original_frame(graph_fn, image, cfg)

    total = len(reader) if max_datapoints is None else min(len(reader), int(max_datapoints))
    if total <= 0:
        raise UserError("nothing to evaluate: the cache is empty or --max-datapoints is 0")
    evaluator.reset()
    for index in range(total):
        sample = reader.get(index)
        sample = dict(sample, key=_sample_key(reader, index, sample))
        boxes, scores, labels = predict_fn(sample["image"])
        evaluator.process(sample, {"boxes": boxes, "scores": scores, "labels": labels})
        if progress is not None:
            progress(index + 1, total)
    return evaluator.evaluate()


def checkpoint_names(weights):
    """Report names of weights paths: the basename, with parent folders added until names are unique.

    ``runs/a/model-100`` and ``runs/b/model-100`` -> ``a/model-100``,
    ``b/model-100``; the same path given twice gets ``#2``.
    """
    parts = [Path(str(w)).parts or (str(w),) for w in weights]
    depth = [1] * len(parts)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashes = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen, out = {}, []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def _file_safe(name):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "weights"


def _jsonable(value):
    """NaN (no gt in scope) -> None, since JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _jsonable(value.item())
    return value


def _difference(b, a):
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
        return float("nan")
    return b - a


def differences(stats_b, stats_a):
    """``B - A`` for the overall metrics and per category AP/AP50/AP75/AR (NaN where either is undefined)."""
    out = {k: _difference(v, stats_a.get(k)) for k, v in stats_b.items() if isinstance(v, float)}
    out["per_category"] = {
        cat: {k: _difference(vals[k], stats_a["per_category"].get(cat, {}).get(k)) for k in _CATEGORY_KEYS}
        for cat, vals in stats_b["per_category"].items()
    }
    return out


def build_report(stats_by_name, weights_by_name):
    """The JSON report: ``{"checkpoints": {NAME: stats}, "baseline": first NAME, "differences": {NAME: B-A}}``.

    Each stats entry is the evaluator's dict plus ``"weights"`` (the path as
    given); ``differences`` holds every checkpoint after the first, minus the
    first. NaN becomes null.
    """
    names = list(stats_by_name)
    report = {"checkpoints": {n: dict(stats_by_name[n], weights=str(weights_by_name[n])) for n in names}}
    if len(names) >= 2:
        report["baseline"] = names[0]
        report["differences"] = {n: differences(stats_by_name[n], stats_by_name[names[0]]) for n in names[1:]}
    return _jsonable(report)


def format_table(report):
    """Side-by-side text table of a :func:`build_report` report: one column per checkpoint, then ``B-A``."""
    names = list(report["checkpoints"])
    diffs = report.get("differences", {})
    base = report.get("baseline")
    headers = ["metric"] + names + [f"{n} - {base}" for n in diffs]

    def num(v, signed=False):
        if v is None:
            return "n/a"
        return f"{v:+.4f}" if signed else f"{v:.4f}"

    rows = []
    for key, label in _OVERALL_ROWS:
        if key not in report["checkpoints"][names[0]]:
            continue
        rows.append([label] + [num(report["checkpoints"][n].get(key)) for n in names]
                    + [num(d.get(key), True) for d in diffs.values()])
    for key in sorted((k for k in report["checkpoints"][names[0]] if k.startswith("AR@")), key=lambda k: int(k[3:])):
        rows.append([key] + [num(report["checkpoints"][n].get(key)) for n in names]
                    + [num(d.get(key), True) for d in diffs.values()])
    for cat in report["checkpoints"][names[0]]["per_category"]:
        gt = report["checkpoints"][names[0]]["per_category"][cat]["num_gt"]
        for key in _CATEGORY_KEYS:
            rows.append([f"{cat} {key}" + (f" (gt {gt})" if key == "AP" else "")]
                        + [num(report["checkpoints"][n]["per_category"][cat][key]) for n in names]
                        + [num(d["per_category"][cat][key], True) for d in diffs.values()])
    for key in ("num_images", "num_detections"):
        rows.append([key] + [str(report["checkpoints"][n][key]) for n in names] + ["" for _ in diffs])
    widths = [max(len(r[i]) for r in rows + [headers]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def _progress_printer(echo, every_seconds=30.0):
    """A ``progress(done, total)`` callback echoing a line at most every ``every_seconds`` (and at the end)."""
    start = time.perf_counter()
    last = [start]

    def progress(done, total):
        now = time.perf_counter()
        if done == total or now - last[0] >= every_seconds:
            last[0] = now
            rate = done / max(now - start, 1e-9)
            echo(f"  {done}/{total} images, {rate:.2f} img/s, ~{(total - done) / rate:.0f} s left")

    return progress


def default_out_dir(weights, caches):
    """Where reports go without ``--out``: ``<folder of the first weights>/eval-<first cache's name>``.

    (The folder of a checkpoint prefix or .npz is its parent; a weights
    argument that is a run directory is its own folder.)
    """
    first = Path(str(weights[0])).resolve()
    folder = first if first.is_dir() else first.parent
    return folder / f"eval-{Path(str(caches[0])).resolve().name}"


def evaluate_checkpoints(config, caches, weights, max_datapoints=None, out_dir=None, overrides=(), echo=None):
    """Evaluate every weights file on the caches and write the report; returns the :func:`build_report` dict.

    Args:
      config: config path or ``Config``; ``DATA.CATEGORIES`` chooses the
        scored categories, PREPROC the eval resize.
      caches: cache directories (read as one dataset, in order).
      weights: weights paths (tensorpack checkpoints or ``.npz``), A first.
      max_datapoints: score only the first N samples.
      out_dir: folder for the outputs (default :func:`default_out_dir`).
      echo: optional callable for progress lines (e.g. to stderr).
    Writes to ``out_dir``: ``ground_truth.json`` (COCO dataset, eval labels
    1..K), ``detections-<NAME>.json`` per checkpoint (COCO results for
    ``ground_truth.json``; boxes in cache-image pixels), ``report.json`` and
    ``report.txt``. Missing weights/caches raise UserError before any model
    is built; with several weights files each is read and checked first (one
    extra read), so a damaged one stops the run before anything is written.
    """
    from ddcache.outputs import check_disjoint
    from ddcache.store import CacheReader
    from trainer.coco_eval import CocoEvaluator
    from trainer.weights import check_numbers, read_weights, resolve_weights
    from trainer.config import load_user_config
    from trainer.predictor import Predictor

    weights = [str(w) for w in weights]
    if not weights:
        raise UserError("no --weights given")
    for w in weights:
        resolve_weights(w)
    if len(weights) > 1:  # a damaged later file must fail before the earlier ones are evaluated (no half report)
        for w in weights:
            values = read_weights(w)
            check_numbers(values, sorted(values), source=w)
            del values
    if not caches:
        raise UserError("no --cache given")
    reader = CacheReader(list(caches))
    cfg = load_user_config(config, overrides)
    try:
        evaluator = CocoEvaluator.for_cache_categories(list(cfg.DATA.CATEGORIES))
    except ValueError as exc:
        raise UserError(f"DATA.CATEGORIES: {exc}") from None
    out = Path(out_dir) if out_dir is not None else default_out_dir(weights, caches)
    check_disjoint(out, caches, "--out", "--cache")
    out.mkdir(parents=True, exist_ok=True)

    names = checkpoint_names(weights)
    stats_by_name, weights_by_name = {}, {}
    for name, path in zip(names, weights):
        if echo:
            echo(f"evaluating {name} ({path}) ...")
        with Predictor(cfg, path) as predictor:
            stats_by_name[name] = run_evaluation(predictor, reader, evaluator, max_datapoints,
                                                 progress=_progress_printer(echo) if echo else None)
        weights_by_name[name] = path
        evaluator.write_results(out / f"detections-{_file_safe(name)}.json")
        if name == names[0]:
            evaluator.write_ground_truth(out / "ground_truth.json")  # identical for every checkpoint
    report = build_report(stats_by_name, weights_by_name)
    report["out_dir"] = str(out)
    report["caches"] = [str(c) for c in caches]
    with open(out / "report.json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    (out / "report.txt").write_text(format_table(report) + "\n", encoding="utf-8")
    return report


@click.command("eval")
@click.option("--config", "config_path", required=True, type=click.Path(), help="Model config (YAML).")
@click.option("--cache", "caches", required=True, multiple=True, type=click.Path(), help="Cache directory (repeatable).")
@click.option("--weights", required=True, multiple=True,
              help="Checkpoint (tensorpack prefix/dir) or .npz; repeat to compare (differences are to the first).")
@click.option("--max-datapoints", type=click.IntRange(1), default=None, help="Evaluate the first N samples only.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the table.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for report.{txt,json}, ground_truth.json, detections-<NAME>.json "
                   "[default: <folder of the first weights>/eval-<cache name>].")
@click.option("--override", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Config override (repeatable; --set is the same).")
def eval_cmd(config_path, caches, weights, max_datapoints, as_json, out_dir, overrides):
    """COCO box AP/AR (maxDets 50/200/600) of one or more checkpoints on a cache, side by side.

    Ground truth: the cache's boxes of the config's DATA.CATEGORIES.
    """
    if out_dir is not None:
        from ddcache.outputs import check_output

        check_output(out_dir, "--out")
    report = evaluate_checkpoints(config_path, caches, weights, max_datapoints, out_dir, overrides,
                                  echo=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        click.echo(format_table(report))
        click.echo(f"report and detections: {report['out_dir']}", err=True)

