"""Queued local inference through llama.cpp (imported only when a model is configured)."""

from __future__ import annotations

from cortexd.inference.engine import Engine
from cortexd.inference.methods import InferenceComponent, install

__all__ = ["Engine", "InferenceComponent", "install"]
