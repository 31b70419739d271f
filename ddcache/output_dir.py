"""Output directories: where a command may write, and what ``--overwrite`` may delete.

Two rules keep a mistyped path from destroying data: an output never
overlaps an input (equal to, inside, or containing it: building into the
raw dataset, exporting into the cache being read), and ``--overwrite``
deletes only a directory that holds nothing but what the command itself
writes (a cache's files for ``build``, ``images/`` + ``instances.json`` for
``export``). Anything else is a one-line UserError and nothing is touched.
"""
import os
from pathlib import Path

from .errors import UserError


def real(path):
    """Absolute path with symlinks resolved (no error for missing parts or symlink loops)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def check_disjoint(out, inputs, out_flag, input_flag):
    """UserError if ``out`` equals, lies inside, or contains any of ``inputs`` (after resolving symlinks)."""
    o = real(out)
    for given in inputs:
        i = real(given)
        if o == i:
            raise UserError(f"{out_flag} {out} is the same directory as {input_flag} {given}")
        if i in o.parents:
            raise UserError(f"{out_flag} {out} lies inside {input_flag} {given}")
        if o in i.parents:
            raise UserError(f"{out_flag} {out} contains {input_flag} {given}")


def owned_by_us(path, names):
    """True if ``path`` is a real directory (not a symlink) whose entries are all in ``names`` (an empty one counts)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        return set(os.listdir(path)) <= set(names)
    except OSError:
        return False


def check_replaceable(path, names, what, overwrite):
    """Before writing ``path``: UserError if it exists and may not be replaced.

    Without ``overwrite`` an existing path is refused; with it, only a
    directory :func:`owned_by_us` (entries all in ``names``) may go.
    """
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if not overwrite:
        raise UserError(f"{path} already exists (use --overwrite to replace it)")
    if not owned_by_us(path, names):
        raise UserError(f"{path} is not {what}: --overwrite replaces only {what}, and will not delete other files "
                        "(remove it yourself or choose another path)")
