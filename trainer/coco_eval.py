"""The one COCO box evaluator (``ddtrain eval`` and the periodic evaluation callback).

Interface as in detectron2's evaluators: :meth:`CocoEvaluator.reset`, then
:meth:`CocoEvaluator.process` once per image, then
:meth:`CocoEvaluator.evaluate`. The metric itself is pycocotools' ``COCOeval``
(``iouType="bbox"``); this module only feeds it and reads its arrays.

Setting (FACTS.md §3, the seed authors' evaluation, so numbers are comparable
with their published AP50 0.911 / AP75 0.709 / AR@600 0.657):

* ``maxDets = [50, 200, 600]``: at most that many highest-scoring detections
  per image *and category* are considered.
* area ranges in pixels² of the evaluated image frame, both ends inclusive
  (pycocotools ignores a box when ``area < lo or area > hi``):
  all = [0, 1e6], small = [0, 200], medium = [200, 800], large = [800, 1e6].
  Like the seed, "all" stops at 1e6 px² (a 1000x1000 box): larger boxes are
  ignored gt / ignored detections. Pass ``area_ranges`` to change it.

Why the stats are read from ``eval["precision"]``/``eval["recall"]``
instead of ``COCOeval.summarize()``: summarize() hard-codes maxDets=100 for
some stats (or picks maxDets[2] depending on the version) and prints them;
here every number is taken at the largest maxDets, named explicitly.
"""
import contextlib
import io
import json

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ddcache.categories import ids_for
from ddcache.coco import sample_to_coco

DEFAULT_MAX_DETS = (50, 200, 600)
# (label, lo, hi) in pixels²; labels small/medium/large give APs/APm/APl.
DEFAULT_AREA_RANGES = (
    ("all", 0.0, 1e6),
    ("small", 0.0, 200.0),
    ("medium", 200.0, 800.0),
    ("large", 800.0, 1e6),
)
_AREA_SUFFIX = {"small": "s", "medium": "m", "large": "l"}


@contextlib.contextmanager
def _quiet():
    """pycocotools prints progress on stdout; keep training logs clean."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _mean_valid(values):
    """Mean of the entries > -1 (pycocotools marks 'no gt' with -1); NaN if there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[v > -1]
    return float(v.mean()) if v.size else float("nan")


