"""Guards against third-party packages that shadow clipood's own top-level names."""
from __future__ import annotations

import importlib
from types import ModuleType

from clipood.errors import ClipoodError


def import_adapters() -> ModuleType:
    """Import clipood's ``adapters`` package, or explain which other package took the name.

    ``adapters`` is also the import name of AdapterHub's PyPI package; if that one wins on ``sys.path``,
    clipood would fail later with a confusing AttributeError, so check the marker up front.
    """
    try:
        module = importlib.import_module("adapters")
    except ImportError as e:
        raise ClipoodError(
            f"cannot import clipood's 'adapters' package ({e}); install clipood (`pip install -e .`) "
            "or run from the repository root"
        ) from None
    if not getattr(module, "__clipood_adapters__", False):
        where = getattr(module, "__file__", None) or repr(module)
        raise ClipoodError(
            f"'import adapters' resolved to {where}, which is not clipood's adapters package (probably "
            "AdapterHub's 'adapters'); install clipood in a separate virtual environment or `pip uninstall adapters`"
        )
    return module
