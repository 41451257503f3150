"""Import paths of the form "module:attribute" (dots allowed in the attribute part).

Reward functions, graders and other plug-ins are named this way in configuration.
`import_object` resolves one; it does not check what the object is.
"""

from __future__ import annotations

import importlib
from typing import Any


def import_object(path: str) -> Any:
    """The object named by "module:attribute"; ValueError for a malformed path,
    ImportError or AttributeError when it does not resolve.

    >>> import_object("os.path:join.__name__")
    'join'
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{path!r}: expected 'module:attribute'")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target
