"""Names of the previous release kept for one more, with a warning: a user's import of an old
class name works and says what it is called now (old module paths: ``kaseg/__init__.py``)."""

from __future__ import annotations

import warnings
from typing import Any, Callable


def renamed(module: str, names: dict[str, str], namespace: dict[str, Any]
            ) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves each old name in ``names`` as the object now named
    ``names[old]`` in ``namespace`` (a DeprecationWarning names both); any other missing name is
    the usual AttributeError."""

    def __getattr__(name: str) -> Any:
        if name in names:
            warnings.warn(f"{module}.{name} is now {module}.{names[name]}; the old name goes in "
                          "the next release", DeprecationWarning, stacklevel=2)
            return namespace[names[name]]
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
