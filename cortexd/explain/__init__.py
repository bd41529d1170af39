"""Explanations that are right: runbook causes ranked by facts gathered now."""

from __future__ import annotations
