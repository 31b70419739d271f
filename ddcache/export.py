"""`ddcache export --format coco`: images + instances.json, so a cache can feed other frameworks and pycocotools."""
import json
import re
import shutil
from pathlib import Path

import cv2
from tqdm import tqdm

from .codec import decode_image
from .coco import CocoBuilder
from .errors import CorruptRecordError
from .outputs import check_disjoint, check_output
from .store import CacheReader

_EXT = {"png": ".png", "jpeg": ".jpg"}
EXPORT_NAMES = ("images", "instances.json")  # all an export directory holds: all --overwrite may delete
_IMAGE_NAME = re.compile(r"\d{8}\.(png|jpg)")  # what export_coco names the images it writes
_INFO = "ddcache export"  # CocoBuilder's info.description


def is_ddcache_export(out_dir):
    """True if ``out_dir`` (holding only EXPORT_NAMES) was written by :func:`export_coco`: its ``instances.json``
    says ``"description": "ddcache export"``, or (an export killed before writing it) ``images/`` holds only
    files named as export_coco names them. A COCO dataset of someone else's has the same two names."""
    out_dir = Path(out_dir)
    instances = out_dir / "instances.json"
    if instances.exists():
        try:
            info = json.loads(instances.read_text(encoding="utf-8")).get("info", {})
        except (OSError, ValueError, RecursionError, AttributeError):
            return False
        return isinstance(info, dict) and info.get("description") == _INFO
    images = out_dir / "images"
    try:
        return images.is_dir() and not images.is_symlink() and all(
            _IMAGE_NAME.fullmatch(e.name) and not e.is_symlink() and e.is_file() for e in images.iterdir())
    except OSError:
        return False


def export_coco(caches, out_dir, category_ids=None, overwrite=False, progress=True):
    """Write ``out_dir/images/*`` and ``out_dir/instances.json``; return (images, annotations).

    Stored PNG/JPEG bytes are written as they are (no re-encoding, no quality
    loss); raw images are encoded as PNG. ``out_dir`` must not overlap a
    cache, and ``overwrite`` replaces only an earlier export (UserError).
    """
    reader = CacheReader(caches)
    out_dir = Path(out_dir)
    check_disjoint(out_dir, caches, "--out", "cache")
    check_output(out_dir, "--out", overwrite=bool(overwrite), owned=(EXPORT_NAMES, "an export (images/ and instances.json)", is_ddcache_export))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    images = out_dir / "images"
    images.mkdir(parents=True)
    builder = CocoBuilder(category_ids=category_ids)
    for i in tqdm(range(len(reader)), desc="export", unit="img", disable=not progress):
        sample = reader.get(i, with_image=False)  # record schema checked, image header included
        enc = sample["image_encoded"]
        name = f"{i:08d}{_EXT.get(enc['enc'], '.png')}"
        if enc["enc"] in _EXT:
            (images / name).write_bytes(enc["data"])
        else:  # cv2.imwrite only returns False on a failed write (a full disk): encode here, write with Python
            ok, png = cv2.imencode(".png", decode_image(enc))
            if not ok:
                raise CorruptRecordError(f"{i:08d}", "image does not encode as PNG")
            (images / name).write_bytes(png.tobytes())
        builder.add(sample, f"images/{name}")
    coco = builder.to_dict()
    try:
        builder.write(out_dir / "instances.json")
    except BaseException:  # e.g. a full disk: no half-written instances.json, so --overwrite still knows the export
        (out_dir / "instances.json").unlink(missing_ok=True)
        raise
    return len(coco["images"]), len(coco["annotations"])
