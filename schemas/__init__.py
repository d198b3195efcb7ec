"""Pydantic models shared by every runtime: configs, manifests, events, API bodies.

Every model is strict: unknown keys are rejected (``extra="forbid"``) so a typo in a YAML
recipe fails loudly instead of silently falling back to a default.
"""
