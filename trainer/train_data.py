"""Decoded cache samples -> trainer datapoints (docs/CONTRACTS.md), and the training dataflow around it.

The training dataflow is the read path of ``ddcache.dataflows`` with one more
map step: ``CacheSource`` (read + checksum, this rank's share, in the
training process) -> map workers running ``RecordDecoder`` then
:class:`TrainingMapper` -> the consumer, which expands the compact output
(:func:`expand_compact`). ``ddcache bench --config CFG`` measures exactly
:func:`build_train_dataflow`.

Config keys read (attribute access, e.g. ``cfg.PREPROC.MAX_SIZE``):

- ``PREPROC.TRAIN_SHORT_EDGE_SIZE`` [lo, hi] px, ``PREPROC.MAX_SIZE`` px,
  ``PREPROC.SHORT_EDGE_SIZE`` px (evaluation);
- ``FPN.ANCHOR_STRIDES``, ``FPN.RESOLUTION_REQUIREMENT``;
- ``RPN.ANCHOR_SIZES``, ``RPN.ANCHOR_RATIOS``, ``RPN.POSITIVE_ANCHOR_THRESH``,
  ``RPN.NEGATIVE_ANCHOR_THRESH``, ``RPN.BATCH_PER_IM``, ``RPN.FG_RATIO``
  (``RPN.CROWD_OVERLAP_THRESH`` is not used: caches have no crowd boxes);
- ``DATA.CATEGORIES``: category names trained, label k = k-th name;
- ``TRAIN.SEED``: default seed of :func:`build_train_dataflow`.

Datapoint (list, in this order): image uint8 ``[H, W, 3]`` BGR
(resized, maybe flipped, unpadded); per level 2..6 ``anchor_labels_lvl{l}``
int32 ``[fh, fw, A]`` then ``anchor_boxes_lvl{l}`` float32 ``[fh, fw, A, 4]``;
``gt_boxes`` float32 ``[N, 4]`` xyxy pixels of the resized image;
``gt_labels`` int64 ``[N]`` in 1..K.

Seeding: a mapper's RandomState is created lazily in the process that uses
it, from ``(seed, worker index)`` (:func:`map_worker_index`: 0 in the process
that built the dataflow, 1 + k in map worker k), so forked workers draw
different augmentations and a run repeats with the same seed (never seeded
by pid). For an explicit stream pass your own RandomState to :meth:`TrainingMapper.map`.

Worker processes receive the small encoded records and send a compact form
(uint8 image, the kept anchors' indices and boxes) that the consuming process
expands (:func:`expand_compact`): shipping the dense ~25 MB datapoint instead
costs ~50% more per datapoint (``benchmarks/anchor_matching.py``).
"""
import os
import time

import numpy as np

from ddcache import categories
from trainer import preprocessing
from trainer.config import max_image_side
from trainer.anchor_targets import AnchorGrids, RPNTargetParams, dense_level_targets, rpn_targets, sparse_rpn_targets


def datapoint_names(num_levels=5):
    """Input names in datapoint order (levels numbered from 2)."""
    names = ["image"]
    for lvl in range(2, 2 + num_levels):
        names += [f"anchor_labels_lvl{lvl}", f"anchor_boxes_lvl{lvl}"]
    return names + ["gt_boxes", "gt_labels"]


def category_labels(category_ids, cfg):
    """Training labels int64 ``[N]`` for cache category ids ``[N]`` (``ddcache.categories``).

    Label k (1..K) is the k-th name of ``cfg.DATA.CATEGORIES``; boxes of any
    other category get 0, meaning "drop this box" (0 is background, never a
    gt label). Raises ValueError for an unknown category name.
    """
    return _label_lookup(categories.ids_for(cfg.DATA.CATEGORIES))(category_ids)


def _label_lookup(train_ids):
    """Callable mapping cache ids -> labels (see :func:`category_labels`) for the ordered ``train_ids``."""
    table = np.zeros(max(list(categories.NAMES) + list(train_ids)) + 1, dtype=np.int64)
    for k, cid in enumerate(train_ids, start=1):
        table[cid] = k

    def lookup(category_ids):
        ids = np.asarray(category_ids, dtype=np.int64).reshape(-1)
        known = (ids >= 0) & (ids < len(table))
        out = np.zeros(len(ids), dtype=np.int64)
        out[known] = table[ids[known]]
        return out

    return lookup