class CocoEvaluator:
    """COCO bbox AP/AR over a stream of (ground truth, detections) pairs.

    Args:
      category_names: names of the evaluated categories; eval label k
        (1..K) is the k-th name, as in the trainer's ``gt_labels`` and the
        detector's output labels.
      max_dets: detections per image and category kept, ascending after
        sorting; every reported number uses the largest.
      area_ranges: sequence of ``(label, lo, hi)`` px²; must contain "all".
      category_map: optional ``{cache category id: eval label}``. With it, gt
        boxes of other cache categories are dropped and the rest relabelled;
        without it, ``gt_sample["category_ids"]`` must already be eval labels.
    """

    def __init__(self, category_names, max_dets=DEFAULT_MAX_DETS, area_ranges=DEFAULT_AREA_RANGES, category_map=None):
        self.category_names = [str(n) for n in category_names]
        if not self.category_names:
            raise ValueError("no categories to evaluate")
        self.max_dets = sorted(int(m) for m in max_dets)
        self.area_ranges = [(str(lbl), float(lo), float(hi)) for lbl, lo, hi in area_ranges]
        if "all" not in [a[0] for a in self.area_ranges]:
            raise ValueError("area_ranges must contain an 'all' range")
        num = len(self.category_names)
        self.category_map = None
        if category_map is not None:
            self.category_map = {int(k): int(v) for k, v in category_map.items()}
            bad = [v for v in self.category_map.values() if not 1 <= v <= num]
            if bad:
                raise ValueError(f"category_map targets {bad} outside eval labels 1..{num}")
        self.coco_eval = None  # the last COCOeval run, for callers who want the raw arrays
        self.reset()

    @classmethod
    def for_cache_categories(cls, category_names, **kwargs):
        """Evaluator for ddcache category names (e.g. ``["CELL"]``): cache id of the k-th name -> label k."""
        cache_ids = ids_for(category_names)
        return cls(category_names, category_map={cid: k + 1 for k, cid in enumerate(cache_ids)}, **kwargs)

    def reset(self):
        """Forget every processed image."""
        self._images = []
        self._gt = []
        self._results = []
        self._keys = set()

    @property
    def num_images(self):
        return len(self._images)

    def process(self, gt_sample, detections):
        """Add one image.

        Args:
          gt_sample: decoded sample dict (docs/CONTRACTS.md) with ``key``,
            ``boxes`` float [N, 4] xyxy pixels, ``category_ids`` [N].
          detections: ``{"boxes": float [K, 4] xyxy, "scores": [K],
            "labels": int [K] in 1..num categories}`` in the same pixel frame
            as ``gt_sample["boxes"]``.
        Raises ValueError on a repeated ``key`` (an image counted twice would
        skew the metric), on labels outside 1..K, or on mismatched lengths.
        """
        key = gt_sample.get("key")
        if key in self._keys:
            raise ValueError(f"image {key!r} processed twice")
        num = len(self.category_names)
        image_id = len(self._images) + 1
        has_size = gt_sample.get("image") is not None or gt_sample.get("image_encoded") is not None
        image, anns = sample_to_coco(
            gt_sample,
            image_id,
            file_name=str(key),
            category_ids=None if self.category_map is None else list(self.category_map),
            first_annotation_id=len(self._gt) + 1,
            # the metric does not use the size; 0 marks "unknown" when no image came along
            image_size=None if has_size else (0, 0),
        )
        image.pop("ddcache_provenance", None)  # not needed for the metric; saves memory on large val sets
        for ann in anns:
            ann.pop("attributes", None)
            if self.category_map is not None:
                ann["category_id"] = self.category_map[ann["category_id"]]
            elif not 1 <= ann["category_id"] <= num:
                raise ValueError(
                    f"gt label {ann['category_id']} of {key!r} outside 1..{num}: restrict/map the sample "
                    "or pass category_map"
                )

        boxes = np.asarray(detections.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(detections.get("scores", np.zeros(0)), dtype=np.float64).reshape(-1)
        labels = np.asarray(detections.get("labels", np.zeros(0)), dtype=np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"detections of {key!r}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
        if len(labels) and (labels.min() < 1 or labels.max() > num):
            raise ValueError(f"detection labels of {key!r} outside 1..{num}")

        self._keys.add(key)
        self._images.append(image)
        self._gt.extend(anns)
        for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels):
            self._results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "score": float(score),
                }
            )

    @property
    def results(self):
        """COCO results list so far: ``{"image_id", "category_id", "bbox" [x, y, w, h] px, "score"}``."""
        return list(self._results)

    def ground_truth(self):
        """The processed ground truth as a COCO dataset dict (image ids 1..n in process order)."""
        return {
            "info": {"description": "ddcache evaluation ground truth"},
            "images": list(self._images),
            "annotations": list(self._gt),
            "categories": [
                {"id": k + 1, "name": name, "supercategory": "table"} for k, name in enumerate(self.category_names)
            ],
        }

    def write_results(self, path):
        """Write :attr:`results` as a COCO results JSON (loadable with ``COCO.loadRes``)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self._results, f)

    def write_ground_truth(self, path):
        """Write :meth:`ground_truth` as JSON: with :meth:`write_results` it lets anyone re-run COCOeval."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.ground_truth(), f)

    def _run_cocoeval(self):
        with _quiet():
            gt = COCO()
            gt.dataset = self.ground_truth()
            gt.createIndex()
            if self._results:
                # loadRes adds area/id/iscrowd to the dicts it gets: hand it copies
                dt = gt.loadRes([dict(r) for r in self._results])
            else:
                # loadRes indexes results[0] and fails on an empty list; an empty result set is valid
                dt = COCO()
                dt.dataset = {"images": list(self._images), "annotations": [], "categories": gt.dataset["categories"]}
                dt.createIndex()
            ev = COCOeval(gt, dt, iouType="bbox")
            ev.params.imgIds = [im["id"] for im in self._images]
            ev.params.catIds = list(range(1, len(self.category_names) + 1))
            ev.params.maxDets = list(self.max_dets)
            ev.params.areaRng = [[lo, hi] for _, lo, hi in self.area_ranges]
            ev.params.areaRngLbl = [lbl for lbl, _, _ in self.area_ranges]
            ev.evaluate()
            ev.accumulate()
        return ev

    def evaluate(self):
        """Run COCOeval on everything processed since :meth:`reset`.

        Returns a dict of floats in [0, 1] (NaN when undefined: no gt in scope):

        * ``AP``: precision averaged over the 101 recall points, IoU
          0.50:0.05:0.95 and all categories with gt; area "all",
          maxDets = max(max_dets) (600 by default).
        * ``AP50`` / ``AP75``: the same at IoU 0.50 / 0.75 only.
        * ``APs`` / ``APm`` / ``APl``: AP restricted to the small / medium /
          large area range (other range labels give ``AP_<label>``).
        * ``AR``: recall averaged over IoU 0.50:0.95 and categories, area
          "all", maxDets = max (the seed's "AR@600").
        * ``AR50`` / ``AR75``: recall at IoU 0.50 / 0.75, maxDets = max.
        * ``AR@<m>`` for every m in max_dets: AR with at most m detections.
        * ``ARs`` / ``ARm`` / ``ARl``: AR per area range, maxDets = max.
        * ``per_category``: ``{name: {"AP", "AP50", "AP75", "AR", "num_gt"}}``
          (area "all", maxDets = max). A category without gt has NaN AP/AR
          and ``num_gt`` 0; the overall means skip it (pycocotools' rule).
          ``num_gt`` counts the gt boxes given, including any outside the
          "all" range (which the metric ignores).
        * ``num_images``, ``num_detections``.

        No detections at all is valid: AP = AR = 0 for categories with gt.
        Raises ValueError if no image was processed.
        """
        if not self._images:
            raise ValueError("evaluate() before any process(): nothing to evaluate")
        ev = self._run_cocoeval()
        self.coco_eval = ev
        precision = ev.eval["precision"]  # [T iou, R recall, K cat, A area, M maxDets]
        recall = ev.eval["recall"]  # [T, K, A, M]
        iou = np.asarray(ev.params.iouThrs)
        t50 = int(np.argmin(np.abs(iou - 0.5)))
        t75 = int(np.argmin(np.abs(iou - 0.75)))
        labels = list(ev.params.areaRngLbl)
        a_all = labels.index("all")
        m = len(ev.params.maxDets) - 1  # the largest maxDets (params.maxDets is sorted)

        stats = {
            "AP": _mean_valid(precision[:, :, :, a_all, m]),
            "AP50": _mean_valid(precision[t50, :, :, a_all, m]),
            "AP75": _mean_valid(precision[t75, :, :, a_all, m]),
        }
        for a, lbl in enumerate(labels):
            if lbl != "all":
                name = _AREA_SUFFIX.get(lbl, "_" + lbl)
                stats["AP" + name] = _mean_valid(precision[:, :, :, a, m])
        stats["AR"] = _mean_valid(recall[:, :, a_all, m])
        stats["AR50"] = _mean_valid(recall[t50, :, a_all, m])
        stats["AR75"] = _mean_valid(recall[t75, :, a_all, m])
        for mi, max_det in enumerate(ev.params.maxDets):
            stats[f"AR@{max_det}"] = _mean_valid(recall[:, :, a_all, mi])
        for a, lbl in enumerate(labels):
            if lbl != "all":
                stats["AR" + _AREA_SUFFIX.get(lbl, "_" + lbl)] = _mean_valid(recall[:, :, a, m])

        num_gt = np.bincount([a["category_id"] for a in self._gt], minlength=len(self.category_names) + 1)
        per_category = {}
        for k, name in enumerate(self.category_names):
            per_category[name] = {
                "AP": _mean_valid(precision[:, :, k, a_all, m]),
                "AP50": _mean_valid(precision[t50, :, k, a_all, m]),
                "AP75": _mean_valid(precision[t75, :, k, a_all, m]),
                "AR": _mean_valid(recall[:, k, a_all, m]),
                "num_gt": int(num_gt[k + 1]),
            }
        stats["per_category"] = per_category
        stats["num_images"] = len(self._images)
        stats["num_detections"] = len(self._results)
        return stats


def format_stats(stats):
    """One log line per number of :meth:`CocoEvaluator.evaluate`'s dict (for the trainer's logs)."""
    lines = [f"COCO bbox on {stats['num_images']} images, {stats['num_detections']} detections"]
    for name, value in stats.items():
        if isinstance(value, float):
            lines.append(f"  {name:<8} {value:.4f}")
    for cat, values in stats["per_category"].items():
        lines.append(
            f"  {cat}: AP {values['AP']:.4f} AP50 {values['AP50']:.4f} AP75 {values['AP75']:.4f} "
            f"AR {values['AR']:.4f} (gt {values['num_gt']})"
        )
    return "\n".join(lines)
