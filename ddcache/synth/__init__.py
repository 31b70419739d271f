"""Built-in synthetic datasets in the exact raw layout of FinTabNet and PubTabNet.

The real releases cannot be downloaded everywhere; these samples let every
stage (reader, cropper, cache, trainer) run and be tested end to end.
``write_sample`` is what ``ddcache sample`` calls.
"""

DATASETS = ("fintabnet", "pubtabnet")


def assign_splits(n, rng):
    """Deterministic ~80/10/10 train/val/test split of ``n`` items (pages or images).

    ``rng`` is a ``random.Random``. val and test get ``round(n / 10)`` items
    each but at least one as soon as there are 2 (val) / 3 (test) items, so
    every split is non-empty for n >= 3. Returns a list of split names.
    """
    n_val = max(1, round(n / 10)) if n >= 2 else 0
    n_test = max(1, round(n / 10)) if n >= 3 else 0
    order = list(range(n))
    rng.shuffle(order)
    split = ["train"] * n
    for i in order[:n_val]:
        split[i] = "val"
    for i in order[n_val:n_val + n_test]:
        split[i] = "test"
    return split


MARKER = "ddcache_sample.json"  # written last into every sample folder: what the sample consists of


def _clear_previous_sample(out, overwrite):
    """Make ``out`` ready for a new sample; UserError if that would overwrite anything not ours.

    ``out`` may be missing or empty. Otherwise it must hold an earlier sample
    (its :data:`MARKER`) and ``overwrite`` must be set; then exactly the
    files that sample wrote are deleted (and the folders left empty by
    that), so nothing a user put there (or a real dataset) is touched.
    """
    import json

    from ddcache.errors import UserError

    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if not any(out.iterdir()):
        return
    marker = out / MARKER
    if not marker.is_file():
        raise UserError(f"--out {out} is not empty and is not a ddcache sample (no {MARKER}): refusing to write into it")
    if not overwrite:
        raise UserError(f"--out {out} already holds a sample (use --overwrite to replace it)")
    try:
        files = json.loads(marker.read_text())["files"]
        if not (isinstance(files, list) and all(isinstance(name, str) and name for name in files)):
            raise TypeError("files is not a list of file names")
    except (ValueError, KeyError, TypeError, RecursionError):
        raise UserError(f"{marker} is unreadable: delete the folder yourself if it is a sample") from None
    root = out.resolve()
    folders = set()
    for name in files:
        path = (out / name).resolve()
        if root not in path.parents:  # a marker edited to point outside: never follow it
            raise UserError(f"{marker} lists {name!r}, outside {out}: refusing to delete it")
        if path.is_file():
            path.unlink()
        folders.update(p for p in path.parents if root in p.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    marker.unlink()


def write_sample(dataset, out_dir, pages=24, seed=0, overwrite=False):
    """Write a synthetic ``dataset`` ("fintabnet" or "pubtabnet") into ``out_dir``.

    ``pages``: one-page PDFs for FinTabNet (1-2 tables each), images for
    PubTabNet (one table each). Same ``seed`` -> byte-identical files.
    ``out_dir`` must be missing or empty, or hold an earlier sample and
    ``overwrite`` be set (:func:`_clear_previous_sample`); the files written
    are listed in ``out_dir/ddcache_sample.json``.
    Returns ``{"dataset", "pages", "tables", "splits": {split: tables}, "out"}``.
    Raises ValueError for an unknown dataset name or ``pages < 1``, UserError
    for an ``out_dir`` it must not write into.
    """
    import json
    from pathlib import Path

    if pages < 1:
        raise ValueError(f"pages must be >= 1, not {pages}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown synthetic dataset {dataset!r} (choose from {', '.join(DATASETS)})")
    out = Path(out_dir)
    _clear_previous_sample(out, overwrite)
    kept = {p for p in out.rglob("*") if p.is_file()} if out.exists() else set()
    # imported here: the writers import assign_splits from this package
    if dataset == "fintabnet":
        from .fintabnet import write_fintabnet_sample

        summary = write_fintabnet_sample(out, pages=pages, seed=seed)
    else:
        from .pubtabnet import write_pubtabnet_sample

        summary = write_pubtabnet_sample(out, pages=pages, seed=seed)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p not in kept)
    (out / MARKER).write_text(json.dumps({"dataset": dataset, "pages": pages, "seed": seed, "files": written}))
    return summary
