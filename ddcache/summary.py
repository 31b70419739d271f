"""`ddcache info`: what a cache (or a list of shard caches) holds, from the manifests alone."""
import os

from .manifest import read_manifest
from .shard_set import expand


def summarize(paths):
    """Merge the manifests of ``paths`` into one summary dict (counts added, categories by name)."""
    paths = expand(paths)
    manifests = [read_manifest(p) for p in paths]
    first = manifests[0]
    skipped, boxes = {}, {}
    totals = {"num_samples": 0, "num_read": 0, "num_tables_written": 0, "dropped_boxes": 0, "bytes": 0}
    for m in manifests:
        c = m["counts"]
        for k in totals:
            totals[k] += int(c.get(k, 0))
        for reason, n in c.get("skipped", {}).items():
            skipped[reason] = skipped.get(reason, 0) + n
        for name, n in c.get("boxes_per_category", {}).items():
            boxes[name] = boxes.get(name, 0) + n
    disk = sum(_file_bytes(p) for p in paths)
    return {
        "paths": [str(p) for p in paths],
        **totals,
        "num_skipped": sum(skipped.values()),
        "skipped": dict(sorted(skipped.items())),
        "categories": dict(sorted(boxes.items())),
        "category_ids": first["categories"],
        "bytes_on_disk": disk,
        "schema_version": first["schema_version"],
        "tool_version": first.get("tool_version"),
        "dataset": first["dataset"],
        "split": sorted({m["split"] for m in manifests}) if len(manifests) > 1 else first["split"],
        "mode": first["mode"],
        "encoding": first.get("encoding"),
        "shards": [m.get("shard") for m in manifests],
        "build_options": first["build_options"],
        "created": first.get("created"),
    }


def _file_bytes(cache_dir):
    """Bytes of the regular files directly in ``cache_dir`` (symlinks and special files are not followed)."""
    total = 0
    with os.scandir(cache_dir) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


def _mb(n):
    return f"{n / 1e6:.1f} MB"


def format_summary(s):
    """Readable multi-line text for a summary dict."""
    lines = [
        f"cache        {', '.join(s['paths'])}",
        f"dataset      {s['dataset']}  split {s['split']}  mode {s['mode']}  encoding {s['encoding']}",
        f"schema       v{s['schema_version']} (ddcache {s['tool_version']}, built {s['created']})",
        f"samples      {s['num_samples']}  ({s['num_tables_written']} tables from {s['num_read']} lines read, {s['num_skipped']} skipped)",
        f"size         {_mb(s['bytes'])} of records ({_mb(s['bytes'] / max(1, s['num_samples']))} per sample), {_mb(s['bytes_on_disk'])} on disk",
        "boxes        " + ("  ".join(f"{k} {v}" for k, v in s["categories"].items()) or "none"),
    ]
    if s["dropped_boxes"]:
        lines.append(f"dropped      {s['dropped_boxes']} degenerate / outside-crop boxes")
    if s["skipped"]:
        lines.append("skipped      " + "  ".join(f"{k} {v}" for k, v in s["skipped"].items()))
    opts = s["build_options"]
    lines.append(f"resolution   dpi {opts.get('dpi')}  max short {opts.get('max_short')}  max long {opts.get('max_long')}  pad {opts.get('pad')}")
    if any(s["shards"]):
        lines.append("shards       " + ", ".join("/".join(map(str, sh)) if sh else "-" for sh in s["shards"]))
    return "\n".join(lines)
