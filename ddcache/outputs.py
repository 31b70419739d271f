"""The one rule for every path a command writes (``--out``, ``--logdir``): checked before any work starts.

* Its folder must exist: a typo in a parent folder is a one-line error, not
  a traceback at the end of the work, and no directory tree is created
  where the user did not ask for one.
* An existing output is replaced only with ``--overwrite`` (commands that
  resume into an existing output, such as ``ddtrain train --logdir``, only
  check the folder).
"""
from pathlib import Path

from .errors import UserError


def check_output(path, option="--out", overwrite=None):
    """``Path(path)`` if it can be written; UserError (one line) otherwise.

    ``overwrite``: None = an existing ``path`` is fine (resume, append);
    False = an existing ``path`` is refused; True = it will be replaced.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise UserError(f"{option} {path}: folder {parent} {what}")
    if overwrite is False and (path.exists() or path.is_symlink()):
        raise UserError(f"{option} {path} already exists (use --overwrite to replace it)")
    return path
