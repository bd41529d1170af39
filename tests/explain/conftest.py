"""Fixtures for the explain tests: the real model, as the inference tests find it."""

from __future__ import annotations

from tests.inference.conftest import model_path

__all__ = ["model_path"]
