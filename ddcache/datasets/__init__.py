"""Dataset registry: name -> reader. Adding a dataset = one module with a DatasetReader + one line here."""
from ..errors import UserError
from .fintabnet import FinTabNetReader
from .pubtabnet import PubTabNetReader

REGISTRY = {r.name: r for r in (FinTabNetReader(), PubTabNetReader())}


def get_reader(name):
    """The reader registered as ``name``; UserError listing the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None