def map_worker_index():
    """0 in a process that is not a map worker; 1 + k in tensorpack ZMQ map worker k.

    tensorpack names its map workers' processes by ZMQ identity ``b'0'``,
    ``b'1'``, ... (``MultiProcessMapDataZMQ._Worker.identity``), which the
    forked worker sees as its ``multiprocessing.current_process()``.
    """
    import multiprocessing as mp

    identity = getattr(mp.current_process(), "identity", None)
    if isinstance(identity, bytes) and identity.isdigit():
        return 1 + int(identity)
    return 0


class TrainingMapper:
    """Picklable callable: decoded sample dict -> datapoint list (module docstring), or None.

    None (the sample has no box of a trained category left after clipping)
    means no datapoint (``ddcache.dataflows`` counts it as dropped). With
    ``compact=True`` a call returns the compact form of :func:`expand_compact`.
    """

    def __init__(self, cfg, seed=0, compact=False):
        self.seed = int(seed)
        self.compact = bool(compact)
        # [lo, hi] range; a single size (scalar or [s]) means a fixed short edge
        self.short_edge_range = tuple(int(v) for v in np.atleast_1d(cfg.PREPROC.TRAIN_SHORT_EDGE_SIZE))
        self.max_size = max_image_side(cfg)
        self.train_ids = tuple(categories.ids_for(cfg.DATA.CATEGORIES))
        self.params = RPNTargetParams.from_cfg(cfg)
        self._reset()

    def _reset(self):
        self._rng = None
        self._pid = None
        self._grids = None
        self._lookup = None

    def __getstate__(self):
        # Per-process state (RNG, anchor cache) is rebuilt where the mapper runs.
        state = self.__dict__.copy()
        for k in ("_rng", "_pid", "_grids", "_lookup"):
            state[k] = None
        return state

    def setup(self):
        """Create this process's state (RandomState from (seed, worker index), anchor grids) unless it exists;
        idempotent. A forked copy (another pid) gets its own."""
        pid = os.getpid()
        if self._pid != pid:
            self._rng = np.random.RandomState([self.seed & 0xFFFFFFFF, map_worker_index()])
            self._pid = pid
        if self._grids is None:
            self._grids = AnchorGrids(self.params, self.max_size)
            self._grids.levels(self.max_size, self.max_size)  # build the anchors once, before the first sample
            self._lookup = _label_lookup(self.train_ids)

    def __call__(self, sample):
        """Map a decoded sample dict (``ddcache.decoding.RecordDecoder``) with this process's RandomState."""
        self.setup()
        if self.compact:
            return self.map_compact(sample, self._rng)
        return self.map(sample, self._rng)

    def _prepare(self, sample, rng, timings):
        """Category filter, clip, random resize + flip: (image uint8, gt_boxes float32 [N, 4], gt_labels int64 [N]) or None."""
        if self._grids is None:
            self.setup()
        t0 = time.perf_counter()
        labels = self._lookup(sample["category_ids"])
        image = sample["image"]
        boxes = np.asarray(sample["boxes"], dtype=np.float32).reshape(-1, 4)
        boxes, keep = preprocessing.clean_boxes(boxes, image.shape[0], image.shape[1])
        keep &= labels > 0
        if not keep.any():
            return None
        boxes, labels = boxes[keep], labels[keep]
        image, boxes, _ = preprocessing.random_resize(image, boxes, self.short_edge_range, self.max_size, rng)
        image, boxes, _ = preprocessing.random_flip(image, boxes, rng)
        # Rounding to whole pixels can push a scaled edge past the resized border, or
        # make a sub-pixel box empty.
        boxes, keep = preprocessing.clean_boxes(boxes, image.shape[0], image.shape[1])
        if not keep.any():
            return None
        if timings is not None:
            timings["resize_flip"] = timings.get("resize_flip", 0.0) + (time.perf_counter() - t0)
        return image, boxes[keep], labels[keep]

    def map(self, sample, rng, timings=None):
        """Map one decoded sample with an explicit RandomState: datapoint list (module docstring) or None.

        ``timings``: optional dict; seconds are added under ``"resize_flip"``,
        ``"matching"``, ``"sampling"``.
        """
        prepared = self._prepare(sample, rng, timings)
        if prepared is None:
            return None
        image, boxes, labels = prepared
        dp = [image]
        for lvl_labels, lvl_boxes in rpn_targets(image.shape[:2], boxes, self._grids, rng, timings):
            dp += [lvl_labels, lvl_boxes]
        return dp + [boxes, labels]

    def map_compact(self, sample, rng):
        """Like :meth:`map` but returns the compact form :func:`expand_compact` turns into the datapoint.

        Same random draws as :meth:`map`, so ``expand_compact(map_compact(s, rng_a)) == map(s, rng_b)``
        for equally seeded RandomStates.
        """
        prepared = self._prepare(sample, rng, None)
        if prepared is None:
            return None
        image, boxes, labels = prepared
        fg, fg_boxes, bg, shapes = sparse_rpn_targets(image.shape[:2], boxes, self._grids, rng)
        return [image, fg.astype(np.int32), fg_boxes, bg.astype(np.int32), np.asarray(shapes, np.int64), boxes, labels]


