"""Queued local inference through llama.cpp, in a runner process the daemon supervises.

The daemon side (`Engine`, its component and methods) is loaded on first use:
the runner process imports this package too (`python -m
cortexd.inference.worker`) and must not pay for the daemon's modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cortexd.inference.engine import Engine
    from cortexd.inference.methods import InferenceComponent, install

__all__ = ["Engine", "InferenceComponent", "install"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from cortexd.inference.engine import Engine

        return Engine
    if name in ("InferenceComponent", "install"):
        from cortexd.inference import methods

        return getattr(methods, name)
    raise AttributeError(name)
