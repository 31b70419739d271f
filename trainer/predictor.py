"""Inference on single images: the ``Predictor`` API and ``ddtrain predict``.

Coordinates: callers give an image in its own pixels (uint8 or float BGR,
H x W x 3) and get boxes back in those pixels, xyxy, origin top-left. In
between the image is resized exactly as evaluation does
(``trainer.train_data.eval_preprocess``: short edge ``PREPROC.SHORT_EDGE_SIZE``,
long edge capped at ``PREPROC.MAX_SIZE``) and the graph's boxes, which are in
resized-image pixels, are divided by one scale ``sqrt(sx * sy)`` (the reference's mapping). :func:`detect_in_original_frame`
is the one place doing this, for the offline ``Predictor`` here and for the
training callback's online predictor (through ``trainer.evaluate.run_evaluation``).

Weights are loaded strictly: every variable of the inference graph must be in
the weights file with the same shape (see ``trainer.inference_export``), so a
config that does not match its checkpoint fails loudly instead of predicting
with random layers.
"""
import json
from pathlib import Path

import click
import numpy as np

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from ddcache.errors import UserError
from ddcache.outputs import check_output
from trainer.config import load_user_config

OUTPUT_NAMES = ("output/boxes", "output/scores", "output/labels")


def detect_in_original_frame(graph_fn, image_bgr, cfg):
    """Run a graph-level detector on an image of any size; boxes come back in that image's pixels.

    Args:
      graph_fn: callable ``image uint8 [h, w, 3] BGR (already resized) ->
        (boxes [K, 4] xyxy in the resized image's pixels, scores [K], labels [K]
        in 1..len(DATA.CATEGORIES))`` -- e.g. an OfflinePredictor/OnlinePredictor
        whose single input is ``image``.
      image_bgr: uint8 or float [H, W, 3] BGR, original pixels.
      cfg: the model's Config (PREPROC sizes).
    Returns ``(boxes float32 [K, 4] xyxy original pixels clipped to the image,
    scores float32 [K], labels int32 [K])``.
    """
    from trainer.train_data import eval_preprocess

    image_bgr = np.asarray(image_bgr)
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 BGR image, got shape {image_bgr.shape}")
    resized, _ = eval_preprocess({"image": image_bgr}, cfg)
    boxes, scores, labels = graph_fn(resized)
    # One scale for both axes, sqrt(sy * sx), as the reference maps boxes back (the two differ only by the
    # rounding of the resized sides: well under a pixel).
    h, w = image_bgr.shape[:2]
    scale = np.sqrt(resized.shape[0] * 1.0 / h * resized.shape[1] / w)
    boxes = (np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / scale).astype(np.float32)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)  # rounding in the resize can push a box edge past the border
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
    return boxes, np.asarray(scores, dtype=np.float32).reshape(-1), np.asarray(labels, dtype=np.int32).reshape(-1)


def _strict_session_init(weights, source):
    """A tensorpack SessionInit that fills every graph variable from ``weights`` or raises UserError.

    (tensorpack's DictRestore only warns about variables it cannot fill, and
    logs every variable name it restores.)
    """
    import tensorflow as tf
    from tensorpack.tfutils.sessinit import SessionInit
    from tensorpack.tfutils.varmanip import SessionUpdate

    from trainer.weights import check_weights_match

    class _StrictRestore(SessionInit):
        def _run_init(self, sess):
            variables = tf.compat.v1.global_variables()
            check_weights_match(weights, {v.op.name: tuple(v.shape.as_list()) for v in variables}, source=source)
            SessionUpdate(sess, variables).update({v.name: weights[v.op.name] for v in variables})

    return _StrictRestore()


class Predictor:
    """Cascade R-CNN inference on one image at a time (CPU or GPU, NHWC/NCHW as the machine prefers).

    Args:
      config: a config path (``configs/cell.yaml``) or a loaded ``Config``.
      weights: ``.npz`` (``ddtrain export``) or tensorpack checkpoint
        (prefix, its ``.index``, or a directory with a ``checkpoint`` file).
      overrides: ``KEY=VALUE`` config overrides when ``config`` is a path.

    Each Predictor owns its own TensorFlow graph and session, so several can
    coexist (``ddtrain eval`` with many checkpoints builds one after another).
    """

    def __init__(self, config, weights, overrides=()):
        from tensorpack.predict import OfflinePredictor, PredictConfig

        from trainer.weights import read_weights
        from trainer.model.detector import CascadeRCNN, default_data_format

        self.cfg = load_user_config(config, overrides)
        self.weights_path = str(weights)
        self.category_names = [str(n) for n in self.cfg.DATA.CATEGORIES]
        values = read_weights(weights)
        pred_cfg = PredictConfig(
            model=CascadeRCNN(self.cfg, default_data_format()),
            session_init=_strict_session_init(values, str(weights)),
            input_names=["image"],
            output_names=list(OUTPUT_NAMES),
        )
        self._offline = OfflinePredictor(pred_cfg)

    def close(self):
        """Release the TensorFlow session (memory of the graph and weights)."""
        self._offline.sess.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def graph_fn(self, image):
        """The raw graph: resized uint8 image -> (boxes in its pixels, scores, labels)."""
        boxes, scores, labels = self._offline(image)
        return boxes, scores, labels

    def __call__(self, image_bgr):
        """``(boxes, scores, labels)`` in the image's own pixels: the ``predict_fn`` of ``run_evaluation``."""
        return detect_in_original_frame(self.graph_fn, image_bgr, self.cfg)

    def predict(self, image_bgr, score_thresh=None):
        """Detections on one image.

        Input: uint8/float ``[H, W, 3]`` BGR. Output dict: ``boxes`` float32
        [K, 4] xyxy in the image's pixels, ``scores`` float32 [K] (sorted
        descending), ``labels`` int32 [K] in 1..len(DATA.CATEGORIES),
        ``label_names`` list of K category names. ``score_thresh`` drops
        detections scoring below it (on top of the config's
        ``OUTPUT.RESULT_SCORE_THRESH`` applied in the graph).
        """
        boxes, scores, labels = self(image_bgr)
        keep = np.ones(len(scores), dtype=bool) if score_thresh is None else scores >= score_thresh
        order = np.argsort(-scores[keep], kind="stable")
        boxes, scores, labels = boxes[keep][order], scores[keep][order], labels[keep][order]
        return {
            "boxes": boxes,
            "scores": scores,
            "labels": labels,
            "label_names": [self.category_names[int(k) - 1] for k in labels],
        }


