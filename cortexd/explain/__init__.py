"""Explanations that are right: runbook causes ranked by facts gathered now, then a short summary.

`methods.install` wires the feature into the daemon (see cortexd/features.py);
`service.Explainer` builds the deterministic part, built on the first
explanation; `methods.explain_methods` adds the model's part through the
inference engine. Nothing is imported here, so the package costs nothing
until it is used.
"""
