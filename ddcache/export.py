"""`ddcache export --format coco`: images + instances.json, so a cache can feed other frameworks and pycocotools."""
import shutil
from pathlib import Path

import cv2
from tqdm import tqdm

from .codec import decode_image
from .coco import CocoBuilder
from .errors import UserError
from .store import CacheReader

_EXT = {"png": ".png", "jpeg": ".jpg"}


def export_coco(caches, out_dir, category_ids=None, overwrite=False, progress=True):
    """Write ``out_dir/images/*`` and ``out_dir/instances.json``; return (images, annotations).

    Stored PNG/JPEG bytes are written as they are (no re-encoding, no quality
    loss); raw images are encoded as PNG.
    """
    reader = CacheReader(caches)
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not overwrite:
            raise UserError(f"{out_dir} already exists (use --overwrite to replace it)")
        shutil.rmtree(out_dir)
    images = out_dir / "images"
    images.mkdir(parents=True)
    builder = CocoBuilder(category_ids=category_ids)
    n_ann = 0
    for i in tqdm(range(len(reader)), desc="export", unit="img", disable=not progress):
        sample = reader.get(i, with_image=False)
        enc = sample["image_encoded"]
        name = f"{i:08d}{_EXT.get(enc['enc'], '.png')}"
        if enc["enc"] in _EXT:
            (images / name).write_bytes(enc["data"])
        else:
            cv2.imwrite(str(images / name), decode_image(enc))
        builder.add(sample, f"images/{name}")
    coco = builder.to_dict()
    n_ann = len(coco["annotations"])
    builder.write(out_dir / "instances.json")
    return len(coco["images"]), n_ann
