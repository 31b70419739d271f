"""The seed's way, for comparison: render every full page, crop each table, keep float32 crops in a list.

Run as a script so its peak RSS can be measured on its own:
``python benchmarks/inmemory_baseline.py SOURCE SPLIT N DPI`` prints JSON with
tables/s and the number of bytes held.
"""
import argparse
import json
import time

import numpy as np


def load_all(source, split, limit, dpi=200):
    """Render + crop up to ``limit`` tables into a list of float32 arrays (what the seed trainer holds)."""
    from ddcache.datasets import get_reader
    from ddcache.datasets.base import ReadOptions, SkipSample
    from ddcache.geometry import clip, shift

    reader = get_reader("fintabnet")
    scale = dpi / 72.0
    data = []
    for line in reader.annotation_lines(source, split, ReadOptions()):
        if len(data) >= limit:
            break
        try:
            ann = reader.parse(line, ReadOptions())
            page = reader.open_page(source, ann)
        except SkipSample:
            continue
        w, h = page.size_px(scale)
        full = page.render(scale, (0, 0, w, h))  # the whole page, as the seed does
        tb = page.to_pixels(ann.table_bbox, scale)[0]
        x0, y0, x1, y1 = int(tb[0]), int(tb[1]), int(np.ceil(tb[2])), int(np.ceil(tb[3]))
        crop = full[y0:y1, x0:x1].astype(np.float32)
        boxes = clip(shift(page.to_pixels([c.bbox for c in ann.boxed_cells], scale), -x0, -y0), x1 - x0, y1 - y0)
        data.append((crop, boxes.astype(np.float32)))
        page.close()
    return data


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a FinTabNet folder (raw layout)")
    p.add_argument("split", help="train / val / test")
    p.add_argument("limit", type=int, help="how many tables to load")
    p.add_argument("dpi", type=float, help="render resolution of the full pages")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    data = load_all(args.source, args.split, args.limit, args.dpi)
    seconds = time.perf_counter() - t0
    held = sum(c.nbytes for c, _ in data)
    print(json.dumps({"tables": len(data), "seconds": seconds, "tables_per_s": len(data) / seconds, "held_mb": held / 1e6}))


if __name__ == "__main__":
    main()
