"""Explanations that are right: runbook causes ranked by facts gathered now, then a short summary.

`install` wires the feature into the daemon (see cortexd/features.py);
`Explainer` builds the deterministic part, `explain_methods` adds the
model's part through the inference engine.
"""

from __future__ import annotations

from cortexd.explain.methods import ExplainComponent, explain_methods, install
from cortexd.explain.service import ExplainBusy, Explainer, RunbookBroken

__all__ = [
    "ExplainBusy",
    "ExplainComponent",
    "Explainer",
    "RunbookBroken",
    "explain_methods",
    "install",
]
