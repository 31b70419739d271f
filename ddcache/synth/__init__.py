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


def write_sample(dataset, out_dir, pages=24, seed=0):
    """Write a synthetic ``dataset`` ("fintabnet" or "pubtabnet") into ``out_dir``.

    ``pages``: one-page PDFs for FinTabNet (1-2 tables each), images for
    PubTabNet (one table each). Same ``seed`` -> byte-identical files.
    Returns ``{"dataset", "pages", "tables", "splits": {split: tables}, "out"}``.
    Raises ValueError for an unknown dataset name or ``pages < 1``.
    """
    if pages < 1:
        raise ValueError(f"pages must be >= 1, not {pages}")
    # imported here: the writers import assign_splits from this package
    if dataset == "fintabnet":
        from .fintabnet import write_fintabnet_sample

        return write_fintabnet_sample(out_dir, pages=pages, seed=seed)
    if dataset == "pubtabnet":
        from .pubtabnet import write_pubtabnet_sample

        return write_pubtabnet_sample(out_dir, pages=pages, seed=seed)
    raise ValueError(f"unknown synthetic dataset {dataset!r} (choose from {', '.join(DATASETS)})")