def draw_detections(image_bgr, detections, out_path, title="", dpi=100):
    """PNG of the image with one outline per detection, coloured by category, and a legend with counts.

    Drawn by ddcache.draw (the look of ``ddcache show``); returns {label name: count}.
    """
    from ddcache.categories import IDS, NAMES
    from ddcache.draw import draw_boxes

    ids = [IDS.get(str(name).upper(), -1) for name in detections["label_names"]]
    counts = draw_boxes(image_bgr, detections["boxes"], ids, out_path, title=title, dpi=dpi)
    return {NAMES.get(cid, str(cid)): n for cid, n in counts.items()}


def detections_to_json(detections, image_path, width, height, score_thresh):
    """The JSON record of one image's detections (boxes xyxy in the image's pixels)."""
    return {
        "image": str(image_path),
        "width": int(width),
        "height": int(height),
        "score_thresh": score_thresh,
        "boxes": [[round(float(v), 2) for v in box] for box in detections["boxes"]],
        "scores": [round(float(s), 5) for s in detections["scores"]],
        "labels": list(detections["label_names"]),
    }


def _unique_stems(paths):
    """Output stems per input image; images with the same name from different folders get ``-2``, ``-3``."""
    seen, out = {}, []
    for p in paths:
        stem = Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return out


@click.command("predict")
@click.option("--config", "config_path", required=True, type=click.Path(), help="Model config (YAML).")
@click.option("--weights", required=True, help="Checkpoint (tensorpack prefix/dir) or exported .npz.")
@click.option("--image", "images", required=True, multiple=True, type=click.Path(), help="Image file (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for the PNGs and JSONs.")
@click.option("--score-thresh", type=click.FloatRange(0, 1), default=None,
              help="Keep detections scoring at least this (may be below the config's OUTPUT.RESULT_SCORE_THRESH, "
                   "the default).")
@click.option("--override", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Config override (repeatable; --set is the same).")
def predict(config_path, weights, images, out, score_thresh, overrides):
    """Detect on images; write <name>.detections.png (drawn) and <name>.detections.json per image.

    JSON: {"image", "width", "height", "score_thresh", "boxes": [[x0,y0,x1,y1] px of the
    original image], "scores", "labels": [category names]}.
    """
    from trainer.weights import resolve_weights

    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise UserError(f"{missing[0]}: no such image")
    out_dir = check_output(out, "--out")
    for path in images:
        _check_image_size(path)
    resolve_weights(weights)  # a missing weights file is reported before TensorFlow builds anything
    overrides = tuple(overrides)
    if score_thresh is not None and score_thresh < load_user_config(config_path, overrides).OUTPUT.RESULT_SCORE_THRESH:
        # the graph drops detections below its own threshold: lower it so --score-thresh can show them
        overrides += (f"OUTPUT.RESULT_SCORE_THRESH={float(score_thresh)!r}",)
    predictor = Predictor(config_path, weights, overrides)
    created = not out_dir.exists()
    out_dir.mkdir(exist_ok=True)
    try:
        _predict_images(predictor, images, out_dir, score_thresh, weights)
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a failed run leaves no empty folder behind
        raise


def _check_image_size(path):
    """UserError unless ``path`` is a PNG / JPEG whose header declares at most ``MAX_IMAGE_PIXELS`` pixels (the
    record limit: what a cache can hold, the model is trained on).

    Read from the header before anything is decoded: a few KB of PNG can
    declare 30000 x 30000 pixels (2.7 GB decoded, more inside the model).
    """
    from ddcache.image_header import HeaderError, file_image_size
    from ddcache.schema import MAX_IMAGE_PIXELS

    try:
        h, w = file_image_size(path)
    except (OSError, HeaderError) as exc:
        raise UserError(f"{path}: not an image (a PNG or JPEG expected: {exc})") from None
    if h * w > MAX_IMAGE_PIXELS:
        raise UserError(f"{path}: {w}x{h} pixels, more than the limit of {MAX_IMAGE_PIXELS}")


def _predict_images(predictor, images, out_dir, score_thresh, weights):
    import cv2

    for path, stem in zip(images, _unique_stems(images)):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise UserError(f"{path}: not an image OpenCV can read")
        det = predictor.predict(image, score_thresh=score_thresh)
        h, w = image.shape[:2]
        png, js = out_dir / f"{stem}.detections.png", out_dir / f"{stem}.detections.json"
        title = f"{Path(path).name}  {len(det['scores'])} detections  {w}x{h}px  weights {Path(str(weights)).name}"
        draw_detections(image, det, png, title=title)
        with open(js, "w", encoding="utf-8") as f:
            json.dump(detections_to_json(det, path, w, h, score_thresh), f, indent=1)
        click.echo(f"{path}: {len(det['scores'])} detections -> {png}, {js}")