def expand_compact(compact):
    """Compact mapper output -> datapoint list (module docstring).

    The compact form (the kept fg and bg anchor indices, fg boxes) is much
    smaller than the dense per-level targets (mostly zero boxes: ~18 MB for a
    1200x1400 image), so worker processes send that over ZMQ and the
    consumer expands it.
    """
    image, fg, fg_boxes, bg, shapes, boxes, labels = compact
    dp = [image]
    for lvl_labels, lvl_boxes in dense_level_targets(fg, fg_boxes, bg, [tuple(s) for s in shapes]):
        dp += [lvl_labels, lvl_boxes]
    return dp + [boxes, labels]


def build_train_dataflow(source, cfg, num_workers=0, seed=None):
    """The training DataFlow over ``source`` (a ``ddcache.source.CacheSource``): one epoch of datapoints per ``__iter__``.

    ``ddcache.dataflows.map_records(source, [RecordDecoder, TrainingMapper])``:
    the decoder keeps the boxes of ``cfg.DATA.CATEGORIES`` (attributes and
    provenance are not needed); ``num_workers == 0`` decodes and maps in the
    calling process, ``num_workers >= 1`` in that many map workers, which
    send the compact form that the consumer expands (:func:`expand_compact`).
    A record that does not decode raises ``CorruptRecordError`` naming its
    key in the consumer. Records without a box of a trained category give no
    datapoint (counted in the returned stream's ``dropped``). ``seed``
    (default ``cfg.TRAIN.SEED``) seeds the mappers' RandomStates together
    with the worker index. The buffer holds 2 records per worker (at least 4): a
    compact 1408x1000 datapoint is ~5 MB (~25 MB expanded), so tensorpack's
    default of 200 would hold gigabytes, while 2 per worker already hides a
    worker's jitter. Wrap in ``RepeatedData(df, -1)`` for an endless stream.
    """
    from ddcache.dataflows import map_records
    from ddcache.decoding import RecordDecoder

    if seed is None:
        seed = int(getattr(getattr(cfg, "TRAIN", None), "SEED", 0))
    decoder = RecordDecoder(list(cfg.DATA.CATEGORIES), with_attributes=False, with_provenance=False)
    if num_workers <= 0:
        return map_records(source, [decoder, TrainingMapper(cfg, seed)])
    # Workers ship the compact form (uint8 image, sparse targets): pickling and copying the
    # dense float32 datapoint through ZMQ costs more than building it here.
    return map_records(source, [decoder, TrainingMapper(cfg, seed, compact=True)], workers=num_workers,
                       then=expand_compact, buffer_size=max(4, 2 * num_workers))


def eval_preprocess(sample, cfg):
    """Evaluation input: (image uint8 ``[h, w, 3]`` BGR resized to ``PREPROC.SHORT_EDGE_SIZE`` capped at
    ``PREPROC.MAX_SIZE``, scale float32 [2] = (sx, sy)); original pixel = predicted / scale."""
    image, scale = preprocessing.eval_resize(sample["image"], int(cfg.PREPROC.SHORT_EDGE_SIZE), max_image_side(cfg))
    return _as_uint8(image), scale


def _as_uint8(image):
    """uint8 as it is; a float image (0..255) rounded and clipped, as the graph's uint8 input wants."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def profile_stages(samples, cfg, seed=0):
    """Seconds spent per stage over ``samples`` (decoded sample dicts), mapped in this process.

    Returns {"resize_flip", "matching", "sampling", "total", "samples", "skipped"}:
    stage sums in seconds, and counts of mapped / None samples.
    """
    mapper = TrainingMapper(cfg, seed)
    mapper.setup()  # per-process state (anchor grids) is a one-off, not a per-sample cost
    rng = np.random.RandomState(seed)
    timings = {"resize_flip": 0.0, "matching": 0.0, "sampling": 0.0}
    n = skipped = 0
    t0 = time.perf_counter()
    for sample in samples:
        n += 1
        if mapper.map(sample, rng, timings) is None:
            skipped += 1
    timings["total"] = time.perf_counter() - t0
    timings["samples"] = n
    timings["skipped"] = skipped
    return timings
