"""The one rule for every path a command writes (``--out``, ``--logdir``): checked before any work starts.

* Its folder must exist: a typo in a parent folder is a one-line error, not
  a traceback at the end of the work, and no directory tree is created
  where the user did not ask for one.
* An existing output is replaced only with ``--overwrite`` (commands that
  resume into an existing output, such as ``ddtrain train --logdir``, only
  check the folder), and ``--overwrite`` deletes only a directory that holds
  nothing but what the command itself writes (``owned``): a cache's files for
  ``build``, ``images/`` + ``instances.json`` for ``export``, and that carries
  the command's signature (a ddcache manifest, a ddcache ``instances.json``):
  the names alone are common (any LMDB directory holds ``data.mdb`` +
  ``lock.mdb``, any COCO dataset ``images/`` + ``instances.json``).
* An output never overlaps an input (:func:`check_disjoint`: equal to,
  inside, or containing it), so a mistyped path cannot build into the raw
  dataset or export into the cache being read.
"""
import os
from pathlib import Path

from .errors import UserError


def check_output(path, option="--out", overwrite=None, owned=None):
    """``Path(path)`` if it can be written; UserError (one line) otherwise.

    ``overwrite``: None = an existing ``path`` is fine (resume, append);
    False = an existing ``path`` is refused; True = it will be replaced.
    ``owned``: ``(names, what, signed)``: with ``overwrite`` True, an existing
    ``path`` may be replaced only if it is a real directory whose entries are
    all in ``names`` and, unless it is empty, for which ``signed(path)`` is
    True (:func:`owned_by_us`); ``what`` names it in the message.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise UserError(f"{option} {path}: folder {parent} {what}")
    exists = path.exists() or path.is_symlink()
    if overwrite is False and exists:
        raise UserError(f"{option} {path} already exists (use --overwrite to replace it)")
    if overwrite and exists and owned is not None and not owned_by_us(path, owned[0], owned[2]):
        raise UserError(f"{option} {path} is not {owned[1]}: --overwrite replaces only {owned[1]} and will not delete "
                        "other files (remove it yourself or choose another path)")
    return path


def owned_by_us(path, names, signed=None):
    """True if ``path`` is a real directory (not a symlink) whose entries are all in ``names`` (an empty one counts)
    and, if it is not empty and ``signed`` is given, ``signed(path)`` recognises it as written by ddcache."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        entries = set(os.listdir(path))
    except OSError:
        return False
    if not entries <= set(names):
        return False
    return not entries or signed is None or bool(signed(path))


def check_disjoint(out, inputs, out_flag, input_flag):
    """UserError if ``out`` equals, lies inside, or contains any of ``inputs`` (after resolving symlinks)."""
    o = _real(out)
    for given in inputs:
        i = _real(given)
        if o == i:
            raise UserError(f"{out_flag} {out} is the same directory as {input_flag} {given}")
        if i in o.parents:
            raise UserError(f"{out_flag} {out} lies inside {input_flag} {given}")
        if o in i.parents:
            raise UserError(f"{out_flag} {out} contains {input_flag} {given}")


def _real(path):
    """Absolute path with symlinks resolved (no error for missing parts or symlink loops)."""
    return Path(os.path.realpath(os.path.abspath(path)))
