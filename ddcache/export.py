"""`ddcache export --format coco`: images + instances.json, so a cache can feed other frameworks and pycocotools."""
import shutil
from pathlib import Path

import cv2
from tqdm import tqdm

from .codec import decode_image
from .coco import CocoBuilder
from .outputs import check_disjoint, check_output
from .store import CacheReader

_EXT = {"png": ".png", "jpeg": ".jpg"}
EXPORT_NAMES = ("images", "instances.json")  # all an export directory holds: all --overwrite may delete


def export_coco(caches, out_dir, category_ids=None, overwrite=False, progress=True):
    """Write ``out_dir/images/*`` and ``out_dir/instances.json``; return (images, annotations).

    Stored PNG/JPEG bytes are written as they are (no re-encoding, no quality
    loss); raw images are encoded as PNG. ``out_dir`` must not overlap a
    cache, and ``overwrite`` replaces only an earlier export (UserError).
    """
    reader = CacheReader(caches)
    out_dir = Path(out_dir)
    check_disjoint(out_dir, caches, "--out", "cache")
    check_output(out_dir, "--out", overwrite=bool(overwrite), owned=(EXPORT_NAMES, "an export (images/ and instances.json)"))
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
        else:
            cv2.imwrite(str(images / name), decode_image(enc))
        builder.add(sample, f"images/{name}")
    coco = builder.to_dict()
    builder.write(out_dir / "instances.json")
    return len(coco["images"]), len(coco["annotations"])
